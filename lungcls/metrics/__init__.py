"""Every metric lungcls reports, and the names it is logged under, defined once.

- ``confusion``: per-class precision / recall / F1 / specificity, missed disease (``fn_to_normal``),
  the ``metrics.json`` summary of a split, and ``metric_key`` / ``flat_metrics`` (the logged names);
- ``probabilities``: loss, AUROC and the mean true-class probability from predicted probabilities;
- ``streaming``: the on-device confusion counts the training loop accumulates;
- ``sources``: the same numbers per image source, when the data names its sources.
"""

from lungcls.metrics.confusion import PER_CLASS_METRICS, flat_metrics, metric_direction, metric_key, summarize_confusion
from lungcls.metrics.probabilities import auroc_per_class, class_probability_ci, loss_and_auroc
from lungcls.metrics.sources import source_lines, summarize_by_source
from lungcls.metrics.accumulators import ConfusionCounts

__all__ = [
    "PER_CLASS_METRICS",
    "ConfusionCounts",
    "auroc_per_class",
    "class_probability_ci",
    "flat_metrics",
    "loss_and_auroc",
    "metric_direction",
    "metric_key",
    "source_lines",
    "summarize_by_source",
    "summarize_confusion",
]
