"""CSV output: one row per segment, stable column names, metadata in `#` comment lines at the top.

Format (documented in the README and, column by column, in docs/reference.md; tested in tests/test_writers.py):

- UTF-8, `\\n` line ends, `,` separator. Lines starting with `#` before the header hold the metadata (tool version,
  model name and sha256, the video, the settings as JSON): read with ``pandas.read_csv(path, comment="#")`` or R's
  ``read.csv(path, comment.char="#")``.
- Every text field is double-quoted (so a `#` or `,` in a file name never cuts a row); numbers are never quoted.
  Frames, `segment_id` and `AUxx_c` are integers, times/score/probabilities decimals with 6 places.
- With plain ``pandas.read_csv(path, comment="#")`` numbers get int64/float64; empty text (`aus`, `emotion_facs`, `rule`
  when nothing fired) reads back as NaN, pandas' default for empty fields, and a text column whose values all look like
  numbers (`aus` = "4" everywhere, numeric `face_id`s) is inferred as a number. ``read_segments_csv`` (or
  ``dtype={"face_id": str, "aus": str, "emotion_facs": str, "rule": str}, keep_default_na=False``) keeps them as text
  with "".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from au_annotate.fileio import atomic_open
from au_annotate.records import VideoResult
from au_annotate.writers.base import (
    DECISIONS,
    FLOAT_COLUMNS,
    RENAMED_COLUMNS,
    STRING_COLUMNS,
    TOOL_NAME,
    WriteContext,
    Writer,
    au_names_of,
    segments_dataframe,
    settings_json,
    thresholds_text,
    utc_now,
)

FLOAT_FORMAT = "{:.6f}"


def _comment(key: str, value: str) -> str:
    """One `# key: value` line; line breaks inside the value are flattened so the comment stays one line."""
    flat = " ".join(str(value).splitlines())
    return f"# {key}: {flat}\n"


def _header_lines(ctx: WriteContext, extra: Sequence[tuple[str, str]]) -> list[str]:
    """The metadata comment lines shared by per-video and combined CSVs."""
    lines = [
        f"# {TOOL_NAME} {ctx.tool_version} segments table (read with pandas.read_csv(path, comment='#'))\n",
        _comment("model", ctx.model_name),
        _comment("model_sha256", ctx.model_sha256),
        _comment("created", utc_now()),
        _comment("score", "the spotting signal at the apex as a multiple of the threshold the window was held to (1.0 = "
                          "just reported; a `held` window: its landmark change as a multiple of the held test's limit)"),
        _comment("thresholds", thresholds_text(ctx)),
        _comment("decisions", DECISIONS),
        _comment("emotions", "emotion_facs = a FACS rule on the reported AUs (rule names it); emotion_model = the model's "
                              "own 3-class emotion (negative, positive, surprise or uncertain) with its probability"),
    ]
    lines += [_comment(k, v) for k, v in extra]
    lines.append(_comment("settings", settings_json(ctx)))
    return lines


def _cell(value: Any, column: str) -> Any:
    """Format one cell: floats with fixed decimals (unquoted), ints as ints, text as str (quoted)."""
    if column in FLOAT_COLUMNS or column.endswith("_p"):
        f = float(value)
        return FLOAT_FORMAT.format(f) if np.isfinite(f) else ""
    if column in STRING_COLUMNS:
        return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)
    return int(value)


def write_table(fh: IO[str], df: pd.DataFrame, comment_lines: Sequence[str]) -> None:
    """Write comment lines, the header and the rows; text quoted, numbers bare."""
    fh.writelines(comment_lines)
    fh.write(",".join(df.columns) + "\n")
    columns = list(df.columns)
    text_cols = {c for c in columns if c in STRING_COLUMNS}
    for row in df.itertuples(index=False, name=None):
        cells = []
        for col, value in zip(columns, row, strict=True):
            cell = _cell(value, col)
            if col in text_cols:
                cells.append('"' + str(cell).replace('"', '""') + '"')
            else:
                cells.append(str(cell))
        fh.write(",".join(cells) + "\n")


def write_segments_csv(path: Path, df: pd.DataFrame, comment_lines: Sequence[str]) -> Path:
    """Write a segment table atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        write_table(fh, df, comment_lines)
    return Path(path)


class CSVWriter(Writer):
    """Per-video `<stem>.segments.csv`."""

    name = "csv"
    extension = ".segments.csv"

    def write(self, result: VideoResult, path: Path, ctx: WriteContext) -> None:
        """Write one video's segments (header only when there are none)."""
        df = segments_dataframe(result, au_names=au_names_of(result.segments, ctx.au_names),
                                uncalibrated=ctx.uncalibrated)
        extra = [("video", json.dumps(result.job.rel.as_posix(), ensure_ascii=False)), ("status", result.status)]
        if result.error:
            extra.append(("error", result.error))
        if result.info is not None:
            i = result.info
            extra.append(
                ("video_info", f"{i.width}x{i.height}, {i.fps:.6g} fps, {i.n_frames} frames, {i.duration_s:.3f} s")
            )
        write_segments_csv(path, df, _header_lines(ctx, extra))


def write_combined_csv(results: Sequence[VideoResult], path: Path, ctx: WriteContext) -> Path:
    """Write the dataset-level `segments.csv` with the segments of every video, in the order given."""
    segments = [s for r in results for s in r.segments]
    df = segments_dataframe(segments, au_names=au_names_of(segments, ctx.au_names), uncalibrated=ctx.uncalibrated)
    done = sum(1 for r in results if r.status in ("done", "skipped"))  # skipped = reused from an earlier run
    extra = [("videos", f"{len(results)} ({done} done)"), ("segments", str(len(segments)))]
    return write_segments_csv(path, df, _header_lines(ctx, extra))


def read_segments_csv(path: str | Path) -> pd.DataFrame:
    """Read a segments CSV with text columns kept as text ("" for empty) and numbers as int64/float64; a file written
    before a column was renamed (`emotion`, now `emotion_facs`) is read under today's names."""
    text = {c: str for c in (*STRING_COLUMNS, *RENAMED_COLUMNS)}
    df = pd.read_csv(path, comment="#", dtype=text, keep_default_na=False, na_values={})
    df = df.rename(columns={old: new for old, new in RENAMED_COLUMNS.items() if new not in df.columns})
    for col in df.columns:
        if col.endswith("_p") or col in FLOAT_COLUMNS:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(np.float64)
    return df


def read_csv_metadata(path: str | Path) -> dict[str, str]:
    """The `# key: value` comment lines at the top of a segments CSV, as a dict."""
    meta: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            key, sep, value = line[1:].strip().partition(": ")
            if sep:
                meta[key.strip()] = value
    return meta
