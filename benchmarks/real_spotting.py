"""Planted-on-real spotting benchmark: known subtle motions planted into real face videos, clean copies kept.

    python benchmarks/real_spotting.py [--data DIR] [--seconds 60] [-o results.json] [--spot '{"p": 4}']

For each video of DIR (default ../shared/datasets/face-videos), every frame is decoded (luma) once and kept in memory;
a video shorter than `--seconds` is looped forward-backward (ping-pong, so no jump cut) to reach it, with nominal
timestamps i / fps. Two passes through the product's face tracker and spotter (au_annotate.face / au_annotate.spot, one
spotter per tracked face, as au_annotate.pipeline does):

1. clean: windows on the untouched frames: false alarms per minute (micro + macro with quality `ok`; every window on
   a clean copy is false: these videos have no labelled micro-expressions, and they do hold real expressions, so this
   is an upper bound on the false-alarm rate), and the per-frame geometry of face0 (box and 5 landmarks, frame pixels).
2. planted: the same frames with subtle local motions planted on face0, placed from that frame's landmarks (so they
   move with the face): 0.2-0.5 s, a raised-cosine go-and-return of 1-3 px per 100 px of inter-ocular distance, a
   Gaussian displacement bump (sigma 0.15-0.2 inter-ocular distances) warped into the frame with cv2.remap; seven
   actions (brow raise/lower, lip-corner pull/depress, lip press, cheek raise, lid tighten), one every 2.5-4 s where
   face0 is tracked from 0.3 s before to 0.3 s after. Scored with the MEGC evaluator (IoU >= 0.5) on the micro kind.

The planted frames are not re-encoded (the clean copies carry the videos' own compression; the planted motion does not
get a second one). Deterministic (seeded per video). The ping-pong turnarounds reverse any motion in progress, which
the spotter may see as a go-and-return: windows within 0.3 s of a turnaround are counted and listed separately.
Research use only: nothing of the data is written anywhere but the JSON of numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from synth import FACIAL_ACTIONS

from au_annotate.decode import open_video
from au_annotate.face import FaceTracker
from au_annotate.megc import Interval, evaluate
from au_annotate.records import Frame, Window

if TYPE_CHECKING:  # a type only: the script also runs an older tree's au_annotate (PYTHONPATH) for a baseline
    from au_annotate.records import DetectionFloor
from au_annotate.spot import make_spotter

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "face-videos"
VIDEO_EXT = {".mp4", ".mov", ".wmv", ".avi", ".mkv", ".webm"}


@dataclass(frozen=True)
class Plant:
    """One planted event: frames (0-based, inclusive, in the looped sequence), action and peak px per 100 px IOD."""

    onset: int
    apex: int
    offset: int
    action: str
    amp: float  # peak displacement in pixels per 100 px of inter-ocular distance

    def profile(self, i: int) -> float:
        """Raised-cosine intensity at frame i (0 outside onset..offset, 1 at the apex)."""
        if i <= self.onset or i >= self.offset:
            return 0.0
        if i <= self.apex:
            return 0.5 * (1 - math.cos(math.pi * (i - self.onset) / max(1, self.apex - self.onset)))
        return 0.5 * (1 + math.cos(math.pi * (i - self.apex) / max(1, self.offset - self.apex)))


def ping_pong(n: int, total: int) -> list[int]:
    """Source frame of each of `total` frames: 0..n-1, then back n-2..1, and so on (no jump cut)."""
    if n <= 1:
        return [0] * total
    period = 2 * (n - 1)
    return [j if j < n else period - j for j in (i % period for i in range(total))]


def load(path: Path) -> tuple[list[Frame], float]:
    """Every frame of a video in luma (full range applied) and its nominal frame rate."""
    frames = []
    with open_video(path, "auto", gray=True) as stream:
        fps = stream.info.fps if stream.info.fps > 0 else 30.0
        for f in stream:
            frames.append(Frame(f.index, f.pts_s, np.ascontiguousarray(f.gray()), "gray"))
    return frames, float(fps)


def action_points(action: str, lm: np.ndarray) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """Displacement centres with unit directions (frame pixels) for an action, and the bump sigma in IOD."""
    le, re, ml, mr = lm[0], lm[1], lm[3], lm[4]
    e = re - le
    iod = float(np.linalg.norm(e))
    ux = e / max(iod, 1e-6)
    uy = np.array([-ux[1], ux[0]])  # down in the image
    mc = (ml + mr) / 2

    def unit(v: np.ndarray) -> np.ndarray:
        return v / max(float(np.linalg.norm(v)), 1e-9)

    if action == "brow_raise":
        return [(le - 0.36 * iod * uy, -uy), (re - 0.36 * iod * uy, -uy)], 0.2
    if action == "brow_lower":
        return [(le - 0.36 * iod * uy, unit(0.8 * uy + 0.6 * ux)),
                (re - 0.36 * iod * uy, unit(0.8 * uy - 0.6 * ux))], 0.2
    if action == "lip_corner_pull":
        return [(ml, unit(-0.7 * uy - 0.7 * ux)), (mr, unit(-0.7 * uy + 0.7 * ux))], 0.15
    if action == "lip_corner_depress":
        return [(ml, uy), (mr, uy)], 0.15
    if action == "lip_press":
        return [(mc - 0.09 * iod * uy, uy), (mc + 0.13 * iod * uy, -uy)], 0.12
    if action == "cheek_raise":
        return [(le + 0.45 * iod * uy - 0.05 * iod * ux, -uy), (re + 0.45 * iod * uy + 0.05 * iod * ux, -uy)], 0.18
    return [(le + 0.13 * iod * uy, -uy), (re + 0.13 * iod * uy, -uy)], 0.12  # lid_tighten


def plant(image: np.ndarray, lm: np.ndarray, action: str, disp_px: float) -> np.ndarray:
    """The image with a local smooth displacement of `disp_px` pixels (peak) for `action` at landmarks lm."""
    points, sig = action_points(action, lm)
    iod = float(np.linalg.norm(lm[1] - lm[0]))
    sigma = max(1.0, sig * iod)
    h, w = image.shape[:2]
    cs = np.array([c for c, _ in points])
    r = 3 * sigma
    x0, y0 = int(max(0, cs[:, 0].min() - r)), int(max(0, cs[:, 1].min() - r))
    x1, y1 = int(min(w, cs[:, 0].max() + r + 1)), int(min(h, cs[:, 1].max() + r + 1))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return image
    gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx = np.zeros_like(gx)
    dy = np.zeros_like(gy)
    for c, d in points:
        g = np.exp(-((gx - c[0]) ** 2 + (gy - c[1]) ** 2) / (2 * sigma * sigma)) * disp_px
        dx += g * d[0]
        dy += g * d[1]
    out = image.copy()
    # backward map of a small forward displacement: out(p) = in(p - D(p))
    out[y0:y1, x0:x1] = cv2.remap(image, gx - dx, gy - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out


def run_pass(frames: list[Frame], order: list[int], fps: float, spot: dict, plants: list[Plant] | None,
             geometry: dict[int, np.ndarray] | None) -> tuple[list[tuple[str, Window]], dict[int, np.ndarray], float,
                                                              DetectionFloor | None]:
    """Face tracking + one spotter per face over the (looped) sequence; windows, face0 landmarks per frame (frame
    pixels), the spotter's seconds, and face0's detection floor."""
    tracker = FaceTracker(fps, redetect_every_s=10.0)
    spotters: dict[str, object] = {}
    out: list[tuple[str, Window]] = []
    lms: dict[int, np.ndarray] = {}
    spot_s = 0.0
    active: dict[int, Plant] = {}
    if plants:
        for p in plants:
            for i in range(p.onset + 1, p.offset):
                active[i] = p
    for i, src in enumerate(order):
        img = frames[src].image
        p = active.get(i)
        if p is not None and geometry is not None and i in geometry:
            lm = geometry[i]
            img = plant(img, lm, p.action, p.amp * float(np.linalg.norm(lm[1] - lm[0])) / 100.0 * p.profile(i))
        faces = tracker.process_all(Frame(i, i / fps, img, "gray"))
        present = {f.face_id: f for f in faces}
        f0 = present.get("face0")
        if f0 is not None:
            x, y, w, _ = f0.box
            lms[i] = np.asarray(f0.landmarks, np.float64) * (w / f0.crop.shape[0]) + np.array([x, y])
        for fid in present.keys() - spotters.keys():
            spotters[fid] = make_spotter("roi-flow", fps, spot)
        t0 = time.perf_counter()
        for fid, sp in spotters.items():
            out.extend((fid, w) for w in sp.process_frame(i, i / fps, present.get(fid)))  # type: ignore[attr-defined]
        spot_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    for fid, sp in spotters.items():
        out.extend((fid, w) for w in sp.flush())  # type: ignore[attr-defined]
    spot_s += time.perf_counter() - t0
    face0 = spotters.get("face0")
    floor = getattr(face0, "detection_floor", lambda: None)() if face0 is not None else None  # older spotters: none
    return out, lms, spot_s, floor


def schedule(geometry: dict[int, np.ndarray], total: int, fps: float, seed: int, amp_scale: float = 1.0) -> list[Plant]:
    """Events every 2.5-4 s where face0 is tracked from 0.3 s before to 0.3 s after."""
    rng = np.random.default_rng(seed)
    plants = []
    t = 1.5 + rng.uniform(0, 0.5)
    margin = int(round(0.3 * fps))
    while True:
        dur = rng.uniform(0.2, 0.5)
        on = int(round(t * fps))
        off = on + max(2, int(round(dur * fps)))
        if off + margin >= total:
            break
        if all(j in geometry for j in range(on - margin, off + margin + 1)):
            apex = on + max(1, int(round(rng.uniform(0.35, 0.65) * (off - on))))
            plants.append(Plant(on, min(apex, off - 1), off, FACIAL_ACTIONS[int(rng.integers(len(FACIAL_ACTIONS)))],
                                float(rng.uniform(1.0, 3.0)) * amp_scale))
            t += dur + rng.uniform(2.5, 4.0)
        else:
            t += 0.5
    return plants


def quality_of(w: Window) -> str:
    """The window's quality label ("ok" where the spotter has none)."""
    return str(getattr(w, "quality", "ok"))


def bench_video(path: Path, seconds: float, spot: dict, seed: int, amp_scale: float = 1.0) -> dict:
    """Both passes on one video; its numbers."""
    frames, fps = load(path)
    n = len(frames)
    total = max(n, int(math.ceil(seconds * fps))) if seconds > 0 else n
    order = ping_pong(n, total)
    turns = [i for i in range(1, total - 1) if (order[i] - order[i - 1]) * (order[i + 1] - order[i]) < 0]
    minutes = total / fps / 60
    t0 = time.perf_counter()
    clean, geo, spot_s, floor = run_pass(frames, order, fps, spot, None, None)
    near_turn = int(round(0.3 * fps))

    def at_turn(w: Window) -> bool:
        return any(w.onset - near_turn <= t <= w.offset + near_turn for t in turns)

    reported = [(f, w) for f, w in clean if w.kind in ("micro", "macro") and quality_of(w) == "ok"]
    labels: dict[str, int] = {}
    for _, w in clean:
        key = f"{w.kind}/{quality_of(w)}"
        labels[key] = labels.get(key, 0) + 1
    res: dict = {"video": path.name, "fps": round(fps, 3), "frames": n, "looped": total > n,
                 "seconds": round(total / fps, 2),
                 "face0_frames": len(geo), "clean_windows": labels, "fa": len(reported),
                 "fa_per_min": round(len(reported) / minutes, 2),
                 "fa_at_turnaround": sum(at_turn(w) for _, w in reported), "spot_ms_per_frame": 1000 * spot_s / total,
                 "floor_pct_iod": floor.pct_iod if floor is not None else None,
                 "floor_regions": dict(floor.regions) if floor is not None else None}
    plants = schedule(geo, total, fps, seed, amp_scale)
    if plants:
        planted, _, spot2, _ = run_pass(frames, order, fps, spot, plants, geo)
        gt = [Interval(path.name, p.onset, p.offset, "micro", p.apex) for p in plants]
        pred = [Interval(path.name, w.onset, w.offset, w.kind, w.apex) for f, w in planted
                if f == "face0" and w.kind in ("micro", "macro") and quality_of(w) == "ok"]
        score = evaluate(gt, pred)
        c = score.by_kind["micro"]
        found = {m.gt.onset for m in score.matches}
        res.update({"planted": len(plants), "tp": c.tp, "micro_pred": c.n_pred, "recall": round(c.recall, 3),
                    "precision": round(c.precision, 3),
                    "missed": [f"{p.action}@{p.onset / fps:.1f}s/{p.amp:.1f}px" for p in plants
                               if p.onset not in found],
                    "planted_windows_by_quality": _count_quality(planted)})
        res["spot_ms_per_frame"] = 1000 * (spot_s + spot2) / (2 * total)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def _count_quality(windows: list[tuple[str, Window]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, w in windows:
        k = f"{w.kind}/{quality_of(w)}"
        out[k] = out.get(k, 0) + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (ties get their average rank); NaN when either side is constant."""
    def ranks(v: list[float]) -> np.ndarray:
        a = np.asarray(v, np.float64)
        order = np.argsort(a, kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=np.float64)
        for value in np.unique(a):  # average rank within ties
            r[a == value] = r[a == value].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="folder of real face videos (searched recursively)")
    ap.add_argument("--seconds", type=float, default=60.0, help="loop shorter videos forward-backward to this length")
    ap.add_argument("--spot", default="{}", help="JSON of SpotConfig overrides")
    ap.add_argument("--only", default="", help="comma-separated substrings: run only matching videos")
    ap.add_argument("--amp-scale", type=float, default=1.0, help="multiply the planted amplitudes (detection limit)")
    ap.add_argument("-o", "--output", type=Path, default=None, help="write every number as JSON")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"no data folder {args.data}", file=sys.stderr)
        return 2
    spot = json.loads(args.spot)
    videos = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in VIDEO_EXT)
    if args.only:
        videos = [v for v in videos if any(s in str(v) for s in args.only.split(","))]
    rows = []
    for k, path in enumerate(videos):
        try:
            r = bench_video(path, args.seconds, spot, seed=1234 + k, amp_scale=args.amp_scale)
        except Exception as e:  # a broken video is reported, the others still run
            r = {"video": path.name, "error": f"{type(e).__name__}: {e}"}
        rows.append(r)
        print(json.dumps(r), flush=True)
    ok = [r for r in rows if "error" not in r]
    minutes = sum(r["seconds"] for r in ok) / 60
    fa = sum(r["fa"] for r in ok)
    tp, npred, ngt = (sum(r.get(k, 0) for r in ok) for k in ("tp", "micro_pred", "planted"))
    summary = {"videos": len(ok), "minutes": round(minutes, 2), "fa": fa,
               "fa_per_min": round(fa / max(minutes, 1e-9), 2),
               "fa_at_turnaround": sum(r["fa_at_turnaround"] for r in ok),
               "planted": ngt, "tp": tp, "micro_pred": npred, "recall": round(tp / max(ngt, 1), 3),
               "precision": round(tp / max(npred, 1), 3),
               "spot_ms_per_frame": round(float(np.mean([r["spot_ms_per_frame"] for r in ok])), 3), "spot": spot,
               "amp_scale": args.amp_scale}
    # does the detection floor tell where subtle events can be found? (rule fixed before its first run: docs/spotting.md)
    scored = [r for r in ok if r.get("planted", 0) >= 8 and r.get("floor_pct_iod") is not None]
    summary["floor_recall_spearman"] = (round(spearman([r["floor_pct_iod"] for r in scored],
                                                       [r["recall"] for r in scored]), 3) if len(scored) >= 3 else None)
    summary["floor_videos"] = len(scored)
    print("\n| video | s (looped) | floor % IOD | FA/min | FA at turn | planted | TP | micro pred | recall | precision |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in ok:
        fl = r.get("floor_pct_iod")
        print(f"| {r['video']} | {r['seconds']}{' (l)' if r['looped'] else ''} | {'-' if fl is None else fl} | "
              f"{r['fa_per_min']} | {r['fa_at_turnaround']} | {r.get('planted', 0)} | {r.get('tp', 0)} | "
              f"{r.get('micro_pred', 0)} | {r.get('recall', '-')} | {r.get('precision', '-')} |")
    print(json.dumps(summary))
    if args.output:
        args.output.write_text(json.dumps({"summary": summary, "videos": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
