"""The Hydra callback that tells a multirun which of its jobs failed, whichever launcher ran them
(``conf/hydra/default.yaml``): with Hydra's basic launcher the jobs run in the multirun's own
process and record themselves in ``lungcls.cli.FAILED_JOBS``; under Submitit (SLURM, or its local
executor) each job is another process and leaves only ``error.txt`` in its folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lungcls.cli import FAILED_JOBS


class FailedJobsCallback(Callback):
    """Hydra callback (conf/hydra/default.yaml): a job run by another process (Submitit's SLURM or
    local executor) records its failure only in its folder (``error.txt``), out of reach of
    ``FAILED_JOBS``; the multirun process finds the folders that got one during the multirun."""

    def __init__(self) -> None:
        self.before: set[tuple[str, int]] = set()

    @staticmethod
    def _errors(config: DictConfig) -> set[tuple[str, int]]:
        folder = Path(str(config.hydra.sweep.dir))
        return {(str(p), p.stat().st_mtime_ns) for p in folder.glob("**/error.txt")} if folder.is_dir() else set()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.before = self._errors(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        known = {Path(job.split(": ", 1)[0]).resolve() for job in FAILED_JOBS}  # Hydra's basic launcher: already there
        for path, _ in sorted(self._errors(config) - self.before):
            if Path(path).parent.resolve() not in known:
                FAILED_JOBS.append(f"{Path(path).parent}: {Path(path).read_text().strip()}")
