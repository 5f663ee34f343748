"""Output writers: one class per format behind one registry (`--format csv,eaf,json,textgrid` or `all`).

Every writer writes one video's result to `job.out_dir / (job.stem + extension)` through a temporary file renamed into
place (au_annotate.fileio), in UTF-8, recording the tool version, model name and checksum and the settings.
The HTML run report lives in `au_annotate.writers.report` (imported on demand: it pulls in matplotlib).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from au_annotate.records import VideoResult
from au_annotate.writers.base import (
    LEAD_COLUMNS,
    TAIL_COLUMNS,
    WriteContext,
    Writer,
    csv_columns,
    output_path,
    segments_dataframe,
)
from au_annotate.writers.csv_writer import CSVWriter, read_csv_metadata, read_segments_csv, write_combined_csv
from au_annotate.writers.eaf import EAFWriter
from au_annotate.writers.json_writer import JSONWriter
from au_annotate.writers.textgrid import TextGridWriter

__all__ = [
    "LEAD_COLUMNS",
    "TAIL_COLUMNS",
    "WRITERS",
    "CSVWriter",
    "EAFWriter",
    "JSONWriter",
    "TextGridWriter",
    "WriteContext",
    "Writer",
    "csv_columns",
    "get_writers",
    "output_path",
    "read_csv_metadata",
    "read_segments_csv",
    "segments_dataframe",
    "write_combined_csv",
    "write_video_outputs",
]

WRITERS: dict[str, type[Writer]] = {w.name: w for w in (CSVWriter, EAFWriter, JSONWriter, TextGridWriter)}


def get_writers(names: Iterable[str]) -> list[Writer]:
    """Writer instances for format names (case-insensitive, comma lists allowed, `all` = every format, no repeats).

    Raises ValueError naming the unknown format and the choices."""
    if isinstance(names, str):
        names = [names]
    wanted: list[str] = []
    for entry in names:
        for raw in str(entry).split(","):
            name = raw.strip().lower()
            if not name:
                continue
            if name == "all":
                wanted += list(WRITERS)
            elif name in WRITERS:
                wanted.append(name)
            else:
                raise ValueError(f"unknown output format {raw.strip()!r} (choose from: {', '.join(WRITERS)}, all)")
    return [WRITERS[n]() for n in dict.fromkeys(wanted)]


def write_video_outputs(result: VideoResult, ctx: WriteContext, formats: Iterable[str]) -> tuple[Path, ...]:
    """Write one video's result in every requested format; returns the paths written, in format order."""
    paths: list[Path] = []
    for writer in get_writers(formats):
        path = output_path(result, writer)
        writer.write(result, path, ctx)
        paths.append(path)
    return tuple(paths)
