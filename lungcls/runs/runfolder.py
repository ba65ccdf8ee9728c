"""What a run folder holds, known in one place: a ``RunFolder`` from the folder itself or from any of
its checkpoints (``<run>/checkpoints/<name>.ckpt``).

Every command that starts from a checkpoint (evaluate, report, predict, serve, export) asks this
object for the run's ``splits.csv``, ``metrics.json`` or config instead of walking up the path by
hand, so the layout can change in one module and a checkpoint that sits outside a run is the same
one-line error everywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from lungcls.errors import LungclsError

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
# files only a run folder has: any one of them marks a folder as a run
RUN_MARKERS = (".hydra", "status.json", "splits.csv", "metrics.json")


@dataclass(frozen=True)
class RunFolder:
    """A run's folder and the files in it (paths; whether each exists is for the caller to ask)."""

    path: Path

    @classmethod
    def at(cls, folder: str | Path) -> RunFolder:
        """The run at ``folder``; a one-line error when it is not a run folder."""
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise LungclsError(f"{folder} is not a folder; give a run folder (outputs/runs/<date>/<time>_<name>)")
        run = cls(path)
        if not run.is_run():
            raise LungclsError(f"{folder} is not a lungcls run folder (no {', '.join(RUN_MARKERS)}); give the folder a run left")
        return run

    @classmethod
    def find(cls, checkpoint: str | Path) -> RunFolder | None:
        """The run a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), or None when it sits elsewhere."""
        ckpt = Path(checkpoint).expanduser().resolve()
        if ckpt.parent.name != CHECKPOINTS:
            return None
        run = cls(ckpt.parent.parent)
        return run if run.is_run() else None

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path, needed_for: str = "") -> RunFolder:
        """The run a checkpoint belongs to; a one-line error when it is not inside one."""
        run = cls.find(checkpoint)
        if run is None:
            why = f" ({needed_for})" if needed_for else ""
            raise LungclsError(
                f"{checkpoint} is not inside a lungcls run folder{why}; give a run's checkpoints/<name>.ckpt, "
                "or keep the checkpoint in its run's checkpoints/ folder")
        return run

    @staticmethod
    def naming_folder(checkpoint: str | Path) -> Path:
        """The folder that names a checkpoint for people: the one above ``checkpoints/`` (its run, or a
        copy of the run's checkpoints), else the folder it sits in."""
        ckpt = Path(checkpoint).expanduser().resolve()
        return ckpt.parent.parent if ckpt.parent.name == CHECKPOINTS else ckpt.parent

    def is_run(self) -> bool:
        return any((self.path / marker).exists() for marker in RUN_MARKERS)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def splits_csv(self) -> Path:
        return self.path / "splits.csv"

    @property
    def metrics_json(self) -> Path:
        return self.path / "metrics.json"

    @property
    def predictions_csv(self) -> Path:
        return self.path / "predictions.csv"

    @property
    def config_yaml(self) -> Path:
        return self.path / ".hydra" / "config.yaml"

    @property
    def overrides_yaml(self) -> Path:
        return self.path / ".hydra" / "overrides.yaml"

    @property
    def status_json(self) -> Path:
        return self.path / "status.json"
