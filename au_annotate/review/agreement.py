"""How well the tool agreed with the coder(s) on a review table (reviewed.csv): spotting, timing, AUs, coder vs coder.

Definitions (every coder's rows are pooled; a window reviewed by two coders counts twice):

- spotting precision = (confirmed + corrected) / (confirmed + corrected + rejected), over the tool's windows the coder
  reviewed (`unreviewed` ones are left out);
- recall = (confirmed + corrected) / (confirmed + corrected + added): the coder-added windows are the ones the tool
  missed (meaningful when the coder went through the whole video);
- onset / offset error = coder time - tool time in ms over confirmed + corrected windows: mean absolute (MAE) and mean
  signed (bias, positive = the coder's boundary is later);
- per AU, over confirmed + corrected tool windows whose coder code parsed: the tool's decision (`AUxx_c`) against
  "the coder coded AUxx" (any side or intensity): TP / FP / FN / TN, precision, recall, F1 and Cohen's kappa;
- where two coders reviewed the same window: Cohen's kappa coder vs coder on "a real expression" (confirmed/corrected
  vs rejected) and per AU on the windows both called real, beside tool-vs-coder kappa on those same windows;
- AUs the coder coded that the tool does not decide (the model does not output them, or gives a probability only):
  they cannot be compared, so instead of vanishing they are listed (`coder_only`: per AU the windows the coder coded
  it on, among confirmed, corrected and added windows with a parsed code, and how many of those were coder-added) and
  named in a note.

Kappa is NaN where it is undefined (both raters constant and equal: chance agreement is 1).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from au_annotate.review.importer import coder_au_sets
from au_annotate.writers.review_schema import ADDED, CONFIRMED, CORRECTED, REJECTED, UNREVIEWED

REAL = (CONFIRMED, CORRECTED)


def cohen_kappa(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> float:
    """Cohen's kappa of two binary raters over the same items (NaN when undefined or empty)."""
    x, y = np.asarray(a, bool), np.asarray(b, bool)
    if x.size == 0:
        return float("nan")
    po = float(np.mean(x == y))
    pa, pb = float(x.mean()), float(y.mean())
    pe = pa * pb + (1 - pa) * (1 - pb)
    return float("nan") if pe >= 1.0 - 1e-12 else (po - pe) / (1 - pe)


def f1_counts(tool: np.ndarray, coder: np.ndarray) -> dict[str, float]:
    """TP/FP/FN/TN, precision, recall, F1 of the tool's decisions against the coder's (0/0 -> NaN)."""
    t, c = np.asarray(tool, bool), np.asarray(coder, bool)
    tp, fp, fn, tn = int((t & c).sum()), int((t & ~c).sum()), int((~t & c).sum()), int((~t & ~c).sum())
    nan = float("nan")
    precision = tp / (tp + fp) if tp + fp else nan
    recall = tp / (tp + fn) if tp + fn else nan
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else nan
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": precision, "recall": recall, "f1": f1}


@dataclass
class Agreement:
    """The agreement of one review table: spotting per kind, AUs, coder pairs, and notes."""

    spotting: list[dict[str, Any]] = field(default_factory=list)
    aus: list[dict[str, Any]] = field(default_factory=list)
    coders: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    coder_only: list[dict[str, Any]] = field(default_factory=list)  # coder AUs the tool does not decide (coder_only_aus)

    def tidy(self) -> pd.DataFrame:
        """One row per (section, subject, metric): what agreement.csv holds."""
        rows = []
        for r in self.spotting:
            rows += [("spotting", r["kind"], "", k, v) for k, v in r.items() if k != "kind"]
        for r in self.aus:
            rows += [("au", r["au"], "", k, v) for k, v in r.items() if k != "au"]
        for r in self.coders:
            pair = f"{r['coder_a']} vs {r['coder_b']}"
            rows += [("coders", r["subject"], pair, k, v) for k, v in r.items()
                     if k not in ("subject", "coder_a", "coder_b")]
        for r in self.coder_only:
            rows += [("coder_only", r["au"], "", k, v) for k, v in r.items() if k != "au"]
        return pd.DataFrame(rows, columns=["section", "subject", "coders", "metric", "value"])

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly (NaN -> None)."""
        def clean(v: Any) -> Any:
            if isinstance(v, float | np.floating):
                return None if math.isnan(float(v)) else round(float(v), 6)
            if isinstance(v, np.integer):
                return int(v)
            return v

        return {key: [{k: clean(v) for k, v in r.items()} for r in getattr(self, key)]
                for key in ("spotting", "aus", "coders", "coder_only")} | {"notes": list(self.notes)}


def spotting_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Per kind (and `all`): window counts by decision, precision, recall, onset/offset error in ms."""
    out = []
    kinds = sorted(set(df["kind"])) if len(df) else []
    for kind in [*kinds, "all"]:
        d = df if kind == "all" else df[df["kind"] == kind]
        tool = d[d["window"] >= 0]
        n = {dec: int((tool["decision"] == dec).sum()) for dec in (CONFIRMED, CORRECTED, REJECTED, UNREVIEWED)}
        added = int((d["decision"] == ADDED).sum())
        real = n[CONFIRMED] + n[CORRECTED]
        reviewed = real + n[REJECTED]
        timed = tool[tool["decision"].isin(REAL)]
        on = timed["onset_error_ms"].to_numpy(float)
        off = timed["offset_error_ms"].to_numpy(float)
        nan = float("nan")
        out.append({
            "kind": kind, "tool_windows": len(tool), "reviewed": reviewed, **n, "added": added,
            "precision": real / reviewed if reviewed else nan,
            "recall": real / (real + added) if real + added else nan,
            "onset_mae_ms": float(np.abs(on).mean()) if on.size else nan,
            "offset_mae_ms": float(np.abs(off).mean()) if off.size else nan,
            "onset_bias_ms": float(on.mean()) if on.size else nan,
            "offset_bias_ms": float(off.mean()) if off.size else nan,
            "moved": int(((on != 0) | (off != 0)).sum()),
        })
    return out


def au_columns(df: pd.DataFrame) -> list[str]:
    """The AUs the tool decided (`AUxx_c` columns with values), in table order."""
    return [c[:-2] for c in df.columns if c.startswith("AU") and c.endswith("_c") and (df[c] >= 0).any()]


def _au_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Tool micro windows the coder called real and coded with a code that parsed (the tool decides AUs on micro
    windows only: a macro window's `_c` 0 is no decision, not a "no")."""
    return df[(df["window"] >= 0) & df["decision"].isin(REAL) & (df["code_error"] == "") & (df["kind"] == "micro")]


def au_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Per AU the tool decides: counts, precision, recall, F1, kappa of the tool against the coder."""
    d = _au_frame(df)
    coder = coder_au_sets(d["coder_aus"])
    out = []
    for au in au_columns(df):
        num = int(au[2:])
        c = np.array([num in s for s in coder], bool)
        t = d[f"{au}_c"].to_numpy(float) > 0.5
        out.append({"au": au, "windows": len(d), **f1_counts(t, c), "kappa": cohen_kappa(t, c)})
    return out


def coder_only_aus(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The AUs the coder coded that the tool does not decide (no `AUxx_c` with values), so they are in no AU row.

    Per AU (`AU18`): `windows` = rows (every coder's, pooled) the coder called real or added with a parsed code that
    has the AU, `added` = how many of them are coder-added, `probability_only` = 1 when the table has the AU's
    probability but no decision (an AU the model outputs without a calibrated threshold), else 0."""
    if not len(df):
        return []
    decided = set(au_columns(df))
    d = df[df["decision"].isin((*REAL, ADDED)) & (df["code_error"] == "")]
    windows: dict[int, int] = {}
    added: dict[int, int] = {}
    for aus, decision in zip(coder_au_sets(d["coder_aus"]), d["decision"], strict=True):
        for num in aus:
            if f"AU{num:02d}" in decided:
                continue
            windows[num] = windows.get(num, 0) + 1
            added[num] = added.get(num, 0) + int(decision == ADDED)
    out = []
    for num in sorted(windows):
        name = f"AU{num:02d}"
        col = f"{name}_p"
        prob_only = int(col in df.columns and bool(pd.to_numeric(df[col], errors="coerce").notna().any()))
        out.append({"au": name, "windows": windows[num], "added": added[num], "probability_only": prob_only})
    return out


def coder_only_note(rows: list[dict[str, Any]]) -> str:
    """One line naming the coder AUs the tool does not decide, with the windows each was coded on ("" for none)."""
    if not rows:
        return ""

    def one(r: dict[str, Any]) -> str:
        text = f"{r['au']} on {r['windows']} window{'s' if r['windows'] != 1 else ''}"
        extra = [f"{r['added']} coder-added"] if r["added"] else []
        extra += ["the model gives a probability only"] if r["probability_only"] else []
        return text + (f" ({'; '.join(extra)})" if extra else "")

    return ("the coder coded AUs the tool does not decide, so they are not in the AU agreement: "
            + ", ".join(one(r) for r in rows))


def coder_pairs(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Coder-vs-coder kappa beside tool-vs-coder kappa, for every pair of coders who reviewed the same windows."""
    tool = df[(df["window"] >= 0) & (df["decision"] != UNREVIEWED)]
    out: list[dict[str, Any]] = []
    aus = au_columns(df)
    for a, b in itertools.combinations(sorted(set(tool["coder"])), 2):
        key = ["video", "face_id", "window"]
        m = tool[tool["coder"] == a].merge(tool[tool["coder"] == b], on=key, suffixes=("_a", "_b"))
        if m.empty:
            continue
        ra, rb = m["decision_a"].isin(REAL).to_numpy(), m["decision_b"].isin(REAL).to_numpy()
        out.append({"subject": "real expression", "coder_a": a, "coder_b": b, "windows": len(m),
                    "kappa_coders": cohen_kappa(ra, rb), "kappa_tool_a": float("nan"), "kappa_tool_b": float("nan")})
        both = m[ra & rb & (m["code_error_a"] == "") & (m["code_error_b"] == "")]
        sa, sb = coder_au_sets(both["coder_aus_a"]), coder_au_sets(both["coder_aus_b"])
        for au in aus:
            num = int(au[2:])
            ca, cb = np.array([num in s for s in sa], bool), np.array([num in s for s in sb], bool)
            t = both[f"{au}_c_a"].to_numpy(float) > 0.5
            out.append({"subject": au, "coder_a": a, "coder_b": b, "windows": len(both),
                        "kappa_coders": cohen_kappa(ca, cb), "kappa_tool_a": cohen_kappa(t, ca),
                        "kappa_tool_b": cohen_kappa(t, cb)})
    return out


def compute_agreement(df: pd.DataFrame) -> Agreement:
    """Spotting, timing, per-AU and coder-pair agreement of a review table (read_reviewed)."""
    ag = Agreement(spotting_rows(df), au_rows(df), coder_pairs(df), coder_only=coder_only_aus(df))
    if ag.coder_only:
        ag.notes.append(coder_only_note(ag.coder_only))
    if len(df) and not (df["decision"] != UNREVIEWED).any():
        ag.notes.append("no window has been reviewed yet (every decision is 'unreviewed')")
    bad = int(((df["code_error"] != "") & df["decision"].isin((*REAL, ADDED))).sum()) if len(df) else 0
    if bad:
        ag.notes.append(f"{bad} coder codes did not parse: those windows are left out of the AU agreement")
    return ag
