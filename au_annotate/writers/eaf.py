"""ELAN `.eaf` output via pympi-ling, linked to the video so it opens next to it in ELAN.

- Media descriptor: MEDIA_URL = `file://` + the absolute path, RELATIVE_MEDIA_URL = the path from the .eaf's folder to
  the video (`./clip.mp4`, `../videos/clip.mp4`), both percent-encoded as URLs must be (`entrevista%20%233.mp4`: a
  space, `#` or non-ASCII letter written raw makes an invalid URL that media players and URL parsers misread), with the
  MIME type from the extension (`video/mp4`, `video/quicktime`, ...; `video/*` when unknown).
- Tiers (see au_annotate/writers/tiers.py for the overlap and zero-length rules): `segments` (value `micro 0.83`),
  `AUs` (the active code `4+7`, only where some AU is active), `emotion` (the FACS-rule emotion, only where a rule
  fired), `emotion_model` (the model's 3-class emotion with its probability, `negative 0.81`, when the checkpoint has
  an emotion head), and with
  `au_tiers` one tier per AU in the model's order (`AU04`, value `AU04`, where that AU is present). The `AU` and
  `emotion` tiers have linguistic types bound to controlled vocabularies (AU names with FACS descriptions; emotions).
  Tier PARTICIPANT = face id.
- Review tiers for a FACS coder (au_annotate/writers/review_schema.py), per face and lane like the others: `review`
  (controlled vocabulary unreviewed / confirmed / corrected / rejected, `unreviewed` on every window) and
  `AUs (coder)` (free text prefilled with the tool's code; read back by `au-annotate review-import`).
- Header properties `au-annotate:tool_version`, `:model_name`, `:model_sha256`, `:settings` (JSON), `:created`,
  `:video`, `:status`.
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from urllib.parse import quote

import pympi

from au_annotate.fileio import atomic_open
from au_annotate.records import VideoResult
from au_annotate.writers.base import TOOL_NAME, WriteContext, Writer, au_names_of, run_metadata, settings_json
from au_annotate.writers.review_schema import CODER_TIER, DECISIONS, REVIEW_CV, REVIEW_LINGTYPE, REVIEW_TIER, UNREVIEWED
from au_annotate.writers.tiers import au_description, plan_video, segment_label, span_ms, tier_name

MIME_TYPES: dict[str, str] = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mpg": "video/mpeg",
    ".mpeg": "video/mpeg",
    ".mov": "video/quicktime",
    ".avi": "video/x-msvideo",
    ".wmv": "video/x-ms-wmv",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".ogv": "video/ogg",
    ".flv": "video/x-flv",
    ".wav": "audio/x-wav",
}
RANGES_TIER = "analysed ranges"  # the time ranges analysed (--range, --ranges, --range-tier); absent = the whole video
BASIC_EMOTIONS = ("happiness", "sadness", "surprise", "fear", "anger", "disgust", "contempt")
LANG_ID = "eng"
LANG_DEF = "http://cdb.iso.org/lg/CDB-00138502-001"
PROP = f"{TOOL_NAME}:"


def mime_type(path: Path) -> str:
    """MIME type ELAN understands for a media file (by extension); `video/*` when unknown."""
    ext = path.suffix.lower()
    if ext in MIME_TYPES:
        return MIME_TYPES[ext]
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed if guessed and guessed.split("/")[0] in ("video", "audio") else "video/*"


def media_urls(video: Path, eaf_path: Path) -> tuple[str, str]:
    """(absolute file URL, relative URL from the .eaf's folder) for a video, percent-encoded (RFC 3986; UTF-8)."""
    absolute = Path(os.path.abspath(video))
    posix = absolute.as_posix()
    url = "file://" + quote(posix if posix.startswith("/") else "/" + posix, safe="/:")
    rel = Path(os.path.relpath(absolute, Path(os.path.abspath(eaf_path)).parent)).as_posix()
    if not rel.startswith("../"):
        rel = "./" + rel
    return url, quote(rel, safe="/")


def _add_cv_type(eaf: pympi.Elan.Eaf, lingtype: str, cv_id: str, entries: list[tuple[str, str]]) -> None:
    """A controlled vocabulary with (value, description) entries and a time-alignable linguistic type bound to it."""
    eaf.add_controlled_vocabulary(cv_id)
    eaf.add_cv_description(cv_id, LANG_ID, None)
    for i, (value, description) in enumerate(entries):
        eaf.add_cv_entry(cv_id, f"cveid_{cv_id}_{i}", [(value, LANG_ID, description or None)])
    eaf.add_linguistic_type(
        lingtype,
        param_dict={
            "LINGUISTIC_TYPE_ID": lingtype,
            "TIME_ALIGNABLE": "true",
            "GRAPHIC_REFERENCES": "false",
            "CONTROLLED_VOCABULARY_REF": cv_id,
        },
    )


def build_eaf(result: VideoResult, eaf_path: Path, ctx: WriteContext) -> pympi.Elan.Eaf:
    """The Eaf object for one video (separate from writing so it can be inspected and tested)."""
    eaf = pympi.Elan.Eaf(author=f"{TOOL_NAME} {ctx.tool_version}")
    eaf.remove_tier("default")
    eaf.remove_linguistic_type("default-lt")
    eaf.remove_property("lastUsedAnnotation")
    eaf.header.update({"MEDIA_FILE": "", "TIME_UNITS": "milliseconds"})
    url, rel = media_urls(result.job.path, eaf_path)
    eaf.add_linked_file(url, relpath=rel, mimetype=mime_type(result.job.path))

    meta = run_metadata(ctx)
    for key in ("tool_version", "model_name", "model_sha256", "created"):
        eaf.add_property(PROP + key, str(meta[key]))
    eaf.add_property(PROP + "settings", settings_json(ctx))
    eaf.add_property(PROP + "video", result.job.rel.as_posix())
    eaf.add_property(PROP + "status", result.status)

    segments = result.segments
    au_names = au_names_of(segments, ctx.au_names)
    eaf.add_language(LANG_ID, LANG_DEF, "English (eng)")
    eaf.add_linguistic_type("segment")
    eaf.add_linguistic_type("AU-code")
    emotions = list(BASIC_EMOTIONS) + sorted({s.emotion for s in segments if s.emotion} - set(BASIC_EMOTIONS))
    _add_cv_type(eaf, "emotion", "emotions", [(e, "") for e in emotions])
    if ctx.au_tiers:
        _add_cv_type(eaf, "AU", "AUs", [(n, au_description(n)) for n in au_names])
    _add_cv_type(eaf, REVIEW_LINGTYPE, REVIEW_CV, list(DECISIONS))  # coder review (au_annotate/writers/review_schema.py)

    fps = result.info.fps if result.info is not None else None
    faces, lanes, spans = plan_video(segments, fps)
    multi = len(faces) > 1
    for face in faces or ["face0"]:
        for lane in range(lanes.get(face, 1)):
            eaf.add_tier(tier_name("segments", face, lane, multi), ling="segment", part=face)
            eaf.add_tier(tier_name("AUs", face, lane, multi), ling="AU-code", part=face)
            eaf.add_tier(tier_name("emotion_facs", face, lane, multi), ling="emotion", part=face)
            eaf.add_tier(tier_name("emotion_model", face, lane, multi), ling="segment", part=face)
            eaf.add_tier(tier_name(REVIEW_TIER, face, lane, multi), ling=REVIEW_LINGTYPE, part=face)
            eaf.add_tier(tier_name(CODER_TIER, face, lane, multi), ling="AU-code", part=face)
            if ctx.au_tiers:
                for name in au_names:
                    eaf.add_tier(tier_name(name, face, lane, multi), ling="AU", part=face)

    for span in spans:
        s = span.segment
        face = str(s.face_id)
        t = (span.start_ms, span.end_ms)
        quality = getattr(s, "quality", "ok")  # a gated window (spot = {gated = "label"}): `micro 0.83 head_motion`
        label = segment_label(s) if quality == "ok" else f"{segment_label(s)} {quality}"
        if getattr(s, "context", ""):  # what the face was doing meanwhile: `micro 0.83 (speech)`
            label = f"{label} ({s.context})"
        eaf.add_annotation(tier_name("segments", face, span.lane, multi), *t, value=label)
        eaf.add_annotation(tier_name(REVIEW_TIER, face, span.lane, multi), *t, value=UNREVIEWED)
        eaf.add_annotation(tier_name(CODER_TIER, face, span.lane, multi), *t, value=s.aus or "")
        if s.aus:
            eaf.add_annotation(tier_name("AUs", face, span.lane, multi), *t, value=s.aus)
        if s.emotion:
            eaf.add_annotation(tier_name("emotion_facs", face, span.lane, multi), *t, value=s.emotion)
        if s.emotion_model:
            eaf.add_annotation(tier_name("emotion_model", face, span.lane, multi), *t,
                               value=f"{s.emotion_model} {s.emotion_model_p:.2f}")
        if ctx.au_tiers:
            for name, present in zip(s.au_names, s.present, strict=True):
                if bool(present):
                    eaf.add_annotation(tier_name(name, face, span.lane, multi), *t, value=name)
    if result.job.ranges:  # what was analysed: outputs keep the video's own time axis
        eaf.add_linguistic_type("range")
        eaf.add_tier(RANGES_TIER, ling="range")
        for a, b in result.job.ranges:
            eaf.add_annotation(RANGES_TIER, *span_ms(a, b, fps), value="analysed")
    eaf.add_property("lastUsedAnnotation", eaf.maxaid)
    return eaf


class EAFWriter(Writer):
    """Per-video `<stem>.eaf` for ELAN."""

    name = "eaf"
    extension = ".eaf"

    def write(self, result: VideoResult, path: Path, ctx: WriteContext) -> None:
        """Serialise with pympi and write atomically (pympi's own to_file would leave a `.bak` of the temp file)."""
        eaf = build_eaf(result, Path(path), ctx)
        data = pympi.Elan.to_string(eaf, pretty=True, encoding="unicode")
        with atomic_open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write('<?xml version="1.0" encoding="UTF-8"?>\n')
            fh.write(data)
