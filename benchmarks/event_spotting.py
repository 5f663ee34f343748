"""What the spotter reports on real face videos, against labels of every visible facial event (benchmarks/event_labels).

    python benchmarks/event_spotting.py [--data DIR] [--labels DIR] [--configs default,no-landmarks] [-o out.json]

The labels (one CSV per video, made by looking at the frames; vocabulary and method in `event_labels/README.md`) say
where each blink, talking stretch, head movement, hand, expression (smile, frown, brow raise, ...) and calm stretch is.
Each video is decoded once (the product's decoder, luma) and tracked once (the product's face tracker); face0's aligned
faces go to one spotter per named configuration (as `au_annotate.pipeline` does per face). Then, per configuration:

- reported = micro and macro windows with quality `ok` (what a default run writes);
- an expression is *reported* when a reported window meets its onset zone [start - 0.3, start + 0.7] s or its offset
  zone [end - 0.5, end + 0.3] s (an ordinary expression is a movement at its start and its end, not all along);
  a window meeting such a zone is *explained by an expression*;
- a reported window not explained by an expression is a *blink* when it overlaps a labelled blink (+-0.1 s), else
  *talking/head* when it overlaps speech, laugh, head_turn, head_tilt or nod, else *hand/face loss* when it overlaps
  hand, face_lost or cut, else *unexplained*; unexplained windows overlapping a `calm` label count per calm minute.

Printed per configuration and per video; the targets of the face-state issue: blink share <= 5 %, talking/head share
<= 10 %, >= 90 % of labelled smiles/frowns/brow raises reported, <= 2 unexplained windows per calm minute.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from spot_configs import CONFIGS  # noqa: E402

from au_annotate.decode import open_video  # noqa: E402
from au_annotate.face import FaceTracker  # noqa: E402
from au_annotate.spot import make_spotter  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "face-videos"
LABELS = ROOT / "benchmarks" / "event_labels"
EXPRESSIONS = {"smile", "frown", "brow_raise", "lip_press", "lip_pucker", "jaw_drop", "nose_wrinkle",
               "other_expression"}
TARGET_EXPRESSIONS = {"smile", "frown", "brow_raise"}  # the "labelled smiles, frowns and brow raises"
TALK_HEAD = {"speech", "laugh", "head_turn", "head_tilt", "nod"}
LOSS = {"hand", "face_lost", "cut"}


def read_labels(path: Path) -> list[dict[str, Any]]:
    """One video's label rows with float times."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["start_s"], r["end_s"] = float(r["start_s"]), float(r["end_s"])
    return rows


def overlaps(a0: float, a1: float, b0: float, b1: float, slack: float = 0.0) -> bool:
    return a0 <= b1 + slack and b0 - slack <= a1


def run_video(path: Path, names: list[str]) -> tuple[dict[str, list[dict[str, Any]]], float, float]:
    """Every configuration's windows on face0 (times in seconds from the first frame), the duration, the seconds taken."""
    t0 = time.perf_counter()
    windows: dict[str, list] = {n: [] for n in names}
    with open_video(path, "auto", gray=True) as stream:
        fps = stream.info.fps if stream.info.fps > 0 else 30.0
        tracker = FaceTracker(fps)
        spotters = {n: make_spotter("roi-flow", fps, CONFIGS[n]) for n in names}
        times: dict[int, float] = {}
        first = None
        last = 0.0
        for frame in stream:
            first = frame.pts_s if first is None else first
            times[frame.index] = frame.pts_s - first
            last = frame.pts_s - first
            faces = tracker.process_all(frame)
            face = next((f for f in faces if f.face_id == "face0"), None)
            for n, sp in spotters.items():
                windows[n] += sp.process_frame(frame.index, frame.pts_s, face)
        for n, sp in spotters.items():
            windows[n] += sp.flush()
    end_pad = 1.0 / fps
    out = {}
    for n in names:
        out[n] = [{"onset_s": round(times.get(w.onset, 0.0), 3), "apex_s": round(times.get(w.apex, 0.0), 3),
                   "offset_s": round(times.get(w.offset, last) + end_pad, 3), "kind": w.kind, "quality": w.quality,
                   "context": w.context, "score": w.score} for w in windows[n]]
    return out, last + end_pad, time.perf_counter() - t0


def score(windows: list[dict[str, Any]], labels: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's shares for one video and one configuration (module docstring)."""
    reported = [w for w in windows if w["kind"] in ("micro", "macro") and w["quality"] == "ok"]
    expr = [r for r in labels if r["type"] in EXPRESSIONS]

    def zones(e: dict[str, Any]) -> list[tuple[float, float]]:
        return [(e["start_s"] - 0.3, e["start_s"] + 0.7), (e["end_s"] - 0.5, e["end_s"] + 0.3)]

    def meets(w: dict[str, Any], e: dict[str, Any]) -> bool:
        return any(overlaps(w["onset_s"], w["offset_s"], a, b) for a, b in zones(e))

    cats = {"expression": 0, "blink": 0, "talking_head": 0, "hand_loss": 0, "unexplained": 0}
    calm_unexplained = 0
    per_window = []
    for w in reported:
        def near(types: set[str], slack: float = 0.0, w: dict[str, Any] = w) -> bool:
            return any(r["type"] in types and overlaps(w["onset_s"], w["offset_s"], r["start_s"], r["end_s"], slack)
                       for r in labels)

        if any(meets(w, e) for e in expr):
            cat = "expression"
        elif near({"blink"}, 0.1):
            cat = "blink"
        elif near(TALK_HEAD):
            cat = "talking_head"
        elif near(LOSS):
            cat = "hand_loss"
        else:
            cat = "unexplained"
            calm_unexplained += near({"calm"})
        cats[cat] += 1
        per_window.append({**w, "category": cat})
    targets = [e for e in expr if e["type"] in TARGET_EXPRESSIONS]
    found = [e for e in targets if any(meets(w, e) for w in reported)]
    calm_s = sum(r["end_s"] - r["start_s"] for r in labels if r["type"] == "calm")
    return {"reported": len(reported), **cats, "calm_unexplained": calm_unexplained, "calm_s": round(calm_s, 2),
            "expressions": len(targets), "expressions_reported": len(found),
            "missed": [f"{e['type']} {e['start_s']:.2f}-{e['end_s']:.2f}" for e in targets if e not in found],
            "windows": per_window, "all_windows": windows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--configs", default="default,no-landmarks,return-test,spread-rule,old-default")
    ap.add_argument("--spot", action="append", default=[], metavar="NAME=JSON",
                    help='an extra named configuration, e.g. wide=\'{"extent_fraction": 0.9}\' (repeatable)')
    ap.add_argument("-o", "--output", type=Path, default=None)
    a = ap.parse_args()
    for item in a.spot:
        name, _, text = item.partition("=")
        CONFIGS[name.strip()] = json.loads(text)
    names = [n.strip() for n in a.configs.split(",") if n.strip()] + [i.partition("=")[0].strip() for i in a.spot]
    if unknown := [n for n in names if n not in CONFIGS]:
        sys.exit(f"error: unknown configuration(s) {unknown}; known: {', '.join(CONFIGS)}")
    label_files = sorted(a.labels.glob("*/*.csv"))
    if not label_files:
        sys.exit(f"error: no label CSVs under {a.labels}")
    results: dict[str, Any] = {}
    for lf in label_files:
        labels = read_labels(lf)
        video = labels[0]["video"] if labels else f"{lf.parent.name}/{lf.stem}"
        path = a.data / video
        if not path.is_file():
            print(f"skip {video}: not under {a.data}")
            continue
        wins, duration, took = run_video(path, names)
        results[video] = {"duration_s": round(duration, 2), "seconds": round(took, 1),
                          "configs": {n: score(wins[n], labels) for n in names}}
        print(f"{video}: {duration:.1f} s video, {took:.1f} s")
    print()
    summary = {}
    for n in names:
        tot = {k: sum(r["configs"][n][k] for r in results.values())
               for k in ("reported", "expression", "blink", "talking_head", "hand_loss", "unexplained",
                         "calm_unexplained", "calm_s", "expressions", "expressions_reported")}
        rep = max(1, tot["reported"])
        s = {**tot, "blink_share": round(tot["blink"] / rep, 3), "talking_head_share": round(tot["talking_head"] / rep, 3),
             "expression_recall": round(tot["expressions_reported"] / max(1, tot["expressions"]), 3),
             "calm_unexplained_per_min": round(60 * tot["calm_unexplained"] / max(1e-9, tot["calm_s"]), 2)
             if tot["calm_s"] else None}
        summary[n] = s
        print(f"{n:20s} reported {tot['reported']:3d}: expression {tot['expression']}, blink {tot['blink']} "
              f"({s['blink_share']:.0%}), talking/head {tot['talking_head']} ({s['talking_head_share']:.0%}), "
              f"hand/loss {tot['hand_loss']}, unexplained {tot['unexplained']}; expressions reported "
              f"{tot['expressions_reported']}/{tot['expressions']}; calm: {tot['calm_unexplained']} unexplained in "
              f"{tot['calm_s']:.1f} s")
    if a.output:
        a.output.write_text(json.dumps({"summary": summary, "videos": results}, indent=1))


if __name__ == "__main__":
    main()
