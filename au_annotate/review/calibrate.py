"""Per-study settings fitted to a review: the spotting cut-off that reaches a target precision, and per-AU thresholds.

Spotting: per window kind, over the tool's windows the coder reviewed (confirmed / corrected = real, rejected = not),
the LOWEST score cut-off whose precision (real among windows with score >= cut) reaches the target; its recall counts
the coder-added windows of that kind as missed. When all reviewed windows together already reach it, no cut-off is
written for that kind (the review gives no reason to drop any window). The value written sits halfway between the
lowest kept score and the next lower reviewed score, so rounding of the scores in the CSV never moves a window across
it. A kind whose target is out of reach (even the highest cut falls short) is left without a cut and named.

Minimums (fixed in code before any calibration result was looked at): a kind is fitted only with at least MIN_REVIEWED (20) reviewed
tool windows, at least MIN_REAL (5) of them real; an AU threshold only with at least MIN_EACH (5) coder positives and
5 negatives. Why: the search picks the best of many cut-offs on the very windows it then reports on, so on a handful
of windows it "reaches" any target by construction (4 windows gave precision 1.000, recall 1.000). Over 20 windows
one window moves the precision by 0.05, and with 5 real ones the recall by 0.2 at most; with 5 positives and 5
negatives of an AU a perfect in-sample F1 from a probability that carries no information has a chance of 1 in 252
(C(10, 5)), with 2 and 2 one in 6. These are floors against figures that mean nothing, not guarantees: the figures
stay in-sample. Every figure is given with the windows it rests on (SpotCut.summary, AUCut.summary, in the printout
and in the study file). When no kind and no AU reaches its minimum, calibrate raises CalibrationError and nothing is
written.

AUs: per AU the tool reports, over real tool windows with a parsed coder code, the threshold on the tool's probability
that maximises F1 against the coder (training.folds.best_f1_threshold); the F1 before (the checkpoint's decision) and
after is given, measured on the same review (in-sample: expect less on new videos).

The result is a TOML file: `[annotate]` holds `min_score` and `au_thresholds` (what `annotate --config` reads), and
`[calibration]` where they came from (the review table's sha256, windows, coders, target, date) and every figure with
its window counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from au_annotate.review.agreement import REAL, _au_frame, au_columns, coder_only_aus, f1_counts
from au_annotate.review.importer import coder_au_sets
from au_annotate.writers.review_schema import ADDED, REJECTED, UNREVIEWED

# minimums before anything is fitted (module docstring: why these values)
MIN_REVIEWED = 20  # reviewed tool windows (confirmed + corrected + rejected) a window kind needs for a cut-off
MIN_REAL = 5  # of them real (confirmed + corrected)
MIN_EACH = 5  # coder positives and negatives an AU needs before its threshold is fitted

CUT, NO_CUT_NEEDED, OUT_OF_REACH, TOO_FEW = "cut", "no_cut_needed", "out_of_reach", "too_few"  # SpotCut.status


class CalibrationError(ValueError):
    """Nothing can be calibrated from this review (the message says why)."""


@dataclass
class SpotCut:
    """The spotting cut-off of one kind, what it gives on the review and the windows each figure rests on.

    precision = kept_real / kept (the windows scoring >= cut, or all reviewed ones without a cut); recall =
    kept_real / (real + added)."""

    kind: str
    cut: float | None  # None: no cut-off needed, the target out of reach, or too few windows (status says which)
    precision: float
    recall: float
    kept: int
    reviewed: int
    real: int
    added: int
    best_precision: float
    reached: bool = True  # False: the target was not reached (out of reach, or too few windows to tell)
    status: str = CUT  # cut | no_cut_needed | out_of_reach | too_few
    kept_real: int = 0
    rejected: int = 0
    unreviewed: int = 0

    def summary(self, target: float) -> str:
        """One line: the figure(s) and how many windows each rests on."""
        counts = (f"{self.reviewed} reviewed windows ({self.real} real, {self.rejected} rejected), {self.unreviewed} "
                  f"unreviewed, {self.added} coder-added")
        if self.status == TOO_FEW:
            return (f"{self.kind}: too few windows to fit a cut-off: {counts}; need at least {MIN_REVIEWED} reviewed, "
                    f"{MIN_REAL} of them real (confirmed or corrected): no cut-off")
        if self.status == OUT_OF_REACH:
            return (f"{self.kind}: precision {target:g} is out of reach (best {self.best_precision:.3f}) on {counts}: "
                    "no cut-off")
        recall = (f"recall {self.recall:.3f} ({self.kept_real} of {self.real + self.added} real windows, "
                  f"{self.added} of them coder-added)" if self.real + self.added else "recall -")
        head = (f"min_score {self.cut:.6g}" if self.status == CUT else "no cut-off needed")
        return (f"{self.kind}: {head} -> precision {self.precision:.3f} ({self.kept_real} real of {self.kept} kept "
                f"windows), {recall}; from {counts}")


@dataclass
class AUCut:
    """The fitted threshold of one AU (None when the review has too few examples) and F1 before / after."""

    au: str
    threshold: float | None
    positives: int
    negatives: int
    f1_before: float
    f1_after: float

    @property
    def windows(self) -> int:
        """The windows the F1 figures rest on (real tool windows with a parsed coder code)."""
        return self.positives + self.negatives

    def summary(self) -> str:
        """One line: the threshold and F1 with the windows they rest on, or why there is none."""
        counts = f"{self.positives} coder positives, {self.negatives} negatives"
        before = "-" if math.isnan(self.f1_before) else f"{self.f1_before:.3f}"
        if self.threshold is None:
            return (f"{self.au}: {counts} (need {MIN_EACH} of each): no threshold fitted, the checkpoint's stays "
                    f"(its F1 on these {self.windows} windows: {before})")
        return (f"{self.au}: threshold {self.threshold:.3f} -> F1 {self.f1_after:.3f} on {self.windows} windows "
                f"({counts}; in-sample), checkpoint's decision F1 {before}")


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
    """The lowest score cut-off of `kind` whose precision on the reviewed windows reaches `target` (status TOO_FEW,
    nothing fitted, below MIN_REVIEWED reviewed / MIN_REAL real windows)."""
    d = df[df["kind"] == kind]
    tool = d[(d["window"] >= 0) & d["decision"].isin((*REAL, REJECTED))]
    scores = tool["score"].to_numpy(float)
    real = tool["decision"].isin(REAL).to_numpy()
    added = int((d["decision"] == ADDED).sum())
    n_real = int(real.sum())
    total = n_real + added
    counts = {"rejected": int((~real).sum()),
              "unreviewed": int(((d["window"] >= 0) & (d["decision"] == UNREVIEWED)).sum())}
    nan = float("nan")
    if len(tool) < MIN_REVIEWED or n_real < MIN_REAL:
        return SpotCut(kind, None, nan, nan, 0, len(tool), n_real, added, nan, False, TOO_FEW, **counts)
    cuts = np.unique(scores)
    best = 0.0
    for i, c in enumerate(cuts):  # ascending: the first cut that reaches the target keeps the most windows
        keep = scores >= c
        p = float(real[keep].mean())
        best = max(best, p)
        if p >= target:  # i == 0: every reviewed window is kept, the review gives no reason for a cut-off
            value = (float(c) + float(cuts[i - 1])) / 2 if i > 0 else None
            kept_real = int(real[keep].sum())
            return SpotCut(kind, value, p, kept_real / total if total else nan, int(keep.sum()), len(tool), n_real,
                           added, best, True, CUT if i > 0 else NO_CUT_NEEDED, kept_real, **counts)
    return SpotCut(kind, None, nan, nan, 0, len(tool), n_real, added, best, False, OUT_OF_REACH, **counts)


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
    """Spotting cut-offs per kind and per-AU thresholds fitted to a review table.

    Every window kind in the table gets a SpotCut (TOO_FEW where it has fewer reviewed windows than the minimums) and
    every AU the tool decides an AUCut. CalibrationError (nothing to write) when no kind and no AU reaches its
    minimum: the message gives the counts and the minimums."""
    if not 0.0 < target_precision <= 1.0:
        raise CalibrationError(f"the target precision must be in (0, 1], got {target_precision}")
    cal = Calibration(target_precision)
    reviewed = df[(df["window"] >= 0) & df["decision"].isin((*REAL, REJECTED))] if len(df) else df
    if not len(reviewed):
        raise CalibrationError("no tool window has been reviewed (confirmed, corrected or rejected): nothing to fit, "
                               "nothing written")
    for kind in sorted(set(df["kind"])):  # every kind, also one with no reviewed window: it is named, not skipped
        cal.spotting.append(spotting_cut(df, kind, target_precision))
    for au in au_columns(df):
        cal.aus.append(au_cut(df, au))
    if all(c.status == TOO_FEW for c in cal.spotting) and not cal.au_thresholds:
        kinds = ", ".join(f"{c.kind} {c.reviewed} reviewed ({c.real} real)" for c in cal.spotting)
        aus = ", ".join(f"{a.au} {a.positives} coder positives/{a.negatives} negatives" for a in cal.aus) or "none the tool decides"
        raise CalibrationError(
            f"too few reviewed windows to calibrate anything (windows: {kinds}; AUs: {aus}): a cut-off needs at least "
            f"{MIN_REVIEWED} reviewed windows of a kind, {MIN_REAL} of them real; an AU threshold {MIN_EACH} coder "
            "positives and negatives: nothing written")
    bad = int(((df["code_error"] != "") & df["decision"].isin(REAL) & (df["window"] >= 0)).sum())
    if bad:
        cal.notes.append(f"{bad} reviewed windows have a coder code that did not parse: left out of the AU "
                         "thresholds")
    only = coder_only_aus(df)
    if only:
        cal.notes.append("coded by the coder but not decided by the tool, so no threshold can be fitted: "
                         + ", ".join(f"{r['au']} ({r['windows']} windows)" for r in only))
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
        f"# Minimums: a cut-off needs {MIN_REVIEWED} reviewed windows of its kind, {MIN_REAL} of them real; an AU "
        f"threshold {MIN_EACH} coder positives and {MIN_EACH} negatives.",
        "# What was found, with the windows each figure rests on:",
        *[f"#   {c.summary(cal.target_precision)}" for c in cal.spotting],
        *[f"#   {a.summary()}" for a in cal.aus],
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
    lines.append(f"minimums = {_toml_value({'reviewed': MIN_REVIEWED, 'real': MIN_REAL, 'au_each': MIN_EACH})}")
    for c in cal.spotting:
        lines += ["", "[[calibration.spotting]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in c.__dict__.items() if _present(v)]
    for a in cal.aus:
        lines += ["", "[[calibration.aus]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in {**a.__dict__, "windows": a.windows}.items() if _present(v)]
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
