"""Time ranges to analyse (an interviewee's answers, a task's blocks): from `--range START-END`, from a table of ranges
per video (CSV: video,start,end), or from a tier of an ELAN file next to each video. Outputs keep the video's own time
axis; only frames inside the ranges are decoded (a seek to each range, decode.VideoStream.between).

Times are seconds (`75.5`) or clock times (`1:15.5`, `0:01:15.5`). Problems are found before anything runs where they
can be (a bad time, a row naming a video that is not an input) and otherwise fail that video alone with one line (an
overlap, a tier that is not there, a range after the video's end)."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from au_annotate.records import VideoJob

Range = tuple[float, float]
_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d*)?)$")


class RangeError(ValueError):
    """A range, range table or range tier that cannot be used (the message is one line naming the source)."""


def parse_time(text: str) -> float:
    """Seconds from `75.5`, `1:15.5` or `0:01:15.5`; RangeError otherwise."""
    t = text.strip()
    m = _CLOCK.match(t)
    try:
        if m:
            h, mi, sec = int(m.group(1) or 0), int(m.group(2)), float(m.group(3))
            if mi >= 60 and m.group(1) is not None or sec >= 60:
                raise ValueError
            value = 3600 * h + 60 * mi + sec
        else:
            value = float(t)
    except ValueError:
        raise RangeError(f"{text!r} is not a time (seconds like 75.5, or m:ss like 1:15.5)") from None
    if not math.isfinite(value) or value < 0:
        raise RangeError(f"{text!r} is not a time at or after 0")
    return value


def parse_range(text: str) -> Range:
    """(start, end) seconds from `START-END` (`60-90`, `1:00-1:30.5`); RangeError unless start < end."""
    parts = text.split("-")
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        raise RangeError(f"range {text!r}: expected START-END, e.g. 60-90 or 1:00-1:30")
    start, end = parse_time(parts[0]), parse_time(parts[1])
    if end <= start:
        raise RangeError(f"range {text!r}: the end must be after the start")
    return start, end


def check_ranges(ranges: Iterable[Range], where: str) -> tuple[Range, ...]:
    """The ranges sorted by start; RangeError naming `where` when two overlap (a frame analysed twice would be reported
    twice)."""
    out = tuple(sorted(ranges))
    for (a0, a1), (b0, b1) in zip(out, out[1:], strict=False):
        if b0 < a1:
            raise RangeError(f"{where}: ranges {_fmt(a0, a1)} and {_fmt(b0, b1)} overlap")
    return out


def _fmt(a: float, b: float) -> str:
    return f"{a:g}-{b:g} s"


@dataclass(frozen=True)
class RangeTable:
    """Ranges per video from a CSV table (columns video, start, end; more columns are ignored)."""

    path: Path
    rows: dict[str, list[Range]]  # video as written in the table -> its ranges

    @staticmethod
    def load(path: str | Path) -> RangeTable:
        """Read and check the table; RangeError (one line naming the file and row) on anything unusable."""
        p = Path(path)
        try:
            with open(p, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
                missing = [c for c in ("video", "start", "end") if c not in cols]
                if missing:
                    raise RangeError(f"{p}: a range table needs the columns video, start, end (missing: "
                                     f"{', '.join(missing)})")
                rows: dict[str, list[Range]] = {}
                for n, row in enumerate(reader, start=2):
                    video = (row.get(cols["video"]) or "").strip()
                    if not video:
                        raise RangeError(f"{p}: row {n}: no video")
                    try:
                        start, end = parse_time(row.get(cols["start"]) or ""), parse_time(row.get(cols["end"]) or "")
                    except RangeError as e:
                        raise RangeError(f"{p}: row {n}: {e}") from None
                    if end <= start:
                        raise RangeError(f"{p}: row {n}: the end ({end:g} s) must be after the start ({start:g} s)")
                    rows.setdefault(video, []).append((start, end))
        except FileNotFoundError:
            raise RangeError(f"{p}: range table not found") from None
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise RangeError(f"{p}: cannot read the range table: {e}") from None
        if not rows:
            raise RangeError(f"{p}: the range table has no rows")
        return RangeTable(path=p, rows=rows)

    def match(self, jobs: Sequence[VideoJob]) -> tuple[dict[VideoJob, list[Range]], list[str]]:
        """Each job's ranges (by its relative path, else by its file name when that is unique among the inputs), and
        one line per table video that is not among the inputs."""
        by_rel = {j.rel.as_posix(): j for j in jobs}
        by_name: dict[str, list[VideoJob]] = {}
        for j in jobs:
            by_name.setdefault(j.path.name, []).append(j)
        out: dict[VideoJob, list[Range]] = {}
        unknown = []
        for video, ranges in self.rows.items():
            key = video.replace("\\", "/")
            job = by_rel.get(key)
            if job is None and len(by_name.get(Path(key).name, [])) == 1:
                job = by_name[Path(key).name][0]
            if job is None:
                unknown.append(f"{self.path}: {video!r} is not among the input videos: its ranges are not used")
                continue
            out.setdefault(job, []).extend(ranges)
        return out, unknown


def tier_ranges(video: Path, tier: str) -> tuple[Range, ...]:
    """The annotations of `tier` in the ELAN file next to the video (same stem, `.eaf`) as ranges; RangeError when the
    file or the tier is not there, or the tier has no annotation."""
    import pympi

    eaf_path = video.with_suffix(".eaf")
    if not eaf_path.is_file():
        raise RangeError(f"{video}: no ELAN file {eaf_path.name} next to it to read the tier {tier!r} from")
    try:
        eaf = pympi.Elan.Eaf(str(eaf_path))
    except Exception as e:  # noqa: BLE001 - pympi raises many kinds on a damaged file
        raise RangeError(f"{eaf_path}: cannot read: {type(e).__name__}: {e}") from None
    if tier not in eaf.get_tier_names():
        names = ", ".join(sorted(eaf.get_tier_names())) or "none"
        raise RangeError(f"{eaf_path}: no tier {tier!r} (tiers: {names})")
    spans = [(a / 1000.0, b / 1000.0) for a, b, *_ in eaf.get_annotation_data_for_tier(tier) if b > a]
    if not spans:
        raise RangeError(f"{eaf_path}: the tier {tier!r} has no annotation")
    return tuple(spans)


def assign_ranges(jobs: Sequence[VideoJob], ranges: Sequence[str] = (), table: str | Path | None = None,
                  tier: str | None = None) -> tuple[tuple[VideoJob, ...], list[str]]:
    """The jobs with their ranges (VideoJob.ranges, or VideoJob.range_error when that video's ranges cannot be used),
    and one line per table row that names no input. `ranges` (START-END strings) apply to every video; a table or a
    tier gives each video its own. RangeError for a bad `--range` (it concerns every video: nothing runs)."""
    given = [s for s in (bool(ranges), table is not None, tier is not None) if s]
    if len(given) > 1:
        raise RangeError("use one of --range, --ranges and --range-tier")
    if ranges:
        common = check_ranges((parse_range(r) for r in ranges), "--range")
        return tuple(replace(j, ranges=common) for j in jobs), []
    if table is not None:
        rt = RangeTable.load(table)
        found, unknown = rt.match(jobs)
        out = []
        for j in jobs:
            if j not in found:
                out.append(replace(j, range_error=f"{j.path}: no row in the range table {rt.path}"))
                continue
            try:
                out.append(replace(j, ranges=check_ranges(found[j], f"{j.path} ({rt.path})")))
            except RangeError as e:
                out.append(replace(j, range_error=str(e)))
        return tuple(out), unknown
    if tier is not None:
        out = []
        for j in jobs:
            try:
                out.append(replace(j, ranges=check_ranges(tier_ranges(j.path, tier), f"{j.path} (tier {tier!r})")))
            except RangeError as e:
                out.append(replace(j, range_error=str(e)))
        return tuple(out), []
    return tuple(jobs), []


def usable_ranges(job: VideoJob, duration_s: float, min_s: float) -> tuple[tuple[Range, ...], list[str]]:
    """A job's ranges against the video's length: clipped to its end, those shorter than `min_s` (the spotter's
    warm-up and a window) left out with a line each; RangeError when none is left."""
    keep, notes = [], []
    for a, b in job.ranges:
        if duration_s > 0 and a >= duration_s:
            notes.append(f"{job.path}: range {_fmt(a, b)} starts after the video's end ({duration_s:.2f} s): skipped")
            continue
        end = min(b, duration_s) if duration_s > 0 else b
        if end - a < min_s:
            notes.append(f"{job.path}: range {_fmt(a, end)} is {end - a:.2f} s, shorter than the {min_s:g} s the "
                         "spotter needs (1 s of warm-up, then a whole window): skipped")
            continue
        if end < b:
            notes.append(f"{job.path}: range {_fmt(a, b)} ends after the video ({duration_s:.2f} s): analysed to its "
                         "end")
        keep.append((a, end))
    if not keep:
        raise RangeError("; ".join(notes) if notes else f"{job.path}: no range to analyse")
    return tuple(keep), notes
