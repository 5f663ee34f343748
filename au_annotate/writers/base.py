"""Shared pieces of the output writers: the write context, the Writer base class, metadata and the segment table.

Every output format records the same metadata (tool version, model name and checksum, settings) and the CSV and the
HTML report show the same table, so both live here, once.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from au_annotate.records import Segment, VideoJob, VideoResult

TOOL_NAME = "au-annotate"

# Columns before the per-AU pairs and after them; the AU pairs (AU04_p, AU04_c, ...) follow the model's output order.
LEAD_COLUMNS: tuple[str, ...] = (
    "video",
    "face_id",
    "segment_id",
    "kind",
    "onset_frame",
    "apex_frame",
    "offset_frame",
    "onset_s",
    "apex_s",
    "offset_s",
    "duration_s",
    "score",
    "quality",  # ok | occlusion | head_motion | tracking_lost | lighting (au_annotate.quality)
    "context",  # the face state meanwhile, "+"-joined: blink, speech, head_motion, occlusion, no_landmarks ("" none)
)
TAIL_COLUMNS: tuple[str, ...] = ("aus", "emotion_facs", "rule", "emotion_model", "emotion_model_p")
INT_COLUMNS: tuple[str, ...] = ("segment_id", "onset_frame", "apex_frame", "offset_frame")
FLOAT_COLUMNS: tuple[str, ...] = ("onset_s", "apex_s", "offset_s", "duration_s", "score")
STRING_COLUMNS: tuple[str, ...] = ("video", "face_id", "kind", "quality", "context", "aus", "emotion_facs", "rule",
                                   "emotion_model")
RENAMED_COLUMNS = {"emotion": "emotion_facs"}  # older outputs' names -> today's (read_segments_csv)


@dataclass(frozen=True)
class WriteContext:
    """What every output records about how it was made, plus format options shared by the writers."""

    tool_version: str
    model_name: str
    model_sha256: str
    settings: dict = field(default_factory=dict)
    au_tiers: bool = False  # EAF/TextGrid: one tier per AU as well
    input_root: Path | None = None
    au_names: tuple[str, ...] = ()  # the model's AU order; gives a zero-segment CSV its AU columns
    uncalibrated: tuple[str, ...] = ()  # reported AUs without a calibrated threshold (no `_c` column), for that header
    thresholds: tuple[tuple[str, float], ...] = ()  # (AU, decision threshold) of the reported AUs that have one


DECISIONS = ("an AU is present (_c = 1, in `aus`) when its probability >= its threshold; AU presence, the FACS-rule "
             "emotion and the model emotion are decided on micro windows only (the model was trained on "
             "micro-expression apex flow): macro and blink windows carry probabilities only; the model emotion is "
             "given on micro windows of quality ok, `uncertain` below the checkpoint's bar")


def thresholds_text(ctx: WriteContext) -> str:
    """`AU04 0.412, AU07 0.300; probability only: AU01` (the header line of the CSV, the report's overview)."""
    text = ", ".join(f"{au} {thr:.3f}" for au, thr in ctx.thresholds)
    if ctx.uncalibrated:
        text += ("; " if text else "") + "probability only: " + ", ".join(ctx.uncalibrated)
    return text or "none"


class Writer(ABC):
    """One output format: a name for --format, a file extension, and a write() of one video's result."""

    name: str = ""
    extension: str = ""

    @abstractmethod
    def write(self, result: VideoResult, path: Path, ctx: WriteContext) -> None:
        """Write `result` to `path` (atomically, UTF-8)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, extension={self.extension!r})"


def output_path(result_or_job: VideoResult | VideoJob, writer: Writer) -> Path:
    """Where `writer` puts the output of one video: job.out_dir / (job.stem + writer.extension)."""
    job = result_or_job.job if isinstance(result_or_job, VideoResult) else result_or_job
    return Path(job.out_dir) / (job.stem + writer.extension)


def utc_now() -> str:
    """Current UTC time as ISO 8601 with seconds, recorded as the creation time of an output."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """Turn numpy scalars/arrays, paths, tuples and sets into plain JSON types (NaN/inf become None)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v) for v in items]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, Path):
        return value.as_posix()
    return value


def run_metadata(ctx: WriteContext) -> dict[str, Any]:
    """The metadata block every output carries: tool, version, model, checksum, settings, creation time."""
    return {
        "tool": TOOL_NAME,
        "tool_version": ctx.tool_version,
        "model_name": ctx.model_name,
        "model_sha256": ctx.model_sha256,
        "created": utc_now(),
        "settings": jsonable(ctx.settings),
    }


def settings_json(ctx: WriteContext) -> str:
    """The settings as one line of JSON with sorted keys (for CSV comments and EAF properties)."""
    return json.dumps(jsonable(ctx.settings), sort_keys=True, ensure_ascii=False)


def au_names_of(segments: Sequence[Segment], default: Sequence[str] = ()) -> tuple[str, ...]:
    """The AU column order shared by `segments` (or `default` when there are none); mixed orders raise ValueError."""
    names: tuple[str, ...] | None = None
    for s in segments:
        if names is None:
            names = tuple(s.au_names)
        elif tuple(s.au_names) != names:
            raise ValueError(
                f"segments have different AU orders ({', '.join(names)} vs {', '.join(s.au_names)}): "
                "one table needs one model's AU order"
            )
    return names if names is not None else tuple(default)


def csv_columns(au_names: Sequence[str], uncalibrated: Sequence[str] = ()) -> list[str]:
    """The stable CSV column names for a model's AU order (no `_c` for AUs without a calibrated threshold)."""
    cols = list(LEAD_COLUMNS)
    for name in au_names:
        cols += [f"{name}_p"] if name in uncalibrated else [f"{name}_p", f"{name}_c"]
    return cols + list(TAIL_COLUMNS)


def _flatten(results_or_segments: Iterable[VideoResult | Segment] | VideoResult) -> list[Segment]:
    """Segments of a result, of several results, or a list of segments, in order."""
    if isinstance(results_or_segments, VideoResult):
        return list(results_or_segments.segments)
    out: list[Segment] = []
    for item in results_or_segments:
        if isinstance(item, VideoResult):
            out.extend(item.segments)
        elif isinstance(item, Segment):
            out.append(item)
        else:
            raise TypeError(f"expected VideoResult or Segment, got {type(item).__name__}")
    return out


def segments_dataframe(
    results_or_segments: Iterable[VideoResult | Segment] | VideoResult, au_names: Sequence[str] = (),
    uncalibrated: Sequence[str] = (),
) -> pd.DataFrame:
    """The segment table with exactly the CSV columns and dtypes (int64 frames and `_c`, float64 times/probs, str).

    `au_names` and `uncalibrated` give the AU columns when there are no segments (a header-only table)."""
    segments = _flatten(results_or_segments)
    names = au_names_of(segments, au_names)
    data: dict[str, Any] = {}
    data["video"] = pd.array([s.video for s in segments], dtype=object)
    data["face_id"] = pd.array([str(s.face_id) for s in segments], dtype=object)
    data["segment_id"] = np.array([s.segment_id for s in segments], dtype=np.int64)
    data["kind"] = pd.array([s.kind for s in segments], dtype=object)
    for col in ("onset_frame", "apex_frame", "offset_frame"):
        data[col] = np.array([getattr(s, col) for s in segments], dtype=np.int64)
    for col in FLOAT_COLUMNS:
        data[col] = np.array([getattr(s, col) for s in segments], dtype=np.float64)
    data["quality"] = pd.array([getattr(s, "quality", "ok") for s in segments], dtype=object)
    data["context"] = pd.array([getattr(s, "context", "") for s in segments], dtype=object)
    probs = np.array([np.asarray(s.probs, dtype=np.float64) for s in segments]).reshape(len(segments), len(names))
    present = np.array([np.asarray(s.present, dtype=bool) for s in segments]).reshape(len(segments), len(names))
    uncal = tuple(segments[0].uncalibrated) if segments else tuple(uncalibrated)
    for j, name in enumerate(names):
        data[f"{name}_p"] = probs[:, j]
        if name not in uncal:
            data[f"{name}_c"] = present[:, j].astype(np.int64)
    data["aus"] = pd.array([s.aus or "" for s in segments], dtype=object)
    data["emotion_facs"] = pd.array([s.emotion or "" for s in segments], dtype=object)
    data["rule"] = pd.array([s.rule or "" for s in segments], dtype=object)
    data["emotion_model"] = pd.array([s.emotion_model or "" for s in segments], dtype=object)
    data["emotion_model_p"] = np.array([s.emotion_model_p for s in segments], dtype=np.float64)
    return pd.DataFrame(data, columns=csv_columns(names, uncal))
