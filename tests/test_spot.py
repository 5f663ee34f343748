"""The streaming roi-flow spotter on synthetic faces: finds planted micro-expressions at 30 and 200 fps, ignores blinks
and head motion, keeps its latency promise, and keeps bounded state over long streams."""

from __future__ import annotations

import numpy as np
import pytest

from au_annotate.megc import Interval, evaluate
from au_annotate.records import AlignedFace, Window
from au_annotate.spot import RoiFlowSpotter, SpotConfig, SpotError, make_spotter
from au_annotate.synth import PlantedEvent, crop_aligned, iter_frames

pytest.importorskip("skimage")

SIZE = (320, 240)  # small frames keep rendering cheap; the aligned crop is 224 px as in the product


def run(fps: float, duration_s: float, events: list[PlantedEvent], gaps: tuple[tuple[int, int], ...] = (),
        config: dict | None = None, **synth) -> tuple[list[Window], RoiFlowSpotter, list[tuple[int, float]]]:
    """Feed aligned crops of a synthetic clip to a spotter; checks the latency promise on every emitted window."""
    signal: list[tuple[int, float]] = []
    sp = make_spotter("roi-flow", fps, config, on_signal=lambda i, v: signal.append((i, v)))
    assert isinstance(sp, RoiFlowSpotter)
    out: list[Window] = []
    last = -1
    for f in iter_frames(fps=fps, duration_s=duration_s, size=SIZE, events=events, **synth):
        face = None if any(a <= f.index < b for a, b in gaps) else crop_aligned(f, quantum=2.0)
        for w in sp.process_frame(f.index, f.pts_s, face):
            assert f.index - w.onset <= sp.max_latency_frames
            out.append(w)
        last = f.index
    out += sp.flush()
    assert all(0 <= w.onset <= w.apex <= w.offset <= last for w in out)
    return out, sp, signal


def micro_f1(windows: list[Window], events: list[PlantedEvent], fps: float) -> tuple[int, int, int]:
    gt = [Interval("v", round(e.onset_s * fps), round(e.offset_s * fps), e.kind) for e in events if e.kind != "blink"]
    pred = [Interval("v", w.onset, w.offset, w.kind) for w in windows]
    c = evaluate(gt, pred).by_kind["micro"]
    return c.tp, c.fp, c.fn


MICRO = [
    PlantedEvent("brow_raise", 1.2, 1.32, 1.5, 1.2),
    PlantedEvent("lip_corner_pull", 2.1, 2.28, 2.45, 1.2),
    PlantedEvent("lid_tighten", 3.0, 3.1, 3.3, 1.2),
]


@pytest.mark.parametrize("fps", [30.0, 200.0])
def test_planted_micro_expressions_are_found_at_30_and_200_fps(fps: float) -> None:
    windows, sp, signal = run(fps, 3.8, MICRO, noise_sigma=2.0, seed=fps == 200)
    tp, fp, fn = micro_f1(windows, MICRO, fps)
    assert (tp, fp, fn) == (3, 0, 0), windows
    # the signal hook saw frames in order, and is high at the planted apexes
    idx = [i for i, _ in signal]
    assert idx == sorted(idx) and len(idx) > 0.3 * 3.8 * min(fps, 100)
    sig = dict(signal)
    for e in MICRO:
        near = [v for i, v in sig.items() if abs(i - e.apex_s * fps) <= 0.05 * fps + 1]
        assert max(near) >= 1.0


def test_windows_carry_seconds_converted_parameters() -> None:
    a, b = RoiFlowSpotter(25.0), RoiFlowSpotter(200.0)
    assert a.k == 5 and b.k == 40  # k_s = 0.2 s
    assert a.max_micro == 12 and b.max_micro == 100
    assert b.max_latency_frames > 6 * a.max_latency_frames
    c = RoiFlowSpotter(60.0, {"k_s": 0.2, "max_micro_s": 0.4})
    assert c.k == 12 and c.max_micro == 24


def test_blinks_are_not_micro_expressions() -> None:
    blinks = [PlantedEvent("blink", t, t + 0.08, t + 0.25, 4.0, kind="blink") for t in (1.1, 1.9, 2.6, 3.3)]
    windows, _, _ = run(30.0, 4.0, blinks, noise_sigma=2.0)
    assert [w for w in windows if w.kind == "micro"] == []
    assert sum(w.kind == "blink" for w in windows) >= 3  # labelled as blinks by default
    dropped, _, _ = run(30.0, 4.0, blinks, noise_sigma=2.0, config={"blinks": "drop"})
    assert [w for w in dropped if w.kind in ("micro", "blink")] == []


def test_head_motion_alone_gives_no_micro_expression() -> None:
    windows, _, _ = run(30.0, 6.0, [], noise_sigma=2.0, head_motion_px=8.0, head_rotation_deg=3.0,
                        lighting_drift=0.1, seed=4)
    assert [w for w in windows if w.kind == "micro"] == []


def test_face_gaps_are_tolerated() -> None:
    events = [PlantedEvent("brow_lower", 2.0, 2.15, 2.35, 1.2)]
    windows, _, _ = run(30.0, 3.0, events, gaps=((20, 30),), noise_sigma=2.0)
    assert micro_f1(windows, events, 30.0) == (1, 0, 0)


def test_state_stays_bounded_over_a_long_stream() -> None:
    """20,000 frames of a textured 96-px face with noise and occasional bumps: buffer sizes do not grow."""
    fps = 200.0
    rng = np.random.default_rng(0)
    base = (rng.random((24, 24)) * 200 + 20).astype(np.float32)
    import cv2

    base = cv2.resize(base, (96, 96), interpolation=cv2.INTER_CUBIC)
    lm = np.array([[30, 38], [66, 38], [48, 56], [34, 72], [62, 72]], np.float32)
    sp = RoiFlowSpotter(fps, {"flow_size": 64})

    def sizes() -> tuple[int, ...]:
        s = [sp.crops.size, len(sp._emitted), len(sp._roi_cache)]
        for d in sp.detectors:
            s += [d.vec.size, d.smooth.size, len(d.history.buf), len(d.pending), len(d.candidates)]
        return tuple(s)

    bank = []
    for j in range(64):  # noisy frames, some with a local bump, cycled through the stream
        img = base.copy()
        if j % 16 < 3:
            img[20:40, 20:45] = np.roll(base, 2, axis=0)[20:40, 20:45]
        bank.append(np.clip(img + rng.normal(0, 2.0, img.shape), 0, 255).astype(np.uint8))
    snapshots = {}
    emitted = 0
    for i in range(20_000):
        face = AlignedFace(i, i / fps, "f", bank[i % 64], lm, (0, 0, 96, 96), 1.0)
        emitted += len(sp.process_frame(i, i / fps, face))
        if i in (5_000, 19_999):
            snapshots[i] = sizes()
    emitted += len(sp.flush())
    a, b = snapshots[5_000], snapshots[19_999]
    assert a[0] == b[0] and all(x <= max(y, 64) for x, y in zip(b, a, strict=True)), (a, b)
    assert len(sp._emitted) < 50
    assert emitted >= 0


def test_config_errors() -> None:
    with pytest.raises(SpotError, match="unknown spotting option"):
        SpotConfig.from_any({"k": 3})
    with pytest.raises(SpotError, match="unknown spotter"):
        make_spotter("nope", 30.0)
    with pytest.raises(SpotError, match="fps"):
        RoiFlowSpotter(0.0)
    with pytest.raises(SpotError, match="blinks"):
        SpotConfig.from_any({"blinks": "maybe"})


def test_a_movement_next_to_a_blink_is_not_swallowed_by_it() -> None:
    events = [PlantedEvent("brow_lower", 1.5, 1.6, 1.8, 1.5), PlantedEvent("blink", 2.05, 2.12, 2.3, 5.0, kind="blink")]
    windows, _, _ = run(30.0, 3.0, events, noise_sigma=2.0, seed=5)
    assert micro_f1(windows, events, 30.0) == (1, 0, 0), windows
    assert any(w.kind == "blink" and w.onset >= 58 for w in windows)


def test_region_motion_is_the_mean_of_each_regions_strongest_residuals() -> None:
    """The vectorised region statistic equals a plain per-region loop: affine head motion removed, then the mean of the
    `top_fraction` strongest residual vectors of that region's own pixels. The flow moves only in one corner of the
    crop (background), where the padding of the smaller regions' table points: padding must never be counted."""
    from au_annotate.spot import REF_SIZE, _fit_affine

    n = 128
    sp = RoiFlowSpotter(30.0, {"flow_size": n})
    rng = np.random.default_rng(0)
    flow = (rng.normal(0, 0.05, (n, n, 2))).astype(np.float32)
    flow[:30, :30] += np.float32([3.0, -2.0])  # background motion in the top-left corner
    flow[40:52, 40:60, 1] -= 1.5  # a brow moving up
    sp._dis = type("FixedFlow", (), {"calc": lambda self, a, b, out: flow})()  # noqa: SLF001
    lm = np.array([[45.0, 62.0], [83.0, 62.0], [64.0, 80.0], [50.0, 98.0], [78.0, 98.0]])
    img = np.zeros((n, n), np.uint8)
    got = sp._region_motion(img, img, lm)  # noqa: SLF001

    geo = sp._rois(lm)  # noqa: SLF001
    coef = _fit_affine(flow[geo.face].reshape(-1, 2), geo.design).astype(np.float32)
    want = []
    for r in range(len(geo.tops)):
        idx = geo.flat[r][geo.valid[r]]
        ys, xs = np.divmod(idx, n)
        v = flow[ys, xs] - np.stack([np.ones_like(xs), xs, ys], 1).astype(np.float32) @ coef
        top = np.argsort(-(v ** 2).sum(1), kind="stable")[: geo.tops[r]]
        want.append(v[top].mean(0))
    want = np.asarray(want) * np.float32(REF_SIZE / n)
    assert geo.valid.sum(1).min() < geo.valid.shape[1]  # some regions are padded
    assert np.allclose(got, want, atol=1e-4), np.abs(got - want).max()
