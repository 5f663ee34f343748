"""Read reviewed `.eaf` files back: the coder's decisions, codes and times, matched to the run's segment table.

What identifies an EAF as ours: the header property `au-annotate:video` (the video's path relative to the input root)
and the `review` / `AUs (coder)` tiers (au_annotate/writers/review_schema.py). Everything else a coder or ELAN adds
(other tiers, ANNOTATOR and LANG_REF attributes, CVE_REF on annotations, EAF 3.0 headers, licences) is ignored.

Matching: the tool's windows come from the run's own segment CSV (found through the run's `manifest.json`, next to or
above the EAF, or the folder given as `run`), not from the EAF, so the scores and probabilities are exact. That is only
true when the run is the one the EAF came from: an EAF whose model (sha256; the name where a checksum is missing) or
result-changing settings (every setting but the runtime-only ones the resume key ignores, manifest._RUNTIME_ONLY)
differ from those of the run's segment CSV is refused (`ImportResult.refused`): matched against another run's windows
the coder's unchanged windows would read as moved, i.e. `corrected`, and nothing would say so. Per face,
every annotation of the coder tiers is matched one-to-one to the tool window it overlaps most (interval IoU in ms,
pairs of higher IoU first); an `AUs (coder)` annotation that overlaps no window left is a window the coder added.

Decisions: the `review` annotation's value; a window whose code or times the coder changed but left `unreviewed` is
taken as `corrected` (with a note); a window whose review and coder annotations were both deleted is `rejected`.
Coder times are those of the `AUs (coder)` annotation when the coder moved it, else of the `review` annotation.

The coder of a file: the ANNOTATOR attribute of its review tiers (ELAN: Tier > Change Tier Attributes), else the
`coder` argument, else the name of the folder the EAF is in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from au_annotate.facs import FACSParseError, format_aus, parse
from au_annotate.fileio import sha256_file
from au_annotate.writers.review_schema import (
    ADDED,
    CODER_TIER,
    CONFIRMED,
    CORRECTED,
    DECISION_VALUES,
    NO_AU_WORDS,
    REJECTED,
    REVIEW_TIER,
    UNREVIEWED,
)
from au_annotate.writers.tiers import span_ms

PROP = "au-annotate:"
REVIEWED_NAME = "reviewed.csv"
MICRO_MAX_S = 0.5  # a coder-added window up to this long is a micro-expression (the spotter's default cut)
LEAD = ("video", "face_id", "coder", "window", "kind", "score", "decision", "tool_onset_frame", "tool_apex_frame",
        "tool_offset_frame", "tool_onset_s", "tool_apex_s", "tool_offset_s", "coder_onset_s", "coder_offset_s",
        "coder_onset_frame", "coder_offset_frame", "onset_error_ms", "offset_error_ms", "fps", "tool_aus")
TAIL = ("coder_code", "coder_aus", "code_error", "note", "eaf", "model_sha256")


class ReviewError(ValueError):
    """A review file or table cannot be used (the message names the file and the cause)."""


class RunMismatch(ReviewError):
    """An EAF was written by another run (other model or result-changing settings) than the one it was read against."""


@dataclass(frozen=True)
class CoderMark:
    """One annotation of a coder tier: face, lane (0 = plain tier), times in ms and value."""

    face: str
    lane: int
    start_ms: int
    end_ms: int
    value: str


@dataclass
class EafReview:
    """What one reviewed EAF holds: its video, the model that wrote it, the coder and the coder tiers' annotations."""

    path: Path
    video: str
    model_sha256: str
    coder: str
    review: list[CoderMark] = field(default_factory=list)
    codes: list[CoderMark] = field(default_factory=list)
    model_name: str = ""
    settings: dict[str, Any] | None = None  # the `au-annotate:settings` property; None when absent or unreadable


@dataclass
class ImportResult:
    """The tidy review table plus one line per problem (files skipped, codes that do not parse, ...).

    `refused`: one line per EAF made by another run than the one it was read against (RunMismatch). Such a result
    must not be written (write_reviewed refuses it): the caller stops with nothing written."""

    table: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    files: int = 0
    refused: list[str] = field(default_factory=list)


def _tier_face_lane(tier: str, base: str, attrib: dict[str, str]) -> tuple[str, int] | None:
    """(face, lane) of a coder tier named `base`, `base 2`, `base face1`, `base face1 2`; None for other tiers."""
    if tier != base and not tier.startswith(base + " "):
        return None
    rest = tier[len(base):].split()
    lane = 0
    if rest and rest[-1].isdigit():
        lane = int(rest.pop()) - 1
    face = attrib.get("PARTICIPANT") or (rest[0] if rest else "face0")
    return (face, lane) if len(rest) <= 1 else None


def read_review_eaf(path: str | os.PathLike[str], coder: str | None = None) -> EafReview:
    """Parse one reviewed EAF (ours, possibly re-saved by ELAN); ReviewError when it is malformed or not ours."""
    import warnings

    import pympi

    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eaf = pympi.Elan.Eaf(str(p))
    except Exception as e:  # pympi raises bare Exception / KeyError / ParseError for malformed XML
        raise ReviewError(f"{p}: not a readable ELAN file ({' '.join(str(e).split())[:120] or type(e).__name__})") from None
    props = {k: (v or "") for k, v in eaf.properties}
    video = props.get(PROP + "video", "")
    if not video:
        raise ReviewError(f"{p}: not written by au-annotate (no {PROP}video property): skipped")
    out = EafReview(path=p, video=video, model_sha256=props.get(PROP + "model_sha256", ""), coder="",
                    model_name=props.get(PROP + "model_name", ""), settings=_settings_of(props.get(PROP + "settings")))
    annotators: list[str] = []
    found = False
    for tier, (aligned, _ref, attrib, _n) in eaf.tiers.items():
        for base, bucket in ((REVIEW_TIER, out.review), (CODER_TIER, out.codes)):
            where = _tier_face_lane(tier, base, attrib)
            if where is None:
                continue
            found = True
            if attrib.get("ANNOTATOR"):
                annotators.append(attrib["ANNOTATOR"].strip())
            for ts1, ts2, value, *_ in aligned.values():
                t1, t2 = eaf.timeslots.get(ts1), eaf.timeslots.get(ts2)
                if t1 is None or t2 is None:
                    raise ReviewError(f"{p}: tier {tier!r} has an annotation without times (unaligned time slot)")
                bucket.append(CoderMark(where[0], where[1], int(t1), int(t2), (value or "").strip()))
    if not found:
        raise ReviewError(f"{p}: has no '{REVIEW_TIER}' tier (written before review tiers existed: annotate again)")
    out.coder = next((a for a in annotators if a), "") or coder or p.parent.name or "coder"
    return out


def _settings_of(text: str | None) -> dict[str, Any] | None:
    """The settings recorded as one line of JSON (EAF property, CSV comment, manifest); None when absent or bad."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------------------------------- the run's table


def find_run(eaf_path: Path, run: Path | None) -> Path | None:
    """The annotate output folder that holds `manifest.json`: `run`, else the EAF's folder or the nearest above it."""
    if run is not None:
        return run if (run / "manifest.json").is_file() else None
    for folder in [eaf_path.parent, *eaf_path.parent.parents]:
        if (folder / "manifest.json").is_file():
            return folder
    return None


def _fps_of(meta: dict[str, str]) -> float:
    """Frame rate from a segments CSV's `video_info` comment (`640x480, 30 fps, ...`); 30 when absent."""
    for part in meta.get("video_info", "").split(","):
        if part.strip().endswith(" fps"):
            try:
                return float(part.strip()[:-4])
            except ValueError:
                break
    return 30.0


@dataclass
class RunVideo:
    """One video of a run: its segment rows, frame rate, the model and settings that made them, and their CSV."""

    segments: pd.DataFrame
    fps: float
    model_sha256: str
    model_name: str = ""
    settings: dict[str, Any] | None = None
    source: Path | None = None  # the segments CSV the rows come from


def load_run_video(run_dir: Path, video: str) -> RunVideo:
    """The segments of `video` in an annotate output folder, via its manifest; ReviewError when it is not there."""
    from au_annotate.writers.csv_writer import read_csv_metadata, read_segments_csv

    try:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ReviewError(f"{run_dir}/manifest.json: unreadable ({e})") from None
    entry = (manifest.get("videos") or {}).get(video)
    if not isinstance(entry, dict):
        raise ReviewError(f"{video}: not in the run's manifest ({run_dir / 'manifest.json'})")
    csvs = [run_dir / o for o in entry.get("outputs", []) if str(o).endswith(".segments.csv")]
    if not csvs or not csvs[0].is_file():
        raise ReviewError(f"{video}: the run has no segments CSV for it (annotate with --format csv)")
    meta = read_csv_metadata(csvs[0])
    df = read_segments_csv(csvs[0])
    # the CSV's own record first: the manifest's run-level fields describe the folder's latest run, which may have
    # left this video as an earlier run wrote it (resumed)
    run_model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    model = str(meta.get("model_sha256") or run_model.get("sha256") or "")
    name = str(meta.get("model") or run_model.get("name") or "")
    settings = _settings_of(meta.get("settings"))
    if settings is None and isinstance(manifest.get("settings"), dict):
        settings = manifest["settings"]
    return RunVideo(df, _fps_of(meta), model, name, settings, csvs[0])


def _short(value: Any, width: int = 60) -> str:
    """A setting's value as compact JSON, cut to `width` characters (for a one-line message)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def run_mismatch(review: EafReview, run: RunVideo) -> str:
    """What differs between the run that wrote an EAF and the run it is read against ("" when nothing does).

    Compared: the model's sha256 (its name only where a side has no checksum) and every setting that changes results,
    i.e. all but the runtime-only ones the resume key ignores (au_annotate.manifest._RUNTIME_ONLY); `weights` (the
    name or path it was given as) is left to the checksum when both sides have one. Settings are compared only when
    both sides record them (EAFs and CSVs of this tool always do)."""
    from au_annotate.manifest import _RUNTIME_ONLY

    diffs: list[str] = []
    checksums = bool(review.model_sha256 and run.model_sha256)
    if checksums and review.model_sha256 != run.model_sha256:
        diffs.append(f"model {review.model_name or '?'} ({review.model_sha256[:12]}) vs {run.model_name or '?'} "
                     f"({run.model_sha256[:12]})")
    elif not checksums and review.model_name and run.model_name and review.model_name != run.model_name:
        diffs.append(f"model {review.model_name} vs {run.model_name}")
    if review.settings is not None and run.settings is not None:
        ignore = _RUNTIME_ONLY | ({"weights"} if checksums else set())
        keys = sorted((set(review.settings) | set(run.settings)) - ignore)
        changed = [k for k in keys if review.settings.get(k) != run.settings.get(k)]
        diffs += [f"{k} {_short(review.settings.get(k))} vs {_short(run.settings.get(k))}" for k in changed[:3]]
        if len(changed) > 3:
            diffs.append(f"{len(changed) - 3} more setting(s): {', '.join(changed[3:])}")
    return "; ".join(diffs)


# --------------------------------------------------------------------------------------------------------- matching


def _iou_ms(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = min(a[1], b[1]) - max(a[0], b[0])
    if inter <= 0:
        return 0.0
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def _match(windows: Sequence[tuple[int, int]], marks: Sequence[CoderMark]) -> dict[int, int]:
    """Mark index -> window index, one-to-one, highest IoU first (ties: same lane order)."""
    pairs = sorted(((_iou_ms(w, (m.start_ms, m.end_ms)), wi, mi) for wi, w in enumerate(windows)
                    for mi, m in enumerate(marks)), key=lambda t: (-t[0], t[1], t[2]))
    used_w: set[int] = set()
    out: dict[int, int] = {}
    for v, wi, mi in pairs:
        if v <= 0:
            break
        if wi in used_w or mi in out:
            continue
        used_w.add(wi)
        out[mi] = wi
    return out


def parse_coder_code(text: str) -> tuple[str, str]:
    """(canonical AU set `4+7` of a coder's code, error) — the AU numbers at any side/intensity; "" for no AU."""
    if text.strip().lower() in NO_AU_WORDS:
        return "", ""
    try:
        return format_aus(parse(text).aus()), ""
    except FACSParseError as e:
        return "", str(e)


def review_rows(review: EafReview, run: RunVideo) -> tuple[list[dict[str, Any]], list[str]]:
    """The reviewed.csv rows of one EAF (one per tool window and per coder-added window) and its problem lines."""
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    df = run.segments
    au_cols = [c for c in df.columns if c.endswith("_p") and c != "emotion_model_p"]
    faces = list(dict.fromkeys([str(f) for f in df["face_id"]] + [m.face for m in review.review + review.codes]))
    for face in faces:
        seg = df[df["face_id"].astype(str) == face]
        windows = [span_ms(r.onset_s, r.offset_s, run.fps) for r in seg.itertuples(index=False)]
        marks = [m for m in review.review if m.face == face]
        decided = {wi: marks[mi] for mi, wi in _match(windows, marks).items()}
        codes = [m for m in review.codes if m.face == face]
        code_match = _match(windows, codes)
        coded = {wi: codes[mi] for mi, wi in code_match.items()}
        for wi, r in enumerate(seg.itertuples(index=False)):
            rec = r._asdict()
            tool_code = str(rec.get("aus") or "")
            dec_mark, code_mark = decided.get(wi), coded.get(wi)
            note = ""
            if dec_mark is None and code_mark is None:
                decision, note = REJECTED, "the coder deleted the window's annotations"
            else:
                decision = dec_mark.value if dec_mark is not None else UNREVIEWED
            if decision not in DECISION_VALUES:
                problems.append(f"{review.path}: {face} window at {windows[wi][0]} ms: decision {decision!r} is not "
                                f"one of {', '.join(DECISION_VALUES)}: left unreviewed")
                decision = UNREVIEWED
            moved = [m for m in (code_mark, dec_mark) if m is not None and (m.start_ms, m.end_ms) != windows[wi]]
            times = (moved[0].start_ms, moved[0].end_ms) if moved else windows[wi]
            code_text = code_mark.value if code_mark is not None else tool_code
            changed = bool(moved) or (code_mark is not None and parse_coder_code(code_text)[0] != tool_code)
            if decision == UNREVIEWED and changed:
                decision, note = CORRECTED, "code or times changed but left 'unreviewed': taken as corrected"
            row = _row(review, face, run, rec, au_cols, decision, times, code_text, note)
            if row["code_error"] and decision in (CONFIRMED, CORRECTED):
                problems.append(f"{review.path}: {face} window at {windows[wi][0]} ms: {row['code_error']} (row kept "
                                "with code_error, left out of the AU agreement)")
            rows.append(row)
        for mi, m in enumerate(codes):
            if mi in code_match:
                continue
            rej = [d for d in review.review if d.face == face and d.value == REJECTED
                   and _iou_ms((d.start_ms, d.end_ms), (m.start_ms, m.end_ms)) > 0.5]
            if rej:
                continue
            row = _row(review, face, run, None, au_cols, ADDED, (m.start_ms, m.end_ms), m.value, "")
            if row["code_error"]:
                problems.append(f"{review.path}: {face} added window at {m.start_ms} ms: {row['code_error']} (row "
                                "kept with code_error)")
            rows.append(row)
    return rows, problems


def _row(review: EafReview, face: str, run: RunVideo, rec: dict[str, Any] | None, au_cols: list[str], decision: str,
         times: tuple[int, int], code_text: str, note: str) -> dict[str, Any]:
    """One reviewed.csv row."""
    nan = float("nan")
    coder_aus, error = parse_coder_code(code_text)
    dur_s = (times[1] - times[0]) / 1000
    row: dict[str, Any] = {
        "video": review.video, "face_id": face, "coder": review.coder,
        "window": int(rec["segment_id"]) if rec else -1,
        "kind": str(rec["kind"]) if rec else ("micro" if dur_s <= MICRO_MAX_S else "macro"),
        "score": float(rec["score"]) if rec else nan, "decision": decision,
    }
    for k in ("onset_frame", "apex_frame", "offset_frame"):
        row[f"tool_{k}"] = int(rec[k]) if rec else -1
    for k in ("onset_s", "apex_s", "offset_s"):
        row[f"tool_{k}"] = float(rec[k]) if rec else nan
    row["coder_onset_s"], row["coder_offset_s"] = times[0] / 1000, times[1] / 1000
    row["coder_onset_frame"] = round(times[0] / 1000 * run.fps)
    row["coder_offset_frame"] = max(row["coder_onset_frame"], round(times[1] / 1000 * run.fps))
    if rec:  # error against the tool's own ms span (what the EAF showed), coder minus tool
        start, end = span_ms(rec["onset_s"], rec["offset_s"], run.fps)
        row["onset_error_ms"], row["offset_error_ms"] = times[0] - start, times[1] - end
    else:
        row["onset_error_ms"] = row["offset_error_ms"] = nan
    row["fps"] = run.fps
    row["tool_aus"] = str(rec.get("aus") or "") if rec else ""
    for c in au_cols:
        row[c] = float(rec[c]) if rec else nan
        cc = c[:-2] + "_c"
        row[cc] = int(rec[cc]) if rec and cc in rec else -1
    row.update({"coder_code": code_text, "coder_aus": coder_aus, "code_error": error, "note": note,
                "eaf": review.path.as_posix(), "model_sha256": run.model_sha256})
    return row


# ---------------------------------------------------------------------------------------------------------- import


def find_eafs(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[str]]:
    """Every `.eaf` under the inputs (files and folders, recursive, sorted); missing inputs as problem lines."""
    out: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() == ".eaf" and q.is_file())
        elif p.is_file():
            out.append(p)
        else:
            problems.append(f"{p}: no such file or folder")
    return list(dict.fromkeys(out)), problems


def import_reviews(inputs: Sequence[str | os.PathLike[str]], *, run: str | os.PathLike[str] | None = None,
                   coder: str | None = None) -> ImportResult:
    """Read every reviewed EAF under `inputs` into one table; each unusable file or code is one problem line, each EAF
    made by another run than the one found for it (run_mismatch) one `refused` line."""
    eafs, problems = find_eafs(inputs)
    rows: list[dict[str, Any]] = []
    cache: dict[tuple[Path, str], RunVideo] = {}
    run_dir = Path(run) if run is not None else None
    refused: list[str] = []
    files = 0
    for path in eafs:
        try:
            review = read_review_eaf(path, coder)
            folder = find_run(path, run_dir)
            if folder is None:
                raise ReviewError(f"{path}: no run manifest.json next to or above it: give the annotate output folder "
                                  "with --run")
            key = (folder, review.video)
            if key not in cache:
                cache[key] = load_run_video(folder, review.video)
            rv = cache[key]
            differs = run_mismatch(review, rv)
            if differs:
                raise RunMismatch(f"{path}: made by another run than {rv.source} (EAF vs run: {differs}); read against "
                                  "that run's windows the review would be wrong: give --run the annotate output folder "
                                  "this EAF came from")
            got, bad = review_rows(review, rv)
        except RunMismatch as e:
            refused.append(str(e))
            continue
        except ReviewError as e:
            problems.append(str(e))
            continue
        files += 1
        rows += got
        problems += bad
    return ImportResult(_frame(rows), problems, files, refused)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows as a DataFrame with the stable column order (AU columns in the model's order, between)."""
    au: list[str] = []
    for r in rows:
        for k in r:
            if (k.endswith("_p") or k.endswith("_c")) and k not in au and k not in LEAD + TAIL:
                au.append(k)
    return pd.DataFrame(rows, columns=[*LEAD, *au, *TAIL])


def write_reviewed(result: ImportResult, out_dir: str | os.PathLike[str]) -> Path:
    """Write `reviewed.csv` (with `#` provenance lines) into out_dir; returns its path.

    ReviewError, with nothing written, when the import refused an EAF (a table without it would pass for the whole
    review)."""
    from au_annotate._version import __version__
    from au_annotate.fileio import atomic_open
    from au_annotate.writers.base import utc_now

    if getattr(result, "refused", None):
        raise ReviewError(f"not written: {len(result.refused)} EAF file(s) refused: " + result.refused[0])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REVIEWED_NAME
    df = result.table
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(f"# au-annotate {__version__} review table (read with au_annotate.review.read_reviewed or "
                 "pandas.read_csv(path, comment='#'))\n")
        fh.write(f"# created: {utc_now()}\n# files: {result.files}\n# rows: {len(df)}\n")
        fh.write(f"# coders: {', '.join(sorted(set(df['coder']))) if len(df) else ''}\n")
        df.to_csv(fh, index=False, float_format="%.6f", lineterminator="\n")
    return path


TEXT_COLUMNS = ("video", "face_id", "coder", "kind", "decision", "tool_aus", "coder_code", "coder_aus", "code_error",
                "note", "eaf", "model_sha256")


def read_reviewed(path: str | os.PathLike[str]) -> pd.DataFrame:
    """reviewed.csv (or the folder holding it) read back with text kept as text ("" for empty)."""
    p = Path(path)
    if p.is_dir():
        p = p / REVIEWED_NAME
    if not p.is_file():
        raise ReviewError(f"{p}: no review table (run au-annotate review-import first)")
    df = pd.read_csv(p, comment="#", dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False, na_values={})
    for c in df.columns:
        if c not in TEXT_COLUMNS:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def table_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a review table file (recorded by calibrate and finetune)."""
    p = Path(path)
    if p.is_dir():
        p = p / REVIEWED_NAME
    return sha256_file(p)


def coder_au_sets(series: pd.Series) -> list[set[int]]:
    """`4+7` strings -> AU number sets."""
    return [{int(a) for a in str(v).split("+") if a.strip()} for v in series]


def tool_present(df: pd.DataFrame, au: str) -> np.ndarray:
    """The tool's 0/1 decision of one AU (`AU04`) per row (from `_c`)."""
    return df[f"{au}_c"].to_numpy(dtype=float) > 0.5
