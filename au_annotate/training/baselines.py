"""Baselines evaluated on the same folds as HTNet: all-positive, and per-AU logistic regression on raw pixels.

Logistic regression: the 28x28x3 picture as 2,352 features scaled to [0, 1] then standardised on the training fold,
L2-regularised with C = 0.01, class_weight="balanced", lbfgs. C was fixed before any HTNet result: with 2,352 features
and ~150 samples sklearn's default C = 1.0 converges 4-5x slower, and under group-5-fold it scored no better (macro F1 of
the frequent AUs 0.405 vs 0.432 for C = 0.01), so the stronger and faster setting is the baseline.
Its thresholds come from the same inner group-k-fold out-of-fold procedure as HTNet's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from au_annotate.model import HTNet, HTNetEnsemble, PixelBlend
from au_annotate.training.folds import inner_folds as group_folds
from au_annotate.training.folds import select_thresholds

LOGREG_C = 0.01


def all_positive_scores(n: int, k: int) -> np.ndarray:
    """Every AU predicted present with score 1 (its F1 is 2p / (1 + p) for prevalence p; AUC 0.5)."""
    return np.ones((n, k), dtype=np.float32)


def _features(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float64) / 255.0


@dataclass
class LogRegModel:
    """Per-AU logistic regressions on standardised pixels (None for an AU without both classes: score = prevalence)."""

    scaler: StandardScaler
    models: list[LogisticRegression | float]
    thresholds: np.ndarray
    oof: np.ndarray | None = None  # inner out-of-fold probabilities the thresholds came from (N, K)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Probability per AU, float32 (N, K)."""
        x = self.scaler.transform(_features(images))
        out = np.empty((len(images), len(self.models)), np.float32)
        for j, m in enumerate(self.models):
            out[:, j] = m if isinstance(m, float) else m.predict_proba(x)[:, 1]
        return out


def _fit_raw(images: np.ndarray, labels: np.ndarray, seed: int) -> tuple[StandardScaler, list[LogisticRegression | float]]:
    x_raw = _features(images)
    scaler = StandardScaler().fit(x_raw)
    x = scaler.transform(x_raw)
    models: list[LogisticRegression | float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for j in range(labels.shape[1]):
            y = labels[:, j].astype(int)
            if y.min() == y.max():
                models.append(float(y.mean()))
                continue
            clf = LogisticRegression(C=LOGREG_C, class_weight="balanced", max_iter=500, random_state=seed)
            models.append(clf.fit(x, y))
    return scaler, models


def fit_logreg(
    images: np.ndarray, labels: np.ndarray, groups: np.ndarray, *, inner_folds: int = 3, seed: int = 0
) -> LogRegModel:
    """Per-AU logistic regression on all given samples; thresholds from inner group-k-fold OOF probabilities.

    BLAS is held to one thread: on a busy machine OpenBLAS threads spin-wait and made this ~9x slower."""
    with threadpool_limits(1):
        return _fit_logreg(images, labels, groups, inner_folds, seed)


def _fit_logreg(images: np.ndarray, labels: np.ndarray, groups: np.ndarray, inner_folds: int, seed: int) -> LogRegModel:
    oof = np.zeros(labels.shape, np.float32)
    for tr, te in group_folds(groups, inner_folds):
        scaler, models = _fit_raw(images[tr], labels[tr], seed)
        oof[te] = LogRegModel(scaler, models, np.zeros(labels.shape[1])).predict_proba(images[te])
    scaler, models = _fit_raw(images, labels, seed)
    return LogRegModel(scaler, models, select_thresholds(labels, oof), oof)


def blend_module(net: HTNet | HTNetEnsemble, lr: LogRegModel, weight: float) -> PixelBlend:
    """The network with this regression blended in (model.PixelBlend), its parameters copied from the fitted
    scikit-learn objects, so the checkpoint's model gives what `FittedHTNet.predict_proba` gives."""
    blend = PixelBlend(net, len(lr.models), weight)
    with torch.no_grad():
        blend.mean.copy_(torch.from_numpy(lr.scaler.mean_.astype(np.float32)))
        blend.scale.copy_(torch.from_numpy(lr.scaler.scale_.astype(np.float32)))
        for j, m in enumerate(lr.models):
            if isinstance(m, float):
                blend.const[j] = m
                blend.linear.weight[j].zero_()
                blend.linear.bias[j] = 0.0
            else:
                blend.linear.weight[j].copy_(torch.from_numpy(m.coef_[0].astype(np.float32)))
                blend.linear.bias[j] = float(m.intercept_[0])
    return blend

