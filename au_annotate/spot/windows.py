"""The window builder: a peak's onset and offset by optical flow from its apex crop, its real duration from the frames'
timestamps, and the optional go-and-return test (step 6 of the spotter, au_annotate/spot/__init__.py)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from au_annotate.spot.config import SpotConfig
from au_annotate.spot.detector import _Candidate, _Ring

MotionFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (crop a, crop b, landmarks) -> (R, 2) motion


class WindowBuilder:
    """Onset/offset walks over the spotter's crop ring (`crops`: (small crop, landmarks, track, full crop) per frame) and
    durations over its timestamp ring (`times`); `motion` is the region motion between two small crops."""

    def __init__(self, config: SpotConfig, fps: float, crops: _Ring, times: _Ring, motion: MotionFn) -> None:
        self.config, self.fps, self.crops, self.times, self.motion = config, fps, crops, times, motion

    def returns(self, apex_crop: np.ndarray, lm: np.ndarray, fid: tuple[str, int], active: tuple[int, ...],
                 onset: int, offset: int, walked: dict[int, np.ndarray]) -> bool:
        """Whether the active regions come back: their net motion from onset to offset is at most `return_ratio` of
        their larger excursion to the apex (a micro-expression goes and returns; a step stays where it went). The
        apex -> onset/offset motions come from the onset/offset walks (`walked`) where they reached those frames."""
        a, b = self.crops.get(onset), self.crops.get(offset)
        if a is None or b is None or a[2] != fid or b[2] != fid or not active:
            return True  # cannot tell: keep the window
        idx = list(active)
        net = float(np.linalg.norm(self.motion(a[0], b[0], lm)[idx], axis=1).mean())
        go_m, back_m = walked.get(onset), walked.get(offset)
        go_m = self.motion(apex_crop, a[0], lm) if go_m is None else go_m
        back_m = self.motion(apex_crop, b[0], lm) if back_m is None else back_m
        go = float(np.linalg.norm(go_m[idx], axis=1).mean())
        back = float(np.linalg.norm(back_m[idx], axis=1).mean())
        return net <= self.config.return_ratio * max(go, back, 1e-6)


    def nominal_frames(self, onset: int, offset: int) -> float:
        """A window's duration by the timestamps, in nominal frames (what min_duration_s, max_micro_s and max_window_s
        are compared with). Where the timestamps agree with the inclusive frame count to half a frame (a constant rate,
        even with timestamps rounded to a coarse time base such as WebM's 1 ms) it is exactly that count."""
        count = offset - onset + 1
        real = self.duration_s(onset, offset) * self.fps
        return real if abs(real - count) >= 0.5 else float(count)


    def duration_s(self, onset: int, offset: int) -> float:
        """Seconds from the start of frame `onset` to the end of frame `offset`, by the frames' timestamps (the end of
        a frame is the next frame's timestamp; one nominal frame when that frame is not known yet or is not later)."""
        t0, t1, t_next = self.times.get(onset), self.times.get(offset), self.times.get(offset + 1)
        if t0 is None or t1 is None:
            return (offset - onset + 1) / self.fps
        end = t_next if t_next is not None and t_next > t1 else t1 + 1 / self.fps
        return end - t0


    def extent(self, cand: _Candidate, apex_crop: np.ndarray, lm: np.ndarray, fid: tuple[str, int], active: tuple[int, ...],
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
            motion = self.motion(apex_crop, item[0], lm)
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

