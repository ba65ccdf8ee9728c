"""Beyond one machine: a data set prepared once as a LitData optimised dataset, streamed by LitData.

A set larger than a machine's memory (or disk) cannot be decoded into a cache on every node. Here
``lungcls-prepare`` decodes every image once at the working size and writes it, with its label,
source and row, into LitData chunks: one optimised dataset per split (``train/``, ``val/``,
``test/``), the split and duplicate handling exactly as training computes them, plus ``lungcls.json``
(what was prepared: lungcls version and format, working size, classes, every image's path, label,
split and source) and ``splits.csv``. ``dataset.layout=litdata dataset.root=<folder or s3://...>``
then trains from LitData's ``StreamingDataset`` and ``StreamingDataLoader``: LitData shards the
chunks across ranks and nodes, downloads remote chunks ahead of use, and its loader's state is saved
in Lightning checkpoints, so a run resumes mid-epoch. LitData is an optional dependency
(``pip install "lungcls[stream]"``), imported only here.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import lungcls
from lungcls.data.dedup.parallel import die_with
from lungcls.data.pixels.images import load_image
from lungcls.data.samples.sample import Sample
from lungcls.data.pixels.normalization import normalization_stats, pixel_moments
from lungcls.data.samples.splits import SPLITS, apply_splits_csv
from lungcls.data.settings import DatasetSettings
from lungcls.errors import LungclsError

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what prepare writes changes; a set of another format is refused
META = "lungcls.json"
REMOTE = ("s3://", "gs://", "azure://", "hf://")


def require_litdata():
    """The ``litdata`` module, or one line saying how to install it."""
    try:
        import litdata
    except ImportError:
        raise LungclsError('streaming needs LitData, which is not installed; pip install "lungcls[stream]"') from None
    logging.getLogger("litdata").setLevel(logging.WARNING)  # its per-dataset cache notes, every epoch
    return litdata


def _item(row: int, files: Sequence[tuple[str, int]], image_size: int, max_pixels: int, parent: int = 0) -> dict[str, Any]:
    """One stored sample: the decoded uint8 image [1, S, S], its label and its row in ``lungcls.json``."""
    if parent and parent != os.getpid():
        die_with(parent)
    path, label = files[row]
    return {"image": load_image(path, image_size, max_pixels).numpy(), "label": label, "row": row}


def check_output(output: Path) -> None:
    """Refuse an output folder that holds anything (checked before any image is decoded, and again
    before writing): lungcls-prepare never writes over a prepared set."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise LungclsError(f"prepare.output={output} already exists and is not empty; name a new folder "
                           "(lungcls-prepare never writes over a prepared set)")


def write_prepared(dm: Any, output: Path, chunk_bytes: str, workers: int) -> dict[str, Any]:
    """Write the set-up data module ``dm`` (its samples, split, duplicates) to ``output`` as one
    LitData optimised dataset per split, plus ``lungcls.json`` and ``splits.csv``. Returns the record."""
    litdata = require_litdata()
    check_output(output)
    files = [(s.path, s.label) for s in dm.samples]
    counts = {}
    for split in SPLITS:
        rows = dm.split_rows(split).tolist()
        counts[split] = len(rows)
        if not rows:
            continue
        log.info("writing %d %s images to %s", len(rows), split, output / split)
        item = partial(_item, files=files, image_size=dm.image_size, max_pixels=dm.cfg.max_image_pixels, parent=os.getpid())
        litdata.optimize(fn=item,
                         inputs=rows, output_dir=str(output / split), chunk_bytes=chunk_bytes, num_workers=workers,
                         mode=None, verbose=False, start_method="fork" if sys.platform == "linux" else None)
    meta = {
        "format": FORMAT, "lungcls_version": lungcls.__version__, "image_size": dm.image_size,
        "classes": dm.class_names, "normal_class": dm.normal_class, "images": counts,
        "train_pixels": _pixel_stats(dm), "duplicates": dm.duplicate_record,
        "samples": [{"path": s.path, "label": s.label, "split": dm.assignment[s.path], "source": s.source}
                    for s in dm.samples],
    }
    dm.write_splits(output / "splits.csv")
    with (output / "splits.csv").open(newline="") as f:
        meta["splits_csv"] = f.read()  # a run trained from the set writes it as its own
    (output / META).write_text(json.dumps(meta))
    return meta


def _pixel_stats(dm: Any) -> dict[str, float] | None:
    """Mean and standard deviation of the train split's pixels (``dataset.normalization=dataset``)."""
    rows = dm.split_rows("train")
    if not len(rows):
        return None
    if dm.images is not None:
        chunks = dm.cached_chunks(rows)
    else:
        chunks = (load_image(dm.samples[int(r)].path, dm.image_size) for r in rows)
    moments = pixel_moments(chunks)
    return None if moments is None else {"mean": moments[0], "std": moments[1]}


def is_remote(root: str) -> bool:
    return str(root).startswith(REMOTE)


def read_meta(root: str) -> dict[str, Any]:
    """``lungcls.json`` of a prepared set (local folder or object store), or one line saying what is wrong."""
    if is_remote(root):
        from litdata.streaming.downloader import get_downloader  # an object store: LitData's own client

        require_litdata()
        local = Path(tempfile.mkdtemp(prefix="lungcls-meta-")) / META
        try:
            get_downloader(root, str(local.parent), []).download_file(f"{root.rstrip('/')}/{META}", str(local))
        except Exception as e:  # noqa: BLE001 - the store's own error, kept in one line
            raise LungclsError(f"cannot read {root}/{META} ({' '.join(str(e).split())[:200]}); check dataset.root and "
                               "the store's credentials, or prepare the set with lungcls-prepare") from None
    else:
        local = Path(root).expanduser() / META
        if not local.parent.is_dir():
            raise LungclsError(f"dataset.root={root} does not exist; prepare it first: lungcls-prepare dataset=... "
                               "prepare.output=<folder>, then dataset.layout=litdata dataset.root=<folder>")
        if not local.is_file():
            raise LungclsError(f"dataset.root={root} has no {META}: it was not written by lungcls-prepare; prepare it "
                               "with lungcls-prepare dataset=... prepare.output=<folder>")
    try:
        return json.loads(local.read_text())
    except ValueError:
        raise LungclsError(f"{root}/{META} is not valid JSON (an interrupted lungcls-prepare?); prepare the set again") from None


def check_meta(meta: Mapping[str, Any], cfg: DatasetSettings) -> None:
    """Refuse a prepared set that this lungcls cannot read as configured (format, size, classes)."""
    root = cfg.root
    if meta.get("format") != FORMAT:
        raise LungclsError(f"dataset.root={root} was prepared by lungcls {meta.get('lungcls_version')} (format "
                           f"{meta.get('format')}); this is lungcls {lungcls.__version__} (format {FORMAT}): prepare it "
                           "again with this version's lungcls-prepare")
    if int(meta["image_size"]) != cfg.image_size:
        raise LungclsError(f"dataset.root={root} holds images prepared at {meta['image_size']} px, not "
                           f"dataset.image_size={cfg.image_size}; set dataset.image_size={meta['image_size']} or "
                           f"prepare again with dataset.image_size={cfg.image_size}")
    if list(meta["classes"]) != list(cfg.classes):
        raise LungclsError(f"dataset.root={root} was prepared with classes {meta['classes']}, not dataset.classes="
                           f"{list(cfg.classes)}; set dataset.classes to the prepared ones (same order) or prepare again")
    check_chunks(str(root), meta)


def check_chunks(root: str, meta: Mapping[str, Any]) -> None:
    """Every split a local set records is there whole: its LitData index and each chunk at the size
    the index names. A missing split folder or a cut-off chunk (an interrupted copy) would otherwise
    stop training midway with LitData's own exception, after minutes of waiting for the chunk."""
    if is_remote(root):
        return  # an object store is read as LitData downloads it
    base = Path(root).expanduser()
    for split, n in meta["images"].items():
        index = base / split / "index.json"
        if n and not index.is_file():
            raise LungclsError(f"dataset.root={root} has no {split}/{index.name} though it was prepared with {n} {split} "
                               "images; copy the whole prepared folder again, or prepare the set again")
        for chunk in json.loads(index.read_text())["chunks"] if n else ():
            path = base / split / chunk["filename"]
            size = path.stat().st_size if path.is_file() else None
            if size is None or size < int(chunk["chunk_bytes"]):
                found = "is missing" if size is None else f"has {size:,} of its {int(chunk['chunk_bytes']):,} bytes (truncated)"
                raise LungclsError(f"dataset.root={root}: {split}/{chunk['filename']} {found}; copy the whole prepared "
                                   "folder again, or prepare the set again")


def prepared_samples(meta: Mapping[str, Any]) -> list[Sample]:
    """The prepared images as samples (paths as they were when prepared; the pixels are in the chunks)."""
    return [Sample(r["path"], int(r["label"]), split=r["split"], source=r.get("source")) for r in meta["samples"]]


def collate(items: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LitData items -> the batch the cached loaders give: uint8 images, labels, rows."""
    images = torch.from_numpy(np.stack([np.asarray(it["image"]) for it in items]))
    labels = torch.tensor([int(it["label"]) for it in items], dtype=torch.long)
    rows = torch.tensor([int(it["row"]) for it in items], dtype=torch.long)
    return images, labels, rows


def streaming_loader(root: str, split: str, n: int, batch_size: int, shuffle: bool, seed: int, workers: int,
                     world: int):
    """LitData's loader of the prepared ``split`` (``n`` images), sharded by LitData across ``world``
    processes. LitData deals whole batches to the processes: an evaluation batch shrinks so that
    every process gets one (its size changes no number); a train split too small for one batch per
    process is one line."""
    litdata = require_litdata()
    if world > 1 and n < world * (batch_size if shuffle else 1):
        raise LungclsError(f"the {split} split has {n} images, fewer than {world} processes x "
                           f"{batch_size if shuffle else 1} per batch; lower dataset.batch_size or use fewer devices")
    batch_size = batch_size if shuffle else max(1, min(batch_size, n // world))
    drop_last = shuffle and n > batch_size
    dataset = litdata.StreamingDataset(f"{str(root).rstrip('/')}/{split}", shuffle=shuffle, seed=seed, drop_last=drop_last)
    return litdata.StreamingDataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                                       drop_last=drop_last)


def prepared_assignment(samples: Sequence[Sample], cfg: DatasetSettings) -> dict[str, str]:
    """Each prepared image's split; settings that would split the set otherwise are refused."""
    assignment = {s.path: s.split for s in samples}
    if cfg.splits_csv and apply_splits_csv(list(samples), cfg.splits_csv) != assignment:
        raise LungclsError(f"dataset.splits_csv={cfg.splits_csv} splits the images otherwise than the prepared set "
                           f"{cfg.root}; prepare again with dataset.splits_csv=... (the split is fixed when prepared)")
    for key in ("max_per_class", "folds"):
        if getattr(cfg, key):
            raise LungclsError(f"dataset.{key} cannot change a prepared set's split; pass it to lungcls-prepare instead")
    return assignment


def prepared_normalization(meta: Mapping[str, Any], name: str) -> tuple[list[float], list[float]]:
    """``dataset.normalization``'s mean and std; ``dataset`` uses the train pixels measured when prepared."""
    pixels = meta.get("train_pixels")
    if name == "dataset" and pixels:
        return [pixels["mean"]] * 3, [max(pixels["std"], 1e-3)] * 3
    return normalization_stats(name, None)


class WholeSplit(Dataset):
    """Every image of one prepared split, by LitData's random access: what one process reads to
    score a split whole (after DDP training rank 0 alone scores, and must not get a shard)."""

    def __init__(self, root: str, split: str, n: int):
        self.dataset = require_litdata().StreamingDataset(f"{str(root).rstrip('/')}/{split}")
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]


def whole_split_loader(root: str, split: str, batch_size: int, n: int) -> DataLoader:
    """All ``n`` images of a prepared split in stored order, whatever the number of processes."""
    return DataLoader(WholeSplit(root, split, n), batch_size=batch_size, shuffle=False, collate_fn=collate)
