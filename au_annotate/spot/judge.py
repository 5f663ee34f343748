"""What explains a window: the quality gate's cheap signals (tracking, lighting, the optional spread and rigid-head
tests; au_annotate.quality) and the face state from dense landmarks around it (au_annotate.facestate). Steps 7-8 of the
spotter (au_annotate/spot/__init__.py)."""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import numpy as np

from au_annotate.facestate import FaceStateCache, FaceStateSample, WindowContext, explain, plan_samples
from au_annotate.quality import GateConfig, label_window
from au_annotate.spot.config import SpotConfig
from au_annotate.spot.detector import _Candidate, _Detector, _eye_area_led, _History, _Ring
from au_annotate.spot.regions import REF_SIZE, _step_signals

GATE_LOG_SIZE = 16  # gate decisions kept for diagnosis (the latest windows only: state stays bounded and small)


class WindowJudge:
    """The gate and the face state of one spotter, over its rings: per-frame gate signals (`qframes`), per-step flow
    fits of each detector (`qsteps`), the crops (`crops`, for the landmark model) and the match history."""

    def __init__(self, config: SpotConfig, fps: float, detectors: list[_Detector], crops: _Ring, qframes: _Ring,
                 qsteps: dict[str, _Ring], match_hist: _History, states: FaceStateCache | None) -> None:
        self.config, self.fps, self.detectors, self.crops = config, fps, detectors, crops
        self.qframes, self.qsteps, self.match_hist, self.states = qframes, qsteps, match_hist, states
        self.gate = GateConfig(match_drop=config.match_drop, lighting_jump=config.lighting_jump,
                               spread_ratio=config.spread_ratio, head_ratio=config.head_ratio)
        # the gate's inputs of the latest windows (apex, label, evidence, head, spread, match level, min match): why
        self.gate_log: deque[tuple] = deque(maxlen=GATE_LOG_SIZE)

    def quality(self, cand: _Candidate, onset: int, offset: int, active: tuple[int, ...], newest: int,
                ratios: bool = True) -> str:
        """The window's quality label (au_annotate.quality) from the gate signals from onset - k to offset + k; its
        checks run in a fixed order, so "head_motion" means every other check passed (the caller may overrule that
        rigid-fit test with the landmarks' head pose). `ratios` False: tracking and lighting only (the spread and
        rigid-head tests weigh flow against the window's own flow evidence, which a held expression does not have)."""
        det = next(d for d in self.detectors if d.name == cand.detector)
        k = det.k * det.stride
        lo, hi = max(0, onset - k), min(newest, offset + k)
        frames = [self.qframes.get(i) for i in range(lo, hi + 1)]
        ring = self.qsteps[cand.detector]
        first = -(-(lo + k) // det.stride) * det.stride  # steps lie on multiples of the stride
        steps = [_step_signals(ring.get(i), REF_SIZE / self.config.flow_size) for i in range(first, hi + 1, det.stride)]
        evidence = float(np.linalg.norm(cand.vectors[list(active)], axis=1).max()) if active else 0.0
        level = float(self.match_hist.level()[0])
        gate = self.gate if ratios else dataclasses.replace(self.gate, spread_ratio=0.0, head_ratio=math.inf)
        label = label_window(frames, steps, k, evidence, level, gate)
        st = [x for x in steps if x is not None]
        self.gate_log.append((cand.apex, label, round(evidence, 3), round(max((x.head_px for x in st), default=0), 3),
                              round(max((x.spread_px for x in st), default=0), 3), round(level, 3),
                              round(min((f.match for f in frames if f is not None), default=0), 3)))
        return label

    def context(self, cand: _Candidate, onset: int, offset: int, newest: int) -> WindowContext | None:
        """What the face was doing around a window (au_annotate.facestate), from dense landmarks on the crops the ring
        still holds (frames not there count as missing); None when landmarks are off. The talking test's samples are
        taken only when the window is not an eye-led blink (the model costs ~9 ms a call)."""
        if self.states is None:
            return None

        def sample(i: int) -> FaceStateSample | None:
            return self.sample(i, newest)

        inside, refs, span = plan_samples(onset, cand.apex, offset, self.fps)
        a, b = [sample(i) for i in inside], [sample(i) for i in refs]
        eyes = explain(a, b, [])
        if eyes.landmarks and eyes.blink and _eye_area_led(cand):
            return eyes
        return explain(a, b, [sample(i) for i in span])

    def sample(self, index: int, newest: int) -> FaceStateSample | None:
        """The face state of a frame the ring still holds (cached; None: no face, no mesh, landmarks off, or gone)."""
        if self.states is None:
            return None
        item = self.crops.get(index) if 0 <= index <= newest else None
        return self.states.get(index, item[3].crop if item is not None else None)

