"""A miss rate the user chooses: the Normal-score threshold that caps the share of disease images
called Normal, chosen on calibration images.

An image is called Normal only when its Normal score is *above* the threshold; otherwise it is
referred. A miss is a disease image called Normal. Allowing ``m`` misses among the ``n`` disease
calibration scores puts the threshold at the (m+1)-th largest of them; with exchangeable images
the true miss rate of that threshold is Beta(m+1, n-m)-distributed (continuous scores), which gives
each rule its guarantee:

- ``crc`` (conformal risk control, Angelopoulos et al. 2022): the smallest threshold with
  ``n/(n+1) * misses/n + 1/(n+1) <= alpha``, i.e. ``m + 1 <= alpha (n+1)``; the expected miss rate
  on a new disease image is at most alpha. Needs ``n >= 1/alpha - 1``.
- ``ltt`` (Learn-then-Test, Angelopoulos et al. 2021): the thresholds are tested from the most
  cautious down with the exact binomial p-value ``P(Binom(n, alpha) <= misses)`` (fixed-sequence
  testing at level delta; for a 0/1 loss it is tighter than Hoeffding-Bentkus and just as valid);
  the miss rate is at most alpha with probability at least 1 - delta.
- ``validation_quantile``: today's rule (validation sensitivity reaches 1 - alpha, ``m = floor(alpha n)``),
  kept to measure the difference; it has no guarantee.

Written out rather than taken from MAPIE (its binary controller offers Learn-then-Test only, and
wants a predict function to call per threshold) or crepes (prediction sets, not risk control): the
rules are a few lines on sorted scores and vectorise over many calibration draws at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["METHODS", "allowed_misses", "smallest_alpha", "calibrate", "mondrian", "decide", "achieved", "simulate", "held_out_miss_rates"]

METHODS = ("crc", "ltt", "validation_quantile")
_EPS = 1e-9


def allowed_misses(n: int | np.ndarray, alpha: float, method: str = "crc", delta: float = 0.1) -> np.ndarray:
    """The misses ``m`` a rule allows among ``n`` disease calibration images (-1: none, not even
    a threshold above every score reaches alpha). Vectorised over ``n``."""
    n = np.asarray(n, dtype=np.int64)
    if method == "crc":
        return np.floor(alpha * (n + 1) - 1 + _EPS).astype(np.int64)
    if method == "validation_quantile":
        return np.minimum(np.floor(alpha * n + _EPS).astype(np.int64), np.maximum(n - 1, 0))
    if method == "ltt":
        from scipy.stats import binom

        flat = n.ravel()
        out = np.full(flat.shape, -1, dtype=np.int64)
        for size in np.unique(flat):
            m = np.arange(int(size))
            rejected = np.logical_and.accumulate(binom.cdf(m, size, alpha) <= delta)  # fixed sequence
            out[flat == size] = int(rejected.sum()) - 1
        return out.reshape(n.shape)
    raise ValueError(f"unknown method {method!r}; one of {METHODS}")


def smallest_alpha(n: int, method: str = "crc", delta: float = 0.1) -> float:
    """The smallest cap a rule can reach with ``n`` disease calibration images."""
    if n <= 0:
        return 1.0
    if method == "crc":
        return 1.0 / (n + 1)
    if method == "ltt":
        return float(1.0 - delta ** (1.0 / n))  # (1 - alpha)^n <= delta: no miss allowed
    return 0.0


def _threshold(disease_scores: np.ndarray, m: int) -> float | None:
    """The (m+1)-th largest score: at most ``m`` calibration scores lie above it."""
    if m < 0 or disease_scores.size == 0:
        return None
    return float(np.sort(disease_scores)[::-1][min(m, disease_scores.size - 1)])


def calibrate(scores: Any, is_disease: Any, alpha: float, method: str = "crc", delta: float = 0.1) -> dict[str, Any]:
    """The threshold of one calibration set: ``{"threshold" (None: out of reach), "allowed_misses",
    "calibration": {"disease", "all"}, "smallest_alpha", "reason"}``."""
    s, d = np.asarray(scores, dtype=np.float64), np.asarray(is_disease, dtype=bool)
    n = int(d.sum())
    m = int(allowed_misses(n, alpha, method, delta))
    t = _threshold(s[d], m)
    reason = None
    if t is None:
        reason = (f"{n} disease calibration images reach a miss rate of {smallest_alpha(n, method, delta):.3g} at best, "
                  f"not {alpha:g}")
    return {"threshold": t, "allowed_misses": m, "calibration": {"disease": n, "all": int(d.size)},
            "smallest_alpha": smallest_alpha(n, method, delta), "reason": reason}


def mondrian(scores: Any, is_disease: Any, groups: Sequence[str], alpha: float, method: str = "crc",
             delta: float = 0.1) -> dict[str, Any]:
    """One threshold per group (Mondrian calibration); a group whose disease images cannot reach
    alpha falls back to the pooled threshold, marked ``fallback``."""
    s, d, g = np.asarray(scores, dtype=np.float64), np.asarray(is_disease, dtype=bool), np.asarray(groups, dtype=object)
    pooled = calibrate(s, d, alpha, method, delta)
    per_group = {}
    for name in sorted(set(g.tolist())):
        keep = g == name
        own = calibrate(s[keep], d[keep], alpha, method, delta)
        own["fallback"] = own["threshold"] is None
        if own["fallback"]:
            own["threshold"] = pooled["threshold"]
        per_group[str(name)] = own
    return {"pooled": pooled, "groups": per_group}


def decide(probs: Any, normal_index: int, thresholds: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the class called (Normal above the threshold, else the most likely disease class)
    and whether it was referred. ``thresholds`` is one number or one per image."""
    p = np.asarray(probs, dtype=np.float64)
    normal = p[:, normal_index] > np.asarray(thresholds, dtype=np.float64)
    disease = p.copy()
    disease[:, normal_index] = -np.inf
    called = np.where(normal, normal_index, disease.argmax(axis=1))
    return called, ~normal


def achieved(called_normal: Any, labels: Any, class_names: Sequence[str], normal_index: int, level: float = 0.95) -> dict[str, Any]:
    """On scored images: the miss rate (disease called Normal) overall and per disease class, and
    the price (share of Normal images referred), each with its Wilson interval."""
    from lungcls.metrics.bootstrap import wilson_interval

    c, y = np.asarray(called_normal, dtype=bool), np.asarray(labels, dtype=np.int64)

    def rate(keep: np.ndarray, hit: np.ndarray) -> dict[str, Any]:
        k, n = int((keep & hit).sum()), int(keep.sum())
        return {"rate": k / n if n else None, "count": k, "images": n, "interval": wilson_interval(k, n, level)}

    disease = y != normal_index
    out = {"miss_rate": rate(disease, c),
           "per_class": {str(name): rate(y == k, c) for k, name in enumerate(class_names) if k != normal_index},
           "referred_normal": rate(~disease, ~c)}
    spec = out["referred_normal"]
    out["specificity"] = None if spec["rate"] is None else {
        "rate": 1 - spec["rate"], "interval": None if spec["interval"] is None else [1 - spec["interval"][1], 1 - spec["interval"][0]]}
    return out


def simulate(scores: Any, is_disease: Any, alphas: Sequence[float], delta: float = 0.1, splits: int = 500,
             calibration_share: float = 0.3, seed: int = 0) -> dict[str, Any]:
    """Measure each rule's guarantee: ``splits`` random calibration/test splits of one scored pool,
    vectorised (one sort per draw). Per alpha and rule: the mean achieved miss rate on the test
    disease images, the share of splits above alpha, and the mean share of test Normal images referred.
    The test part is finite, so its miss rate scatters around the threshold's true one: a share of
    splits above alpha includes that scatter (a larger test part, the default 70%, keeps it small)."""
    s, d = np.asarray(scores, dtype=np.float64), np.asarray(is_disease, dtype=bool)
    rng = np.random.default_rng(seed)
    order = rng.random((splits, s.size)).argsort(axis=1)
    n_cal = int(round(calibration_share * s.size))
    cal, test = order[:, :n_cal], order[:, n_cal:]
    cal_d = d[cal]
    n_dis = cal_d.sum(axis=1)
    # disease calibration scores sorted from the highest; Normal ones pushed past the end
    ranked = -np.sort(-np.where(cal_d, s[cal], -np.inf), axis=1)
    test_s, test_d = s[test], d[test]
    out: dict[str, Any] = {"delta": delta, "splits": splits, "calibration_share": calibration_share, "alphas": {}}
    for alpha in alphas:
        row = {}
        for method in METHODS:
            m = allowed_misses(n_dis, alpha, method, delta)
            t = np.where(m >= 0, ranked[np.arange(splits), np.clip(m, 0, None)], np.inf)
            normal = test_s > t[:, None]
            miss = (normal & test_d).sum(axis=1) / np.maximum(test_d.sum(axis=1), 1)
            referred = (~normal & ~test_d).sum(axis=1) / np.maximum((~test_d).sum(axis=1), 1)
            row[method] = {"mean_miss": float(miss.mean()), "share_above_alpha": float((miss > alpha).mean()),
                           "mean_referred_normal": float(referred.mean()),
                           "out_of_reach": float((m < 0).mean())}  # splits too small for alpha: everything referred
        out["alphas"][f"{alpha:.2f}"] = row
    return out


def held_out_miss_rates(cal: Any, held_out: Any, class_names: Sequence[str], normal_class: str,
                        alphas: Sequence[float] = (0.02, 0.05, 0.10), level: float = 0.95) -> dict[str, Any]:
    """Where the guarantee ends: the cap calibrated (conformal risk control) on the training
    sources' val predictions, measured at a source held out of training and calibration.
    ``cal`` and ``held_out`` are ``Predictions``; per alpha: the threshold, the achieved miss rate
    with its Wilson interval, and ``kept`` (the rate at or below alpha; None without disease images)."""
    k = list(class_names).index(normal_class)
    out = {}
    for alpha in alphas:
        chosen = calibrate(cal.probs[:, k], cal.labels != k, alpha)
        t = np.inf if chosen["threshold"] is None else chosen["threshold"]
        got = achieved(held_out.probs[:, k] > t, held_out.labels, class_names, k, level)["miss_rate"]
        out[f"{alpha:.2f}"] = {"threshold": chosen["threshold"], "calibration_disease": chosen["calibration"]["disease"],
                               "miss_rate": got["rate"], "interval": got["interval"], "images": got["images"],
                               "kept": None if got["rate"] is None else got["rate"] <= alpha}
    return out
