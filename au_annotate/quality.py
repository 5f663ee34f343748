"""Quality gating of spotted windows: is a window's motion evidence explained by something that is not an expression?

The roi-flow spotter (au_annotate/spot/) records cheap per-frame and per-step signals while it runs and labels each
window it emits with one of QUALITIES; only "ok" windows are reported and counted by default (like blinks, the others
are kept for the HTML report, and written with their label when `spot = {gated = "label"}`).

Signals (all are by-products of what the spotter and the tracker compute anyway):
- `match`: the tracker's template score of the frame; a window with a frame where the face is missing, or whose lowest
  match falls `match_drop` below the track's running median (last `history_s`), is `tracking_lost`.
- `bright`: mean gray level of the face crop; a change of more than `lighting_jump` (a share of the level) between
  frames k apart inside the window is `lighting`.
- `spread_px`: median residual motion (after the rigid fit) over the whole face; when it reaches `spread_ratio` of the
  window's own evidence, the motion is not local (a hand, hair, a whole-face movement): `occlusion`. Off by default
  (`spread_ratio` 0): real smiles and brow raises move the whole face too (docs/spotting.md, round 9); occlusion
  comes from the landmark model losing the face instead (au_annotate.facestate).
- `head_px`: mean rotation/scale/shear part of the rigid (affine) motion of the face inside the aligned crop over k
  (its translation is fitted exactly, so it cannot leave fit errors; with the spotter's polynomial `motion_model`
  the smooth non-planar part of the fit counts too), plus the crop's own displacement in the frame
  (the tracker's box, in crop pixels) times `box_weight` (0 by default: a translation the tracker follows leaves the
  crops aligned); when it exceeds `head_ratio` times the evidence, the residual is within what the rigid fit's errors
  can produce: `head_motion`.

All ratios are between motions measured in the same units on the same frames, so they hold for any face size, frame
rate and resolution. The order of the checks (tracking, lighting, occlusion, head motion) puts the cause that makes
the others meaningless first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from au_annotate.records import VideoResult

QUALITIES = ("ok", "occlusion", "head_motion", "tracking_lost", "lighting")
# a video's detection floor (records.DetectionFloor) at or above this share of the eye distance gets a warning: the top
# of the subtle range (1-3 px per 100 px between the eyes) that the planted-on-real benchmark plants, in region motion
INSENSITIVE_PCT_IOD = 3.0


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the window gate (see the module docstring); every one is a ratio or a share, not pixels."""

    match_drop: float = 0.15
    lighting_jump: float = 0.06
    spread_ratio: float = 0.0  # 0: the whole-face spread rule is off (the default: it gated real expressions)
    head_ratio: float = 1.0
    box_weight: float = 0.0  # a translation the tracker follows leaves the crops aligned: not counted by default


@dataclass(frozen=True)
class FrameSignals:
    """Per-frame gate signals: template score, mean crop brightness, and the crop's centre and side in the frame."""

    match: float
    bright: float
    cx: float
    cy: float
    side: float


@dataclass(frozen=True)
class StepSignals:
    """Per flow step (crop k back -> crop): rigid motion and spread of the residual, in pixels of a 224-px crop."""

    head_px: float
    spread_px: float


def label_window(frames: Sequence[FrameSignals | None], steps: Sequence[StepSignals | None], k: int,
                 evidence_px: float, match_level: float, cfg: GateConfig) -> str:
    """The quality label of one window from its frames' and steps' signals (onset - k .. offset + k)."""
    if not frames or any(f is None for f in frames):
        return "tracking_lost"
    fr = [f for f in frames if f is not None]
    if min(f.match for f in fr) < match_level - cfg.match_drop:
        return "tracking_lost"
    ev = max(evidence_px, 1e-6)
    head_box = 0.0
    for a, b in zip(fr, fr[k:], strict=False):
        level = max(8.0, 0.5 * (a.bright + b.bright))
        if abs(b.bright - a.bright) > cfg.lighting_jump * level:
            return "lighting"
        head_box = max(head_box, 224.0 * float(((b.cx - a.cx) ** 2 + (b.cy - a.cy) ** 2) ** 0.5) / max(b.side, 1.0))
    st = [s for s in steps if s is not None]
    if cfg.spread_ratio > 0 and st and max(s.spread_px for s in st) >= cfg.spread_ratio * ev:
        return "occlusion"
    head = max((s.head_px for s in st), default=0.0) + cfg.box_weight * head_box
    if head > cfg.head_ratio * ev:
        return "head_motion"
    return "ok"


MESH_MIN_SAMPLES = 3  # sampled frames (one every 2 s) before the landmark coverage is judged by frames, not windows


def video_warning(fps: float, frames: int, frames_with_face: int, reported: int, gated: Sequence[str],
                  floor_pct_iod: float | None = None, contexts: Sequence[str] = (),
                  mesh: tuple[int, int] = (0, 0)) -> str | None:
    """One line for the run manifest when a video's spotting is not to be trusted (None when nothing to say).

    `reported` counts the windows written with quality ok, `gated` lists the other windows' quality labels,
    `floor_pct_iod` is the main face's detection floor (records.DetectionFloor.pct_iod), `contexts` every window's
    face-state context (records.Window.context), `mesh` the main face's (sampled frames, with a landmark mesh)."""
    notes = []
    if 0 < fps < 10:
        notes.append(f"{fps:.3g} fps is too slow for micro-expressions (0.2-0.5 s span 1-5 frames)")
    if frames and frames_with_face < 0.5 * frames:
        notes.append(f"face tracked in only {100 * frames_with_face / frames:.0f} % of frames")
    if len(gated) >= 5 and len(gated) > reported:
        counts: dict[str, int] = {}
        for q in gated:
            counts[q] = counts.get(q, 0) + 1
        top = ", ".join(f"{q} x{n}" for q, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        notes.append(f"{len(gated)} of {len(gated) + reported} candidate windows not reported ({top})")
    lost = sum("no_landmarks" in c.split("+") for c in contexts)
    sampled, found = mesh
    if sampled >= MESH_MIN_SAMPLES and found < 0.5 * sampled:  # by frames sampled over the whole track
        notes.append(f"the landmark model found no face on {sampled - found} of {sampled} frames sampled every "
                     "2 s (profile, occlusion, a dark or small face): blinks, talking and head turns were not told "
                     "apart there")
    elif sampled < MESH_MIN_SAMPLES and len(contexts) >= 3 and lost > len(contexts) / 2:  # short: by windows
        notes.append(f"the landmark model found no face on {lost} of {len(contexts)} windows (profile, occlusion or a "
                     "small face): blinks, talking and head turns were not told apart there")
    line = "spotting unreliable: " + "; ".join(notes) if notes else ""
    if floor_pct_iod is not None and floor_pct_iod >= INSENSITIVE_PCT_IOD:
        line += "; " if line else ""
        line += (f"spotting insensitive: the face's own motion puts the micro threshold at {floor_pct_iod:.1f} % of "
                 "the eye distance (smaller movements are not found)")
    return line or None


SHORT_VIDEO_S = 2.0  # a video (or range) shorter than this is too short to judge: the spotter warms up for 1 s and a
# window needs its onset, apex and offset after that
TRUNCATED_FRAMES = 3  # a container's frame count is often an estimate a few frames off (WMV, MOV): more is truncation
BRIEF_FACE_S = 1.0  # a face tracked for less than this cannot carry a window (warm-up)


def video_warnings(result: VideoResult) -> tuple[str, ...]:
    """Every reason to distrust a finished video's spotting, one line each naming the file: decoding that stopped
    early, a video too short to judge, faces found but (almost) not tracked, and video_warning's spotting notes."""
    if result.status not in ("done", "no_face") or result.info is None:
        return ()
    path, info = result.job.path, result.info
    out = []
    expected = info.n_frames
    if result.job.ranges and info.fps > 0:  # the frames of the ranges (clipped to the video)
        end = info.duration_s if info.duration_s > 0 else math.inf
        expected = sum(int(round((min(b, end) - a) * info.fps)) for a, b in result.job.ranges if a < end)
    if expected and result.frames < expected - max(TRUNCATED_FRAMES, expected // 100):
        seconds = f"; {result.decoded_s:.1f} of {info.duration_s:.1f} s decoded" if result.decoded_s > 0 else ""
        out.append(f"{path}: decoding stopped after {result.frames} of {expected} frames (damaged or truncated "
                   f"file{seconds}): the rest is not annotated")
    if result.status == "done" and result.decoded_s < SHORT_VIDEO_S:
        out.append(f"{path}: only {result.decoded_s:.2f} s of video: too short to judge (the spotter needs about "
                   f"{SHORT_VIDEO_S:g} s: 1 s of warm-up, then a whole window), so finding nothing says nothing")
    fps = info.fps if info.fps > 0 else 30.0
    with_windows = {s.face_id for s in result.segments}
    idle = {f: n for f, n in result.face_frames.items() if f not in with_windows}
    if result.faces > 1 and idle:
        brief = [f"{f} ({n / fps:.1f} s)" for f, n in idle.items() if n < BRIEF_FACE_S * fps]
        long = [f"{f} ({n / fps:.1f} s)" for f, n in idle.items() if n >= BRIEF_FACE_S * fps]
        parts = []
        if brief:
            parts.append(f"{', '.join(brief)} tracked too briefly to spot (under {BRIEF_FACE_S:g} s: passers-by, a "
                         "picture, or a detection the tracker lost)")
        if long:
            parts.append(f"{', '.join(long)} tracked with no window")
        out.append(f"{path}: {result.faces} faces found; " + "; ".join(parts))
    if result.status == "done":
        gated = [w.quality for w in result.unreported if w.quality != "ok" and w.reason != "below_threshold"]
        ok = sum(1 for s in result.segments if s.quality == "ok")
        main = result.floors.get("face0") or next(iter(result.floors.values()), None)
        contexts = [s.context for s in result.segments] + [w.context for w in result.unreported
                                                           if w.reason != "below_threshold"]
        spot = video_warning(info.fps, result.frames, result.frames_with_face, ok, gated,
                             main.pct_iod if main is not None else None, contexts,
                             (main.mesh_samples, main.mesh_found) if main is not None else (0, 0))
        if spot:
            out.append(f"{path}: {spot}")
    return tuple(out)
