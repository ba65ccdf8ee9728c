"""Attaching a card written after training to the run's offline W&B run (resumed by its id), so the
card sits beside the run's curves once ``wandb sync`` uploads it."""

from __future__ import annotations

import os
from pathlib import Path


def wandb_off() -> bool:
    return (os.environ.get("WANDB_MODE", "").lower() == "disabled"
            or os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true"))


def attach_to_run(run_dir: Path, html_path: Path, project: str | None) -> Path | None:
    """Log the card page to the latest offline W&B run in ``run_dir/wandb``; None when there is none."""
    previous = sorted((run_dir / "wandb").glob("offline-run-*"), key=lambda p: p.name)
    if not previous or wandb_off():
        return None
    try:
        import wandb
    except ImportError:
        return None
    for key, name in (("WANDB_DATA_DIR", ".data"), ("WANDB_CACHE_DIR", ".cache")):
        os.environ.setdefault(key, str(run_dir / "wandb" / name))  # nothing under the home folder
    run = wandb.init(dir=str(run_dir), mode="offline", project=project or "lungcls",
                     id=previous[-1].name.rsplit("-", 1)[-1], resume="allow")
    try:
        run.log({"model_card": wandb.Html(html_path.read_text(encoding="utf-8"))})
        folder = Path(run.dir).parent
    finally:
        wandb.finish()
    print(f"W&B: the card was added to the run's offline W&B run; upload with: wandb sync {folder.parent}/offline-run-*")
    return folder
