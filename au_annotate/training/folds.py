"""Inner group-k-fold splits and per-AU best-F1 thresholds, shared by HTNet training and the logistic baseline.

Both methods choose their decision thresholds the same way: out-of-fold scores from an inner group-k-fold over the
training subjects, then per AU the threshold that maximises F1 on them. Keeping this in its own module (numpy and
sklearn only) lets `train`, `baselines` and `evaluate` import it without importing each other.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold


def best_f1_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """Threshold on `scores` maximising F1 for 0/1 `y` (predict positive when score >= threshold).

    The threshold sits midway between the lowest score predicted positive and the next lower score, so it generalises
    instead of sitting exactly on a training score. No positives: 1.0 plus a margin above every score (never fires).
    Ties in F1 go to the higher threshold (fewer positives)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return float(max(1.0, s.max(initial=0.0)) + 1e-6) if s.size else 1.0
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # only cut where the score changes (a threshold cannot split tied scores)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    f1 = np.where(last, 2 * tp / (2 * tp + fp + (y.sum() - tp)), -1.0)
    k = int(np.argmax(f1))  # first maximum = highest threshold among ties
    lower = s_sorted[k + 1] if k + 1 < len(s_sorted) else s_sorted[k] - 1e-3
    return float((s_sorted[k] + lower) / 2)


def select_thresholds(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-AU best-F1 thresholds (float32 (K,)) from out-of-fold scores of training samples, clipped to [0, 1]."""
    thr = [best_f1_threshold(labels[:, j], scores[:, j]) for j in range(labels.shape[1])]
    return np.clip(np.asarray(thr, dtype=np.float32), 0.0, 1.0)


EMOTION_MIN_PRECISION = 0.75  # the model emotion is given only where inner-fold predictions this sure were this right


def emotion_bar(probs: np.ndarray, classes: np.ndarray, min_precision: float = EMOTION_MIN_PRECISION) -> float:
    """The probability below which the model's emotion is `uncertain`, from out-of-fold class probabilities `probs`
    (N, E) and true classes (N,; -1 unknown, left out): the lowest bar whose confident predictions (max probability >=
    bar) are right at least `min_precision` of the time, i.e. the most samples kept at that precision. Midway between
    the last kept and the next probability; 1.0 plus a margin when not even the surest prediction reaches it (always
    uncertain); 0.0 when every prediction together reaches it (never uncertain). Fixed before any result was seen."""
    known = np.asarray(classes) >= 0
    p = np.asarray(probs, np.float64)[known]
    y = np.asarray(classes)[known]
    if not len(y):
        return 1.0 + 1e-6
    top = p.max(1)
    order = np.argsort(-top, kind="stable")
    right = (p.argmax(1) == y)[order]
    precision = np.cumsum(right) / np.arange(1, len(y) + 1)
    s = top[order]
    cut = np.r_[s[1:] != s[:-1], True]  # a bar cannot split tied probabilities
    ok = np.flatnonzero((precision >= min_precision) & cut)
    if not len(ok):
        return 1.0 + 1e-6
    n = int(ok[-1])
    return 0.0 if n == len(s) - 1 else float((s[n] + s[n + 1]) / 2)


def positive_ratio(labels: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per AU: the share of samples a threshold calls positive over the AU's prevalence (NaN without positives); a
    threshold with a ratio above 2 calls most of what it marks wrongly (issue 25's rule: no decision then)."""
    y = np.asarray(labels, bool)
    called = (np.asarray(scores) >= np.asarray(thresholds)[None, :]).mean(0)
    prevalence = y.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(prevalence > 0, called / prevalence, np.nan)


def inner_folds(groups: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group-k-fold splits over `groups` (k capped at the number of groups); deterministic."""
    n_groups = len(np.unique(groups))
    k = min(k, n_groups)
    if k < 2:
        raise ValueError(f"need at least 2 subjects for inner folds, got {n_groups}")
    return list(GroupKFold(n_splits=k).split(np.zeros(len(groups)), groups=groups))
