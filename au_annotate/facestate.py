"""What the face is doing around a candidate window: eyes, mouth, talking, head pose and landmark presence.

The spotter finds windows from region motion; this module explains them. For the frames around a candidate it runs
the dense landmark model (`landmarks.FaceMesh`, ~20 ms a call, so never on every frame) on the crops the spotter's ring
still holds and turns each mesh into a `FaceStateSample` (eye openness, mouth aperture, head pose, presence). Then
`explain()` decides, by rules fixed from anatomy before any evaluation (docs/spotting.md, round 9):

- blink: the eyes close and open again. Both eyes' openness (lid gap / eye width) falls to at most `BLINK_CLOSED` of
  its open level (the median of the samples outside the window) somewhere inside the window, and a later sample (inside
  or just after the window) is above that again. A blink closes the lid most of the way; lid tightening (AU7) or a
  cheek raise (AU6) narrows the eye by far less; eyes that close and stay closed are not a blink (round 9: real CASME II
  micro-expressions where the eyes shut during a brow lowering).
- speech: the mouth opens and closes repeatedly around the window: at least `SPEECH_CYCLES` openings of at least
  `SPEECH_OPENING` inter-ocular distances (IOD) within +-`SPEECH_SPAN_S` of the apex (syllables come at 3-6 Hz and open
  the lips several millimetres; a lips-part micro-expression opens them once).
- head motion: the head's rigid 3-D rotation (Kabsch fit of the stable points: eye corners, nose bridge, forehead,
  nose tip) from the window's first sample reaches `HEAD_DEGREES` in at least half of the later samples inside it (at
  3 degrees the nose tip's parallax, ~0.5 IOD of depth, is ~2.6 % IOD: more than a median real micro-expression's
  1 %). Half, not one: the mesh's depth jumps for a frame or two when the mouth opens fast (3.5-4 degrees at the onset
  of real smiles with a still head), while a turn persists.
- occlusion: the landmark model loses the face (presence < 0.5) inside the window while it had it just before or
  after (on any reference sample: a hand, an object; a face the mesh only flickers on is then occlusion too, not
  reported, which keeps a flaky small face from passing its windows as explained). Landmarks missing on most of a
  window's samples otherwise (profile, tiny or dark face) is `no_landmarks` (a mesh on fewer than half of them: one
  spurious mesh decides nothing).

Distances are in IOD (distance between the eye centres), so the rules hold for any face size, resolution and frame rate;
times are in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from au_annotate.landmarks import POINTS, STABLE, Mesh

BLINK_CLOSED = 0.5  # eyes count as closed at this share of their open level (or less)
SPEECH_OPENING = 0.04  # one syllable opens the inner lips by at least this many IODs (~2.5 mm on an adult face)
SPEECH_CYCLES = 2  # this many openings around the window make it "talking"
SPEECH_SPAN_S = 0.5  # talking is looked for within this many seconds each side of the apex
SPEECH_RATE_HZ = 10.0  # mouth samples per second for the talking test
HEAD_DEGREES = 3.0  # rigid head rotation within a window that makes it head motion
BLINK_REF_S = 0.15  # open-eye reference samples this long before the onset and after the offset
WINDOW_SAMPLES = 6  # landmark samples inside a window (evenly spaced, onset and offset included)

_R = POINTS
BROW_POINTS = (70, 63, 105, 66, 107, 300, 293, 334, 296, 336)  # the upper edge of both brows (canonical mesh)


@dataclass(frozen=True)
class FaceStateSample:
    """The state of one face in one frame, from its dense landmarks (distances in IOD, angles in degrees)."""

    index: int
    presence: float  # the landmark model's face-presence probability
    eye_r: float  # openness of the subject's right eye: mean lid gap / eye width (open ~0.25-0.35, closed < 0.1)
    eye_l: float
    mouth: float  # inner-lip gap / IOD
    roll: float  # in-plane head rotation (eye line angle)
    iod: float  # inter-ocular distance in crop pixels
    stable: np.ndarray  # (len(STABLE), 3) the stable points, for the rigid fit between samples
    # expression geometry in the head's own 3-D frame (`head_frame`), in IODs: what a held expression changes
    brows: float = math.nan  # mean height of the brows above the eye centres (a raise: up; a frown: down)
    brow_gap: float = math.nan  # distance between the inner ends of the brows (a frown knits them)
    corners: float = math.nan  # mean height of the mouth corners below the eye centres (a smile lifts them)
    mouth_w: float = math.nan  # mouth width, corner to corner (a smile widens it, a pucker narrows it)

    @property
    def eyes(self) -> float:
        """Mean openness of both eyes."""
        return 0.5 * (self.eye_r + self.eye_l)


@dataclass(frozen=True)
class WindowContext:
    """Why a window may not be an expression, from the face state around it."""

    blink: bool = False
    speech: bool = False
    head_deg: float = 0.0  # rigid head rotation reached by at least half of the window's samples (degrees)
    occluded: bool = False  # landmarks lost inside the window while present next to it
    landmarks: bool = True  # False: no sample had a trusted mesh (nothing above is known)
    eyes_min_ratio: float = 1.0  # lowest eye openness inside the window / open level
    openings: int = 0  # mouth openings found around the window
    samples: int = 0  # landmark calls behind this context

    @property
    def head_motion(self) -> bool:
        return self.head_deg >= HEAD_DEGREES

    def tags(self) -> tuple[str, ...]:
        """The context words written with a window (empty: nothing ordinary explains it)."""
        out = []
        if not self.landmarks:
            return ("no_landmarks",)
        if self.blink:
            out.append("blink")
        if self.speech:
            out.append("speech")
        if self.head_motion:
            out.append("head_motion")
        if self.occluded:
            out.append("occlusion")
        return tuple(out)


def _dist(p: np.ndarray, a: str, b: str) -> float:
    return float(np.linalg.norm(p[_R[a], :2] - p[_R[b], :2]))


def sample_from_mesh(index: int, mesh: Mesh) -> FaceStateSample | None:
    """A face-state sample from a trusted mesh (None when the model did not find a face)."""
    if not mesh.ok:
        return None
    p = mesh.points
    c_r = 0.5 * (p[_R["eye_r_outer"], :2] + p[_R["eye_r_inner"], :2])
    c_l = 0.5 * (p[_R["eye_l_outer"], :2] + p[_R["eye_l_inner"], :2])
    iod = max(1e-3, float(np.linalg.norm(c_l - c_r)))

    def eye(side: str) -> float:
        width = max(1e-3, _dist(p, f"eye_{side}_outer", f"eye_{side}_inner"))
        gaps = [_dist(p, f"lid_{side}_upper{s}", f"lid_{side}_lower{s}") for s in ("", "2", "3")]
        return float(np.mean(gaps)) / width

    dx, dy = c_l - c_r
    brows, brow_gap, corners, mouth_w = head_geometry(p)
    return FaceStateSample(index=index, presence=mesh.presence, eye_r=eye("r"), eye_l=eye("l"),
                           mouth=_dist(p, "lip_upper_inner", "lip_lower_inner") / iod,
                           roll=math.degrees(math.atan2(dy, dx)), iod=iod, stable=p[list(STABLE)].astype(np.float64),
                           brows=brows, brow_gap=brow_gap, corners=corners, mouth_w=mouth_w)


def head_geometry(p: np.ndarray) -> tuple[float, float, float, float]:
    """(brows, brow_gap, corners, mouth_w) of a 478-point mesh in the head's own 3-D frame, in IODs.

    The frame: x from the right to the left eye centre (3-D), y perpendicular to x towards the chin, in the plane of
    x and the nose-bridge -> forehead line; heights are along y from the midpoint of the eye centres. Built from
    points that no expression moves, so a turned or tilted head gives the same numbers (as far as the mesh's depth is
    right), and in IODs, so any face size does."""
    p = p.astype(np.float64)
    c_r = 0.5 * (p[_R["eye_r_outer"]] + p[_R["eye_r_inner"]])
    c_l = 0.5 * (p[_R["eye_l_outer"]] + p[_R["eye_l_inner"]])
    ex = c_l - c_r
    iod = float(np.linalg.norm(ex))
    if iod < 1e-6:
        return (math.nan,) * 4
    ex /= iod
    down = p[_R["nose_bridge"]] - p[_R["forehead"]]
    ey = down - float(down @ ex) * ex
    n = float(np.linalg.norm(ey))
    if n < 1e-6:
        return (math.nan,) * 4
    ey /= n
    mid = 0.5 * (c_r + c_l)

    def height(idx: Sequence[int]) -> float:  # mean position along y (towards the chin), in IODs
        return float(np.mean((p[list(idx)] - mid) @ ey)) / iod

    corners = (_R["mouth_r"], _R["mouth_l"])
    return (-height(BROW_POINTS), float(np.linalg.norm(p[_R["brow_r_inner"]] - p[_R["brow_l_inner"]])) / iod,
            height(corners), float(np.linalg.norm(p[corners[0]] - p[corners[1]])) / iod)


def rotation_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (degrees) of the rigid rotation that best maps point set a onto b (Kabsch, after centring and scaling)."""
    a0, b0 = a - a.mean(0), b - b.mean(0)
    na, nb = np.linalg.norm(a0), np.linalg.norm(b0)
    if na < 1e-9 or nb < 1e-9:
        return 0.0
    u, _, vt = np.linalg.svd((a0 / na).T @ (b0 / nb))
    d = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(math.degrees(math.acos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))


def count_openings(mouth: Sequence[float], min_opening: float = SPEECH_OPENING) -> int:
    """Openings in a mouth-aperture series: rises of at least `min_opening` from a trough (hysteresis, so noise
    smaller than `min_opening` never counts)."""
    n, low, high, rising = 0, math.inf, -math.inf, False
    for m in mouth:
        if not rising:
            low = min(low, m)
            if m - low >= min_opening:
                n, rising, high = n + 1, True, m
        else:
            high = max(high, m)
            if high - m >= min_opening:
                rising, low = False, m
    return n


def plan_samples(onset: int, apex: int, offset: int, fps: float) -> tuple[list[int], list[int], list[int]]:
    """Frame indices to run the landmark model on for one window: (inside the window, open-eye references just
    before and after it, the talking test's span around the apex). Samples that fall within the talking span are
    moved to its nearest grid frame (at most half a grid step, 50 ms), so most frames serve all three tests and a
    micro window costs about 13 model calls."""
    step = max(1, int(round(fps / SPEECH_RATE_HZ)))
    half = int(round(SPEECH_SPAN_S * fps))
    span = list(range(apex - half, apex + half + 1, step))

    def snap(i: int) -> int:
        return apex + int(round((i - apex) / step)) * step if abs(i - apex) <= half else i

    even = {snap(int(round(onset + (offset - onset) * i / (WINDOW_SAMPLES - 1)))) for i in range(1, WINDOW_SAMPLES - 1)}
    inside = sorted({onset, apex, offset} | {i for i in even if onset <= i <= offset})
    ref = max(1, int(round(BLINK_REF_S * fps)))
    refs = [snap(i) for i in (onset - 2 * ref, onset - ref, offset + ref, offset + 2 * ref)]
    return inside, refs, span


def explain(inside: Sequence[FaceStateSample | None], refs: Sequence[FaceStateSample | None],
            span: Sequence[FaceStateSample | None]) -> WindowContext:
    """The context of a window from its samples (None: the frame had no crop or no trusted mesh); see the module text."""
    inside_ok = [s for s in inside if s is not None]
    refs_ok = [s for s in refs if s is not None]
    span_ok = [s for s in span if s is not None]
    n = len(inside) + len(refs) + len(span)
    occluded = bool(refs_ok) and bool(inside) and len(inside_ok) <= len(inside) // 2
    found = len(inside_ok) + len(refs_ok) + len(span_ok)
    if not found or (2 * found < n and not occluded):  # a mesh on fewer than half the samples (a flaky or spurious
        return WindowContext(landmarks=False, samples=n)  # one, as on a dark face) decides nothing; lost inside: occlusion
    # blink: eyes closed inside the window relative to the open level next to it (or the window's most open sample)
    open_level = float(np.median([s.eyes for s in refs_ok])) if refs_ok else max((s.eyes for s in inside_ok), default=0)
    eyes_min = min((s.eyes for s in inside_ok), default=open_level)
    ratio = eyes_min / open_level if open_level > 1e-6 else 1.0
    closed = open_level > 1e-6 and ratio <= BLINK_CLOSED
    blink = closed and _reopens(inside_ok, refs_ok, open_level)
    openings = count_openings([s.mouth for s in sorted(span_ok, key=lambda s: s.index)])
    head = 0.0
    if len(inside_ok) >= 2:  # the rotation that at least half of the later samples reach: a turn persists, while the
        first = inside_ok[0].stable  # mesh's depth estimate jumps for a frame or two when the mouth opens fast
        turns = sorted((rotation_deg(first, s.stable) for s in inside_ok[1:]), reverse=True)
        head = turns[(len(turns) - 1) // 2]
    return WindowContext(blink=blink, speech=openings >= SPEECH_CYCLES, head_deg=round(head, 2), occluded=occluded,
                         landmarks=True, eyes_min_ratio=round(ratio, 3), openings=openings, samples=n)


def _reopens(inside: Sequence[FaceStateSample], refs: Sequence[FaceStateSample], open_level: float) -> bool:
    """Whether the eyes open again after their most closed sample (a blink closes and reopens; eyes that stay shut
    are closed eyes, not a blink)."""
    samples = sorted([*inside, *refs], key=lambda s: s.index)
    low = min(range(len(samples)), key=lambda i: samples[i].eyes)
    return any(s.eyes > BLINK_CLOSED * open_level for s in samples[low + 1:])


class FaceStateCache:
    """Face-state samples by frame index for one face, computed on demand and kept for the latest frames only (windows
    of both time scales overlap, so most frames are asked for more than once)."""

    def __init__(self, mesh_fn: Callable[[np.ndarray], Mesh], size: int = 256) -> None:
        self.mesh_fn = mesh_fn
        self.size = size
        self._items: dict[int, FaceStateSample | None] = {}
        self.calls = 0

    def get(self, index: int, crop: np.ndarray | None) -> FaceStateSample | None:
        """The sample of frame `index` (its crop given by the caller; None: no face there)."""
        if index in self._items:
            return self._items[index]
        sample = None
        if crop is not None:
            self.calls += 1
            sample = sample_from_mesh(index, self.mesh_fn(crop))
        if len(self._items) >= self.size:
            for k in sorted(self._items)[: self.size // 2]:
                del self._items[k]
        self._items[index] = sample
        return sample
