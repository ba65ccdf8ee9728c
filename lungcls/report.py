"""``lungcls-report``: Grad-CAM figures of one or more checkpoints side by side on the same X-rays
(Hydra app; see conf/report.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lungcls.cli import CONF_DIR, reports_user_errors


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="report")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    from lungcls.explain.report import make_report

    make_report(cfg)


if __name__ == "__main__":
    main()
