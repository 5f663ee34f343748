"""Real micro-expressions at scale: the spotter on the 185 CASME II clips of `casme2-cropped`, scored with MEGC's IoU.

    python benchmarks/casme2_spotting.py [--data DIR] [--pad-s 0.5] [--configs default,no-return]
                                         [--jobs 2] [--limit N] [-o results.json]

Each clip (aligned face crops, onset to offset, 200 fps) is made into a short stream: the crop placed on a canvas 1.8
times its size (border pixels replicated, so MTCNN sees a face with context, as in a real frame), the first frame held
`--pad-s` seconds before and the last frame held as long after (the clips hold no neutral context of their own). The
stream runs through the product's face tracker (au_annotate.face) once; every named spotter configuration sees the same
aligned faces (au_annotate.spot, one spotter per configuration). No video is encoded: the JPEG frames are the clips'
own compression.

Scored per configuration: a clip is *found* when a reported window (micro or macro, quality `ok`) has IoU >= 0.5 with
the clip's frames (MEGC's inclusive IoU); also how many clips have any window at IoU >= 0.5 before the kind/quality
filters (the candidates), and, per clip, the windows and their labels, so a miss can be looked at. Research use only:
the JSON holds numbers and clip names, never frames.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from spot_configs import CONFIGS  # noqa: E402

from au_annotate.face import FaceTracker  # noqa: E402
from au_annotate.megc import iou  # noqa: E402
from au_annotate.records import Frame  # noqa: E402
from au_annotate.spot import make_spotter  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "casme2-cropped"
FPS = 200.0
CANVAS = 1.8  # canvas side / crop side
# Named spotter configurations (overrides of SpotConfig); "default" is the product's default.


def read_clips(data: Path) -> list[dict[str, str]]:
    """The rows of clips.csv whose frame folder exists."""
    with open(data / "clips.csv", newline="") as fh:
        return [r for r in csv.DictReader(fh) if (data / r["folder"]).is_dir()]


def clip_frames(data: Path, row: dict[str, str]) -> list[np.ndarray]:
    """The clip's gray frames in frame-number order, each on the larger canvas."""
    first, last = (int(x) for x in row["frames_present"].split("-"))
    out = []
    for n in range(first, last + 1):
        img = cv2.imread(str(data / row["folder"] / f"reg_img{n}.jpg"), cv2.IMREAD_GRAYSCALE)
        if img is None:
            continue
        h, w = img.shape
        py, px = int((CANVAS - 1) * h / 2), int((CANVAS - 1) * w / 2)
        out.append(cv2.copyMakeBorder(img, py, py, px, px, cv2.BORDER_REPLICATE))
    return out


def padded_clip(data: Path, row: dict[str, str], pad_s: float) -> tuple[list[np.ndarray], tuple[int, int]]:
    """The clip's frames with its first and last frame held `pad_s` seconds around them, and the clip's own frame
    range in that stream (the ground-truth window)."""
    frames = clip_frames(data, row)
    pad = int(round(pad_s * FPS))
    return [frames[0]] * pad + frames + [frames[-1]] * pad, (pad, pad + len(frames) - 1)


def run_clip(args: tuple[str, dict[str, str], float, list[str], dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Track once, spot with every configuration; the windows and the score of each."""
    data, row, pad_s, names, configs = args
    cv2.setNumThreads(1)
    seq, gt = padded_clip(Path(data), row, pad_s)
    frames = seq[gt[0] : gt[1] + 1]
    tracker = FaceTracker(FPS)
    spotters = {n: make_spotter("roi-flow", FPS, configs[n]) for n in names}
    windows: dict[str, list] = {n: [] for n in names}
    t0 = time.perf_counter()
    tracked = 0
    for i, img in enumerate(seq):
        faces = tracker.process_all(Frame(i, i / FPS, img, "gray"))
        face = faces[0] if faces else None
        tracked += face is not None
        for n, sp in spotters.items():
            windows[n] += sp.process_frame(i, i / FPS, face)
    for n, sp in spotters.items():
        windows[n] += sp.flush()
    out: dict[str, Any] = {"clip": row["folder"], "subject": row["subject"], "au": row["sheet_AU"],
                           "emotion": row["sheet_emotion"], "frames": len(frames), "gt": list(gt),
                           "tracked": tracked / len(seq), "seconds": round(time.perf_counter() - t0, 2), "configs": {}}
    for n in names:
        ws = [{"onset": w.onset, "apex": w.apex, "offset": w.offset, "kind": w.kind, "quality": w.quality,
               "score": w.score, "context": getattr(w, "context", ""), "iou": round(iou(gt[0], gt[1], w.onset, w.offset), 3)}
              for w in windows[n]]
        reported = [w for w in ws if w["kind"] in ("micro", "macro") and w["quality"] == "ok"]
        out["configs"][n] = {"windows": ws,
                             "found": any(w["iou"] >= 0.5 for w in reported),
                             "candidate": any(w["iou"] >= 0.5 for w in ws),
                             "false": sum(w["iou"] < 0.5 for w in reported)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--pad-s", type=float, default=0.5)
    ap.add_argument("--configs", default="default,no-landmarks,return-test,spread-rule,old-default")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="only the first N clips (0: all)")
    ap.add_argument("--subjects", choices=("all", "dev", "held-out"), default="all",
                    help="dev: odd-numbered subjects (where spotter changes are chosen), held-out: even-numbered")
    ap.add_argument("--spot", action="append", default=[], metavar="NAME=JSON",
                    help='an extra named configuration, e.g. wide=\'{"extent_fraction": 0.9}\' (repeatable)')
    ap.add_argument("-o", "--output", type=Path, default=None, help="per-clip JSON")
    a = ap.parse_args()
    if not (a.data / "clips.csv").is_file():
        sys.exit(f"error: {a.data}: no clips.csv (the casme2-cropped dataset is not here)")
    for item in a.spot:
        name, _, text = item.partition("=")
        CONFIGS[name.strip()] = json.loads(text)
    names = [n.strip() for n in a.configs.split(",") if n.strip()] + [i.partition("=")[0].strip() for i in a.spot]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"error: unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    rows = read_clips(a.data)
    if a.subjects != "all":
        rows = [r for r in rows if (int(r["subject"]) % 2 == 1) == (a.subjects == "dev")]
    rows = rows[: a.limit or None]
    t0 = time.perf_counter()
    work = [(str(a.data), r, a.pad_s, names, {n: CONFIGS[n] for n in names}) for r in rows]
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as pool:
            results = list(pool.map(run_clip, work, chunksize=2))
    else:
        results = [run_clip(w) for w in work]
    print(f"{len(results)} clips, padding {a.pad_s} s, {time.perf_counter() - t0:.0f} s")
    summary = {}
    for n in names:
        found = sum(r["configs"][n]["found"] for r in results)
        cand = sum(r["configs"][n]["candidate"] for r in results)
        false = sum(r["configs"][n]["false"] for r in results)
        summary[n] = {"config": CONFIGS[n], "found": found, "candidates": cand, "false_windows": false, "clips": len(results),
                      "recall": round(found / max(1, len(results)), 3)}
        print(f"{n:22s} found {found}/{len(results)} ({found / max(1, len(results)):.3f})  candidates {cand}  "
              f"other reported windows {false}")
    if a.output:
        a.output.write_text(json.dumps({"pad_s": a.pad_s, "subjects": a.subjects, "summary": summary, "clips": results},
                                       indent=1))


if __name__ == "__main__":
    main()
