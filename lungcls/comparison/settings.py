"""Which runs share a setting: compared by their composed, typed config (``.hydra/config.yaml``)
minus the keys that choose a fold, never by the text of their overrides.

Override text is not the setting: a Hydra multirun stores each override as its sweeper wrote it
again (``dataset.classes=[COVID,Normal,Viral\\ Pneumonia]``) where a single run stores what was typed
(``[COVID,Normal,Viral Pneumonia]``), and the same run can be asked for in another order, with a
``+``, or with a value that is the default anyway. The composed config is what the run did.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

FOLD_KEYS = ("dataset.fold", "dataset.folds")


def _without(config: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


def setting_key(run: dict, drop: Sequence[str] = FOLD_KEYS) -> str:
    """The run's composed config without the ``drop`` keys, as canonical JSON (keys sorted, values
    typed as Hydra composed them). A run folder without a readable config falls back to its sorted
    overrides, so it pairs only with a run given the same text."""
    config = run.get("config")
    if not config:
        kept = sorted(o for o in run.get("overrides") or [] if o.lstrip("+~").split("=", 1)[0] not in drop)
        return json.dumps({"overrides": kept})
    config = copy.deepcopy(config)
    for dotted in drop:
        _without(config, dotted)
    return json.dumps(config, sort_keys=True, default=str)
