"""JSON output: one UTF-8 document per video with the run metadata, the video's facts and every segment.

Shape (``schema`` = "au-annotate/segments-v2"; v1, before 2026-12-08, called ``emotion_facs`` ``emotion``)::

    {"schema": ..., "metadata": {tool, tool_version, model_name, model_sha256, created, settings},
     "video": {path, rel, status, error, info: {backend, pixels, width, height, fps, n_frames, duration_s} | null,
               frames, frames_with_face, faces, elapsed_s,
               detection_floor: {face_id: {pct_iod, steps, regions: {brow_l: ..., ...}, landmarks?}}},
     "au_names": ["AU04", ...],
     "segments": [{video, face_id, segment_id, kind, onset_frame, apex_frame, offset_frame, onset_s, apex_s, offset_s,
                   duration_s, score, aus, active: ["AU04", ...], emotion_facs, rule, probs: {"AU04": 0.91, ...}}]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from au_annotate.fileio import atomic_open
from au_annotate.records import Segment, VideoResult
from au_annotate.writers.base import (
    DECISIONS,
    LEAD_COLUMNS,
    WriteContext,
    Writer,
    au_names_of,
    jsonable,
    run_metadata,
)

SCHEMA = "au-annotate/segments-v2"  # v2: `emotion` renamed `emotion_facs` (2026-12-08)


SCORE_UNIT = "multiple of the spotting threshold the window was held to (1.0 = just reported)"


def segment_dict(s: Segment) -> dict[str, Any]:
    """One segment as a JSON object (the CSV's values, with probabilities keyed by AU name)."""
    out: dict[str, Any] = {c: getattr(s, c) for c in LEAD_COLUMNS}  # `video` first, as in the CSV
    out["aus"] = s.aus
    out["active"] = [n for n, p in zip(s.au_names, s.present, strict=True) if bool(p)]
    out["emotion_facs"] = s.emotion
    out["rule"] = s.rule
    out["emotion_model"] = s.emotion_model
    out["emotion_model_p"] = None if s.emotion_model_p != s.emotion_model_p else float(s.emotion_model_p)
    if s.uncalibrated:
        out["uncalibrated"] = list(s.uncalibrated)
    out["probs"] = {n: float(p) for n, p in zip(s.au_names, s.probs, strict=True)}
    return jsonable(out)


def video_document(result: VideoResult, ctx: WriteContext) -> dict[str, Any]:
    """The whole JSON document for one video."""
    info = result.info
    return {
        "schema": SCHEMA,
        "metadata": run_metadata(ctx),
        "video": jsonable(
            {
                "path": str(result.job.path),
                "rel": result.job.rel.as_posix(),
                "status": result.status,
                "error": result.error,
                "info": None
                if info is None
                else {
                    "backend": info.backend,
                    "pixels": info.pixels,  # "gray" when only the luma plane was decoded
                    "width": info.width,
                    "height": info.height,
                    "fps": info.fps,
                    "n_frames": info.n_frames,
                    "duration_s": info.duration_s,
                },
                "frames": result.frames,
                "frames_with_face": result.frames_with_face,
                "faces": result.faces,
                "elapsed_s": result.elapsed_s,
                # how small a movement each face's spotter could see, in % of the eye distance (records.DetectionFloor)
                "detection_floor": {fid: f.as_dict() for fid, f in result.floors.items()},
                "ranges": [list(r) for r in result.job.ranges],  # analysed time ranges in s; [] = the whole video
                "warnings": list(result.warnings),
            }
        ),
        "score_unit": SCORE_UNIT,
        "thresholds": {au: thr for au, thr in ctx.thresholds},  # AUs without one: probability only (au_names)
        "decisions": DECISIONS,
        "au_names": list(au_names_of(result.segments, ctx.au_names)),
        "segments": [segment_dict(s) for s in result.segments],
    }


class JSONWriter(Writer):
    """Per-video `<stem>.json`."""

    name = "json"
    extension = ".json"

    def write(self, result: VideoResult, path: Path, ctx: WriteContext) -> None:
        """Write the document atomically (UTF-8, non-ASCII kept as is, NaN written as null)."""
        doc = video_document(result, ctx)
        with atomic_open(path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, ensure_ascii=False, indent=1, allow_nan=False)
            fh.write("\n")
