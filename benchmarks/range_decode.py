"""Does `--range` decode only the range? Decode and annotate time of ranges of a 10-minute video against the whole.

    python benchmarks/range_decode.py                 # 10 min 720p30 H.264 (throughput.py's input), 3 repeats
    python benchmarks/range_decode.py --repeats 1 --long-s 300

Per repeat, in this order and in this process: decode-only (luma, as `annotate` reads) of the whole video, decode-only
of 60 s ranges at the start, the middle and the end, and of a 10 s range in the middle (the seek + the range's frames),
then `annotate --range` of the 60 s middle range end to end (model and outputs included) and `annotate` of a 60 s
video made of the same frames (throughput.py's base video). Printed: each time, the range / whole ratios (target: about
range length / video length, plus the seek) and the end-to-end ratio of the ranged run to the 60 s video's (target
about 1: the range costs what its own frames cost, not what the frames before it cost).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import make_inputs  # noqa: E402

from au_annotate.decode import open_video  # noqa: E402


def decode(path: Path, span: tuple[float, float] | None) -> tuple[float, int]:
    """Seconds to decode (luma) the whole video or one range, and the frames read."""
    t0 = time.perf_counter()
    n = 0
    with open_video(path, gray=True) as s:
        for _f in (iter(s) if span is None else s.between(*span)):
            n += 1
    return time.perf_counter() - t0, n


def annotate_s(path: Path, ranges: tuple[str, ...], weights: str | None) -> float:
    from au_annotate.api import annotate
    from au_annotate.settings import Settings

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        annotate([path], out, Settings(ranges=ranges, weights=weights, jobs=1, quiet=True))
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "au-annotate-throughput")
    ap.add_argument("--long-s", type=float, default=600.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--weights", default=None, help="checkpoint for the end-to-end runs [the shipped default]")
    opts = ap.parse_args()
    paths = make_inputs(opts.workdir, 60.0, opts.long_s, 30.0)
    long, base = Path(paths["long"]), Path(paths["base"])  # type: ignore[arg-type]
    mid = opts.long_s / 2
    spans = {"whole": None, "60 s at 0": (0.0, 60.0), "60 s in the middle": (mid, mid + 60),
             "60 s at the end": (opts.long_s - 60, opts.long_s), "10 s in the middle": (mid, mid + 10)}
    times: dict[str, list[float]] = {k: [] for k in spans}
    frames: dict[str, int] = {}
    e2e: dict[str, list[float]] = {"annotate --range 60 s middle": [], "annotate 60 s video": []}
    for _ in range(opts.repeats):
        for name, span in spans.items():
            t, n = decode(long, span)
            times[name].append(t)
            frames[name] = n
        e2e["annotate --range 60 s middle"].append(annotate_s(long, (f"{mid:g}-{mid + 60:g}",), opts.weights))
        e2e["annotate 60 s video"].append(annotate_s(base, (), opts.weights))
    whole = statistics.median(times["whole"])
    print(f"{long.name}: {frames['whole']} frames; medians of {opts.repeats} repeats")
    print(f"{'decode (luma)':<28}{'frames':>8}{'seconds':>10}{'/ whole':>9}{'length share':>14}")
    for name in spans:
        t = statistics.median(times[name])
        print(f"{name:<28}{frames[name]:>8}{t:>10.2f}{t / whole:>9.3f}{frames[name] / frames['whole']:>14.3f}")
    a, b = (statistics.median(v) for v in e2e.values())
    print(f"annotate --range 60 s (middle of {opts.long_s:g} s): {a:.2f} s; annotate of a 60 s video: {b:.2f} s; "
          f"ratio {a / b:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
