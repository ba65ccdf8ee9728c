"""The one way a command gets a trained model from a checkpoint argument: the path resolved and
checked once (one wording for a folder, a missing file, an unreadable or foreign file), the file
read with only tensors and plain values unpickled, earlier releases' hyper-parameters upgraded
(``lungcls.models.compat``), and the model handed back with its typed hyper-parameters
(``model.info``), its run folder and a readable name. Evaluate, predict, serve, export, report and
resuming a run all come through here."""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import ListConfig

from lungcls.errors import LungclsError
from lungcls.models.compat import upgrade_hparams
from lungcls.models.hparams import ModelHparams
from lungcls.models.module import LungClassifier
from lungcls.runs.runfolder import RunFolder

log = logging.getLogger(__name__)


def checkpoint_file(value: object, key: str = "ckpt", expect: str = "best.ckpt") -> Path:
    """``key=value`` as an absolute path to an existing checkpoint file, or one line saying what is
    wrong and which file to give (``expect``: ``best.ckpt`` to use a model, ``last.ckpt`` to resume)."""
    if value is None or str(value).strip() == "":
        raise LungclsError(f"no checkpoint given; pass {key}=outputs/runs/<date>/<time>_<name>/checkpoints/{expect}")
    path = Path(str(value)).expanduser().resolve()
    if path.is_dir():
        example = path / expect if path.name == "checkpoints" else path / "checkpoints" / expect
        raise LungclsError(f"{key}={value} is a folder, not a checkpoint file; give a file in it, e.g. {key}={example}")
    if not path.is_file():
        raise LungclsError(f"{key}={value} does not exist; give the path of a run's checkpoints/{expect}")
    return path


def checkpoint_files(value: Any, key: str = "ckpt") -> list[Path]:
    """``ckpt=a.ckpt`` or ``ckpt='[a.ckpt,b.ckpt]'`` -> checked absolute paths, each given once."""
    items = [str(v) for v in value] if isinstance(value, (ListConfig, list, tuple)) else [] if value is None else [str(value)]
    items = [i for i in items if i.strip()]
    if not items:
        raise LungclsError(f"no checkpoint given; pass {key}=run/checkpoints/best.ckpt or {key}='[a.ckpt,b.ckpt]'")
    paths = [checkpoint_file(i, key) for i in items]
    if len(set(paths)) != len(paths):
        raise LungclsError(f"{key} lists the same checkpoint twice: {items}; give each one once")
    return paths


def legacy_checkpoint(ckpt: object, ckpt_path: object) -> object:
    """evaluate's old ``ckpt_path=`` (still read for one release, with a notice) or ``ckpt=``."""
    if ckpt_path is None:
        return ckpt
    if ckpt is not None:
        raise LungclsError("ckpt and ckpt_path both name a checkpoint; give only ckpt=...")
    log.warning("ckpt_path= is now ckpt= (the key every command uses); ckpt_path will stop working in the next release")
    return ckpt_path


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu", key: str = "ckpt",
                    expect: str = "best.ckpt", weights: bool = True) -> dict[str, Any]:
    """The checkpoint's contents with its hyper-parameters upgraded to today's form (``weights``:
    it must also hold a model's weights, as every use but comparing settings needs).

    Only tensors and plain containers are unpickled (``weights_only``): a crafted file cannot run
    code, and a file that is not a lungcls checkpoint is a one-line error."""
    try:
        content = torch.load(str(path), map_location=map_location, weights_only=True)
        if not isinstance(content, dict) or not isinstance(content.get("hyper_parameters"), dict):
            raise ValueError("no lungcls settings in it")
        if weights and ("state_dict" not in content or "class_names" not in content["hyper_parameters"]):
            raise ValueError("no lungcls model in it")
    except Exception as e:  # truncated, foreign, crafted or from another architecture
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if "weights_only" in str(e):  # torch's advice to unpickle arbitrary code is not ours to give
            first = "not a file of tensors and plain values"
        raise LungclsError(
            f"{key}={path} is not a readable lungcls checkpoint ({type(e).__name__}: {first}); give a run's checkpoints/{expect}"
        ) from None
    content["hyper_parameters"] = upgrade_hparams(content["hyper_parameters"])
    return content


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu", key: str = "ckpt") -> LungClassifier:
    """A trained model (eval mode) from a checkpoint file, without fetching any initial weights."""
    path = checkpoint_file(path, key)
    content = read_checkpoint(path, map_location, key)
    accepted = inspect.signature(LungClassifier.__init__).parameters  # keys a later release dropped are ignored
    hparams = {k: v for k, v in content["hyper_parameters"].items() if k in accepted and k != "load_weights"}
    try:
        model = LungClassifier(**hparams, load_weights=False)
        model.load_state_dict(content["state_dict"])
    except LungclsError:
        raise
    except Exception as e:  # a state dict of another architecture, or hyper-parameters it cannot take
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise LungclsError(f"{key}={path} is not a readable lungcls checkpoint ({type(e).__name__}: {first}); "
                           "give a run's checkpoints/best.ckpt") from None
    return model.to(map_location).eval()


def checkpoint_sha256(path: str | Path) -> str:
    """The file's SHA-256: how an evaluation's threshold or a card's evidence is matched to one checkpoint."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class LoadedModel:
    """A trained model with where it came from and the readable, unique name it has in outputs."""

    name: str
    checkpoint: Path
    run: RunFolder | None  # the run that trained it (None: a checkpoint outside any run folder)
    model: LungClassifier
    _sha256: str | None = field(default=None, repr=False)

    @property
    def run_dir(self) -> Path:
        """Its run folder, or the folder that names it when it is not in a run."""
        return self.run.path if self.run is not None else RunFolder.naming_folder(self.checkpoint)

    @property
    def info(self) -> ModelHparams:
        return self.model.info

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = checkpoint_sha256(self.checkpoint)
        return self._sha256


def _loaded(paths: Sequence[Path], models: Sequence[LungClassifier]) -> list[LoadedModel]:
    """Each model with its run, named `backbone/finetune (run folder)`, with more of the folder path
    only where names collide."""
    loaded = [LoadedModel("", p, RunFolder.find(p), m) for p, m in zip(paths, models)]
    for m, name in zip(loaded, _unique_names(loaded)):
        m.name = name
    return loaded


def _unique_names(loaded: Sequence[LoadedModel]) -> list[str]:
    bases = [f"{m.info.backbone}/{m.info.finetune or '?'}" for m in loaded]
    runs = [m.run_dir for m in loaded]
    paths = [m.checkpoint for m in loaded]
    for depth in (1, 2, 3):
        names = [f"{b} ({'/'.join(r.parts[-depth:])})" for b, r in zip(bases, runs)]
        if len(set(names)) == len(names):
            return names
    names = [f"{b} ({r.name}/{p.stem})" for b, r, p in zip(bases, runs, paths)]
    return names if len(set(names)) == len(names) else [f"{n} #{i + 1}" for i, n in enumerate(names)]


def load_checkpoints(value: Any, device: str | torch.device = "cpu", key: str = "ckpt") -> list[LoadedModel]:
    """Every checkpoint of ``key=`` (one path or a list), checked before any is read, loaded on
    ``device`` in eval mode and named readably and uniquely."""
    paths = checkpoint_files(value, key)
    return _loaded(paths, [load_classifier(p, device, key) for p in paths])


def load_checkpoint(value: object, device: str | torch.device = "cpu", key: str = "ckpt") -> LoadedModel:
    """The one checkpoint of ``key=`` (a single path), loaded and named."""
    path = checkpoint_file(value, key)
    return _loaded([path], [load_classifier(path, device, key)])[0]
