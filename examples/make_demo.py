"""Make a short demo video from a real face picture (skimage's astronaut, public domain) with planted micro-movements.

    python examples/make_demo.py examples/demo          # writes examples/demo/astronaut_demo.mp4 + ground_truth.csv
    au-annotate annotate examples/demo -o examples/out  # annotate it
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # synth.py: dev tooling, not installed

from synth import PlantedEvent, make_video, write_ground_truth_csv  # noqa: E402


def main(out: str = "examples/demo") -> None:
    """Write an 8 s 640x480 30 fps clip with two micro-expressions, a macro-expression and a blink."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    events = [
        PlantedEvent("brow_raise", 1.0, 1.2, 1.45, 3.0),
        PlantedEvent("lip_corner_pull", 3.0, 3.2, 3.4, 3.0),
        PlantedEvent("blink", 4.2, 4.3, 4.45, 8.0, kind="blink"),
        PlantedEvent("brow_lower", 5.2, 6.0, 7.2, 6.0, kind="macro"),
    ]
    video = make_video(folder / "astronaut_demo.mp4", fps=30, duration_s=8.0, events=events, head_motion_px=2.0,
                       noise_sigma=1.5, seed=7)
    write_ground_truth_csv([video], folder / "ground_truth.csv", folder)
    print(f"wrote {video.path} ({video.n_frames} frames) and {folder / 'ground_truth.csv'}")
    for onset, apex, offset, kind in video.gt_frames():
        print(f"  planted {kind}: onset {onset}, apex {apex}, offset {offset}")


if __name__ == "__main__":
    main(*sys.argv[1:])
