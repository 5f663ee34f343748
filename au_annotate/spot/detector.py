"""One time scale of the spotter: region motion k steps back -> smoothed -> transient score -> adaptive threshold ->
peaks (`_Detector`), with its bounded rings and noise histories; and the shape tests of a peak (eye-led, blink-shaped).

Steps 4-5 of the spotter (au_annotate/spot/__init__.py)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from au_annotate.spot.regions import EYE_AREA_ROIS, EYE_ROIS, ROI_NAMES, ROIS

DIP_RATIO = 0.75  # two peaks of one run are separate when the signal between them falls below this share of the first


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
        self.last_threshold: np.ndarray | None = None  # the latest step's per-region threshold (the floor over time)
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
        if self._last_t == -math.inf:
            self.next_c = index  # the stream's first step (a time range starts anywhere in the video)
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
            if scored:
                self.last_threshold = base if local is None else np.maximum(base, self.p * local)
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
