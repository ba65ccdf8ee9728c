"""``lungcls-prepare``: write a data set as a LitData optimised dataset (Hydra app; see conf/prepare.yaml).

Takes the same ``dataset=`` configs as ``lungcls-train``, splits and de-duplicates the images as
training does, decodes each once at ``dataset.image_size`` and writes them in LitData chunks with
their labels, sources and split (``lungcls.data.cache.prepared``), so that
``dataset.layout=litdata dataset.root=<output>`` streams them on any number of GPUs and nodes.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lungcls.cli import hydra_main
from lungcls.data.datamodule import LungDataModule
from lungcls.data.cache.prepared import check_output, is_remote, require_litdata, write_prepared
from lungcls.errors import LungclsError
from lungcls.data.settings import dataset_settings
from lungcls.settings import check_range, typed

log = logging.getLogger(__name__)


@dataclass
class PrepareSettings:
    """``prepare.*`` (defaults in conf/prepare.yaml)."""

    output: str
    chunk_bytes: str
    workers: int

    def __post_init__(self) -> None:
        check_range(self.workers, "prepare.workers", 1)
        if is_remote(self.output):
            raise LungclsError(f"prepare.output={self.output} is an object store; prepare into a local folder, then copy "
                               "it (aws s3 sync <folder> s3://...) and train with dataset.root=s3://...")


def prepare(cfg: DictConfig) -> dict:
    """Write ``cfg.dataset`` to ``cfg.prepare.output``; returns what ``lungcls.json`` records."""
    settings = typed(cfg.prepare, PrepareSettings, "prepare")
    require_litdata()  # before any work
    data = dataset_settings(OmegaConf.to_container(cfg.dataset, resolve=True))
    if data.layout == "litdata":
        raise LungclsError("dataset.layout=litdata is already a prepared set; prepare from the original images' layout")
    output = Path(settings.output).expanduser().resolve()
    check_output(output)  # before decoding anything
    # the writer processes decode each image once, into the chunks
    dm = LungDataModule(dataclasses.replace(data, cache="none"), augment=None)
    dm.setup("prepare")
    meta = write_prepared(dm, output, settings.chunk_bytes, settings.workers)
    counts = ", ".join(f"{n} {split}" for split, n in meta["images"].items())
    print(f"prepared {sum(meta['images'].values())} images ({counts}) at {meta['image_size']} px in {output}")
    print(f"train from it: dataset.layout=litdata dataset.root={output}")
    return meta


main = hydra_main("prepare")(prepare)


if __name__ == "__main__":
    main()
