"""``lungcls-evaluate``: score any checkpoint on its run's test split, another split, or a whole
external folder (Hydra app; see conf/evaluate.yaml)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lungcls.cli import CONF_DIR, reports_user_errors


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
@reports_user_errors
def main(cfg: DictConfig) -> float | None:
    from lungcls.evaluation import evaluate

    metrics = evaluate(cfg)
    return metrics.get("accuracy")


if __name__ == "__main__":
    main()
