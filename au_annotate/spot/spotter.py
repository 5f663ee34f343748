"""The roi-flow spotter: the recipe that runs the parts (regions -> detectors -> window builder -> judge) over one
face's stream, and owns the rings they share (crops, timestamps, gate signals). See au_annotate/spot/__init__.py."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Protocol

import cv2
import numpy as np

from au_annotate.facestate import FaceStateCache, FaceStateSample
from au_annotate.megc import iou
from au_annotate.quality import FrameSignals
from au_annotate.records import AlignedFace, DetectionFloor, Window
from au_annotate.spot.config import SpotConfig, SpotError
from au_annotate.spot.detector import _Candidate, _Detector, _eye_area_led, _History, _LevelRecord, _Ring
from au_annotate.spot.held import HeldDetector, HeldStep
from au_annotate.spot.judge import WindowJudge
from au_annotate.spot.regions import REF_SIZE, ROI_NAMES, RegionMotion
from au_annotate.spot.windows import WindowBuilder

SignalHook = Callable[[str, int, float], None]  # on_signal("micro" | "macro" | "floor", frame index, value)
NEAR_MISS = 0.6  # a micro peak that reaches this share of its threshold but not 1.0 is kept aside as below_threshold
MAX_NEAR = 256  # sub-threshold peaks held until near_misses() takes them (bounded if nobody does)
FLOOR_EVERY_S = 0.5  # the detection floor is sampled for the report's strip this often
MESH_EVERY_S = 2.0  # the landmark model's coverage of a track is sampled this often (~2.5 ms of CPU a second)


class Spotter(Protocol):
    """A streaming spotter: frames in order, windows out as soon as they close."""

    max_latency_frames: int

    def process_frame(self, index: int, pts_s: float, face: AlignedFace | None) -> list[Window]: ...

    def flush(self) -> list[Window]: ...

    def detection_floor(self) -> DetectionFloor | None: ...

    def face_pair(self, onset: int, apex: int) -> tuple[AlignedFace, AlignedFace] | None: ...

    def time_at(self, index: int) -> float | None: ...

    def face_at(self, index: int) -> AlignedFace | None: ...

    def near_misses(self) -> list[Window]: ...


class RoiFlowSpotter:
    """The default spotter ("roi-flow"): DIS flow k frames back, landmark ROIs, head-motion removal, adaptive threshold."""

    def __init__(self, fps: float, config: SpotConfig | dict[str, Any] | None = None,
                 on_signal: SignalHook | None = None, near_misses: bool = False) -> None:
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
        sens = cfg.sensitivity  # the thresholds actually applied: every score is a multiple of these (1.0 = reported)
        for name, k_s, rate, p, radius in (("micro", cfg.k_s, cfg.micro_rate, cfg.p / sens, self.micro_radius),
                                           ("macro", cfg.macro_k_s, cfg.macro_rate, cfg.macro_p / sens,
                                            self.macro_radius)):
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
            det = _Detector(name, stride, k, half, p, cfg.min_motion_px / sens, steps(cfg.history_s), steps(0.25),
                            steps(cfg.warmup_s), det_gap, radius, step_s, ctx)
            self.detectors.append(det)
            # a score waits for its partner (up to 2 k steps) and for its local context after it
            delay = max(delay, (max(det.k_hi, det.ctx_after) + half + 1) * stride)
        gap_max = max((d.gap for d in self.detectors), default=0)
        # a window closes at most max(radius, gap + delay) frames after its apex (+ warm-up at the stream start), and
        # its onset is at most `longest` frames before the apex
        self.max_latency_frames = longest + max(longest, 2 * gap_max) + delay + 2 * warmup_frames + 2
        # held expressions (held.py): proposed by the macro detector's motion, confirmed by the landmarks once the
        # micro detector has decided the same stretch (so a movement it reports is not reported twice)
        self.held: HeldDetector | None = None
        self._held_wait = 0
        if cfg.held == "on":  # validate() made sure of the landmarks and the macro detector
            macro_det = next(d for d in self.detectors if d.name == "macro")
            self.held = HeldDetector(self.fps, macro_det.k * macro_det.stride, sens)
            self._held_wait = max((2 * d.gap + (d.k_hi + d.half + 1) * d.stride + d.radius
                                   for d in self.detectors if d.name == "micro"), default=0)
            # every micro/macro window waits H after its offset for the held test (`_claim`)
            self.max_latency_frames = max(self.max_latency_frames + self.held.hold + self.held.grid + 1,
                                          self.held.latency + self._held_wait)
        self.crop_ring_size = self.max_latency_frames + 2
        self.crops = _Ring(self.crop_ring_size)  # (small crop, small landmarks, (face_id, epoch), AlignedFace) per frame
        self.times = _Ring(self.crop_ring_size)  # every frame's timestamp (seconds), for real window durations
        # latest frame fed minus onset of the latest window it can emit: radius before the apex, radius after it,
        # the detector delay, and the warm-up at the start of the stream
        self.regions = RegionMotion(cfg)  # region motion between crops (regions.py)
        self._newest = -1
        # quality gate (au_annotate.quality): per-frame and per-step signals over the crop ring, the match history
        self.qframes = _Ring(self.crop_ring_size)  # FrameSignals per frame (None: no face)
        self.qsteps = {d.name: _Ring(self.crop_ring_size) for d in self.detectors}  # _StepFit per sampled frame
        self._match_hist = _History(frames(cfg.history_s), 1, frames(0.5))
        self._emitted: list[Window] = []  # recent windows, to resolve micro/macro overlaps (bounded below)
        self._deferred: list[Window] = []  # windows waiting for the held test (held on only)
        self._iods = _LevelRecord(1, 4.0, 1e3)  # inter-ocular distance of every face frame, px of a 224-px crop
        self._iod_last = -1.0
        self._floor_every = frames(FLOOR_EVERY_S)
        self._floor_next = 0
        self._mesh_every = frames(MESH_EVERY_S)
        self._mesh_next = -1  # next face frame whose mesh is sampled for the coverage (-1: the first face frame)
        self._mesh_counts = [0, 0]  # sampled face frames, of which with a mesh
        self._near_run: tuple[int, float, bool] | None = None  # open micro run: apex frame, its value, reached 1.0
        self._near: list[Window] = []  # closed sub-threshold peaks, until near_misses() takes them
        self._keep_near = near_misses  # record them at all (for a report): off, the spotter's state stays as it was
        # the face state around candidate windows (au_annotate.facestate): dense landmarks on demand, cached per frame
        self.states: FaceStateCache | None = None
        if cfg.landmarks == "on":
            from au_annotate.landmarks import FaceMesh

            self.states = FaceStateCache(FaceMesh(), size=128)  # a few windows' samples: micro and macro overlap
        self.windows = WindowBuilder(cfg, self.fps, self.crops, self.times, self.regions.motion)  # windows.py
        self.judge = WindowJudge(cfg, self.fps, self.detectors, self.crops, self.qframes, self.qsteps,  # judge.py
                                 self._match_hist, self.states)
        self.gate, self.gate_log = self.judge.gate, self.judge.gate_log

    def _region_motion(self, a: np.ndarray, b: np.ndarray, lm: np.ndarray, stats: bool = False) -> np.ndarray:
        """Region motion from crop a to crop b (regions.RegionMotion.motion)."""
        return self.regions.motion(a, b, lm, stats)

    def _nominal_frames(self, onset: int, offset: int) -> float:
        """A window's duration in nominal frames (windows.WindowBuilder.nominal_frames)."""
        return self.windows.nominal_frames(onset, offset)

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
                    if det.name == "macro" and self.held is not None:
                        self.held.propose(index, 0.0)
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
        self.crops.put(index, (small, lm, track, face))  # the aligned face itself: the only ring of crops (no copy)
        match = float(getattr(face, "match", 1.0))
        x, y, w, h = getattr(face, "box", (0.0, 0.0, 1.0, 1.0))
        self.qframes.put(index, FrameSignals(match, float(cv2.mean(small)[0]), x + w / 2, y + h / 2, max(w, h)))
        self._match_hist.push(np.array([match], np.float32))
        if self.states is not None and index >= self._mesh_next:  # how much of the track the landmark model sees
            self._mesh_next = index + self._mesh_every
            self._mesh_counts[0] += 1
            self._mesh_counts[1] += self.judge.sample(index, index) is not None
        for det in self.detectors:
            if index % det.stride:
                continue
            step = index // det.stride
            ref = det.reference(step, pts_s)  # about k_s seconds back by the timestamps (k steps at a constant rate)
            prev = self.crops.get(ref * det.stride) if ref is not None else None
            vec = None
            if prev is not None and prev[2] == track:
                vec = self._region_motion(prev[0], small, lm, stats=self.config.gate == "label")
                self.qsteps[det.name].put(index, self.regions.last_step)
            self._signal(det, det.add(step, pts_s, vec))
            if det.name == "macro" and self.held is not None:  # the largest region motion K back, in IODs
                moved = 0.0 if vec is None else float(np.sqrt((vec * vec).sum(1)).max())
                self.held.propose(index, moved / max(iod, 1e-6))
        return self._collect(final=False)

    def flush(self) -> list[Window]:
        """End of stream: decide everything still pending and return the remaining windows."""
        for det in self.detectors:
            # frames after the last one have no k-forward motion; score what can be scored
            self._signal(det, det.flush_pending())
        self._near_miss(self._newest, 0.0)  # close an open sub-threshold run
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
                              steps=det.thresholds.total, mesh_samples=self._mesh_counts[0],
                              mesh_found=self._mesh_counts[1])

    def face_pair(self, onset: int, apex: int) -> tuple[AlignedFace, AlignedFace] | None:
        """The aligned faces of a closed window for its flow picture: the apex's own face (or the nearest earlier one in
        the ring) and, of the same tracking epoch and not after it, the face nearest to `onset` (the earlier on a tie):
        flow across a re-detection would measure the jump. None when the ring holds no such face."""
        apex_face = None
        for i in range(apex, max(-1, apex - self.crop_ring_size), -1):
            item = self.crops.get(i)
            if item is not None:
                apex_face = item[3]
                break
        if apex_face is None:
            return None
        for d in range(self.crop_ring_size):
            for i in ((onset - d, onset + d) if d else (onset,)):
                item = self.crops.get(i) if 0 <= i <= apex_face.index else None
                if item is not None and getattr(item[3], "epoch", 0) == getattr(apex_face, "epoch", 0):
                    return item[3], apex_face
        return None

    def time_at(self, index: int) -> float | None:
        """The timestamp (s) of a recent frame, None when the ring no longer (or never) held it."""
        return self.times.get(index)

    def face_at(self, index: int) -> AlignedFace | None:
        """The aligned face of a recent frame, None when the ring no longer holds it or the frame had no face."""
        item = self.crops.get(index)
        return None if item is None else item[3]

    def _signal(self, det: _Detector, items: list[tuple[int, float]]) -> None:
        """Report each decided sample to `on_signal(detector, frame, value)`: the value its threshold applies to (so
        1.0 is the threshold), and about twice a second the micro detector's current floor (`"floor"`, % of the IOD)."""
        if det.name == "micro" and self._keep_near:
            for index, value in items:
                self._near_miss(index, value)
        if self.on_signal is None:
            return
        for index, value in items:
            self.on_signal(det.name, index, value)
        if det.name == "micro" and items and items[-1][0] >= self._floor_next and det.last_threshold is not None:
            iod = float(self._iods.medians()[0]) if self._iods.total else math.nan
            if math.isfinite(iod) and iod > 0:
                self._floor_next = items[-1][0] + self._floor_every
                self.on_signal("floor", items[-1][0], 100.0 * float(np.median(det.last_threshold)) / iod)

    def near_misses(self) -> list[Window]:
        """The sub-threshold micro peaks closed since the last call (Window.reason "below_threshold"; never among the
        windows process_frame returns): for the report, while their faces are still in the ring."""
        out, self._near = self._near, []
        return out

    def _near_miss(self, index: int, value: float) -> None:
        """Track micro peaks between NEAR_MISS and 1.0 of the threshold (never reported: the report shows them as
        below_threshold, so a coder sees what the spotter almost took)."""
        run = self._near_run
        if value >= NEAR_MISS:
            apex, peak = (index, value) if run is None or value > run[1] else run[:2]
            self._near_run = (apex, peak, value >= 1.0 or (run is not None and run[2]))
            return
        if run is not None and not run[2] and len(self._near) < MAX_NEAR:  # closed without reaching the threshold
            apex, peak, _ = run
            self._near.append(Window(onset=max(0, apex - self.k), apex=apex, offset=apex + self.k,
                                     score=round(peak, 4), kind="micro", reason="below_threshold"))
        self._near_run = None

    def _collect(self, final: bool) -> list[Window]:
        out: list[Window] = []
        for det in self.detectors:
            for cand in det.ready(self._newest, final):
                w = self._window(cand)
                if w is not None and self._keep(w, cand):
                    self._emitted.append(w)
                    if self.held is not None and w.kind in ("micro", "macro"):
                        self._deferred.append(w)  # is it the start of a held expression? (`_claim`)
                    else:
                        out.append(w)
        if self.held is not None:
            out += self._held(final)
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
        # a movement already reported as micro (or blink) or as a held expression is not reported again as macro
        return not any(iou(onset, offset, e.onset, e.offset) >= 0.3 for e in self._emitted
                       if e.kind != "macro" or _is_held(e))

    def _held(self, final: bool) -> list[Window]:
        """Held expressions (held.py): the deferred windows whose after span is at hand, each claimed when it starts a
        held change; then the held changes the macro motion proposed, each unless a window already covers it."""
        assert self.held is not None

        def sample(i: int) -> FaceStateSample | None:
            return self.judge.sample(i, self._newest)

        out, wait = [], []
        for w in self._deferred:
            if final or self._newest >= w.offset + self.held.hold + self.held.grid:
                claimed = self._claim(w, sample)
                if claimed is not None:
                    out.append(claimed)
            else:
                wait.append(w)
        self._deferred = wait
        for step in self.held.ready(self._newest - self._held_wait, final, sample):
            w = self._held_window(step)
            if w is not None:
                out.append(w)
                self._emitted.append(w)
        return out

    def _claim(self, w: Window, sample: Callable[[int], FaceStateSample | None]) -> Window | None:
        """A detector's window, or the held expression it starts (kind macro, context `held`, offset at the end of the
        after span, score the held test's): a movement that does not come back is the onset of an ordinary expression,
        not a micro-expression. None when a held expression already reported covers it (one window per movement)."""
        assert self.held is not None
        i = next(j for j, e in enumerate(self._emitted) if e is w)
        step = self.held.confirm_window(w.onset, w.offset, sample)
        if step is not None:  # the window keeps its onset and apex; its offset is where the change was seen to hold
            tags = ["held", *(t for t in w.context.split("+") if t)]
            quality = "ok" if w.quality == "head_motion" else w.quality  # measured in the head's frame: context only
            offset = min(step.offset, w.onset + self.max_window - 1)  # no window longer than max_window_s
            w = dataclasses.replace(w, kind="macro", offset=max(offset, w.offset), score=step.score,
                                    quality=quality, context="+".join(tags))
        if self._held_covers(w.onset, w.offset, w.regions):
            del self._emitted[i]
            return None
        self._emitted[i] = w
        return w

    def _held_covers(self, onset: int, offset: int, regions: tuple[str, ...]) -> bool:
        """Whether an emitted held expression of the same regions covers most of onset..offset (or it most of that
        held window): the same movement, already reported; a movement elsewhere on the face during it is not."""
        area = _areas(regions)
        return any(_is_held(e) and _overlap(onset, offset, e.onset, e.offset) >= 0.5
                   and (not area or not _areas(e.regions) or area & _areas(e.regions)) for e in self._emitted)

    def _held_window(self, step: HeldStep) -> Window | None:
        """The macro window of a confirmed held expression (held.py), or None when a reported micro/macro window
        already covers its onset..apex. The change is measured in the head's own frame, so head motion, blinks and
        talking are context, not quality; tracking and lighting (the cheap gate) and a lost mesh (occlusion) still set
        the quality."""
        if self._held_covers(step.onset, step.offset, step.regions) or any(
                iou(step.onset, step.apex, e.onset, e.offset) >= 0.3 for e in self._emitted
                if e.kind in ("micro", "macro") and e.quality == "ok"):
            return None
        n = len(ROI_NAMES)
        cand = _Candidate(step.apex, step.score, np.zeros(n, np.float32), np.zeros((n, 2), np.float32),
                          self.macro_radius, "macro")
        gated = self.config.gate == "label"
        # the cheap gate without its motion-ratio tests (spread, rigid head): they compare flow with the window's
        # flow evidence, and a held window's evidence is the landmarks' change in the head's own frame
        quality = self.judge.quality(cand, step.onset, step.offset, (), self._newest, ratios=False) if gated else "ok"
        ctx = self.judge.context(cand, step.onset, step.offset, self._newest) if quality == "ok" else None
        tags = ["held", *(ctx.tags() if ctx is not None else ())]
        if gated and quality == "ok" and ctx is not None and ctx.occluded:
            quality = "occlusion"
        return Window(onset=step.onset, apex=step.apex, offset=step.offset, score=step.score, kind="macro",
                      quality=quality, context="+".join(tags), regions=step.regions)

    def _window(self, cand: _Candidate) -> Window | None:
        """Onset/offset by flow from the apex crop; kind by duration and blink shape."""
        apex_item = self.crops.get(cand.apex)
        if apex_item is None:
            return None
        apex_crop, lm, fid, _ = apex_item
        top = float(cand.scores.max())
        active = tuple(int(r) for r in np.flatnonzero(cand.scores >= 0.5 * top))
        walked: dict[int, np.ndarray] = {}  # region motion from the apex crop per frame the walks reached
        onset = self.windows.extent(cand, apex_crop, lm, fid, active, -1, walked)
        offset = self.windows.extent(cand, apex_crop, lm, fid, active, +1, walked)
        if onset is None or offset is None:
            return None  # the movement did not level off within the search radius
        duration = self._nominal_frames(onset, offset)
        if duration < self.min_len or duration > self.max_window:
            return None
        kind = "micro" if duration <= self.max_micro else "macro"
        if not self._wanted(kind, cand, onset, offset):
            return None  # the other time scale's movement: decided before the landmark model runs
        gated = self.config.gate == "label"
        # the gate once (tracking, lighting, the spread rule when on, last the rigid-fit head test): a window it labels
        # for anything but the rigid head test needs no landmarks; that test counts only where the pose is not known
        gate = self.judge.quality(cand, onset, offset, active, self._newest) if gated else "ok"
        rigid_head = gate == "head_motion"
        quality = "ok" if rigid_head else gate
        ctx = self.judge.context(cand, onset, offset, self._newest) if quality == "ok" else None
        tags = list(ctx.tags()) if ctx is not None else []
        if ctx is not None and ctx.landmarks:  # blinks from the eyes' state: closed eyes and the motion at the eyes
            blink = ctx.blink and _eye_area_led(cand)
        else:  # no landmarks (off, or the model lost the face): the flow shape of a closing upper lid
            blink = kind == "micro" and cand.blink
        if blink:
            tags = [t for t in tags if t != "blink"]
        if kind == "micro" and not blink and self.config.return_ratio > 0 and not self.windows.returns(
                apex_crop, lm, fid, active, onset, offset, walked):
            return None  # a step (an expression that is held, a posture change): not a go-and-return movement
        if blink:
            if self.config.blinks == "drop":
                return None
            if self.config.blinks in ("report", "label"):
                kind = "blink"
        gated = gated and kind != "blink"
        posed = ctx is not None and ctx.landmarks  # the head pose is known: the rigid-fit head test is not needed
        if not gated:
            quality = "ok"
        elif quality == "ok" and posed:
            quality = "occlusion" if ctx.occluded else "head_motion" if ctx.head_motion else "ok"
        elif quality == "ok" and rigid_head:  # no head pose from the landmarks: the rigid-fit head test decides
            quality = "head_motion"
        return Window(onset=onset, apex=cand.apex, offset=offset, score=round(float(cand.value), 4), kind=kind,
                      quality=quality, context="+".join(tags), regions=tuple(ROI_NAMES[i] for i in active))


def _overlap(a0: int, a1: int, b0: int, b1: int) -> float:
    """Frames two inclusive intervals share, over the shorter one's length (1.0: one lies inside the other)."""
    inter = min(a1, b1) - max(a0, b0) + 1
    return max(0, inter) / max(1, min(a1 - a0, b1 - b0) + 1)


def _areas(regions: tuple[str, ...]) -> set[str]:
    """The halves of the face the regions lie in: "upper" (brows, eyes, lids) or "lower" (cheeks, mouth, lips)."""
    return {"upper" if r.startswith(("brow", "eye", "lid")) else "lower" for r in regions}


def _is_held(w: Window) -> bool:
    """Whether a window is a held expression (held.py: context `held`)."""
    return "held" in w.context.split("+")


SPOTTERS: dict[str, Callable[..., Spotter]] = {"roi-flow": RoiFlowSpotter}


def make_spotter(name: str, fps: float, config: SpotConfig | dict[str, Any] | None = None,
                 on_signal: SignalHook | None = None, near_misses: bool = False) -> Spotter:
    """Build a spotter by name ("roi-flow" is the default) for a video of `fps` (nominal) frames per second;
    `on_signal(detector, frame, value)` gets both detectors' samples (module docstring); `near_misses`: keep the
    sub-threshold peaks for Spotter.near_misses (the report's below_threshold windows)."""
    try:
        cls = SPOTTERS[name]
    except KeyError:
        raise SpotError(f"unknown spotter {name!r}; available: {', '.join(SPOTTERS)}") from None
    return cls(fps, config, on_signal=on_signal, near_misses=near_misses)
