"""``lungcls-report``: Grad-CAM figures of one or more checkpoints side by side on the same X-rays
(Hydra app; see conf/report.yaml; the work is in ``lungcls.report.run``)."""

from __future__ import annotations

from omegaconf import DictConfig

from lungcls.cli import hydra_main
from lungcls.report.run import make_report


@hydra_main("report")
def main(cfg: DictConfig) -> None:
    make_report(cfg)


if __name__ == "__main__":
    main()
