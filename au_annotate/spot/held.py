"""Held expressions: a smile, a frown or a brow raise that changes the face and stays changed (step 8 of the spotter,
au_annotate/spot/__init__.py; off by default: `held = "on"`).

Both detectors score movements that go and come back, so an ordinary expression that is held never rises in them. Here
the cheap flow proposes and the dense landmarks confirm (rule fixed before any evaluation: docs/spotting.md, round 10):

- proposal: the macro detector's K-back region motion reaches `TRIGGER_IOD` in some region; a run of such steps
  proposes its strongest step f (a run longer than 2 K is cut, so a face that keeps moving still gets proposals);
- confirmation: the face-state geometry (`facestate.head_geometry`: brows, brow gap, mouth corners' height, mouth width,
  in the head's own 3-D frame, in IODs) on a `SAMPLE_HZ` grid, before = [f - K - H, f - K] against after = [f, f + H]
  (H = `HOLD_S`): a group (brows, mouth) changed when one of its features' medians moved by at least `MIN_CHANGE_IOD`
  and by at least `SPREAD_RATIO` times the features' largest half-range inside either span (a face that talks or sways
  through both spans is not steady), with at least `MIN_SAMPLES` meshes in each span; `sensitivity` divides both limits;
- window: onset = the last grid sample from f - K on still within 20 % of the before level (of the feature that moved
  most), apex = the first at 80 % or more, offset = the end of the after span (the expression is held that long at
  least).

Every distance is in IODs and every duration in seconds, so the rule holds for any face size and for frame rates that
put at least MIN_SAMPLES frames in HOLD_S (5 fps and more; slower video never confirms a held change); the state is a
few integers per open run (bounded). Needs the landmarks and the macro detector (SpotConfig.validate says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from au_annotate.facestate import FaceStateSample

SAMPLE_HZ = 5.0  # landmark samples per second on the confirmation grid (frames at multiples of fps / SAMPLE_HZ)
HOLD_S = 0.6  # a held expression lasts more than 0.5 s: each side is looked at this long
TRIGGER_IOD = 0.02  # K-back region motion (IODs) that proposes a step: half the smallest change confirmed
MIN_CHANGE_IOD = 0.04  # ~2.5 mm on an adult face: a change a coder sees; mesh jitter and small head turns are 1-2 %
SPREAD_RATIO = 2.0  # the change must be this many times the larger half-range of either span
MIN_SAMPLES = 3  # meshes needed in each span
ONSET_SHARE, APEX_SHARE = 0.2, 0.8  # onset: still within 20 % of the before level; apex: 80 % of the way reached
FEATURES = ("brows", "brow_gap", "corners", "mouth_w")
GROUPS = {"brows": (0, 1), "mouth": (2, 3)}  # feature indices per group
GROUP_REGIONS = {"brows": ("brow_l", "brow_r"), "mouth": ("mouth_l", "mouth_r")}  # for the report's outlines

SampleFn = Callable[[int], FaceStateSample | None]


@dataclass(frozen=True)
class HeldStep:
    """A confirmed held change: frames (onset <= apex <= offset), the proposing step, and how much moved."""

    onset: int
    apex: int
    offset: int
    at: int  # the proposing step f
    score: float  # the largest group's change over the limit applied (1.0 = just held)
    groups: tuple[str, ...]  # the groups that changed ("brows", "mouth")
    change: dict[str, float]  # signed median change per feature, in IODs

    @property
    def regions(self) -> tuple[str, ...]:
        """The spotter's regions of interest under the changed groups (for the report's outlines)."""
        return tuple(r for g in self.groups for r in GROUP_REGIONS[g])


def _features(s: FaceStateSample | None) -> np.ndarray | None:
    if s is None:
        return None
    v = np.array([getattr(s, f) for f in FEATURES], np.float64)
    return v if np.all(np.isfinite(v)) else None


class HeldDetector:
    """Proposals from the macro detector's motion, confirmed on landmark samples (see the module text)."""

    def __init__(self, fps: float, k_frames: int, sensitivity: float = 1.0) -> None:
        self.grid = max(1, int(round(fps / SAMPLE_HZ)))
        self.k = max(1, int(k_frames))
        self.hold = max(self.grid, int(round(HOLD_S * fps)))
        self.min_change = MIN_CHANGE_IOD / sensitivity
        self.spread_ratio = SPREAD_RATIO / sensitivity
        self._run: tuple[int, int, float] | None = None  # open run: first step, strongest step, its motion
        self.pending: list[int] = []  # proposed steps waiting for their after span, in order

    @property
    def latency(self) -> int:
        """Most frames between a held window's onset and the frame at which it is confirmed: a run up to 2 K long,
        the before span and the transition (K + H), the after span (H)."""
        return 3 * self.k + 2 * self.hold + 2 * self.grid

    def propose(self, index: int, motion_iod: float) -> None:
        """One macro step at frame `index`: the largest region motion K back, in IODs (0 without a face)."""
        run = self._run
        if motion_iod >= TRIGGER_IOD:
            if run is None:
                self._run = (index, index, motion_iod)
            elif motion_iod > run[2]:
                self._run = (run[0], index, motion_iod)
            if self._run is not None and index - self._run[0] >= 2 * self.k:
                self._close()
        elif run is not None:
            self._close()

    def _close(self) -> None:
        if self._run is not None:
            self.pending.append(self._run[1])
        self._run = None

    def ready(self, newest: int, final: bool, sample: SampleFn) -> list[HeldStep]:
        """The held steps confirmed now: proposals whose after span is at hand (all of them at the end of the stream),
        looked at on the landmark samples; those the landmarks do not confirm are dropped."""
        if final:
            self._close()
        out = []
        while self.pending and (final or newest >= self.pending[0] + self.hold + self.grid):
            step = self.confirm(self.pending.pop(0), sample)
            if step is not None:
                out.append(step)
        return out

    def _grid(self, lo: int, hi: int) -> range:
        """Grid frames in [lo, hi] (multiples of the grid step: neighbouring proposals share their samples)."""
        start = -(-max(0, lo) // self.grid) * self.grid
        return range(start, hi + 1, self.grid)

    def confirm(self, f: int, sample: SampleFn) -> HeldStep | None:
        """The held change proposed at step f (before [f - K - H, f - K], after [f, f + H]), or None when the
        landmarks do not show one."""
        change = self._change(f - self.k, f, sample)
        if change is None:
            return None
        scores, groups, level_b, delta = change
        best = max(groups, key=lambda g: scores[g])
        main = max(GROUPS[best], key=lambda i: abs(delta[i]))
        onset, apex = self._transition(f, sample, level_b[main], delta[main], main)
        return self._step(onset, apex, f, scores[best], groups, delta)

    def confirm_window(self, onset: int, offset: int, sample: SampleFn) -> HeldStep | None:
        """Whether a window the detectors found (onset..offset) starts a held change: before [onset - H, onset] against
        after [offset, offset + H] by the same test (a movement that goes and returns is not one). The step's onset is
        the window's, its apex the window's offset (the spotter keeps the window's own apex and takes only the step's
        offset and score)."""
        change = self._change(onset, offset, sample)
        if change is None:
            return None
        scores, groups, _, delta = change
        return self._step(onset, offset, offset, scores[max(groups, key=lambda g: scores[g])], groups, delta)

    def _change(self, before_end: int, after_start: int, sample: SampleFn
                ) -> tuple[dict[str, float], tuple[str, ...], np.ndarray, np.ndarray] | None:
        """(score per group, the groups held, the before level, the change) of before [before_end - H, before_end]
        against after [after_start, after_start + H]; None when no group changed or too few meshes."""
        before = [v for v in (_features(sample(i)) for i in self._grid(before_end - self.hold, before_end))
                  if v is not None]
        if len(before) < MIN_SAMPLES:
            return None
        after = [v for v in (_features(sample(i)) for i in self._grid(after_start, after_start + self.hold))
                 if v is not None]
        if len(after) < MIN_SAMPLES:
            return None
        b, a = np.asarray(before), np.asarray(after)
        level_b = np.median(b, axis=0)
        delta = np.median(a, axis=0) - level_b
        half = np.maximum(np.ptp(b, axis=0), np.ptp(a, axis=0)) / 2
        scores = {}
        for name, idx in GROUPS.items():
            moved = float(np.abs(delta[list(idx)]).max())
            scores[name] = moved / max(self.min_change, self.spread_ratio * float(half[list(idx)].max()))
        groups = tuple(g for g, s in scores.items() if s >= 1.0)
        return (scores, groups, level_b, delta) if groups else None

    def _step(self, onset: int, apex: int, at: int, score: float, groups: tuple[str, ...],
              delta: np.ndarray) -> HeldStep:
        offset = max(max(self._grid(at, at + self.hold), default=at), apex)
        return HeldStep(onset=onset, apex=apex, offset=offset, at=at, score=round(score, 4), groups=groups,
                        change={n: round(float(d), 4) for n, d in zip(FEATURES, delta, strict=True)})

    def _transition(self, f: int, sample: SampleFn, base: float, delta: float, feature: int) -> tuple[int, int]:
        """(onset, apex) on the grid between f - K and f: the last sample still within ONSET_SHARE of the before level,
        then the first that reached APEX_SHARE of the change (f - K and f when no sample says otherwise)."""
        lo = f - self.k
        progress: list[tuple[int, float]] = [(lo, 0.0)]
        for i in self._grid(lo + 1, f - 1):
            v = _features(sample(i))
            if v is not None and not math.isclose(delta, 0.0):
                progress.append((i, (v[feature] - base) / delta))
        progress.append((f, 1.0))
        onset = lo
        for i, share in progress:
            if share < ONSET_SHARE:
                onset = i
            elif share >= APEX_SHARE:
                break
        apex = next((i for i, share in progress if i > onset and share >= APEX_SHARE), f)
        return onset, apex
