"""Subject- and dataset-independent evaluation: LOSO over every subject, and LODO (leave one dataset out).

One run fits, per split, the HTNet recipe (AU outputs, plus the 3-class emotion outputs when the data has emotion
labels) and the two baselines on the same training samples, and scores the same held-out samples:

- ``loso``: leave-one-subject-out over every subject of the data; held-out predictions pooled, then per AU metrics on
  the samples that carry AU labels, and the emotion metrics on every sample.
- ``lodo``: train on one AU-coded dataset, test on the other (``samm->casme2`` and ``casme2->samm``); SMIC (emotion
  only) is left out of both directions.

Thresholds (HTNet and logistic regression) come from an inner group-k-fold over the training subjects of the split
(``au_annotate.training.folds``); epochs are fixed by the recipe. Nothing is selected on a held-out sample.
Per AU: positives (held-out), precision, recall, F1, UAR, ROC-AUC, and the baselines' F1 (all-positive, logistic
regression) and AUC (logistic regression). Emotion: UF1 (mean per-class F1) and UAR (mean per-class recall), argmax.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import LeaveOneGroupOut
from threadpoolctl import threadpool_limits

from au_annotate.training.baselines import fit_logreg
from au_annotate.training.data import AUDataset
from au_annotate.training.evaluate import CsvTable, EvaluationError, binary_metrics, write_metrics
from au_annotate.training.reliability import KAPPA_RULE
from au_annotate.training.train import Targets, TrainConfig, emotion_softmax, fit_htnet

LODO_PAIRS = (("samm", "casme2"), ("casme2", "samm"))
CSV_COLUMNS = ("au", "split", "positives", "precision", "recall", "f1", "uar", "auc", "kappa", "f1_allpos", "f1_lr",
               "auc_lr")
# the emotion's abstention (folds.emotion_bar, chosen per fold on its inner folds): the share of held-out samples above
# the fold's bar, how often those are right (precision) and the share of all that are right and above it (recall)
EMOTION_COLUMNS = ("split", "n", "uf1", "uar", "coverage", "precision_sure", "recall_sure", "bar_median")


def split_name(train: str, test: str) -> str:
    """``samm->casme2`` style name of a LODO direction."""
    return f"{train}->{test}"


def emotion_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """UF1 (unweighted mean F1 over classes) and UAR (mean per-class recall), MEGC2019's 3-class scores."""
    f1s, recalls = [], []
    for c in range(n_classes):
        tp = int(np.sum((y_true == c) & (y_pred == c)))
        fp = int(np.sum((y_true != c) & (y_pred == c)))
        fn = int(np.sum((y_true == c) & (y_pred != c)))
        f1s.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0)
        recalls.append(tp / (tp + fn) if tp + fn else 0.0)
    return {"n": int(len(y_true)), "uf1": float(np.mean(f1s)), "uar": float(np.mean(recalls))}


@dataclass
class SplitScores:
    """Held-out scores of one training/test split (indices into the dataset)."""

    test_idx: np.ndarray
    htnet: np.ndarray  # (n_test, K) AU probabilities
    htnet_pred: np.ndarray  # (n_test, K) 0/1
    emotion: np.ndarray | None  # (n_test, E) class probabilities
    logreg: np.ndarray
    logreg_pred: np.ndarray
    seconds: float
    emotion_bar: float = 0.0  # this fold's bar (chosen on its inner folds)


def _targets(ds: AUDataset, idx: np.ndarray) -> Targets:
    if ds.emotions is None:
        return Targets(au_mask=ds.au_mask[idx])
    return Targets(au_mask=ds.au_mask[idx], emotions=ds.emotions[idx], n_emotions=len(ds.emotion_classes))


def run_split(ds: AUDataset, train_idx: np.ndarray, test_idx: np.ndarray, cfg: TrainConfig,
              with_logreg: bool = True) -> SplitScores:
    """Fit HTNet (and logistic regression on the AU-coded training rows) on train_idx; score test_idx."""
    t0 = time.perf_counter()
    k = len(ds.au_names)
    tr_x, tr_y, tr_g = ds.images[train_idx], ds.labels[train_idx], ds.subjects[train_idx]
    fitted = fit_htnet(tr_x, tr_y, tr_g, cfg, targets=_targets(ds, train_idx), encoding=ds.encoding)
    probs = fitted.predict_proba(ds.images[test_idx])
    emo = emotion_softmax(probs[:, k:]) if probs.shape[1] > k else None
    au = probs[:, :k]
    pred = (au >= fitted.thresholds[None, :]).astype(np.int8)
    lr = np.zeros_like(au)
    lr_pred = np.zeros_like(pred)
    coded = train_idx[ds.au_mask[train_idx]]
    if with_logreg and len(np.unique(ds.subjects[coded])) >= 2:
        model = fit_logreg(ds.images[coded], ds.labels[coded], ds.subjects[coded], inner_folds=cfg.inner_folds,
                           seed=cfg.seed)
        lr = model.predict_proba(ds.images[test_idx])
        lr_pred = (lr >= model.thresholds[None, :]).astype(np.int8)
    return SplitScores(np.asarray(test_idx), au, pred, emo, lr, lr_pred, time.perf_counter() - t0, fitted.emotion_bar)


def _worker(args: tuple) -> tuple[str, SplitScores]:
    """Process-pool entry (BLAS on one thread per worker)."""
    key, ds, tr, te, cfg = args
    with threadpool_limits(1):
        return key, run_split(ds, tr, te, cfg)


def make_splits(ds: AUDataset, protocol: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(split name, train idx, test idx): LOSO folds (all named ``loso``) or the two LODO directions."""
    idx = np.arange(len(ds))
    if protocol == "loso":
        if len(np.unique(ds.subjects)) < 3:
            raise EvaluationError(f"LOSO needs at least 3 subjects, the data has {len(np.unique(ds.subjects))}")
        return [("loso", tr, te) for tr, te in LeaveOneGroupOut().split(idx, groups=ds.subjects)]
    if protocol == "lodo":
        src = ds.source_names
        out = []
        for a, b in LODO_PAIRS:
            tr, te = idx[src == a], idx[src == b]
            if len(tr) and len(te):
                out.append((split_name(a, b), tr, te))
        if not out:
            raise EvaluationError(f"LODO needs both samm and casme2 samples, the data has {sorted(set(src))}")
        return out
    raise EvaluationError(f"unknown protocol {protocol!r} (known: loso, lodo)")


@dataclass
class SplitReport:
    """Per (split, AU) metrics of HTNet with both baselines, and per split the emotion metrics."""

    protocol: str
    au_names: tuple[str, ...]
    recipe: dict[str, Any]
    data: dict[str, Any]
    rows: list[dict[str, Any]]  # CSV_COLUMNS
    emotion_rows: list[dict[str, Any]]
    train_positives: dict[str, int]
    encoding: str
    seconds: float
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (what `train --eval-report` reads)."""
        return {"protocol": self.protocol, "au_names": list(self.au_names), "recipe": self.recipe, "data": self.data,
                "rows": self.rows, "emotion_rows": self.emotion_rows, "train_positives": self.train_positives,
                "encoding": self.encoding, "seconds": round(self.seconds, 1), "rule": KAPPA_RULE.describe()}

    def write(self, out_dir: str | Path) -> list[Path]:
        """metrics.csv, metrics.json, predictions.csv, emotion_metrics.csv (when the data has emotions)."""
        cols = list(self.predictions[0]) if self.predictions else []
        files: dict[str, CsvTable | dict[str, Any]] = {
            "metrics.csv": CsvTable(CSV_COLUMNS, [[r[c] for c in CSV_COLUMNS] for r in self.rows]),
            "metrics.json": self.to_json(),
            "predictions.csv": CsvTable(cols, [[p[c] for c in cols] for p in self.predictions]),
        }
        if self.emotion_rows:
            files["emotion_metrics.csv"] = CsvTable(EMOTION_COLUMNS,
                                                    [[r[c] for c in EMOTION_COLUMNS] for r in self.emotion_rows])
        return write_metrics(out_dir, files)


def _au_rows(ds: AUDataset, split: str, idx: np.ndarray, s: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per-AU rows of one pooled split over the AU-coded held-out samples idx (arrays aligned with idx)."""
    rows = []
    y = ds.labels[idx]
    for j, au in enumerate(ds.au_names):
        h = binary_metrics(y[:, j], s["pred"][:, j], s["score"][:, j])
        lr = binary_metrics(y[:, j], s["lr_pred"][:, j], s["lr"][:, j])
        ap = binary_metrics(y[:, j], np.ones(len(idx)), None)
        rows.append({"au": au, "split": split, "positives": h.pop("support"), **h, "f1_allpos": ap["f1"],
                     "f1_lr": lr["f1"], "auc_lr": lr["auc"]})
    return rows


def evaluate_splits(ds: AUDataset, cfg: TrainConfig, protocol: str, jobs: int = 1,
                    progress: Callable[[int, int], None] | None = None) -> SplitReport:
    """Run every split of the protocol (folds in `jobs` processes: identical results), pool LOSO, write-ready report."""
    t0 = time.perf_counter()
    splits = make_splits(ds, protocol)
    args = [(f"{name}#{i}", ds, tr, te, cfg) for i, (name, tr, te) in enumerate(splits)]
    results: dict[str, SplitScores] = {}
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(args), os.cpu_count() or 1)) as pool:
            for fut in as_completed([pool.submit(_worker, a) for a in args]):
                key, res = fut.result()
                results[key] = res
                if progress is not None:
                    progress(len(results), len(args))
    else:
        for a in args:
            key, res = _worker(a)
            results[key] = res
            if progress is not None:
                progress(len(results), len(args))
    by_split: dict[str, list[SplitScores]] = {}
    for key in sorted(results, key=lambda s: int(s.split("#")[1])):
        by_split.setdefault(key.split("#")[0], []).append(results[key])
    rows: list[dict[str, Any]] = []
    emotion_rows: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    for split, parts in by_split.items():
        idx = np.concatenate([p.test_idx for p in parts])
        if len(np.unique(idx)) != len(idx):
            raise AssertionError("a sample was held out twice in one split")
        cat = {name: np.concatenate([getattr(p, attr) for p in parts]) for name, attr in
               (("score", "htnet"), ("pred", "htnet_pred"), ("lr", "logreg"), ("lr_pred", "logreg_pred"))}
        coded = ds.au_mask[idx]
        if coded.any():
            rows += _au_rows(ds, split, idx[coded], {k: v[coded] for k, v in cat.items()})
        emo = [p.emotion for p in parts]
        if ds.emotions is not None and all(e is not None for e in emo):
            probs = np.concatenate(emo)
            known = ds.emotions[idx] >= 0
            pred = probs.argmax(1)
            bars = np.concatenate([np.full(len(p.test_idx), p.emotion_bar) for p in parts])
            sure = (probs.max(1) >= bars)[known]
            right = (pred[known] == ds.emotions[idx][known])
            emotion_rows.append({"split": split, **emotion_metrics(ds.emotions[idx][known], pred[known],
                                                                   len(ds.emotion_classes)),
                                 "coverage": float(sure.mean()) if len(sure) else math.nan,
                                 "precision_sure": float(right[sure].mean()) if sure.any() else math.nan,
                                 "recall_sure": float((right & sure).mean()) if len(sure) else math.nan,
                                 "bar_median": float(np.median([p.emotion_bar for p in parts]))})
        for n, i in enumerate(idx):
            row: dict[str, Any] = {"split": split, "sample": ds.names[i], "subject": str(ds.subjects[i]),
                                   "dataset": str(ds.source_names[i])}
            for j, au in enumerate(ds.au_names):
                row[f"label_{au}"] = int(ds.labels[i, j]) if ds.au_mask[i] else ""
                row[f"htnet_{au}"] = float(cat["score"][n, j])
            if ds.emotions is not None and all(e is not None for e in emo):
                row["emotion_label"] = ds.emotion_classes[ds.emotions[i]] if ds.emotions[i] >= 0 else ""
                row["emotion_pred"] = ds.emotion_classes[int(pred[n])]
            predictions.append(row)
    coded_all = ds.au_mask
    positives = {au: int(v) for au, v in zip(ds.au_names, ds.labels[coded_all].sum(0), strict=True)}
    return SplitReport(protocol=protocol, au_names=ds.au_names, recipe=cfg.to_dict(), data=dict(ds.identity),
                       rows=rows, emotion_rows=emotion_rows, train_positives=positives, encoding=ds.encoding,
                       seconds=time.perf_counter() - t0, predictions=predictions)


def merge_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several metrics.json (e.g. a LOSO and a LODO run of one recipe on one data) as one: rows and emotion rows joined.

    They must share the recipe, the data and the AU names (EvaluationError otherwise)."""
    if not reports:
        raise EvaluationError("no evaluation report given")
    first = reports[0]
    for r in reports[1:]:
        for key in ("recipe", "au_names"):
            if r.get(key) != first.get(key):
                raise EvaluationError(f"the evaluation reports differ in {key}")
        if r.get("data", {}).get("files_sha256") != first.get("data", {}).get("files_sha256"):
            raise EvaluationError("the evaluation reports were made on different data")
    merged = dict(first)
    merged["protocol"] = "+".join(str(r.get("protocol")) for r in reports)
    merged["rows"] = [row for r in reports for row in r.get("rows", [])]
    merged["emotion_rows"] = [row for r in reports for row in r.get("emotion_rows", [])]
    return merged
