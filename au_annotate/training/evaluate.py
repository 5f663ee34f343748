"""Subject-independent evaluation: LOSO or group-k-fold, HTNet and two baselines on the same folds, per-AU metrics.

Predictions of every held-out fold are pooled, then per AU: support (positives), precision, recall, F1, UAR (mean of
the true-positive and true-negative rates) and ROC-AUC (NaN when the pooled labels hold one class only). Macro averages
are over all AUs and over the frequent AUs (support >= ``FREQUENT``). Thresholds for HTNet and logistic regression come
from the training folds only (see ``au_annotate.training.folds``); the held-out subject is never looked at before its
predictions are made. The reliable AUs of a report come from ``au_annotate.training.reliability``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, LeaveOneGroupOut
from threadpoolctl import threadpool_limits

from au_annotate.fileio import atomic_open
from au_annotate.training.baselines import all_positive_scores, fit_logreg
from au_annotate.training.data import AUDataset
from au_annotate.training.reliability import FREQUENT, RELIABILITY, reliable_aus
from au_annotate.training.train import TrainConfig, fit_htnet

METHODS = ("htnet", "all_positive", "logreg")
METRICS = ("support", "precision", "recall", "f1", "uar", "auc", "kappa")
TARGET_AUS = ("AU02", "AU04", "AU07", "AU12", "AU14")
PROTOCOLS = ("loso", "group-kfold")


class EvaluationError(ValueError):
    """The evaluation cannot run as asked (too few subjects, unknown protocol)."""


# ------------------------------------------------------------------------------------------------------------ metrics


def binary_metrics(y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None = None) -> dict[str, float]:
    """support, precision, recall, F1, UAR, ROC-AUC and Cohen's kappa for one AU (0/1 arrays; AUC from scores)."""
    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    fn = int(np.sum(t & ~p))
    tn = int(np.sum(~t & ~p))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0
    tnr = tn / (tn + fp) if tn + fp else 0.0
    uar = (recall + tnr) / 2 if (tp + fn) and (tn + fp) else (recall if tp + fn else tnr)
    auc = math.nan
    if y_score is not None and t.any() and (~t).any():
        auc = float(roc_auc_score(t, np.asarray(y_score, dtype=np.float64)))
    return {"support": tp + fn, "precision": precision, "recall": recall, "f1": f1, "uar": uar, "auc": auc,
            "kappa": cohen_kappa(tp, fp, fn, tn)}


def cohen_kappa(tp: int, fp: int, fn: int, tn: int) -> float:
    """Cohen's kappa of a 2x2 table (agreement beyond chance; FACS reliability's measure): (po - pe) / (1 - pe); 0
    when chance agreement is total (one class only in both), NaN for an empty table."""
    n = tp + fp + fn + tn
    if n == 0:
        return math.nan
    po = (tp + tn) / n
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    return 0.0 if pe >= 1.0 else (po - pe) / (1.0 - pe)


def per_au_metrics(
    labels: np.ndarray, preds: np.ndarray, scores: np.ndarray, au_names: Sequence[str]
) -> list[dict[str, Any]]:
    """One metrics row per AU (column)."""
    return [{"au": au, **binary_metrics(labels[:, j], preds[:, j], scores[:, j])} for j, au in enumerate(au_names)]


def macro(rows: Sequence[dict[str, Any]], min_support: int = 1) -> dict[str, float]:
    """Unweighted mean of each metric over AUs with support >= min_support (NaN AUCs skipped)."""
    use = [r for r in rows if r["support"] >= min_support]
    out: dict[str, float] = {"n_aus": len(use)}
    for m in METRICS[1:]:
        vals = [r[m] for r in use if not (isinstance(r[m], float) and math.isnan(r[m]))]
        out[m] = float(np.mean(vals)) if vals else math.nan
    return out


# -------------------------------------------------------------------------------------------------------------- folds


def make_folds(subjects: np.ndarray, protocol: str, folds: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_idx, test_idx) splits by subject: leave-one-subject-out, or group-k-fold with `folds` folds."""
    groups = np.asarray(subjects)
    n_groups = len(np.unique(groups))
    if protocol == "loso":
        if n_groups < 3:
            raise EvaluationError(f"LOSO needs at least 3 subjects, the data has {n_groups}")
        splitter: Any = LeaveOneGroupOut()
    elif protocol == "group-kfold":
        if not 2 <= folds <= n_groups:
            raise EvaluationError(f"group-kfold needs 2..{n_groups} folds for {n_groups} subjects, got {folds}")
        splitter = GroupKFold(n_splits=folds)
    else:
        raise EvaluationError(f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
    return [(tr, te) for tr, te in splitter.split(np.zeros(len(groups)), groups=groups)]


# --------------------------------------------------------------------------------------------------------- one fold


@dataclass
class FoldResult:
    """Held-out scores and decisions of every method for one fold."""

    index: int
    test_idx: np.ndarray
    scores: dict[str, np.ndarray]
    preds: dict[str, np.ndarray]
    thresholds: dict[str, np.ndarray]
    seconds: float


def run_fold(
    index: int, images: np.ndarray, labels: np.ndarray, subjects: np.ndarray, train_idx: np.ndarray,
    test_idx: np.ndarray, cfg: TrainConfig, progress: Callable[[int, int], None] | None = None,
) -> FoldResult:
    """Fit every method on train_idx (thresholds from inner folds of train_idx only), score test_idx."""
    t0 = time.perf_counter()
    tr_x, tr_y, tr_g = images[train_idx], labels[train_idx], subjects[train_idx]
    te_x = images[test_idx]
    fitted = fit_htnet(tr_x, tr_y, tr_g, cfg, progress)
    scores = {"htnet": fitted.predict_proba(te_x)}
    thresholds = {"htnet": fitted.thresholds}
    lr = fit_logreg(tr_x, tr_y, tr_g, inner_folds=cfg.inner_folds, seed=cfg.seed)
    scores["logreg"] = lr.predict_proba(te_x)
    thresholds["logreg"] = lr.thresholds
    scores["all_positive"] = all_positive_scores(len(test_idx), labels.shape[1])
    thresholds["all_positive"] = np.zeros(labels.shape[1], np.float32)
    preds = {m: (scores[m] >= thresholds[m][None, :]).astype(np.int8) for m in scores}
    return FoldResult(index, np.asarray(test_idx), scores, preds, thresholds, time.perf_counter() - t0)


def _run_fold_worker(args: tuple) -> FoldResult:
    """Process-pool entry point (top level so it pickles); BLAS on one thread per worker."""
    with threadpool_limits(1):
        return run_fold(*args)


# ------------------------------------------------------------------------------------------------------------ report


@dataclass
class EvalReport:
    """Pooled held-out results of one evaluation run."""

    protocol: str
    n_folds: int
    au_names: tuple[str, ...]
    recipe: dict[str, Any]
    data: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]]  # method -> per-AU rows
    macros: dict[str, dict[str, dict[str, float]]]  # method -> {"all": .., "frequent": ..}
    reliable: list[str]
    targets: dict[str, dict[str, Any]]
    seconds: float
    sample_names: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (no per-sample arrays)."""
        return {
            "protocol": self.protocol, "n_folds": self.n_folds, "au_names": list(self.au_names),
            "recipe": self.recipe, "data": self.data, "tables": self.tables, "macro": self.macros,
            "reliable": self.reliable, "targets": self.targets, "seconds": round(self.seconds, 1),
            "frequent_min_support": FREQUENT, "reliable_rule": RELIABILITY.describe(),
        }

    def write(self, out_dir: str | Path) -> list[Path]:
        """metrics.csv (long: method, au, metrics), metrics.json, predictions.csv (held-out probabilities)."""
        metrics: list[list[Any]] = []
        for method, rows in self.tables.items():
            metrics += [[method, r["au"], *(r[m] for m in METRICS)] for r in rows]
            metrics += [[method, f"macro_{kind}", m["n_aus"], *(m[k] for k in METRICS[1:])]
                        for kind, m in self.macros[method].items()]
        cols = [f"{m}_{au}" for m in ("label", *self.scores) for au in self.au_names]
        predictions: list[list[Any]] = []
        for i, name in enumerate(self.sample_names):
            vals = [str(int(v)) for v in self.labels[i]] if self.labels is not None else []
            for m in self.scores:
                vals += [f"{v:.6f}" for v in self.scores[m][i]]
            predictions.append([name, self.subjects[i], *vals])
        return write_metrics(out_dir, {"metrics.csv": CsvTable(("method", "au", *METRICS), metrics),
                                       "metrics.json": self.to_json(),
                                       "predictions.csv": CsvTable(("sample", "subject", *cols), predictions)})


@dataclass(frozen=True)
class CsvTable:
    """One CSV file of a metrics report: its header (none written when empty) and its rows of values."""

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]


def write_metrics(out_dir: str | Path, files: Mapping[str, CsvTable | Mapping[str, Any]]) -> list[Path]:
    """The one writer of evaluation reports (``evaluate`` and ``crossdata``): each named file atomically, in order; a
    CsvTable as CSV (floats to 4 decimals, NaN empty), a dict as indented JSON (NaN -> null). Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in files.items():
        path = out / name
        with atomic_open(path) as fh:
            if isinstance(content, CsvTable):
                if content.columns:
                    fh.write(",".join(content.columns) + "\n")
                for row in content.rows:
                    fh.write(",".join(_fmt(v) for v in row) + "\n")
            else:
                json.dump(_json_safe(content), fh, indent=2)
                fh.write("\n")
        paths.append(path)
    return paths


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _json_safe(obj: Any) -> Any:
    """NaN -> None so the JSON is standard."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def target_check(tables: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The issue's targets per target AU: F1 >= 2x all-positive, F1 > logistic regression, F1 >= 0.5 (AU04/07/12)."""
    by = {m: {r["au"]: r for r in rows} for m, rows in tables.items()}
    out = {}
    for au in TARGET_AUS:
        if au not in by["htnet"]:
            continue
        f1 = by["htnet"][au]["f1"]
        res = {
            "f1": f1, "all_positive_f1": by["all_positive"][au]["f1"], "logreg_f1": by["logreg"][au]["f1"],
            "twice_all_positive": f1 >= 2 * by["all_positive"][au]["f1"], "above_logreg": f1 > by["logreg"][au]["f1"],
        }
        if au in ("AU04", "AU07", "AU12"):
            res["f1_at_least_0.5"] = f1 >= 0.5
        res["met"] = all(v for k, v in res.items() if isinstance(v, bool))
        out[au] = res
    return out


def evaluate(
    dataset: AUDataset, cfg: TrainConfig, protocol: str = "loso", folds: int = 5, jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Cross-validate HTNet and both baselines on the same subject folds; pooled per-AU metrics.

    progress(done_folds, total_folds) is called as folds finish. jobs > 1 runs folds in worker processes (results are
    identical: every fold is seeded and trains single-threaded)."""
    t0 = time.perf_counter()
    splits = make_folds(dataset.subjects, protocol, folds)
    n, k = dataset.labels.shape
    scores = {m: np.zeros((n, k), np.float32) for m in METHODS}
    preds = {m: np.zeros((n, k), np.int8) for m in METHODS}
    seen = np.zeros(n, bool)
    args = [
        (i, dataset.images, dataset.labels, dataset.subjects, tr, te, cfg) for i, (tr, te) in enumerate(splits)
    ]
    results: list[FoldResult] = []
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(args), os.cpu_count() or 1)) as pool:
            futures = [pool.submit(_run_fold_worker, a) for a in args]
            for fut in as_completed(futures):
                results.append(fut.result())
                if progress is not None:
                    progress(len(results), len(args))
    else:
        for a in args:
            results.append(run_fold(*a))
            if progress is not None:
                progress(len(results), len(args))
    for r in results:
        if seen[r.test_idx].any():
            raise AssertionError("a sample was held out twice")  # folds must partition the data
        seen[r.test_idx] = True
        for m in METHODS:
            scores[m][r.test_idx] = r.scores[m]
            preds[m][r.test_idx] = r.preds[m]
    tables = {m: per_au_metrics(dataset.labels, preds[m], scores[m], dataset.au_names) for m in METHODS}
    macros = {m: {"all": macro(tables[m]), "frequent": macro(tables[m], FREQUENT)} for m in METHODS}
    return EvalReport(
        protocol=protocol if protocol == "loso" else f"group-kfold-{folds}",
        n_folds=len(splits), au_names=dataset.au_names, recipe=cfg.to_dict(), data=dict(dataset.identity),
        tables=tables, macros=macros, reliable=reliable_aus(tables), targets=target_check(tables),
        seconds=time.perf_counter() - t0, sample_names=dataset.names, subjects=tuple(str(s) for s in dataset.subjects),
        scores=scores, labels=dataset.labels,
    )
