"""Per-study settings fitted to a review: the spotting cut-off that reaches a target precision, and per-AU thresholds.

Spotting: per window kind, over the tool's windows the coder reviewed (confirmed / corrected = real, rejected = not),
the LOWEST score cut-off whose precision (real among windows with score >= cut) reaches the target; its recall counts
the coder-added windows of that kind as missed. When all reviewed windows together already reach it, no cut-off is
written for that kind (the review gives no reason to drop any window). The value written sits halfway between the lowest kept score and the
next lower reviewed score, so rounding of the scores in the CSV never moves a window across it. A kind whose target is
out of reach (even the highest cut falls short) is left without a cut and named.

AUs: per AU the tool reports, over real tool windows with a parsed coder code, the threshold on the tool's probability
that maximises F1 against the coder (training.folds.best_f1_threshold), only for AUs with at least MIN_EACH coder
positives and negatives; the F1 before (the checkpoint's decision) and after is given, measured on the same review
(in-sample: expect less on new videos).

The result is a TOML file: `[annotate]` holds `min_score` and `au_thresholds` (what `annotate --config` reads), and
`[calibration]` where they came from (the review table's sha256, windows, coders, target, date).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from au_annotate.review.agreement import REAL, _au_frame, au_columns, f1_counts
from au_annotate.review.importer import coder_au_sets
from au_annotate.writers.review_schema import ADDED, REJECTED

MIN_EACH = 2  # coder positives and negatives an AU needs before its threshold is fitted


class CalibrationError(ValueError):
    """Nothing can be calibrated from this review (the message says why)."""


@dataclass
class SpotCut:
    """The spotting cut-off of one kind and what it gives on the review."""

    kind: str
    cut: float | None  # None: no cut-off needed (every reviewed window kept) or the target is out of reach
    precision: float
    recall: float
    kept: int
    reviewed: int
    real: int
    added: int
    best_precision: float
    reached: bool = True  # False: even the highest cut-off falls short of the target


@dataclass
class AUCut:
    """The fitted threshold of one AU (None when the review has too few examples) and F1 before / after."""

    au: str
    threshold: float | None
    positives: int
    negatives: int
    f1_before: float
    f1_after: float


@dataclass
class Calibration:
    """Everything calibrate found, ready to be written as a study TOML."""

    target_precision: float
    spotting: list[SpotCut] = field(default_factory=list)
    aus: list[AUCut] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def min_score(self) -> dict[str, float]:
        """The per-kind cut-offs that were reached."""
        return {c.kind: c.cut for c in self.spotting if c.cut is not None}

    @property
    def au_thresholds(self) -> dict[str, float]:
        """The fitted AU thresholds."""
        return {a.au: a.threshold for a in self.aus if a.threshold is not None}


def spotting_cut(df: pd.DataFrame, kind: str, target: float) -> SpotCut:
    """The lowest score cut-off of `kind` whose precision on the reviewed windows reaches `target`."""
    d = df[df["kind"] == kind]
    tool = d[(d["window"] >= 0) & d["decision"].isin((*REAL, REJECTED))]
    scores = tool["score"].to_numpy(float)
    real = tool["decision"].isin(REAL).to_numpy()
    added = int((d["decision"] == ADDED).sum())
    total = int(real.sum()) + added
    cuts = np.unique(scores)
    best = 0.0
    for i, c in enumerate(cuts):  # ascending: the first cut that reaches the target keeps the most windows
        keep = scores >= c
        p = float(real[keep].mean())
        best = max(best, p)
        if p >= target:  # i == 0: every reviewed window is kept, the review gives no reason for a cut-off
            value = (float(c) + float(cuts[i - 1])) / 2 if i > 0 else None
            return SpotCut(kind, value, p, int(real[keep].sum()) / total if total else float("nan"), int(keep.sum()),
                           len(tool), int(real.sum()), added, best)
    return SpotCut(kind, None, float("nan"), float("nan"), 0, len(tool), int(real.sum()), added, best, False)


def au_cut(df: pd.DataFrame, au: str) -> AUCut:
    """The best-F1 threshold of one AU against the coder, with F1 of the checkpoint's decision for comparison."""
    from au_annotate.training.folds import best_f1_threshold

    d = _au_frame(df)
    num = int(au[2:])
    y = np.array([num in s for s in coder_au_sets(d["coder_aus"])], bool)
    p = d[f"{au}_p"].to_numpy(float)
    before = f1_counts(d[f"{au}_c"].to_numpy(float) > 0.5, y)["f1"]
    pos, neg = int(y.sum()), int((~y).sum())
    if pos < MIN_EACH or neg < MIN_EACH:
        return AUCut(au, None, pos, neg, before, float("nan"))
    thr = float(np.clip(best_f1_threshold(y, p), 0.0, 1.0))
    thr = round(thr, 6)
    return AUCut(au, thr, pos, neg, before, f1_counts(p >= thr, y)["f1"])


def calibrate(df: pd.DataFrame, target_precision: float) -> Calibration:
    """Spotting cut-offs per kind and per-AU thresholds fitted to a review table; CalibrationError when none fits."""
    if not 0.0 < target_precision <= 1.0:
        raise CalibrationError(f"the target precision must be in (0, 1], got {target_precision}")
    cal = Calibration(target_precision)
    reviewed = df[(df["window"] >= 0) & df["decision"].isin((*REAL, REJECTED))] if len(df) else df
    if not len(reviewed):
        raise CalibrationError("no tool window has been reviewed (confirmed, corrected or rejected): nothing to fit")
    for kind in sorted(set(reviewed["kind"])):
        cut = spotting_cut(df, kind, target_precision)
        cal.spotting.append(cut)
        if cut.cut is None and cut.reached:
            cal.notes.append(f"{kind}: precision {cut.precision:.3f} with every reviewed window kept: no cut-off needed")
        elif cut.cut is None:
            cal.notes.append(f"{kind}: precision {target_precision:g} is out of reach on this review (best "
                             f"{cut.best_precision:.3f}): no cut-off for {kind} windows")
    for au in au_columns(df):
        a = au_cut(df, au)
        cal.aus.append(a)
        if a.threshold is None:
            cal.notes.append(f"{au}: {a.positives} coder positives and {a.negatives} negatives (need {MIN_EACH} of "
                             "each): the checkpoint's threshold stays")
    return cal


def _toml_value(v: Any) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else '"nan"'
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return str(v)


def _present(v: Any) -> bool:
    """A value worth writing (not None, not NaN)."""
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def study_toml(cal: Calibration, provenance: dict[str, Any]) -> str:
    """The study settings file: `[annotate]` for `annotate --config`, `[calibration]` for where they came from."""
    lines = [
        "# au-annotate study settings, fitted by `au-annotate calibrate` to a coder review.",
        "# Use: au-annotate annotate VIDEOS -o OUT --config THIS_FILE",
        "# min_score: windows scoring below it are not reported (per kind); au_thresholds replace the checkpoint's.",
        "# The numbers fit THIS review and model (in-sample); re-calibrate after a new review or other weights.",
        "",
        "[annotate]",
    ]
    if cal.min_score:
        lines.append(f"min_score = {_toml_value(cal.min_score)}")
    if cal.au_thresholds:
        lines.append(f"au_thresholds = {_toml_value(cal.au_thresholds)}")
    lines += ["", "[calibration]"]
    for k, v in provenance.items():
        lines.append(f"{k} = {_toml_value(v)}")
    lines.append(f"target_precision = {_toml_value(cal.target_precision)}")
    for c in cal.spotting:
        lines += ["", "[[calibration.spotting]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in c.__dict__.items() if _present(v)]
    for a in cal.aus:
        lines += ["", "[[calibration.aus]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in a.__dict__.items() if _present(v)]
    if cal.notes:
        lines += ["", "# notes:"] + [f"#   {n}" for n in cal.notes]
    return "\n".join(lines) + "\n"


def write_study(cal: Calibration, provenance: dict[str, Any], path: str | Path) -> Path:
    """Write the study TOML atomically."""
    from au_annotate.fileio import atomic_open

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(p, "w", encoding="utf-8") as fh:
        fh.write(study_toml(cal, provenance))
    return p
