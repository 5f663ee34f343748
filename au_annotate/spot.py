"""Streaming spotters: aligned face crops in, candidate expression windows (onset, apex, offset, score, kind) out.

The default spotter, "roi-flow", follows the no-training optical-flow recipe (He et al., MEGC 2021; README
"Spotting and its evaluation") adapted to a stream:

1. Each aligned crop is downscaled (`flow_size`) and DIS optical flow (ultrafast preset, finest level
   `dis_finest_scale`) is computed against the crop k frames back (k = `k_s` seconds, about half a micro-expression)
   and, for macro-expressions, K frames back (`macro_k_s`). The micro signal is sampled at up to `micro_rate` frames
   per second (every frame at 30 fps, every 2nd at 200 fps), the macro signal at about `macro_rate`.
2. Head motion is cancelled by fitting an affine motion to the flow over the face (the worst-fitting 30 % of points,
   i.e. moving facial parts and background, dropped and the fit repeated) and subtracting it.
3. Regions of interest placed from the 5 landmarks (brows, upper eyelids, lower lids, cheeks, mouth corners, upper and
   lower lip): the mean of the strongest residual vectors (`top_fraction`) gives one motion vector per region and frame.
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
   (`blinks`).

All durations are in seconds and converted with the video's frame rate; every buffer is a ring sized from seconds, so the
state is bounded for any video length. A window is emitted at most `max_latency_frames` frames after its onset frame.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from au_annotate.records import AlignedFace, Window

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
    top_fraction: float = 0.3  # mean of this fraction of the strongest vectors per region
    p: float = 4.0  # threshold: score > p * noise level of the region (micro detector)
    macro_p: float = 6.0  # same for the macro detector
    min_motion_px: float = 0.1  # floor of the threshold, in pixels of a 224-px crop (noise-free video)
    history_s: float = 30.0  # sliding history for the noise level
    warmup_s: float = 1.0  # history needed before the first decision (early decisions wait for it)
    min_gap_s: float | None = None  # peaks closer than this merge (default: 2 k_s)
    max_micro_s: float = 0.5  # micro-expression if onset..offset lasts at most this
    max_window_s: float = 4.0  # longest window reported (macro cap)
    extent_fraction: float = 0.8  # onset/offset where the displacement from the apex reaches this share of its plateau
    min_duration_s: float = 0.06  # shorter windows are discarded (flicker)
    blinks: str = "label"  # label | drop | keep: what to do with eye-only downward events

    @staticmethod
    def from_any(config: SpotConfig | dict[str, Any] | None) -> SpotConfig:
        """A SpotConfig from None (defaults), an instance, or a dict of overrides (unknown keys raise SpotError)."""
        if config is None:
            return SpotConfig()
        if isinstance(config, SpotConfig):
            return config
        names = {f.name for f in dataclasses.fields(SpotConfig)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise SpotError(f"unknown spotting option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        cfg = SpotConfig(**config)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise SpotError on values that cannot work."""
        if self.dis_preset not in _DIS_PRESETS:
            raise SpotError(f"dis_preset must be one of {', '.join(_DIS_PRESETS)}, got {self.dis_preset!r}")
        if self.blinks not in ("label", "drop", "keep"):
            raise SpotError(f"blinks must be label, drop or keep, got {self.blinks!r}")
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
    """One time scale (k frames back): region motion -> smoothed -> transient score -> thresholded peaks."""

    def __init__(self, name: str, stride: int, k: int, half: int, p: float, floor: float, hist: int, refresh: int,
                 warmup: int, gap: int, radius: int, ring: int) -> None:
        # k, half, hist, refresh, warmup and ring count sampled steps (one step = `stride` frames); gap and radius frames
        self.name, self.stride, self.k, self.half, self.p, self.floor = name, stride, k, half, p, floor
        self.gap, self.radius, self.warmup = gap, radius, warmup
        self.vec = _Ring(ring)  # raw region motion per frame (R, 2) or None
        self.smooth = _Ring(ring)  # smoothed region motion
        self.history = _History(hist, len(ROIS), refresh)
        self.pending: list[tuple[int, np.ndarray, np.ndarray]] = []  # (c, raw scores, smoothed vectors) awaiting warmup
        self.run: _Candidate | None = None
        self.candidates: list[_Candidate] = []  # closed peaks waiting to be settled, in apex order
        self.recent: list[_Candidate] = []  # decided peaks of the last 2 x `gap` frames (suppression context)
        self.decided = -1  # last frame whose signal went through the peak logic
        self._dip = math.inf  # lowest signal since the current peak

    def add(self, index: int, vectors: np.ndarray | None) -> tuple[int, float] | None:
        """Store frame `index`'s motion; returns (frame, signal) for the frame whose score became computable."""
        self.vec.put(index, vectors)
        c_s = index - self.half  # smoothing is complete for this frame
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
                self.history.push(np.linalg.norm(sm, axis=1))
        c = index - self.half - self.k  # transient score needs smoothed motion at c and c + k
        if c < 0:
            return None
        a, b = self.smooth.get(c), self.smooth.get(c + self.k)
        if a is None or b is None:
            raw = np.zeros(len(ROIS), np.float32)
            vec = np.zeros((len(ROIS), 2), np.float32)
        else:
            raw = np.sqrt(np.maximum(0.0, -np.sum(a * b, axis=1)))
            vec = a
        self.pending.append((c, raw, vec))
        if self.history.count < self.warmup and len(self.pending) < 2 * self.warmup:
            return None  # wait for a noise estimate (bounded: without faces, decide on the floor alone)
        return self._decide_pending()

    def _decide_pending(self) -> tuple[int, float] | None:
        thr = np.maximum(self.p * self.history.level(), self.floor)
        out = None
        for c, raw, vec in self.pending:
            scores = raw / thr
            value = float(scores.max())
            self._step(c, value, scores, vec)
            out = (c * self.stride, value)
        self.pending.clear()
        return out

    def flush_pending(self) -> list[tuple[int, float]]:
        """Decide what waited for warm-up, then close an open run (end of stream)."""
        signals = []
        thr = np.maximum(self.p * self.history.level(), self.floor)
        for c, raw, vec in self.pending:
            scores = raw / thr
            self._step(c, float(scores.max()), scores, vec)
            signals.append((c * self.stride, float(scores.max())))
        self.pending.clear()
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
                 on_signal: Callable[[int, float], None] | None = None) -> None:
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
            self.detectors.append(_Detector(name, stride, k, half, p, cfg.min_motion_px, steps(cfg.history_s),
                                            steps(0.25), steps(cfg.warmup_s), det_gap, radius, 2 * k + 4 * half + 8))
            delay = max(delay, (k + half + 1) * stride)
        gap_max = max((d.gap for d in self.detectors), default=0)
        # a window closes at most max(radius, gap + delay) frames after its apex (+ warm-up at the stream start), and
        # its onset is at most `longest` frames before the apex
        self.max_latency_frames = longest + max(longest, 2 * gap_max) + delay + 2 * warmup_frames + 2
        self.crop_ring_size = self.max_latency_frames + 2
        self.crops = _Ring(self.crop_ring_size)  # (small crop, small landmarks, (face_id, epoch)) per frame
        # latest frame fed minus onset of the latest window it can emit: radius before the apex, radius after it,
        # the detector delay, and the warm-up at the start of the stream
        self._dis = cv2.DISOpticalFlow.create(_DIS_PRESETS[cfg.dis_preset])
        self._dis.setFinestScale(int(cfg.dis_finest_scale))
        if cfg.dis_patch_stride > 0:
            self._dis.setPatchStride(int(cfg.dis_patch_stride))
        self._roi_cache: dict[bytes, _Geometry] = {}
        self._newest = -1
        self._emitted: list[Window] = []  # recent windows, to resolve micro/macro overlaps (bounded below)

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
        coords = np.stack([np.ones(flat.shape), fx, fy], axis=-1).astype(np.float32)  # (R, Nmax, 3)
        tops = np.maximum(1, (np.asarray(sizes) * self.config.top_fraction).astype(int))
        fx0, fx1 = lm[0, 0] - 0.7 * iod, lm[1, 0] + 0.7 * iod
        fy0, fy1 = min(lm[0, 1], lm[1, 1]) - 0.8 * iod, max(lm[3, 1], lm[4, 1]) + 0.5 * iod
        step = max(1, int(round(n / 40)))
        face = (slice(int(np.clip(fy0, 0, n - 8)), int(np.clip(fy1, 8, n)), step),
                slice(int(np.clip(fx0, 0, n - 8)), int(np.clip(fx1, 8, n)), step))
        gy, gx = np.mgrid[face[0], face[1]]
        design = np.stack([np.ones(gx.size), gx.ravel(), gy.ravel()], axis=1)
        top_col = nmax - tops  # column of each region's tops[r]-th largest magnitude after an ascending partition
        pad = np.where(valid, 0.0, -np.inf).astype(np.float32)  # padding never reaches a region's top-k
        geo = _Geometry(flat, valid, coords, tops, face, design, np.linalg.inv(design.T @ design + 1e-6 * np.eye(3)),
                        top_col, np.unique(top_col), pad)
        if len(self._roi_cache) > 64:
            self._roi_cache.clear()
        self._roi_cache[key] = geo
        return geo

    def _region_motion(self, a: np.ndarray, b: np.ndarray, lm: np.ndarray) -> np.ndarray:
        """Per-region motion (R, 2) from crop a to crop b, head motion removed, in pixels of a 224-px crop."""
        flow = self._dis.calc(a, b, None)
        geo = self._rois(lm)
        coef = _fit_affine(flow[geo.face].reshape(-1, 2), geo.design, geo.normal_inv).astype(np.float32)
        r, nmax = geo.flat.shape
        # gather each (dx, dy) pair as one 8-byte item: 12x faster than fancy-indexing rows of a (N, 2) array
        picked = np.ascontiguousarray(flow, dtype=np.float32).reshape(-1).view(np.uint64).take(geo.flat.ravel())
        v = (picked.view(np.float32).reshape(-1, 2) - geo.coords.reshape(-1, 3) @ coef).reshape(r, nmax, 2)  # residual
        mag = v[..., 0] ** 2 + v[..., 1] ** 2 + geo.pad  # squared magnitude; padding entries at -inf
        # mean of each region's `tops[r]` strongest vectors: threshold at its tops[r]-th largest magnitude (one
        # partition for all regions), then a masked sum (ties at the threshold are rare and all kept)
        part = np.partition(mag, geo.kth, axis=1)
        thr = part[np.arange(len(mag)), geo.top_col]
        sel = ((mag >= thr[:, None]) & geo.valid).astype(np.float32)
        out = np.matmul(sel[:, None, :], v)[:, 0] / sel.sum(1)[:, None]
        return (out * np.float32(REF_SIZE / self.config.flow_size)).astype(np.float32)

    # -- the stream ----------------------------------------------------------------------------------------------------
    def process_frame(self, index: int, pts_s: float, face: AlignedFace | None) -> list[Window]:
        """Feed one frame (None when no face); returns the windows that closed."""
        self._newest = index
        if face is None:
            self.crops.put(index, None)
            for det in self.detectors:
                if index % det.stride == 0:
                    self._signal(det, det.add(index // det.stride, None))
            return self._collect(final=False)
        n = self.config.flow_size
        crop = face.crop
        if crop.ndim == 3:
            crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
        small = cv2.resize(crop, (n, n), interpolation=cv2.INTER_AREA)
        lm = np.asarray(face.landmarks, np.float64) * (n / crop.shape[0])
        track = (face.face_id, getattr(face, "epoch", 0))  # crops of one tracking epoch are pixel-aligned
        self.crops.put(index, (small, lm, track))
        for det in self.detectors:
            if index % det.stride:
                continue
            prev = self.crops.get(index - det.k * det.stride)
            vec = None
            if prev is not None and prev[2] == track:
                vec = self._region_motion(prev[0], small, lm)
            self._signal(det, det.add(index // det.stride, vec))
        return self._collect(final=False)

    def flush(self) -> list[Window]:
        """End of stream: decide everything still pending and return the remaining windows."""
        for det in self.detectors:
            # frames after the last one have no k-forward motion; score what can be scored
            for c, value in det.flush_pending():
                if det.name == "micro" and self.on_signal is not None:
                    self.on_signal(c, value)
        return self._collect(final=True)

    def _signal(self, det: _Detector, item: tuple[int, float] | None) -> None:
        if item is not None and det.name == "micro" and self.on_signal is not None:
            self.on_signal(*item)

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
        if cand.detector == "micro":
            return w.kind != "macro"  # long movements are the macro detector's
        if w.kind != "macro":
            return False  # short movements are the micro detector's
        # a movement already reported as micro (or blink) is not reported again as macro
        return not any(_iou(w, e) >= 0.3 for e in self._emitted if e.kind != "macro")

    def _window(self, cand: _Candidate) -> Window | None:
        """Onset/offset by flow from the apex crop; kind by duration and blink shape."""
        apex_item = self.crops.get(cand.apex)
        if apex_item is None:
            return None
        apex_crop, lm, fid = apex_item
        top = float(cand.scores.max())
        active = tuple(int(r) for r in np.flatnonzero(cand.scores >= 0.5 * top))
        onset = self._extent(cand, apex_crop, lm, fid, active, -1)
        offset = self._extent(cand, apex_crop, lm, fid, active, +1)
        if onset is None or offset is None:
            return None  # the movement did not level off within the search radius
        if offset - onset + 1 < self.min_len:
            return None
        duration = offset - onset + 1
        if duration > self.max_window:
            return None
        kind = "micro" if duration <= self.max_micro else "macro"
        if kind == "micro" and cand.blink:
            if self.config.blinks == "drop":
                return None
            if self.config.blinks == "label":
                kind = "blink"
        return Window(onset=onset, apex=cand.apex, offset=offset, score=round(float(cand.value), 4), kind=kind)

    def _extent(self, cand: _Candidate, apex_crop: np.ndarray, lm: np.ndarray, fid: tuple[str, int], active: tuple[int, ...],
                side: int) -> int | None:
        """Onset (side -1) or offset (+1): where the displacement from the apex levels off at its first plateau.

        Walking away from the apex, the displacement of the active regions relative to the apex grows while the
        movement is under way and stalls once we are before its onset (after its offset). The walk stops after
        `stall` frames without growth; the boundary is where the displacement first reaches `extent_fraction` of
        the plateau. Returns None when it is still growing at the edge of the search radius (a longer movement)."""
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

def _is_blink(cand: _Candidate) -> bool:
    """Eye-area-only movement whose apex motion points down: an upper lid closing."""
    s = cand.scores
    best = int(np.argmax(s))
    if best not in EYE_AREA_ROIS:
        return False
    others = [r for r in range(len(s)) if r not in EYE_AREA_ROIS and ROI_NAMES[r] not in ("brow_l", "brow_r")]
    if s[others].max() > 0.6 * s[best]:
        return False
    v = cand.vectors[list(EYE_ROIS)].mean(0)
    return bool(v[1] > 0 and v[1] > abs(v[0]))


def _iou(a: Window, b: Window) -> float:
    """Intersection over union of two windows with inclusive frame counts (as MEGC scores them)."""
    inter = min(a.offset, b.offset) - max(a.onset, b.onset) + 1
    if inter <= 0:
        return 0.0
    return inter / ((a.offset - a.onset + 1) + (b.offset - b.onset + 1) - inter)


@dataclass(frozen=True, eq=False)
class _Geometry:
    """Cached per landmark set: ROI pixels as a padded table (flat indices, validity, (1, x, y) coordinates, how many
    strongest vectors to average), and the face sample grid with its affine design matrix."""

    flat: np.ndarray  # (R, Nmax) flat pixel indices
    valid: np.ndarray  # (R, Nmax) bool
    coords: np.ndarray  # (R, Nmax, 3) float32
    tops: np.ndarray  # (R,) int
    face: tuple[slice, slice]
    design: np.ndarray
    normal_inv: np.ndarray  # (design^T design + eps I)^-1, for the first affine fit
    top_col: np.ndarray  # (R,) column of the tops[r]-th largest value in an ascending partition of a (R, Nmax) row
    kth: np.ndarray  # the distinct top_col values (np.partition's kth)
    pad: np.ndarray  # (R, Nmax) float32: 0 for ROI pixels, -inf for padding (below any squared magnitude)


def _fit_affine(u: np.ndarray, design: np.ndarray, normal_inv: np.ndarray | None = None) -> np.ndarray:
    """Affine motion (3, 2) fitting flow vectors u (N, 2) at points design (N, 3) = (1, x, y); robust: the worst 30 %
    of points (moving facial parts, background) are dropped and the fit repeated. `normal_inv` is the cached inverse
    of the first fit's normal matrix (it depends on the points only)."""
    u = u.astype(np.float64)
    if normal_inv is None:
        normal_inv = np.linalg.inv(design.T @ design + 1e-6 * np.eye(3))
    coef = normal_inv @ (design.T @ u)
    d = design @ coef - u
    res = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]
    cut = int(0.7 * len(res))
    keep = (res <= np.partition(res, cut)[cut]).astype(np.float64)
    dw = design.T * keep  # the kept rows by a 0/1 weight: the same sums as indexing them, without the copies
    normal = dw @ design
    normal[np.diag_indices(3)] += 1e-6
    return np.linalg.solve(normal, dw @ u)


SPOTTERS: dict[str, Callable[..., Spotter]] = {"roi-flow": RoiFlowSpotter}


def make_spotter(name: str, fps: float, config: SpotConfig | dict[str, Any] | None = None,
                 on_signal: Callable[[int, float], None] | None = None) -> Spotter:
    """Build a spotter by name ("roi-flow" is the default) for a video of `fps` frames per second."""
    try:
        cls = SPOTTERS[name]
    except KeyError:
        raise SpotError(f"unknown spotter {name!r}; available: {', '.join(SPOTTERS)}") from None
    return cls(fps, config, on_signal=on_signal)
