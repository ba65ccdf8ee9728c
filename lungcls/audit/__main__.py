"""``lungcls-audit``: audit a data set before training on it (Hydra app; see conf/audit.yaml).

Takes the same ``dataset=`` configs and overrides as ``lungcls-train``, reads every image once, and
writes ``audit.json`` and ``audit.md`` to its run folder. Findings are data: the exit status is 0
unless ``audit.fail_on`` names a finding that was found (then 1, for CI pipelines).
"""

from __future__ import annotations

from omegaconf import DictConfig

from lungcls.audit.run import audit
from lungcls.cli import hydra_main


@hydra_main("audit")
def main(cfg: DictConfig) -> None:
    audit(cfg)


if __name__ == "__main__":
    main()
