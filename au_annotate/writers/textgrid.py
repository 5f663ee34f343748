"""Praat TextGrid output via praatio: the EAF's tiers as interval tiers, UTF-8 long TextGrid format.

Tier names, lanes and times follow au_annotate/writers/tiers.py (the EAF's ms times, in seconds), so a TextGrid and an
EAF of the same video hold the same intervals. The grid spans 0 .. the video's duration (or the last offset when the
duration is unknown); gaps between segments are blank intervals, as Praat expects. TextGrid has no header for metadata:
the tool version and model checksum go into a point tier `au-annotate` with one point at time 0 whose label is
`au-annotate <version> model <name> sha256 <checksum>`.
"""

from __future__ import annotations

from pathlib import Path

from praatio import textgrid

from au_annotate.fileio import atomic_path
from au_annotate.records import VideoResult
from au_annotate.writers.base import TOOL_NAME, WriteContext, Writer, au_names_of
from au_annotate.writers.tiers import plan_video, segment_label, tier_name


def build_textgrid(result: VideoResult, ctx: WriteContext) -> textgrid.Textgrid:
    """The praatio Textgrid for one video."""
    segments = result.segments
    au_names = au_names_of(segments, ctx.au_names)
    fps = result.info.fps if result.info is not None else None
    faces, lanes, spans = plan_video(segments, fps)
    multi = len(faces) > 1
    last = max((sp.end_ms for sp in spans), default=0) / 1000
    duration = result.info.duration_s if result.info is not None and result.info.duration_s > 0 else 0.0
    max_t = max(duration, last, 0.001)

    entries: dict[str, list[tuple[float, float, str]]] = {}
    for face in faces or ["face0"]:
        for lane in range(lanes.get(face, 1)):
            bases = ["segments", "AUs", "emotion_facs", "emotion_model"] + (list(au_names) if ctx.au_tiers else [])
            for base in bases:
                entries[tier_name(base, face, lane, multi)] = []
    for span in spans:
        s = span.segment
        face = str(s.face_id)
        t = (span.start_ms / 1000, span.end_ms / 1000)
        entries[tier_name("segments", face, span.lane, multi)].append((*t, segment_label(s)))
        if s.aus:
            entries[tier_name("AUs", face, span.lane, multi)].append((*t, s.aus))
        if s.emotion:
            entries[tier_name("emotion_facs", face, span.lane, multi)].append((*t, s.emotion))
        if s.emotion_model:  # the model's 3-class emotion, as on the EAF's tier of that name
            entries[tier_name("emotion_model", face, span.lane, multi)].append(
                (*t, f"{s.emotion_model} {s.emotion_model_p:.2f}"))
        if ctx.au_tiers:
            for name, present in zip(s.au_names, s.present, strict=True):
                if bool(present):
                    entries[tier_name(name, face, span.lane, multi)].append((*t, name))

    tg = textgrid.Textgrid(minTimestamp=0.0, maxTimestamp=max_t)
    label = f"{TOOL_NAME} {ctx.tool_version} model {ctx.model_name} sha256 {ctx.model_sha256}"
    tg.addTier(textgrid.PointTier(TOOL_NAME, [(0.0, label)], 0.0, max_t))
    for name, items in entries.items():
        tg.addTier(textgrid.IntervalTier(name, items, 0.0, max_t))
    return tg


class TextGridWriter(Writer):
    """Per-video `<stem>.TextGrid` for Praat."""

    name = "textgrid"
    extension = ".TextGrid"

    def write(self, result: VideoResult, path: Path, ctx: WriteContext) -> None:
        """Write the long TextGrid format (UTF-8) atomically."""
        tg = build_textgrid(result, ctx)
        with atomic_path(path) as tmp:
            tg.save(str(tmp), format="long_textgrid", includeBlankSpaces=True, reportingMode="error")
