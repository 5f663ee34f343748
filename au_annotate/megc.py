"""MEGC spotting evaluation: match predicted windows to ground-truth intervals and report precision, recall and F1.

The protocol (MEGC 2019-2023 spotting challenges; README "Scoring against ground truth"):

- A prediction matches a ground-truth interval of the same video when IoU >= 0.5, with inclusive frame counts:
  IoU = (min(offsets) - max(onsets) + 1) / (len_a + len_b - intersection), len = offset - onset + 1.
- Each ground truth counts as at most one true positive and each prediction matches at most one ground truth (a
  maximum matching, so overlapping intervals never count twice). FP = predictions - TP; FN = ground truths - TP.
- Counts are pooled over all videos before precision, recall and F1 are computed. Micro- and macro-expressions are
  scored separately (micro predictions against micro ground truth, macro against macro); "overall" pools both
  (TP, predictions and ground truths added), as the challenge's overall F1 does. Predictions of any other kind
  (e.g. "blink") are not scored.

Ground-truth CSV layout (one row per interval; extra columns are ignored; `#` lines are comments)::

    video,onset_frame,apex_frame,offset_frame,kind
    sub01/clip.mp4,120,131,140,micro
    sub01/clip.mp4,300,350,410,macro

`video` must name the video as our segment CSVs do (its path relative to the input root); when no name matches exactly,
videos are matched by file stem (name without folders and extension), so SAMM-LV style names like `006_1` work.
Frame indices are 0-based and inclusive. `kind` values containing "micro"/"macro" (case-insensitive) are accepted,
e.g. SAMM-LV's "Micro - 1/2"; without a kind column, give `fps` and kinds are derived from the duration
(<= `max_micro_s` is micro). Other sheets (SAMM-LV, CAS(ME)^2 exported to CSV) are read by naming their columns:
`video_col`, `onset_col`, `apex_col`, `offset_col`, `kind_col` (apex may be absent), and `sep`.

Predictions are our own outputs: a folder holding the combined `segments.csv` (used when present) or per-video
`*.segments.csv` files (searched recursively), or one such CSV file; columns `video, kind, onset_frame, apex_frame,
offset_frame`.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from au_annotate.fileio import atomic_open

SCORED_KINDS = ("micro", "macro")


class MegcError(ValueError):
    """A ground-truth or prediction file cannot be used (the message names the file and the cause)."""


@dataclass(frozen=True)
class Interval:
    """One interval of one video: 0-based inclusive frames and its kind (micro | macro | other labels)."""

    video: str
    onset: int
    offset: int
    kind: str
    apex: int | None = None

    @property
    def length(self) -> int:
        return self.offset - self.onset + 1


@dataclass(frozen=True)
class Counts:
    """Pooled MEGC counts and the metrics they give."""

    tp: int
    n_pred: int
    n_gt: int

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_gt - self.tp

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else 0.0

    @property
    def recall(self) -> float:
        return self.tp / self.n_gt if self.n_gt else 0.0

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 0.0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.n_pred + other.n_pred, self.n_gt + other.n_gt)

    def as_dict(self) -> dict[str, float | int]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "n_pred": self.n_pred, "n_gt": self.n_gt,
                "precision": round(self.precision, 6), "recall": round(self.recall, 6), "f1": round(self.f1, 6)}


@dataclass(frozen=True)
class Match:
    """A true positive: the ground truth, the prediction it matched, and their IoU."""

    gt: Interval
    pred: Interval
    iou: float


@dataclass(frozen=True)
class SpottingScore:
    """The evaluation: counts per kind, overall, per video, and the matched pairs."""

    by_kind: dict[str, Counts]
    per_video: dict[str, dict[str, Counts]]
    matches: tuple[Match, ...] = ()
    iou_threshold: float = 0.5
    video_key: str = "path"
    notes: tuple[str, ...] = field(default=())

    @property
    def overall(self) -> Counts:
        total = Counts(0, 0, 0)
        for c in self.by_kind.values():
            total = total + c
        return total

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly report."""
        return {
            "protocol": {"iou_threshold": self.iou_threshold, "frames": "inclusive", "pooled_over_videos": True,
                         "video_key": self.video_key},
            "kinds": {k: c.as_dict() for k, c in self.by_kind.items()},
            "overall": self.overall.as_dict(),
            "per_video": {v: {k: c.as_dict() for k, c in kinds.items()} for v, kinds in sorted(self.per_video.items())},
            "matches": [{"gt": asdict(m.gt), "pred": asdict(m.pred), "iou": round(m.iou, 6)} for m in self.matches],
            "notes": list(self.notes),
        }


def iou(a_onset: int, a_offset: int, b_onset: int, b_offset: int) -> float:
    """MEGC IoU of two inclusive frame intervals."""
    inter = min(a_offset, b_offset) - max(a_onset, b_onset) + 1
    if inter <= 0:
        return 0.0
    union = (a_offset - a_onset + 1) + (b_offset - b_onset + 1) - inter
    return inter / union


def match(gt: Sequence[Interval], pred: Sequence[Interval], threshold: float = 0.5) -> list[Match]:
    """Maximum one-to-one matching of predictions to ground truths with IoU >= threshold (one video, one kind)."""
    edges: list[list[int]] = []
    for g in gt:
        cands = [(iou(g.onset, g.offset, p.onset, p.offset), j) for j, p in enumerate(pred)]
        # try the best-overlapping predictions first, so the matching prefers them among equal-size matchings
        edges.append([j for v, j in sorted(cands, key=lambda t: (-t[0], t[1])) if v >= threshold - 1e-12])
    owner: dict[int, int] = {}  # prediction -> ground truth

    def augment(i: int, seen: set[int]) -> bool:
        for j in edges[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in range(len(gt)):
        augment(i, set())
    out = [Match(gt[i], pred[j], iou(gt[i].onset, gt[i].offset, pred[j].onset, pred[j].offset))
           for j, i in owner.items()]
    return sorted(out, key=lambda m: (m.gt.video, m.gt.onset, m.gt.offset))


def _stem(video: str) -> str:
    """File stem of a video name (folders and extension dropped): `sub01/006_1.mp4` -> `006_1`."""
    return PurePosixPath(video.replace("\\", "/")).stem


def evaluate(gt: Iterable[Interval], pred: Iterable[Interval], *, threshold: float = 0.5,
             video_key: str = "auto", only_gt_videos: bool = False) -> SpottingScore:
    """Score predictions against ground truth with the MEGC protocol (see the module docstring).

    video_key: "path" (exact `video` strings), "stem" (file stem), or "auto" (path when any name matches exactly,
    else stem). only_gt_videos: ignore predictions for videos absent from the ground truth (by default they are
    false positives: a video with no ground-truth interval is a video where nothing should be found)."""
    gt_l, pred_l = list(gt), list(pred)
    notes: list[str] = []
    if video_key == "auto":
        gt_names, pred_names = {g.video for g in gt_l}, {p.video for p in pred_l}
        video_key = "path" if (gt_names & pred_names or not gt_names or not pred_names) else "stem"
        if video_key == "stem":
            notes.append("no video name matched exactly; videos matched by file stem")
    if video_key not in ("path", "stem"):
        raise MegcError(f"video_key must be auto, path or stem, got {video_key!r}")
    key = _stem if video_key == "stem" else (lambda v: v)
    gt_by: dict[tuple[str, str], list[Interval]] = defaultdict(list)
    pred_by: dict[tuple[str, str], list[Interval]] = defaultdict(list)
    gt_videos = set()
    for g in gt_l:
        if g.kind in SCORED_KINDS:
            gt_by[(key(g.video), g.kind)].append(g)
        gt_videos.add(key(g.video))
    ignored = 0
    for p in pred_l:
        if p.kind not in SCORED_KINDS:
            continue
        if only_gt_videos and key(p.video) not in gt_videos:
            ignored += 1
            continue
        pred_by[(key(p.video), p.kind)].append(p)
    if ignored:
        notes.append(f"{ignored} prediction(s) for videos without ground truth ignored")
    videos = sorted({v for v, _ in gt_by} | {v for v, _ in pred_by} | gt_videos)
    by_kind = {k: Counts(0, 0, 0) for k in SCORED_KINDS}
    per_video: dict[str, dict[str, Counts]] = {}
    matches: list[Match] = []
    for v in videos:
        per_video[v] = {}
        for k in SCORED_KINDS:
            g, p = gt_by.get((v, k), []), pred_by.get((v, k), [])
            m = match(g, p, threshold)
            matches.extend(m)
            c = Counts(len(m), len(p), len(g))
            per_video[v][k] = c
            by_kind[k] = by_kind[k] + c
    return SpottingScore(by_kind=by_kind, per_video=per_video, matches=tuple(matches), iou_threshold=threshold,
                         video_key=video_key, notes=tuple(notes))


# -- reading files -----------------------------------------------------------------------------------------------------

def _normalise_kind(value: str) -> str:
    v = value.strip().lower()
    if "micro" in v or v == "me":
        return "micro"
    if "macro" in v or v == "mae":
        return "macro"
    return v


def _read_rows(path: Path, sep: str | None) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file; `#` comment lines skipped, delimiter sniffed (, ; tab) unless given."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise MegcError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MegcError(f"{path}: cannot read ({e})") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise MegcError(f"{path}: empty file (no header row)")
    if sep is None:
        first = lines[0]
        sep = max((",", ";", "\t"), key=first.count)
    reader = csv.DictReader(io.StringIO("\n".join(lines)), delimiter=sep)
    header = [h.strip() for h in (reader.fieldnames or [])]
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    return header, rows


def _int(path: Path, line: int, col: str, value: str) -> int:
    try:
        f = float(value)
    except ValueError:
        raise MegcError(f"{path}: row {line}: column {col!r} is not a frame number: {value!r}") from None
    if f != int(f) or f < 0:
        raise MegcError(f"{path}: row {line}: column {col!r} must be a non-negative whole frame number, got {value!r}")
    return int(f)


def read_ground_truth(path: str | Path, *, video_col: str = "video", onset_col: str = "onset_frame",
                      apex_col: str | None = "apex_frame", offset_col: str = "offset_frame",
                      kind_col: str | None = "kind", sep: str | None = None, fps: float | None = None,
                      max_micro_s: float = 0.5) -> list[Interval]:
    """Ground-truth intervals from a CSV (layout in the module docstring; column names configurable)."""
    p = Path(path)
    header, rows = _read_rows(p, sep)
    missing = [c for c in (video_col, onset_col, offset_col) if c not in header]
    if missing:
        raise MegcError(f"{p}: missing column(s) {', '.join(missing)} (columns: {', '.join(header)})")
    use_kind = kind_col is not None and kind_col in header
    if not use_kind and not fps:
        raise MegcError(f"{p}: no {kind_col or 'kind'!r} column; give the frame rate (fps) to derive micro/macro "
                        f"from durations, or name the kind column")
    use_apex = apex_col is not None and apex_col in header
    out = []
    for n, row in enumerate(rows, start=2):
        if not row.get(video_col):
            continue
        onset = _int(p, n, onset_col, row.get(onset_col, ""))
        offset = _int(p, n, offset_col, row.get(offset_col, ""))
        if offset < onset:
            raise MegcError(f"{p}: row {n}: offset {offset} is before onset {onset}")
        apex = None
        if use_apex and row.get(apex_col or "", "") not in ("", "-1"):
            apex = _int(p, n, apex_col or "", row[apex_col or ""])
        if use_kind:
            kind = _normalise_kind(row.get(kind_col or "", ""))
        else:
            kind = "micro" if (offset - onset + 1) / float(fps or 1) <= max_micro_s + 1e-9 else "macro"
        out.append(Interval(video=row[video_col].replace("\\", "/"), onset=onset, offset=offset, kind=kind, apex=apex))
    return out


PRED_COLUMNS = ("video", "kind", "onset_frame", "apex_frame", "offset_frame")


def _read_segments(path: Path) -> list[Interval]:
    header, rows = _read_rows(path, ",")
    missing = [c for c in PRED_COLUMNS if c not in header]
    if missing:
        raise MegcError(f"{path}: not a segments CSV, missing column(s) {', '.join(missing)}")
    out = []
    for n, row in enumerate(rows, start=2):
        onset = _int(path, n, "onset_frame", row["onset_frame"])
        offset = _int(path, n, "offset_frame", row["offset_frame"])
        apex = _int(path, n, "apex_frame", row["apex_frame"]) if row.get("apex_frame") else None
        if offset < onset:
            raise MegcError(f"{path}: row {n}: offset {offset} is before onset {onset}")
        out.append(Interval(video=row["video"].replace("\\", "/"), onset=onset, offset=offset,
                            kind=row["kind"].strip().lower(), apex=apex))
    return out


def read_predictions(path: str | Path) -> list[Interval]:
    """Predicted windows from our outputs: a folder (combined segments.csv, else every *.segments.csv) or one CSV."""
    p = Path(path)
    if p.is_dir():
        combined = p / "segments.csv"
        if combined.is_file():
            return _read_segments(combined)
        files = sorted(p.rglob("*.segments.csv"))
        if not files:
            raise MegcError(f"{p}: no segments.csv or *.segments.csv files in this folder")
        return [iv for f in files for iv in _read_segments(f)]
    if not p.exists():
        raise MegcError(f"{p}: file or folder not found")
    return _read_segments(p)


def write_report(score: SpottingScore, path: str | Path) -> None:
    """Write the evaluation as JSON (atomically)."""
    with atomic_open(path) as fh:
        json.dump(score.as_dict(), fh, indent=2)
        fh.write("\n")
