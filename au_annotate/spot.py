"""Streaming spotters: aligned face crops in, candidate expression windows (onset, apex, offset, score, kind) out.

The default spotter, "roi-flow", follows the no-training optical-flow recipe (He et al., MEGC 2021; README
"Spotting and its evaluation") adapted to a stream:

1. Each aligned crop is downscaled (`flow_size`) and DIS optical flow (ultrafast preset, finest level
   `dis_finest_scale`) is computed against the crop k frames back (k = `k_s` seconds, about half a micro-expression)
   and, for macro-expressions, K frames back (`macro_k_s`). The micro signal is sampled at up to `micro_rate` frames
   per second (every frame at 30 fps, every 2nd at 200 fps), the macro signal at about `macro_rate`.
2. Head motion is cancelled by fitting a motion model to the flow over the face (the worst-fitting 30 % of points,
   i.e. moving facial parts and background, dropped and the fit repeated) and subtracting it. `motion_model` affine
   (default) is the in-plane head motion; quadratic/cubic add the smooth non-planar part (a face is not flat: a small
   3-D head turn leaves a residual an affine model cannot remove). Measured in docs/spotting.md (round 6).
3. Regions of interest placed from the 5 landmarks (brows, upper eyelids, lower lids, cheeks, mouth corners, upper and
   lower lip): the mean of the strongest residual vectors (`top_fraction`; 1 = the plain region mean, computed as the
   mean flow minus the model at the region's mean basis, without a residual per pixel) gives one motion vector per
   region and frame.
4. The vectors are smoothed in time (`smooth_s`). A facial movement that goes and comes back makes the k-back motion at
   the apex point one way and the motion k frames later point the other way, so the per-region score is
   sqrt(max(0, -v(c) . v(c + k))): large at the apex of a transient movement, near zero for noise (random directions),
   for slow drifts and for steps.
5. Adaptive threshold: each region's score is divided by `p` times its robust noise level (median of the region's motion
   magnitude over a sliding history of `history_s` seconds, floored by `min_motion_px`); the spotting signal is the
   largest ratio over the regions, and a peak is the maximum of a run above 1. Peaks closer than `min_gap_s`
   (default 2 k) merge into the stronger one.
6. Onset and offset: optical flow from the apex crop to crops before and after it; the displacement of the active regions
   grows as we move away from the apex and levels off where the movement begins/ends: onset/offset are where it reaches
   `extent_fraction` of that first plateau.
7. Duration <= `max_micro_s` is a micro-expression, longer (up to `max_window_s`) a macro-expression; each time scale
   keeps only its own kind, and a macro window over an already reported micro one is dropped. Eye-area-only events whose
   motion at the apex points down (an upper lid closing) are blinks: labelled "blink" (default), dropped, or kept
   (`blinks`). With the landmark model on (`landmarks`, the default), blinks come from the eyes' openness instead,
   and every window carries its context (speech, blink, head motion; au_annotate/facestate.py). Optionally
   (`return_ratio` > 0, off by default) a micro window must also come back: its net onset->offset motion at most
   `return_ratio` of its excursion.
8. Quality gate (au_annotate/quality.py): every micro/macro window gets a `quality` (ok, occlusion, head_motion,
   tracking_lost, lighting) from the template score, crop brightness, the rigid fit's rotation/scale and the spread
   of the residual over the face around it; the pipeline reports only "ok" ones unless `gated = "label"`. An optional
   local noise level (`context_s`) raises a region's threshold while that region keeps moving around the event.
9. Detection floor (`detection_floor()`, records.DetectionFloor): the thresholds each region was held to, as medians
   over the stream in % of the inter-ocular distance, so a video that yields nothing says how small a movement it
   could have shown (bounded histograms; measured in docs/spotting.md, round 8).

All durations are in seconds and converted with the video's nominal frame rate; every buffer is a ring sized from
seconds, so the state is bounded for any video length. A window is emitted at most `max_latency_frames` frames after its
onset frame.

Variable frame rate: the frames' timestamps (`pts_s`) decide what depends on real time. A window's duration (micro vs
macro, `min_duration_s`, `max_window_s`) is measured from its onset frame's timestamp to the end of its offset frame,
and the k- and K-back distances of both detectors follow the timestamps (the frames nearest to k_s seconds before and
after, for local rates from half to twice the nominal one). The other distances stay in nominal frames: the smoothing
(a frame or two), the noise history, the peak gap and the onset/offset search radius and stall; at a local rate far
from the nominal one they cover proportionally more or less time. At a constant rate everything is as before: the
timestamps then give exactly k frames and (offset - onset + 1) / fps seconds.

`on_signal(detector, frame, value)`, when given, receives every decided sample of both detectors ("micro", "macro"):
the frame index and the value its threshold (1.0) is applied to, in frame order per detector (a window's score is its
detector's value at its apex).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from au_annotate.errors import check_keys
from au_annotate.facestate import FaceStateCache, WindowContext, explain, plan_samples
from au_annotate.megc import iou
from au_annotate.quality import FrameSignals, GateConfig, StepSignals, label_window
from au_annotate.records import AlignedFace, DetectionFloor, Window

REF_SIZE = 224.0  # motion is reported in pixels of a 224-px aligned crop, whatever the crop and flow sizes

# Regions of interest: (name, landmark anchor (index, or "mc" = mouth centre), centre offset (x, y) and half-size (x, y)
# in inter-ocular distances). Landmarks: 0 left eye, 1 right eye, 2 nose, 3 mouth left, 4 mouth right.
ROIS: tuple[tuple[str, int | str, tuple[float, float], tuple[float, float]], ...] = (
    ("brow_l", 0, (0.0, -0.36), (0.30, 0.16)),
    ("brow_r", 1, (0.0, -0.36), (0.30, 0.16)),
    ("eye_l", 0, (0.0, -0.04), (0.22, 0.11)),
    ("eye_r", 1, (0.0, -0.04), (0.22, 0.11)),
    ("lid_l", 0, (0.0, 0.13), (0.22, 0.08)),
    ("lid_r", 1, (0.0, 0.13), (0.22, 0.08)),
    ("cheek_l", 0, (-0.05, 0.45), (0.24, 0.15)),
    ("cheek_r", 1, (0.05, 0.45), (0.24, 0.15)),
    ("mouth_l", 3, (0.0, 0.0), (0.20, 0.18)),
    ("mouth_r", 4, (0.0, 0.0), (0.20, 0.18)),
    ("lip_upper", "mc", (0.0, -0.09), (0.24, 0.09)),  # upper and lower lip apart: they often move in opposite
    ("lip_lower", "mc", (0.0, 0.13), (0.24, 0.10)),  # directions (lip press, lips part), which one mean would cancel
)
ROI_NAMES = tuple(r[0] for r in ROIS)
EYE_ROIS = (ROI_NAMES.index("eye_l"), ROI_NAMES.index("eye_r"))
EYE_AREA_ROIS = EYE_ROIS + (ROI_NAMES.index("lid_l"), ROI_NAMES.index("lid_r"))
GATE_LOG_SIZE = 16  # gate decisions kept for diagnosis (the latest windows only: state stays bounded and small)
SignalHook = Callable[[str, int, float], None]  # on_signal(detector "micro" | "macro", frame index, signal value)
MOTION_DEGREES = {"affine": 1, "quadratic": 2, "cubic": 3}  # polynomial degree of the face motion model
DIP_RATIO = 0.75  # two peaks of one run are separate when the signal between them falls below this share of the first


class SpotError(ValueError):
    """Unknown spotter name or invalid spotting configuration."""


@dataclass(frozen=True)
class SpotConfig:
    """Parameters of the roi-flow spotter; every duration is in seconds (converted with the video's fps)."""

    flow_size: int = 128  # crops are downscaled to this side for the spotting flow
    dis_preset: str = "ultrafast"  # DIS preset: ultrafast | fast | medium
    dis_finest_scale: int = 1  # DIS finest pyramid level (0 = full flow_size; the ultrafast preset's own is 2: too coarse)
    dis_patch_stride: int = 0  # DIS patch stride in pixels (0 = the preset's: 4 for ultrafast)
    k_s: float = 0.2  # frame-k-back distance for micro-expressions (about half a micro-expression)
    macro_k_s: float = 0.8  # frame-K-back distance for macro-expressions (0 disables the macro detector)
    smooth_s: float = 0.04  # temporal smoothing of the region motion (centred moving average)
    micro_rate: float = 100.0  # the micro signal is computed on about this many frames per second (every frame below)
    macro_rate: float = 5.0  # same for the macro signal (macro-expressions last 1.5-4 s: 5 Hz resolves them)
    top_fraction: float = 0.3  # mean of this fraction of the strongest residual vectors per region (1: plain mean)
    motion_model: str = "affine"  # face motion removed before the regions: affine | quadratic | cubic (polynomial)
    p: float = 4.0  # threshold: score > p * noise level of the region (micro detector)
    macro_p: float = 6.0  # same for the macro detector
    min_motion_px: float = 0.1  # floor of the threshold, in pixels of a 224-px crop (noise-free video)
    history_s: float = 30.0  # sliding history for the noise level
    warmup_s: float = 1.0  # history needed before the first decision (early decisions wait for it)
    min_gap_s: float | None = None  # peaks closer than this merge (default: 2 k_s)
    max_micro_s: float = 0.5  # micro-expression if onset..offset lasts at most this
    max_window_s: float = 4.0  # longest window reported (macro cap)
    extent_fraction: float = 0.95  # onset/offset where the displacement from the apex reaches this share of its plateau
    # (0.8 until round 9 of docs/spotting.md: it cut real micro-expressions short of their coded onset and offset)
    min_duration_s: float = 0.06  # shorter windows are discarded (flicker)
    blinks: str = "label"  # label | drop | keep: what to do with eye-only downward events
    return_ratio: float = 0.0  # > 0: a micro window's net onset->offset motion must be at most this share of its
    # excursion (the go-and-return test; off by default since round 9 of docs/spotting.md: real offsets often do not
    # return to the onset state, and it dropped 24 of 58 real CASME II micro-expressions)
    context_s: float = 0.0  # local noise: a region's median motion this long before/after an event (0: off, default)
    gate: str = "label"  # label: each window gets a quality (au_annotate.quality); off: every window is "ok"
    gated: str = "drop"  # drop: windows with a quality other than ok are not written (report only); label: written
    match_drop: float = 0.15  # gate: tracking_lost when the match falls this far below the track's running median
    lighting_jump: float = 0.06  # gate: lighting when the crop's mean brightness changes this share within k
    spread_ratio: float = 0.0  # gate (> 0): occlusion when the median residual over the face reaches this share of the
    # event (the whole-face rule; off by default since round 9: it gated real smiles and 14 real CASME II clips)
    head_ratio: float = 1.0  # gate: head_motion when the rigid motion exceeds this multiple of the event's motion (used
    # only where the landmark model gives no head pose: with landmarks, head motion comes from the pose)
    landmarks: str = "on"  # on: blinks, speech, head pose and occlusion from dense landmarks (facestate.py); off: none

    @staticmethod
    def from_any(config: SpotConfig | dict[str, Any] | None) -> SpotConfig:
        """A SpotConfig from None (defaults), an instance, or a dict of overrides (unknown keys raise SpotError)."""
        if config is None:
            return SpotConfig()
        if isinstance(config, SpotConfig):
            return config
        check_keys(config, (f.name for f in dataclasses.fields(SpotConfig)), "spotting option", SpotError)
        cfg = SpotConfig(**config)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise SpotError on values that cannot work."""
        if self.dis_preset not in _DIS_PRESETS:
            raise SpotError(f"dis_preset must be one of {', '.join(_DIS_PRESETS)}, got {self.dis_preset!r}")
        if self.blinks not in ("label", "drop", "keep"):
            raise SpotError(f"blinks must be label, drop or keep, got {self.blinks!r}")
        if self.gate not in ("label", "off") or self.gated not in ("drop", "label"):
            raise SpotError(f"gate must be label or off and gated drop or label, got {self.gate!r}, {self.gated!r}")
        if self.landmarks not in ("on", "off"):
            raise SpotError(f"landmarks must be on or off, got {self.landmarks!r}")
        if self.motion_model not in MOTION_DEGREES:
            raise SpotError(f"motion_model must be one of {', '.join(MOTION_DEGREES)}, got {self.motion_model!r}")
        if self.context_s < 0:
            raise SpotError(f"context_s must be >= 0, got {self.context_s}")
        if self.flow_size < 32:
            raise SpotError(f"flow_size must be >= 32, got {self.flow_size}")
        for name in ("k_s", "max_micro_s", "max_window_s", "history_s", "p", "macro_p"):
            if getattr(self, name) <= 0:
                raise SpotError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.top_fraction <= 1 or not 0 < self.extent_fraction < 1:
            raise SpotError("top_fraction must be in (0, 1] and extent_fraction in (0, 1)")


_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class Spotter(Protocol):
    """A streaming spotter: frames in order, windows out as soon as they close."""

    max_latency_frames: int

    def process_frame(self, index: int, pts_s: float, face: AlignedFace | None) -> list[Window]: ...

    def flush(self) -> list[Window]: ...

    def detection_floor(self) -> DetectionFloor | None: ...


class _Ring:
    """Fixed-size store keyed by frame index (older entries are overwritten): bounded memory for any stream length."""

    def __init__(self, size: int) -> None:
        self.size = max(1, int(size))
        self._keys = [-1] * self.size
        self._vals: list[Any] = [None] * self.size

    def put(self, index: int, value: Any) -> None:
        slot = index % self.size
        self._keys[slot] = index
        self._vals[slot] = value

    def get(self, index: int) -> Any:
        if index < 0:
            return None
        slot = index % self.size
        return self._vals[slot] if self._keys[slot] == index else None

    def __len__(self) -> int:
        return sum(1 for k in self._keys if k >= 0)


class _History:
    """Sliding history of per-region magnitudes (a ring), with a cached robust noise level per region."""

    def __init__(self, size: int, n_rois: int, refresh: int) -> None:
        self.buf = np.zeros((max(8, size), n_rois), np.float32)
        self.count = 0
        self.refresh = max(1, refresh)
        self._level: np.ndarray | None = None
        self._since = 0

    def push(self, mags: np.ndarray) -> None:
        self.buf[self.count % len(self.buf)] = mags
        self.count += 1
        self._since += 1

    def level(self) -> np.ndarray:
        """Median magnitude per region over the history (recomputed every `refresh` pushes)."""
        if self._level is None or self._since >= self.refresh:
            n = min(self.count, len(self.buf))
            self._level = np.median(self.buf[:n], axis=0) if n else np.zeros(self.buf.shape[1], np.float32)
            self._since = 0
        return self._level


class _LevelRecord:
    """Bounded record of a stream's per-region values (px of a 224-px crop) for their medians at the end: a histogram
    of 512 log-spaced bins from `lo` to `hi` per region (0.001-100 px: 2.3 % wide, the median to about 1.2 %), whatever
    the stream's length (48 KB for the 12 regions)."""

    def __init__(self, n: int, lo: float = 1e-3, hi: float = 1e2) -> None:
        self.edges = np.geomspace(lo, hi, 513)
        self.counts = np.zeros((n, len(self.edges) - 1), np.int64)
        self._rows = np.arange(n)
        self._held: np.ndarray | None = None  # a repeated value is counted in one go (the noise level is cached)
        self._held_n = 0

    def add(self, values: np.ndarray, same: bool = False) -> None:
        """Count `values` (one per region); `same`: they equal the previous call's (counted again, nothing binned)."""
        if same and self._held is not None:
            self._held_n += 1
            return
        self._settle()
        self._held, self._held_n = values, 1

    def _settle(self) -> None:
        if self._held is not None and self._held_n:
            bins = np.clip(np.searchsorted(self.edges, self._held, side="right") - 1, 0, self.counts.shape[1] - 1)
            self.counts[self._rows, bins] += self._held_n
        self._held, self._held_n = None, 0

    @property
    def total(self) -> int:
        self._settle()
        return int(self.counts[0].sum())

    def medians(self) -> np.ndarray:
        """Each region's median (the geometric centre of its median bin); NaN before the first value."""
        total = self.total
        if not total:
            return np.full(len(self.counts), np.nan)
        b = np.argmax(np.cumsum(self.counts, axis=1) >= (total + 1) / 2, axis=1)
        return np.sqrt(self.edges[b] * self.edges[b + 1])


@dataclass(eq=False)
class _Candidate:
    apex: int
    value: float
    scores: np.ndarray  # per-region normalised score at the apex
    vectors: np.ndarray  # (R, 2) smoothed k-back motion at the apex
    radius: int  # frames searched each side of the apex for onset/offset
    detector: str  # micro | macro
    blink: bool = False  # eye-only downward movement (set when the peak closes)


class _Detector:
    """One time scale (k steps back): region motion -> smoothed -> transient score -> thresholded peaks.

    The k-back distances follow the frames' timestamps: the flow reference of a step (`reference`) and the partner
    that the transient score pairs it with (`_partner`) are the steps nearest to k nominal steps (k * step_s
    seconds) before and after it, searched from k/2 to 2 k steps, so a stretch of a variable-frame-rate video at half
    or twice the nominal rate still compares motion over k_s seconds. At a constant rate both are exactly k steps."""

    def __init__(self, name: str, stride: int, k: int, half: int, p: float, floor: float, hist: int, refresh: int,
                 warmup: int, gap: int, radius: int, step_s: float, ctx: int = 0) -> None:
        # k, half, hist, refresh, warmup and ctx count sampled steps (one step = `stride` frames); gap and radius frames
        self.name, self.stride, self.k, self.half, self.p, self.floor = name, stride, k, half, p, floor
        self.gap, self.radius, self.warmup = gap, radius, warmup
        self.k_lo, self.k_hi = max(1, k // 2), 2 * k  # the k-back distance may span this many steps
        # local noise context: steps [c - k - g - ctx, c - k - g) and (c + 2k + g, c + 2k + g + ctx], g = k / 2: clear
        # of an event's own go (c - k .. c) and return (c .. c + k) motion, so the event does not raise its own level
        self.ctx, self.ctx_gap = ctx, (k + 1) // 2
        self.ctx_after = 2 * k + self.ctx_gap + ctx if ctx else 0  # steps a score waits for its context
        self.span_s = k * step_s  # ... aiming at this many seconds
        self.step_s = step_s
        self._eps = 0.25 * step_s  # timestamp jitter tolerated before a later step counts as past the target
        self._rising, self._last_t = True, -math.inf  # every timestamp so far later than the one before
        ring = 2 * self.k_hi + 4 * half + 8 + 4 * (self.ctx_after + k + self.ctx_gap + ctx)
        self.vec = _Ring(ring)  # raw region motion per step (R, 2) or None
        self.smooth = _Ring(ring)  # smoothed region motion
        self.times = _Ring(ring)  # timestamp of each step (seconds)
        self.history = _History(hist, len(ROIS), refresh)
        # smoothed magnitudes per step with their step index and time, as arrays: the local level is one median
        self._mag = np.zeros((ring, len(ROIS)), np.float32)
        self._mag_key = np.full(ring, -1, np.int64)
        self._mag_t = np.zeros(ring, np.float64)
        # (c, raw, vectors, local level, whether the score comes from real motion at c and at its partner)
        self.pending: list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None, bool]] = []
        self.thresholds = _LevelRecord(len(ROIS))  # every scored step's per-region threshold: the detection floor
        self._recorded: np.ndarray | None = None  # the noise level whose threshold `thresholds` holds last
        self.next_c = 0  # next step whose transient score waits for its partner
        self.run: _Candidate | None = None
        self.candidates: list[_Candidate] = []  # closed peaks waiting to be settled, in apex order
        self.recent: list[_Candidate] = []  # decided peaks of the last 2 x `gap` frames (suppression context)
        self.decided = -1  # last frame whose signal went through the peak logic
        self._dip = math.inf  # lowest signal since the current peak

    def reference(self, step: int, t: float) -> int | None:
        """The earlier step nearest to `span_s` seconds before step `step` (at time t): its flow reference. None near the
        stream start, where no step lies that far back yet."""
        target = t - self.span_s
        if self._rising and self.k > self.k_lo:  # the usual case, in two lookups: exactly k steps back
            s = step - self.k
            ts, after = self.times.get(s), self.times.get(s + 1)
            if ts is not None and after is not None and abs(ts - target) <= self._eps and after > target + self._eps:
                return s  # the search below would stop here: every later step is past the target, this one within eps
        best, best_d = None, math.inf
        for s in range(step - self.k_lo, step - self.k_hi - 1, -1):
            ts = self.times.get(s)
            if ts is None:
                return None  # the stream starts after the target: no reference that far back
            if abs(ts - target) < best_d:
                best, best_d = s, abs(ts - target)
            if ts <= target + self._eps:
                break  # steps further back are further from the target
        return best

    def _partner(self, c: int, newest: int) -> int | None:
        """The later step nearest to `span_s` seconds after step c, once steps up to `newest` are smoothed; None while
        a later step could still be nearer."""
        tc = self.times.get(c)
        if tc is None:
            return None
        target = tc + self.span_s
        s = c + self.k
        if self._rising and self.k > self.k_lo and newest >= s:  # the usual case, as the search below would find it
            ts, before = self.times.get(s), self.times.get(s - 1)
            if ts is not None and before is not None and ts >= target - self._eps > before:
                return s - 1 if target - before < ts - target else s
        for s in range(c + self.k_lo, min(c + self.k_hi, newest) + 1):
            ts = self.times.get(s)
            if ts is not None and ts >= target - self._eps:
                before = self.times.get(s - 1) if s > c + self.k_lo else None
                return s - 1 if before is not None and target - before < ts - target else s
        return c + self.k_hi if newest >= c + self.k_hi else None

    def add(self, index: int, t: float, vectors: np.ndarray | None) -> list[tuple[int, float]]:
        """Store step `index`'s motion (its frame at time t); returns (frame, signal) of the steps decided now."""
        self.vec.put(index, vectors)
        self._rising = self._rising and t > self._last_t  # timestamps strictly rising so far: the searches' fast paths
        self._last_t = t
        self.times.put(index, t)
        c_s = index - self.half  # smoothing is complete for this step
        if c_s >= 0:
            acc, n = None, 0
            for j in range(c_s - self.half, c_s + self.half + 1):
                v = self.vec.get(j)
                if v is not None:
                    acc = v.copy() if acc is None else acc + v
                    n += 1
            sm = acc / n if acc is not None else None
            self.smooth.put(c_s, sm)
            if sm is not None:
                mag = np.sqrt(sm[:, 0] * sm[:, 0] + sm[:, 1] * sm[:, 1])
                self.history.push(mag)
                slot = c_s % len(self._mag_key)
                self._mag[slot], self._mag_key[slot] = mag, c_s
                self._mag_t[slot] = self.times.get(c_s) or 0.0
        self._score(c_s, final=False)
        if not self.pending or (self.history.count < self.warmup and len(self.pending) < 2 * self.warmup):
            return []  # wait for a noise estimate (bounded: without faces, decide on the floor alone)
        return self._decide_pending()

    def _score(self, c_s: int, final: bool) -> None:
        """Transient scores of the steps whose partner (and local context) is smoothed by step c_s, into `pending`."""
        while self.next_c + self.k_lo <= c_s:  # transient scores need smoothed motion at c and at its partner
            partner = self._partner(self.next_c, c_s)
            if partner is None or (not final and c_s < self.next_c + self.ctx_after):
                break
            a, b = self.smooth.get(self.next_c), self.smooth.get(partner)
            if a is None or b is None:
                raw = np.zeros(len(ROIS), np.float32)
                vec = np.zeros((len(ROIS), 2), np.float32)
            else:
                raw = np.sqrt(np.maximum(0.0, -np.sum(a * b, axis=1)))
                vec = a
            local = self._local_level(self.next_c, c_s)
            self.pending.append((self.next_c, raw, vec, local, a is not None and b is not None))
            self.next_c += 1

    def _local_level(self, c: int, newest: int) -> np.ndarray | None:
        """Median motion magnitude per region in the context before and after step c (None: off or too little).

        A region that keeps moving around an event (the lips while talking, the cheeks while laughing) has a high
        local level, which raises that region's threshold for a few seconds only; a still face keeps the long one."""
        if not self.ctx:
            return None
        tc = self.times.get(c)
        if tc is None:
            return None
        # by the timestamps (a stretch at twice the nominal rate holds twice the steps): the event's own span and
        # the context each side, in seconds
        lo, hi = tc - (self.k + self.ctx_gap) * self.step_s, tc + (2 * self.k + self.ctx_gap) * self.step_s
        width = self.ctx * self.step_s
        reach = 2 * (2 * self.k + self.ctx_gap + self.ctx)
        idx = np.arange(max(0, c - reach), min(c + reach, newest) + 1)
        slots = idx % len(self._mag_key)
        t = self._mag_t[slots]
        keep = (self._mag_key[slots] == idx) & (t >= lo - width) & (t <= hi + width) & ((t < lo) | (t > hi))
        if int(keep.sum()) < max(2, self.ctx // 2):
            return None
        return np.median(self._mag[slots[keep]], axis=0)

    def _decide_pending(self) -> list[tuple[int, float]]:
        """Threshold the waiting scores and run them through the peak logic; their (frame, signal) in order."""
        level = self.history.level()
        base = np.maximum(self.p * level, self.floor)
        out = []
        for c, raw, vec, local, scored in self.pending:
            scores = raw / base  # the shape of the event (blink test, active regions) on the long level
            value = float(scores.max() if local is None else (raw / np.maximum(base, self.p * local)).max())
            if scored and local is None:  # the threshold this step was held to, for the detection floor
                self.thresholds.add(base, same=level is self._recorded)  # same cached level: the same threshold
                self._recorded = level
            elif scored:
                self.thresholds.add(np.maximum(base, self.p * local))
                self._recorded = None
            self._step(c, value, scores, vec)
            out.append((c * self.stride, value))
        self.pending.clear()
        return out

    def flush_pending(self) -> list[tuple[int, float]]:
        """Score what waited for its context, decide what waited for warm-up, then close an open run (end of stream)."""
        last = max((i for i in range(self.next_c, self.next_c + self.ctx_after + self.k_hi + self.half + 2)
                    if self.times.get(i) is not None), default=-1)
        self._score(last - self.half, final=True)
        signals = self._decide_pending()
        if self.run is not None:
            self._close_run()
        return signals

    def _step(self, c: int, value: float, scores: np.ndarray, vec: np.ndarray) -> None:
        """Peak picking with hysteresis: a run above 1 can hold several peaks when the signal dips by a quarter
        between them (a movement right next to a blink is not swallowed by it)."""
        c = c * self.stride  # back to frame indices
        self.decided = c
        if value < 1.0:
            if self.run is not None:
                self._close_run()
            return
        run = self.run
        if run is not None and self._dip < DIP_RATIO * run.value and value > self._dip / DIP_RATIO:
            self._close_run()  # rose again after a clear dip: a new peak
            run = None
        if run is None:
            self.run = _Candidate(c, value, scores, vec, self.radius, self.name)
            self._dip = math.inf
        elif value > run.value and self._dip >= DIP_RATIO * run.value:
            self.run = dataclasses.replace(run, apex=c, value=value, scores=scores, vectors=vec)
            self._dip = math.inf
        else:
            self._dip = min(self._dip, value)
        if self.run is not None and c - self.run.apex > self.radius:
            self._close_run()

    def _close_run(self) -> None:
        cand = self.run
        self.run = None
        if cand is not None:
            cand.blink = _is_blink(cand)
            self.candidates.append(cand)

    def ready(self, newest: int, final: bool) -> list[_Candidate]:
        """Peaks kept by greedy non-maximum suppression (strongest first; a kept peak removes weaker ones within `gap`
        frames, a removed one removes nothing, so a side lobe of a blink cannot hide a movement next to it).

        A peak is decided once the signal is known 2 x `gap` frames past it with no open run that could still peak
        within that horizon, and `radius` frames after it are at hand for the offset (everything at the end)."""
        horizon = 2 * self.gap

        def settled(c: _Candidate) -> bool:
            open_run = self.run is not None and self.run.apex - c.apex < horizon
            return self.decided >= c.apex + horizon and not open_run and newest >= c.apex + self.radius

        out = []
        while self.candidates and (final or settled(self.candidates[0])):
            c = self.candidates.pop(0)
            kept: list[_Candidate] = []
            for o in sorted(self.recent + [c] + self.candidates, key=lambda o: -o.value):
                if all(abs(o.apex - k.apex) >= self.gap for k in kept):
                    kept.append(o)
            if any(k is c for k in kept):
                out.append(c)
            self.recent.append(c)
            self.recent = [o for o in self.recent if o.apex > c.apex - horizon]
        return out


class RoiFlowSpotter:
    """The default spotter ("roi-flow"): DIS flow k frames back, landmark ROIs, head-motion removal, adaptive threshold."""

    def __init__(self, fps: float, config: SpotConfig | dict[str, Any] | None = None,
                 on_signal: SignalHook | None = None) -> None:
        if not fps or fps <= 0 or not math.isfinite(fps):
            raise SpotError(f"fps must be positive, got {fps}")
        self.config = cfg = SpotConfig.from_any(config)
        cfg.validate()
        self.fps = float(fps)
        self.on_signal = on_signal

        def frames(s: float) -> int:
            return max(1, int(round(s * self.fps)))

        self.k = frames(cfg.k_s)
        self.max_micro = frames(cfg.max_micro_s)
        self.max_window = frames(cfg.max_window_s)
        self.min_len = max(1, int(round(cfg.min_duration_s * self.fps)))
        gap = frames(cfg.min_gap_s) if cfg.min_gap_s is not None else 2 * self.k
        self.micro_radius = self.max_micro + 1
        macro = cfg.macro_k_s > 0
        self.macro_radius = max(self.micro_radius, int(round(0.6 * self.max_window))) if macro else 0
        longest = max(self.micro_radius, self.macro_radius)
        self.detectors: list[_Detector] = []
        delay = 0
        warmup_frames = frames(cfg.warmup_s)
        for name, k_s, rate, p, radius in (("micro", cfg.k_s, cfg.micro_rate, cfg.p, self.micro_radius),
                                           ("macro", cfg.macro_k_s, cfg.macro_rate, cfg.macro_p, self.macro_radius)):
            if k_s <= 0:
                continue
            stride = max(1, int(self.fps // rate)) if rate > 0 else 1  # sample the signal at about `rate` per second
            step_s = stride / self.fps

            def steps(sec: float, stride_s: float = step_s) -> int:
                return max(1, int(round(sec / stride_s)))

            k = steps(k_s)
            half = int(round(cfg.smooth_s / step_s / 2))
            det_gap = max(gap, 2 * k * stride) if name == "macro" else gap
            ctx = steps(cfg.context_s) if cfg.context_s > 0 else 0
            det = _Detector(name, stride, k, half, p, cfg.min_motion_px, steps(cfg.history_s), steps(0.25),
                            steps(cfg.warmup_s), det_gap, radius, step_s, ctx)
            self.detectors.append(det)
            # a score waits for its partner (up to 2 k steps) and for its local context after it
            delay = max(delay, (max(det.k_hi, det.ctx_after) + half + 1) * stride)
        gap_max = max((d.gap for d in self.detectors), default=0)
        # a window closes at most max(radius, gap + delay) frames after its apex (+ warm-up at the stream start), and
        # its onset is at most `longest` frames before the apex
        self.max_latency_frames = longest + max(longest, 2 * gap_max) + delay + 2 * warmup_frames + 2
        self.crop_ring_size = self.max_latency_frames + 2
        self.crops = _Ring(self.crop_ring_size)  # (small crop, small landmarks, (face_id, epoch), full crop) per frame
        self.times = _Ring(self.crop_ring_size)  # every frame's timestamp (seconds), for real window durations
        # latest frame fed minus onset of the latest window it can emit: radius before the apex, radius after it,
        # the detector delay, and the warm-up at the start of the stream
        self._dis = cv2.DISOpticalFlow.create(_DIS_PRESETS[cfg.dis_preset])
        self._dis.setFinestScale(int(cfg.dis_finest_scale))
        if cfg.dis_patch_stride > 0:
            self._dis.setPatchStride(int(cfg.dis_patch_stride))
        self._roi_cache: dict[bytes, _Geometry] = {}
        self._newest = -1
        # quality gate (au_annotate.quality): per-frame and per-step signals over the crop ring, the match history
        self.gate = GateConfig(match_drop=cfg.match_drop, lighting_jump=cfg.lighting_jump,
                               spread_ratio=cfg.spread_ratio, head_ratio=cfg.head_ratio)
        self.qframes = _Ring(self.crop_ring_size)  # FrameSignals per frame (None: no face)
        self.qsteps = {d.name: _Ring(self.crop_ring_size) for d in self.detectors}  # _StepFit per sampled frame
        self._match_hist = _History(frames(cfg.history_s), 1, frames(0.5))
        self._last_step: _StepFit | None = None
        # the gate's inputs of the latest windows (apex, label, evidence, head, spread, match level, min match): why
        self.gate_log: deque[tuple] = deque(maxlen=GATE_LOG_SIZE)
        self._emitted: list[Window] = []  # recent windows, to resolve micro/macro overlaps (bounded below)
        self._iods = _LevelRecord(1, 4.0, 1e3)  # inter-ocular distance of every face frame, px of a 224-px crop
        self._iod_last = -1.0
        # the face state around candidate windows (au_annotate.facestate): dense landmarks on demand, cached per frame
        self.states: FaceStateCache | None = None
        if cfg.landmarks == "on":
            from au_annotate.landmarks import FaceMesh

            self.states = FaceStateCache(FaceMesh(), size=128)  # a few windows' samples: micro and macro overlap

    # -- per-frame motion --------------------------------------------------------------------------------------------
    def _rois(self, lm: np.ndarray) -> _Geometry:
        """ROI slices and the rigid-fit design in flow-size coordinates, cached per landmark set."""
        key = np.round(lm, 1).tobytes()
        hit = self._roi_cache.get(key)
        if hit is not None:
            return hit
        n = self.config.flow_size
        iod = max(4.0, float(np.linalg.norm(lm[1] - lm[0])))
        mc = (lm[3] + lm[4]) / 2
        boxes = []
        for _, anchor, (ox, oy), (hx, hy) in ROIS:
            base = mc if anchor == "mc" else lm[anchor]
            cx, cy = base[0] + ox * iod, base[1] + oy * iod
            rx, ry = max(2.0, hx * iod), max(2.0, hy * iod)
            x0, x1 = int(np.clip(cx - rx, 0, n - 2)), int(np.clip(cx + rx + 1, 2, n))
            y0, y1 = int(np.clip(cy - ry, 0, n - 2)), int(np.clip(cy + ry + 1, 2, n))
            boxes.append((y0, max(y1, y0 + 2), x0, max(x1, x0 + 2)))
        # all ROI pixels in one padded (R, Nmax) table of flat indices, so per-region statistics are vectorised
        sizes = [(y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in boxes]
        nmax = max(sizes)
        flat = np.zeros((len(boxes), nmax), np.intp)
        valid = np.zeros((len(boxes), nmax), bool)
        for r, (y0, y1, x0, x1) in enumerate(boxes):
            gy, gx = np.mgrid[y0:y1, x0:x1]
            flat[r, : sizes[r]] = (gy * n + gx).ravel()
            valid[r, : sizes[r]] = True
        fy, fx = np.divmod(flat, n)
        degree = MOTION_DEGREES[self.config.motion_model]
        coords = _basis(fx, fy, n, degree).astype(np.float32)  # (R, Nmax, M)
        tops = np.maximum(1, (np.asarray(sizes) * self.config.top_fraction).astype(int))
        fx0, fx1 = lm[0, 0] - 0.7 * iod, lm[1, 0] + 0.7 * iod
        fy0, fy1 = min(lm[0, 1], lm[1, 1]) - 0.8 * iod, max(lm[3, 1], lm[4, 1]) + 0.5 * iod
        step = max(1, int(round(n / 40)))
        face = (slice(int(np.clip(fy0, 0, n - 8)), int(np.clip(fy1, 8, n)), step),
                slice(int(np.clip(fx0, 0, n - 8)), int(np.clip(fx1, 8, n)), step))
        gy, gx = np.mgrid[face[0], face[1]]
        design = _basis(gx.ravel(), gy.ravel(), n, degree)
        top_col = nmax - tops  # column of each region's tops[r]-th largest magnitude in its ascending sort
        pad = np.where(valid, 0.0, -np.inf).astype(np.float32)  # padding never reaches a region's top-k
        weights = (valid / np.asarray(sizes, np.float64)[:, None]).astype(np.float32)  # 1/size on each ROI pixel
        mean_coords = np.einsum("rn,rnm->rm", weights, coords).astype(np.float32)
        normal_inv = np.linalg.inv(design.T @ design + 1e-6 * np.eye(design.shape[1]))
        geo = _Geometry(flat, valid, coords, tops, weights, mean_coords, face, design, normal_inv, top_col,
                        np.arange(len(boxes)), pad, design[_GATE_SUB].astype(np.float32))
        if len(self._roi_cache) > 64:
            self._roi_cache.clear()
        self._roi_cache[key] = geo
        return geo

    def _region_motion(self, a: np.ndarray, b: np.ndarray, lm: np.ndarray, stats: bool = False) -> np.ndarray:
        """Per-region motion (R, 2) from crop a to crop b, head motion removed, in pixels of a 224-px crop (`stats`:
        also what the gate's StepSignals of this flow are made from, in `_last_step`)."""
        flow = self._dis.calc(a, b, None)
        geo = self._rois(lm)
        grid = flow[geo.face].reshape(-1, 2)
        coef = _fit_motion(grid, geo.design, geo.normal_inv).astype(np.float32)
        if stats:  # what the gate needs of this flow, kept small; its signals are computed only for a window's steps
            self._last_step = _StepFit(coef, np.ascontiguousarray(grid[_GATE_SUB]), geo.gate_design)
        r, nmax = geo.flat.shape
        # gather each (dx, dy) pair as one 8-byte item: 12x faster than fancy-indexing rows of a (N, 2) array
        picked = np.ascontiguousarray(flow, dtype=np.float32).reshape(-1).view(np.uint64).take(geo.flat.ravel())
        if self.config.top_fraction >= 1.0:  # the plain region mean: mean flow minus the motion model at the mean point
            mean_flow = np.matmul(geo.weights[:, None, :], picked.view(np.float32).reshape(r, nmax, 2))[:, 0]
            out = mean_flow - geo.mean_coords @ coef
            return (out * np.float32(REF_SIZE / self.config.flow_size)).astype(np.float32)
        v = (picked.view(np.float32).reshape(-1, 2) - geo.coords.reshape(r * nmax, -1) @ coef).reshape(r, nmax, 2)
        mag = v[..., 0] ** 2 + v[..., 1] ** 2 + geo.pad  # squared magnitude; padding entries at -inf
        # mean of each region's `tops[r]` strongest vectors: threshold at its tops[r]-th largest magnitude (one sort of
        # all rows: twice as fast as a partition at the regions' ~10 distinct ranks), then a masked sum (ties at the
        # threshold are rare and all kept)
        thr = np.sort(mag, axis=1)[geo.rows, geo.top_col]
        sel = ((mag >= thr[:, None]) & geo.valid).astype(np.float32)
        out = np.matmul(sel[:, None, :], v)[:, 0] / sel.sum(1)[:, None]
        return (out * np.float32(REF_SIZE / self.config.flow_size)).astype(np.float32)

    # -- the stream ----------------------------------------------------------------------------------------------------
    def process_frame(self, index: int, pts_s: float, face: AlignedFace | None) -> list[Window]:
        """Feed one frame (None when no face); returns the windows that closed."""
        self._newest = index
        self.times.put(index, float(pts_s))
        if face is None:
            self.crops.put(index, None)
            self.qframes.put(index, None)
            for det in self.detectors:
                if index % det.stride == 0:
                    self._signal(det, det.add(index // det.stride, pts_s, None))
            return self._collect(final=False)
        n = self.config.flow_size
        crop = face.crop
        if crop.ndim == 3:
            crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
        small = cv2.resize(crop, (n, n), interpolation=cv2.INTER_AREA)
        lm = np.asarray(face.landmarks, np.float64) * (n / crop.shape[0])
        iod = math.hypot(lm[1, 0] - lm[0, 0], lm[1, 1] - lm[0, 1]) * REF_SIZE / n
        self._iods.add(np.array([iod]), same=iod == self._iod_last)
        self._iod_last = iod
        track = (face.face_id, getattr(face, "epoch", 0))  # crops of one tracking epoch are pixel-aligned
        self.crops.put(index, (small, lm, track, face.crop))  # the full crop is the pipeline's own array (no copy)
        match = float(getattr(face, "match", 1.0))
        x, y, w, h = getattr(face, "box", (0.0, 0.0, 1.0, 1.0))
        self.qframes.put(index, FrameSignals(match, float(cv2.mean(small)[0]), x + w / 2, y + h / 2, max(w, h)))
        self._match_hist.push(np.array([match], np.float32))
        for det in self.detectors:
            if index % det.stride:
                continue
            step = index // det.stride
            ref = det.reference(step, pts_s)  # about k_s seconds back by the timestamps (k steps at a constant rate)
            prev = self.crops.get(ref * det.stride) if ref is not None else None
            vec = None
            if prev is not None and prev[2] == track:
                vec = self._region_motion(prev[0], small, lm, stats=self.config.gate == "label")
                self.qsteps[det.name].put(index, self._last_step)
            self._signal(det, det.add(step, pts_s, vec))
        return self._collect(final=False)

    def flush(self) -> list[Window]:
        """End of stream: decide everything still pending and return the remaining windows."""
        for det in self.detectors:
            # frames after the last one have no k-forward motion; score what can be scored
            self._signal(det, det.flush_pending())
        return self._collect(final=True)

    def detection_floor(self) -> DetectionFloor | None:
        """The micro detector's per-region thresholds over the stream so far, in % of the median inter-ocular distance
        (records.DetectionFloor); None before the first scored step. Motion in 224-px crop units over the IOD in the
        same units, so it holds for any face size; a median of medians, so bounded state for any length."""
        det = next(d for d in self.detectors if d.name == "micro")
        if not det.thresholds.total or not self._iods.total:
            return None
        pct = 100.0 * det.thresholds.medians() / float(self._iods.medians()[0])
        return DetectionFloor(pct_iod=round(float(np.median(pct)), 3),
                              regions=tuple((name, round(float(v), 3)) for name, v in zip(ROI_NAMES, pct, strict=True)),
                              steps=det.thresholds.total)

    def _signal(self, det: _Detector, items: list[tuple[int, float]]) -> None:
        """Report each decided sample to `on_signal(detector, frame, value)`: the value its threshold applies to."""
        if self.on_signal is not None:
            for index, value in items:
                self.on_signal(det.name, index, value)

    def _collect(self, final: bool) -> list[Window]:
        out: list[Window] = []
        for det in self.detectors:
            for cand in det.ready(self._newest, final):
                w = self._window(cand)
                if w is not None and self._keep(w, cand):
                    out.append(w)
                    self._emitted.append(w)
        out.sort(key=lambda w: w.onset)
        self._emitted = [w for w in self._emitted if w.offset >= self._newest - self.crop_ring_size]
        return out

    def _keep(self, w: Window, cand: _Candidate) -> bool:
        """Resolve detections of one movement by both time scales: each keeps only the kind it is made for."""
        return self._wanted(w.kind, cand, w.onset, w.offset)

    def _wanted(self, kind: str, cand: _Candidate, onset: int, offset: int) -> bool:
        """Whether a window of this kind is its detector's to report (checked again before the costly face state)."""
        if cand.detector == "micro":
            return kind != "macro"  # long movements are the macro detector's
        if kind != "macro":
            return False  # short movements are the micro detector's
        # a movement already reported as micro (or blink) is not reported again as macro
        return not any(iou(onset, offset, e.onset, e.offset) >= 0.3 for e in self._emitted if e.kind != "macro")

    def _window(self, cand: _Candidate) -> Window | None:
        """Onset/offset by flow from the apex crop; kind by duration and blink shape."""
        apex_item = self.crops.get(cand.apex)
        if apex_item is None:
            return None
        apex_crop, lm, fid, _ = apex_item
        top = float(cand.scores.max())
        active = tuple(int(r) for r in np.flatnonzero(cand.scores >= 0.5 * top))
        walked: dict[int, np.ndarray] = {}  # region motion from the apex crop per frame the walks reached
        onset = self._extent(cand, apex_crop, lm, fid, active, -1, walked)
        offset = self._extent(cand, apex_crop, lm, fid, active, +1, walked)
        if onset is None or offset is None:
            return None  # the movement did not level off within the search radius
        duration = self._nominal_frames(onset, offset)
        if duration < self.min_len or duration > self.max_window:
            return None
        kind = "micro" if duration <= self.max_micro else "macro"
        if not self._wanted(kind, cand, onset, offset):
            return None  # the other time scale's movement: decided before the landmark model runs
        gated = self.config.gate == "label"
        # the cheap gate first (tracking, lighting; the spread rule when on): a window it labels needs no landmarks
        quality = self._quality(cand, onset, offset, active, rigid_head=False) if gated else "ok"
        ctx = self._context(cand, onset, offset) if quality == "ok" else None
        tags = list(ctx.tags()) if ctx is not None else []
        if ctx is not None and ctx.landmarks:  # blinks from the eyes' state: closed eyes and the motion at the eyes
            blink = ctx.blink and _eye_area_led(cand)
        else:  # no landmarks (off, or the model lost the face): the flow shape of a closing upper lid
            blink = kind == "micro" and cand.blink
        if blink:
            tags = [t for t in tags if t != "blink"]
        if kind == "micro" and not blink and self.config.return_ratio > 0 and not self._returns(
                apex_crop, lm, fid, active, onset, offset, walked):
            return None  # a step (an expression that is held, a posture change): not a go-and-return movement
        if blink:
            if self.config.blinks == "drop":
                return None
            if self.config.blinks == "label":
                kind = "blink"
        gated = gated and kind != "blink"
        posed = ctx is not None and ctx.landmarks  # the head pose is known: the rigid-fit head test is not needed
        if not gated:
            quality = "ok"
        elif quality == "ok" and posed:
            quality = "occlusion" if ctx.occluded else "head_motion" if ctx.head_motion else "ok"
        elif quality == "ok":  # no head pose from the landmarks: the rigid-fit head test decides
            quality = self._quality(cand, onset, offset, active, rigid_head=True)
        return Window(onset=onset, apex=cand.apex, offset=offset, score=round(float(cand.value), 4), kind=kind,
                      quality=quality, context="+".join(tags))

    def _context(self, cand: _Candidate, onset: int, offset: int) -> WindowContext | None:
        """What the face was doing around a window (au_annotate.facestate), from dense landmarks on the crops the ring
        still holds (frames not there count as missing); None when landmarks are off. The talking test's samples are
        taken only when the window is not an eye-led blink (the model costs ~9 ms a call)."""
        if self.states is None:
            return None
        states = self.states

        def sample(i: int):  # noqa: ANN202 - FaceStateSample | None
            item = self.crops.get(i) if 0 <= i <= self._newest else None
            return states.get(i, item[3] if item is not None else None)

        inside, refs, span = plan_samples(onset, cand.apex, offset, self.fps)
        a, b = [sample(i) for i in inside], [sample(i) for i in refs]
        eyes = explain(a, b, [])
        if eyes.landmarks and eyes.blink and _eye_area_led(cand):
            return eyes
        return explain(a, b, [sample(i) for i in span])

    def _returns(self, apex_crop: np.ndarray, lm: np.ndarray, fid: tuple[str, int], active: tuple[int, ...],
                 onset: int, offset: int, walked: dict[int, np.ndarray]) -> bool:
        """Whether the active regions come back: their net motion from onset to offset is at most `return_ratio` of
        their larger excursion to the apex (a micro-expression goes and returns; a step stays where it went). The
        apex -> onset/offset motions come from the onset/offset walks (`walked`) where they reached those frames."""
        a, b = self.crops.get(onset), self.crops.get(offset)
        if a is None or b is None or a[2] != fid or b[2] != fid or not active:
            return True  # cannot tell: keep the window
        idx = list(active)
        net = float(np.linalg.norm(self._region_motion(a[0], b[0], lm)[idx], axis=1).mean())
        go_m, back_m = walked.get(onset), walked.get(offset)
        go_m = self._region_motion(apex_crop, a[0], lm) if go_m is None else go_m
        back_m = self._region_motion(apex_crop, b[0], lm) if back_m is None else back_m
        go = float(np.linalg.norm(go_m[idx], axis=1).mean())
        back = float(np.linalg.norm(back_m[idx], axis=1).mean())
        return net <= self.config.return_ratio * max(go, back, 1e-6)

    def _quality(self, cand: _Candidate, onset: int, offset: int, active: tuple[int, ...], rigid_head: bool = True) -> str:
        """The window's quality label (au_annotate.quality) from the gate signals from onset - k to offset + k
        (`rigid_head` False: without the rigid-fit head-motion test, for windows whose head pose the landmarks give)."""
        det = next(d for d in self.detectors if d.name == cand.detector)
        k = det.k * det.stride
        lo, hi = max(0, onset - k), min(self._newest, offset + k)
        frames = [self.qframes.get(i) for i in range(lo, hi + 1)]
        ring = self.qsteps[cand.detector]
        first = -(-(lo + k) // det.stride) * det.stride  # steps lie on multiples of the stride
        steps = [_step_signals(ring.get(i), REF_SIZE / self.config.flow_size) for i in range(first, hi + 1, det.stride)]
        evidence = float(np.linalg.norm(cand.vectors[list(active)], axis=1).max()) if active else 0.0
        level = float(self._match_hist.level()[0])
        gate = self.gate if rigid_head else dataclasses.replace(self.gate, head_ratio=math.inf)
        label = label_window(frames, steps, k, evidence, level, gate)
        st = [x for x in steps if x is not None]
        self.gate_log.append((cand.apex, label, round(evidence, 3), round(max((x.head_px for x in st), default=0), 3),
                              round(max((x.spread_px for x in st), default=0), 3), round(level, 3),
                              round(min((f.match for f in frames if f is not None), default=0), 3)))
        return label

    def _nominal_frames(self, onset: int, offset: int) -> float:
        """A window's duration by the timestamps, in nominal frames (what min_duration_s, max_micro_s and max_window_s
        are compared with). Where the timestamps agree with the inclusive frame count to half a frame (a constant rate,
        even with timestamps rounded to a coarse time base such as WebM's 1 ms) it is exactly that count."""
        count = offset - onset + 1
        real = self._duration_s(onset, offset) * self.fps
        return real if abs(real - count) >= 0.5 else float(count)

    def _duration_s(self, onset: int, offset: int) -> float:
        """Seconds from the start of frame `onset` to the end of frame `offset`, by the frames' timestamps (the end of
        a frame is the next frame's timestamp; one nominal frame when that frame is not known yet or is not later)."""
        t0, t1, t_next = self.times.get(onset), self.times.get(offset), self.times.get(offset + 1)
        if t0 is None or t1 is None:
            return (offset - onset + 1) / self.fps
        end = t_next if t_next is not None and t_next > t1 else t1 + 1 / self.fps
        return end - t0

    def _extent(self, cand: _Candidate, apex_crop: np.ndarray, lm: np.ndarray, fid: tuple[str, int], active: tuple[int, ...],
                side: int, walked: dict[int, np.ndarray]) -> int | None:
        """Onset (side -1) or offset (+1): where the displacement from the apex levels off at its first plateau.

        Walking away from the apex, the displacement of the active regions relative to the apex grows while the
        movement is under way and stalls once we are before its onset (after its offset). The walk stops after
        `stall` frames without growth; the boundary is where the displacement first reaches `extent_fraction` of
        the plateau. Returns None when it is still growing at the edge of the search radius (a longer movement).
        `walked` receives the region motion from the apex crop of every frame the walk reached (for the return test)."""
        radius = cand.radius
        step = max(1, int(math.ceil(radius / (16 if cand.detector == "micro" else 32))))
        stall = max(2 * step, int(round((0.1 if cand.detector == "micro" else 0.3) * self.fps)))
        offsets, mags = [0], [0.0]
        best, best_at = 0.0, 0
        stalled = False
        for j in range(step, radius + 1, step):
            item = self.crops.get(cand.apex + side * j)
            if item is None or item[2] != fid:
                stalled = True  # no face / stream edge: the movement is cut here
                break
            motion = self._region_motion(apex_crop, item[0], lm)
            walked[cand.apex + side * j] = motion
            m = float(np.linalg.norm(motion[list(active)], axis=1).mean())
            offsets.append(j)
            mags.append(m)
            if m > best + max(0.05 * best, 0.02):
                best, best_at = m, j
            elif j - best_at >= stall:
                stalled = True
                break
        if not stalled and cand.detector == "micro":
            return None  # still growing at the edge of the search: a longer movement
        if best <= 0:
            return cand.apex + side * step
        m_arr = np.asarray(mags)
        target = self.config.extent_fraction * best
        hit = int(np.argmax(m_arr >= target))
        j_hit = offsets[hit]
        if hit > 0:  # interpolate between the two samples around the crossing
            lo, hi = m_arr[hit - 1], m_arr[hit]
            t = (target - lo) / (hi - lo) if hi > lo else 1.0
            j_hit = int(round(offsets[hit - 1] + t * (offsets[hit] - offsets[hit - 1])))
        return cand.apex + side * max(1, j_hit)

def _eye_area_led(cand: _Candidate) -> bool:
    """The window's motion is led by the eyes: its strongest region is an eye or lid region and no region outside the
    eyes and brows reaches 0.6 of it (a blink moves the lids, and the brows a little, nothing else)."""
    s = cand.scores
    best = int(np.argmax(s))
    if best not in EYE_AREA_ROIS:
        return False
    others = [r for r in range(len(s)) if r not in EYE_AREA_ROIS and ROI_NAMES[r] not in ("brow_l", "brow_r")]
    return bool(s[others].max() <= 0.6 * s[best])


def _is_blink(cand: _Candidate) -> bool:
    """Eye-area-only movement whose apex motion points down: an upper lid closing (the flow-shape fallback used where
    the landmark model has no face; with landmarks, blinks come from the eyes' openness)."""
    if not _eye_area_led(cand):
        return False
    v = cand.vectors[list(EYE_ROIS)].mean(0)
    return bool(v[1] > 0 and v[1] > abs(v[0]))


@dataclass(frozen=True, eq=False)
class _Geometry:
    """Cached per landmark set: ROI pixels as a padded table (flat indices, validity, motion basis, how many strongest
    vectors to average, plain-mean weights), and the face sample grid with its motion-model design matrix."""

    flat: np.ndarray  # (R, Nmax) flat pixel indices
    valid: np.ndarray  # (R, Nmax) bool
    coords: np.ndarray  # (R, Nmax, M) float32: the motion basis (`_basis`) at each ROI pixel
    tops: np.ndarray  # (R,) int
    weights: np.ndarray  # (R, Nmax) float32: 1 / region size on the region's pixels, 0 on padding (the plain mean)
    mean_coords: np.ndarray  # (R, M) float32: the motion basis averaged over each region
    face: tuple[slice, slice]
    design: np.ndarray
    normal_inv: np.ndarray  # (design^T design + eps I)^-1, for the first fit
    top_col: np.ndarray  # (R,) column of the tops[r]-th largest value in an ascending sort of a (R, Nmax) row
    rows: np.ndarray  # (R,) 0 .. R-1, to pick each row's top_col entry
    pad: np.ndarray  # (R, Nmax) float32: 0 for ROI pixels, -inf for padding (below any squared magnitude)
    gate_design: np.ndarray  # (N / 4, M) float32: the design rows of the face points the gate uses (`_GATE_SUB`)


_GATE_SUB = slice(None, None, 4)  # the gate uses every 4th face point of a flow: a median and a mean need no more


@dataclass(frozen=True, eq=False)
class _StepFit:
    """What the gate needs of one flow step (~5 KB; it keeps none of the geometry's large tables alive, so the step ring
    stays small however often the landmarks change): the motion model's coefficients, the flow at every 4th face point
    and the design rows there. Its StepSignals are computed only for the steps around a window (most steps never are)."""

    coef: np.ndarray  # (M, 2) float32
    grid: np.ndarray  # (N / 4, 2) float32: the flow at the face points `_GATE_SUB`
    design: np.ndarray  # (N / 4, M) float32: the motion basis at those points


def _step_signals(fit: _StepFit | None, scale: float) -> StepSignals | None:
    """The gate signals of a flow step, in pixels of a 224-px crop (`scale` = 224 / flow size): the rotation/scale/shear
    part of the fitted motion (a translation is fitted exactly: no fit error) and the median residual over the face."""
    if fit is None:
        return None
    rigid = fit.design @ fit.coef
    d = fit.grid - rigid
    dev = rigid - rigid.mean(0)
    head = float(np.sqrt((dev * dev).sum(1)).mean()) * scale
    res = (d * d).sum(1)
    spread = math.sqrt(float(np.partition(res, len(res) // 2)[len(res) // 2])) * scale  # median residual
    return StepSignals(head_px=head, spread_px=spread)


def _basis(x: np.ndarray, y: np.ndarray, n: int, degree: int) -> np.ndarray:
    """Polynomial motion basis (..., M) at flow-size pixel coordinates x, y: 1, x, y (M = 3, affine), then the
    monomials of degree 2..`degree` of the centred coordinates (x - n/2, y - n/2) / (n/2), times n/2 so that every
    column has the same scale as x and y (a well-conditioned fit)."""
    h = n / 2.0
    u, v = (x - h) / h, (y - h) / h
    cols = [np.ones_like(x, dtype=np.float64), x.astype(np.float64), y.astype(np.float64)]
    for d in range(2, degree + 1):
        cols += [h * u ** (d - j) * v ** j for j in range(d + 1)]
    return np.stack(cols, axis=-1)


def _fit_motion(u: np.ndarray, design: np.ndarray, normal_inv: np.ndarray | None = None) -> np.ndarray:
    """Face motion (M, 2) fitting flow vectors u (N, 2) at points design (N, M) (`_basis`); robust: the worst 30 %
    of points (moving facial parts, background) are dropped and the fit repeated. `normal_inv` is the cached inverse
    of the first fit's normal matrix (it depends on the points only)."""
    u = u.astype(np.float64)
    if normal_inv is None:
        normal_inv = np.linalg.inv(design.T @ design + 1e-6 * np.eye(design.shape[1]))
    coef = normal_inv @ (design.T @ u)
    d = design @ coef - u
    res = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]
    cut = int(0.7 * len(res))
    keep = (res <= np.partition(res, cut)[cut]).astype(np.float64)
    dw = design.T * keep  # the kept rows by a 0/1 weight: the same sums as indexing them, without the copies
    normal = dw @ design
    normal[np.diag_indices(len(normal))] += 1e-6
    return np.linalg.solve(normal, dw @ u)


SPOTTERS: dict[str, Callable[..., Spotter]] = {"roi-flow": RoiFlowSpotter}


def make_spotter(name: str, fps: float, config: SpotConfig | dict[str, Any] | None = None,
                 on_signal: SignalHook | None = None) -> Spotter:
    """Build a spotter by name ("roi-flow" is the default) for a video of `fps` (nominal) frames per second;
    `on_signal(detector, frame, value)` gets both detectors' samples (module docstring)."""
    try:
        cls = SPOTTERS[name]
    except KeyError:
        raise SpotError(f"unknown spotter {name!r}; available: {', '.join(SPOTTERS)}") from None
    return cls(fps, config, on_signal=on_signal)
