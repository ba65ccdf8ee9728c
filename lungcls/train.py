"""``lungcls-train``: fine-tune a backbone on chest X-rays (Hydra app; see conf/train.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lungcls.cli import CONF_DIR, reports_user_errors


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@reports_user_errors
def main(cfg: DictConfig) -> float | None:
    from lungcls.training import optimized_value, train

    return optimized_value(cfg, train(cfg))


if __name__ == "__main__":
    main()
