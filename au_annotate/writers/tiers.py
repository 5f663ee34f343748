"""Tier layout shared by the EAF and TextGrid writers: times in ms, no zero-length and no overlapping annotations.

ELAN and Praat tiers cannot hold two annotations at the same time. Segments of one face that overlap (a micro inside a
macro, two spotters' windows) are therefore put on numbered overflow tiers ("lanes") rather than clipped or shifted:
every annotation keeps its exact times. Lane 1 is the plain tier name (`segments`); a segment that overlaps one already
on lane 1 goes to `segments 2`, and so on (greedy interval partitioning in onset order, so the fewest lanes are used).
With more than one face in a video, every tier also carries the face id (`segments face1`, `segments face1 2`).

Times: start = round(onset_s * 1000), end = round(offset_s * 1000) in ms, from the real timestamps in the Segment.
A segment whose onset and offset fall on the same ms (a one-frame window) ends one frame later (1000 / fps ms, at
least 1 ms) so the annotation has a length; annotations that only touch (end == next start) share a lane.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from au_annotate.records import Segment

# FACS 2002 names of the action units, used as descriptions in the ELAN controlled vocabulary and in the report.
AU_DESCRIPTIONS: dict[int, str] = {
    1: "Inner Brow Raiser", 2: "Outer Brow Raiser", 4: "Brow Lowerer", 5: "Upper Lid Raiser", 6: "Cheek Raiser",
    7: "Lid Tightener", 8: "Lips Toward Each Other", 9: "Nose Wrinkler", 10: "Upper Lip Raiser",
    11: "Nasolabial Deepener", 12: "Lip Corner Puller", 13: "Sharp Lip Puller", 14: "Dimpler",
    15: "Lip Corner Depressor", 16: "Lower Lip Depressor", 17: "Chin Raiser", 18: "Lip Pucker", 19: "Tongue Show",
    20: "Lip Stretcher", 21: "Neck Tightener", 22: "Lip Funneler", 23: "Lip Tightener", 24: "Lip Pressor",
    25: "Lips Part", 26: "Jaw Drop", 27: "Mouth Stretch", 28: "Lip Suck", 29: "Jaw Thrust", 30: "Jaw Sideways",
    31: "Jaw Clencher", 32: "Lip Bite", 33: "Cheek Blow", 34: "Cheek Puff", 35: "Cheek Suck", 36: "Tongue Bulge",
    37: "Lip Wipe", 38: "Nostril Dilator", 39: "Nostril Compressor", 41: "Lid Droop", 42: "Slit", 43: "Eyes Closed",
    44: "Squint", 45: "Blink", 46: "Wink", 51: "Head Turn Left", 52: "Head Turn Right", 53: "Head Up",
    54: "Head Down", 55: "Head Tilt Left", 56: "Head Tilt Right", 57: "Head Forward", 58: "Head Back",
    61: "Eyes Turn Left", 62: "Eyes Turn Right", 63: "Eyes Up", 64: "Eyes Down",
}  # fmt: skip


def au_description(name: str) -> str:
    """`AU04` -> `Brow Lowerer` ("" for an AU without a FACS name here)."""
    digits = "".join(ch for ch in name if ch.isdigit())
    return AU_DESCRIPTIONS.get(int(digits), "") if digits else ""


@dataclass(frozen=True)
class Span:
    """Where one segment goes on the tiers: its times in ms and its lane (0 = the plain tier)."""

    segment: Segment
    start_ms: int
    end_ms: int
    lane: int


def span_ms(onset_s: float, offset_s: float, fps: float | None) -> tuple[int, int]:
    """The one seconds -> ELAN ms rule: start = round(onset_s * 1000) (never below 0), end = round(offset_s * 1000),
    and an end not after the start moves one frame (1000 / fps ms, at least 1 ms) past it. The EAF and TextGrid
    writers place annotations by it and the review importer matches the coder's annotations by it."""
    start = max(0, round(float(onset_s) * 1000))
    end = round(float(offset_s) * 1000)
    if end <= start:
        frame_ms = round(1000 / fps) if fps and fps > 0 else 1
        end = start + max(1, frame_ms)
    return start, end


def segment_ms(segment: Segment, fps: float | None) -> tuple[int, int]:
    """Start and end of a segment in ms from its real timestamps, never zero-length (``span_ms``)."""
    return span_ms(segment.onset_s, segment.offset_s, fps)


def plan_spans(segments: Sequence[Segment], fps: float | None) -> list[Span]:
    """Assign each segment of ONE face a lane so that no two spans on a lane overlap; returned in onset order."""
    timed = sorted(((segment_ms(s, fps), s) for s in segments), key=lambda t: (t[0][0], t[0][1], t[1].segment_id))
    lane_ends: list[int] = []
    out: list[Span] = []
    for (start, end), seg in timed:
        lane = next((i for i, e in enumerate(lane_ends) if e <= start), len(lane_ends))
        if lane == len(lane_ends):
            lane_ends.append(end)
        else:
            lane_ends[lane] = end
        out.append(Span(seg, start, end, lane))
    return out


def faces_in_order(segments: Sequence[Segment]) -> list[str]:
    """Face ids in order of first appearance."""
    return list(dict.fromkeys(str(s.face_id) for s in segments))


def tier_name(base: str, face_id: str, lane: int, multi_face: bool) -> str:
    """`segments`, `segments 2` (overflow lane), `segments face1`, `segments face1 2`."""
    parts = [base]
    if multi_face:
        parts.append(face_id)
    if lane > 0:
        parts.append(str(lane + 1))
    return " ".join(parts)


def plan_video(segments: Sequence[Segment], fps: float | None) -> tuple[list[str], dict[str, int], list[Span]]:
    """Faces (in order), lanes needed per face, and all spans (per face, onset order)."""
    faces = faces_in_order(segments)
    spans: list[Span] = []
    lanes: dict[str, int] = {}
    for face in faces:
        face_spans = plan_spans([s for s in segments if str(s.face_id) == face], fps)
        lanes[face] = 1 + max((sp.lane for sp in face_spans), default=0)
        spans += face_spans
    return faces, lanes, spans


def segment_label(segment: Segment) -> str:
    """The value on the `segments` tier: kind and spotting score as a multiple of the threshold, e.g. `micro 2.31×`."""
    return f"{segment.kind} {segment.score:.2f}×"
