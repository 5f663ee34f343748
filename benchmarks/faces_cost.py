"""Cost of tracking several faces: face + spot time per frame for one face vs two faces in the same frame size.

    python benchmarks/faces_cost.py [--seconds 6] [--repeats 3]

Renders two 960x400 clips from the public-domain astronaut picture (one face; the same face twice side by side, the
second mirrored), runs the real pipeline (decode, MTCNN + template tracking, spotter per face, flow) on each, and
prints median ms per frame per stage. Per-frame work should grow with the number of faces, not more.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from synth import PlantedEvent, iter_frames

from au_annotate.pipeline import process_video
from au_annotate.records import VideoJob
from au_annotate.settings import DEFAULTS


def _write(path: Path, frames: list[np.ndarray], fps: float) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    fps = 30.0
    ev = [PlantedEvent("brow_raise", 1.0, 1.2, 1.45, 3.0), PlantedEvent("lip_corner_pull", 3.0, 3.2, 3.4, 3.0)]
    left = [f.image for f in iter_frames(fps=fps, duration_s=args.seconds, size=(480, 400), seed=3, events=ev,
                                         noise_sigma=1.0, head_motion_px=1.5)]
    right = [f.image[:, ::-1] for f in iter_frames(fps=fps, duration_s=args.seconds, size=(480, 400), seed=4,
                                                    events=ev, noise_sigma=1.0, head_motion_px=1.5)]
    blank = np.full_like(right[0], 120)
    with tempfile.TemporaryDirectory() as tmp:
        one, two = Path(tmp) / "one.mp4", Path(tmp) / "two.mp4"
        _write(one, [np.concatenate([a, blank], axis=1) for a in left], fps)
        _write(two, [np.concatenate([a, b], axis=1) for a, b in zip(left, right, strict=True)], fps)
        rows = {}
        for name, path in (("one face", one), ("two faces", two), ("one face", one), ("two faces", two)) * max(
                1, args.repeats // 2 + args.repeats % 2):
            work = process_video(VideoJob(path, PurePosixPath(path.name), Path(tmp)), DEFAULTS)
            t = work.times
            rows.setdefault(name, []).append(((t.face) / work.frames * 1e3, t.spot / work.frames * 1e3,
                                              t.flow / work.frames * 1e3, work.faces, len(work.samples)))
    print(f"{'video':<10} {'faces':>5} {'windows':>7} {'face ms/frame':>14} {'spot ms/frame':>14} {'flow ms/frame':>14}")
    for name, vals in rows.items():
        med = [statistics.median(v[i] for v in vals) for i in range(3)]
        print(f"{name:<10} {vals[0][3]:>5} {vals[0][4]:>7} {med[0]:>14.2f} {med[1]:>14.2f} {med[2]:>14.2f}")
    f1 = statistics.median(v[0] + v[1] for v in rows["one face"])
    f2 = statistics.median(v[0] + v[1] for v in rows["two faces"])
    print(f"face+spot per frame, two faces / one face: {f2 / f1:.2f}x (expected <= ~2x)")


if __name__ == "__main__":
    main()
