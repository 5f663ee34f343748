"""Spotting benchmark: synthetic talking-head videos with planted micro/macro-expressions and distractors, run through
the product's decode + face stage + spotter (au_annotate.pipeline.process_video), scored with the MEGC protocol.

    python benchmarks/spotting_bench.py                 # full run (a few minutes on 2 cores), prints the MEGC tables
    python benchmarks/spotting_bench.py --quick         # shorter clips
    python benchmarks/spotting_bench.py -o bench.json   # also write every number as JSON

Deterministic: every video derives from fixed seeds. Videos are cached in --workdir (default: a temporary folder that is
deleted at the end unless --workdir is given) and regenerated when their specification changes.

Sets (all from skimage's public-domain astronaut photograph, see benchmarks/synth.py):
- 30fps: 1280x720, 30 fps. Micro-expressions 0.2-0.5 s, 1-3 px at the 720p face; macro-expressions 1.5-3 s, 4-8 px;
  seven facial actions (brow raise/lower, lip-corner pull/depress, lip press, cheek raise, lid tighten).
- 200fps: 640x480, 200 fps, the same events with amplitudes scaled to the smaller face (x 480/720).
- distractors: 60 s at 1280x720, 30 fps, no events: the false-positive rate per minute.
Distractors everywhere: blinks every 2.5-6 s, slow head translation (15 px at 720p) and in-plane rotation (2.5 deg),
lighting drift (8 % gain + gradient), sensor noise (sigma 2), H.264 (crf 23) when the ffmpeg program is present (else
mp4v). The spotter never sees any of these parameters.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from synth import FACIAL_ACTIONS, PlantedEvent, SynthVideo, make_video, write_ground_truth_csv

from au_annotate.decode import open_video
from au_annotate.megc import evaluate, read_ground_truth, read_predictions
from au_annotate.pipeline import process_video
from au_annotate.records import VideoJob, Window
from au_annotate.settings import Settings
from au_annotate.spot import SpotConfig


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines one benchmark video."""

    name: str
    set: str
    fps: float
    duration_s: float
    size: tuple[int, int]
    seed: int
    events: bool = True
    head_motion_px: float = 15.0  # at 720p; scaled with the frame height
    head_rotation_deg: float = 2.5
    lighting_drift: float = 0.08
    noise_sigma: float = 2.0
    codec: str = "h264"

    @property
    def scale(self) -> float:
        return self.size[1] / 720.0


def plan_events(spec: ClipSpec) -> list[PlantedEvent]:
    """Deterministic schedule: micro (75 %) and macro events 1-2 s apart, blinks every 2.5-6 s away from events."""
    rng = np.random.default_rng(1000 + spec.seed)
    events: list[PlantedEvent] = []
    t = 1.0 + rng.uniform(0.0, 0.5)
    while spec.events:
        if rng.random() < 0.75:
            dur, amp, kind = rng.uniform(0.2, 0.5), rng.uniform(1.0, 3.0), "micro"
            frac = rng.uniform(0.35, 0.65)
        else:
            dur, amp, kind = rng.uniform(1.5, 3.0), rng.uniform(4.0, 8.0), "macro"
            frac = rng.uniform(0.3, 0.6)
        if t + dur > spec.duration_s - 1.0:
            break
        action = FACIAL_ACTIONS[int(rng.integers(len(FACIAL_ACTIONS)))]
        events.append(PlantedEvent(action, t, t + frac * dur, t + dur, amp * spec.scale, kind))
        t += dur + rng.uniform(1.0, 2.0)
    busy = [(e.onset_s - 0.25, e.offset_s + 0.25) for e in events]
    t = rng.uniform(0.5, 2.5)
    while t < spec.duration_s - 0.6:
        dur = rng.uniform(0.15, 0.35)
        if not any(a < t + dur and t < b for a, b in busy):
            events.append(PlantedEvent("blink", t, t + 0.4 * dur, t + dur, rng.uniform(8.0, 14.0) * spec.scale,
                                       "blink"))
        t += rng.uniform(2.5, 6.0)
    return sorted(events, key=lambda e: e.onset_s)


def build(spec: ClipSpec, workdir: Path, codec: str) -> SynthVideo:
    """Render a clip unless a file with the same specification is already in workdir."""
    events = plan_events(spec)
    path = workdir / spec.set / f"{spec.name}.mp4"
    key = hashlib.sha256(json.dumps([asdict(spec), codec, [asdict(e) for e in events]]).encode()).hexdigest()[:16]
    stamp = path.with_suffix(".spec")
    n_frames = int(round(spec.duration_s * spec.fps))
    video = SynthVideo(path=path, fps=spec.fps, n_frames=n_frames, size=spec.size, events=tuple(events))
    if path.is_file() and stamp.is_file() and stamp.read_text() == key:
        return video
    s = spec.scale
    made = make_video(path, fps=spec.fps, duration_s=spec.duration_s, size=spec.size, events=events,
                      head_motion_px=spec.head_motion_px * s, head_rotation_deg=spec.head_rotation_deg,
                      lighting_drift=spec.lighting_drift, noise_sigma=spec.noise_sigma, seed=spec.seed, codec=codec)
    stamp.write_text(key)
    return made


def write_segments(path: Path, video: str, windows: list[Window]) -> None:
    """Our segment CSV layout (the columns the evaluator reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["video", "face_id", "segment_id", "kind", "onset_frame", "apex_frame", "offset_frame", "score"])
        for i, win in enumerate(windows):
            w.writerow([video, "face0", i, win.kind, win.onset, win.apex, win.offset, f"{win.score:.4f}"])


def decode_only(path: Path, decoder: str, gray: bool = True) -> tuple[float, int]:
    """Seconds to decode every frame of a video (no processing, the pixels the pipeline asks for), and the count."""
    t0 = time.perf_counter()
    n = 0
    with open_video(path, decoder, gray=gray) as stream:
        for _ in stream:
            n += 1
    return time.perf_counter() - t0, n


def clip_specs(quick: bool) -> list[ClipSpec]:
    d30, n30, d200, n200 = (20.0, 2, 8.0, 2) if quick else (45.0, 3, 16.0, 3)
    specs = [ClipSpec(f"talk30_{i}", "30fps", 30.0, d30, (1280, 720), seed=i) for i in range(n30)]
    specs += [ClipSpec(f"talk200_{i}", "200fps", 200.0, d200, (640, 480), seed=100 + i) for i in range(n200)]
    specs.append(ClipSpec("distractors_60s", "distractors", 30.0, 60.0, (1280, 720), seed=7, events=False))
    return specs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=None, help="keep videos, GT and predictions here (cached)")
    ap.add_argument("--quick", action="store_true", help="shorter clips (about half the time)")
    ap.add_argument("--codec", choices=("auto", "h264", "mp4v"), default="auto",
                    help="auto: h264 when the ffmpeg program is present, else mp4v")
    ap.add_argument("--decoder", default="auto", help="decode backend (auto | decord | opencv)")
    ap.add_argument("--spot", default="{}", help="JSON overrides of SpotConfig fields, e.g. '{\"p\": 6}'")
    ap.add_argument("--settings", default="{}",
                    help="JSON overrides of other Settings fields, e.g. '{\"track_template_px\": 96}'")
    ap.add_argument("--only", default=None, help="comma-separated sets to run (30fps, 200fps, distractors)")
    ap.add_argument("-o", "--output", type=Path, default=None, help="write all numbers as JSON")
    args = ap.parse_args(argv)
    codec = ("h264" if shutil.which("ffmpeg") else "mp4v") if args.codec == "auto" else args.codec
    spot_overrides = json.loads(args.spot)
    SpotConfig.from_any(spot_overrides)  # fail early on unknown options
    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="au-spot-bench-")
        workdir = Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    # blinks labelled (not dropped) so they can be counted; they are left out of the scored predictions, as the
    # product leaves them out of its outputs by default
    settings = Settings(decoder=args.decoder, spot={"blinks": "label", **spot_overrides}, faces="largest",
                        **json.loads(args.settings))
    specs = clip_specs(args.quick)
    if args.only:
        wanted = set(args.only.split(","))
        specs = [s for s in specs if s.set in wanted]
    results: dict[str, dict] = {}
    t_start = time.perf_counter()
    try:
        by_set: dict[str, list[tuple[ClipSpec, SynthVideo]]] = {}
        for spec in specs:
            t0 = time.perf_counter()
            video = build(spec, workdir, codec)
            print(f"[gen] {spec.set}/{spec.name}: {video.n_frames} frames {spec.size[0]}x{spec.size[1]} "
                  f"@{spec.fps:g} fps, {sum(e.kind == 'micro' for e in video.events)} micro, "
                  f"{sum(e.kind == 'macro' for e in video.events)} macro, "
                  f"{sum(e.kind == 'blink' for e in video.events)} blinks ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
            by_set.setdefault(spec.set, []).append((spec, video))
        for set_name, items in by_set.items():
            gt_path = workdir / f"gt_{set_name}.csv"
            write_ground_truth_csv([v for _, v in items], gt_path, root=workdir)
            pred_dir = workdir / f"pred_{set_name}"
            shutil.rmtree(pred_dir, ignore_errors=True)
            frames = 0
            times = {"decode_wait": 0.0, "face": 0.0, "spot": 0.0, "flow": 0.0, "decode_only": 0.0}
            blinks = {"planted": 0, "labelled_blink": 0}
            floors = []  # face0's detection floor per clip (% of the eye distance; real videos: docs/spotting.md)
            for spec, video in items:
                rel = PurePosixPath(video.path.relative_to(workdir).as_posix())
                job = VideoJob(path=video.path, rel=rel, out_dir=pred_dir)
                t0 = time.perf_counter()
                work = process_video(job, settings)
                wall = time.perf_counter() - t0
                windows = [s.window for s in work.samples]
                write_segments(pred_dir / f"{video.path.stem}.segments.csv", str(rel),
                               [w for w in windows if w.kind != "blink"])
                dec_s, n_dec = decode_only(video.path, args.decoder, settings.luma)
                frames += work.frames
                times["decode_wait"] += work.times.decode
                times["face"] += work.times.face
                times["spot"] += work.times.spot
                times["flow"] += work.times.flow
                times["decode_only"] += dec_s
                blinks["planted"] += sum(e.kind == "blink" for e in video.events)
                blinks["labelled_blink"] += sum(w.kind == "blink" for w in windows)
                floor = work.floors.get("face0")
                floors += [floor.pct_iod] if floor is not None else []
                print(f"[run] {set_name}/{spec.name}: {work.frames} frames, face in {work.frames_with_face}, "
                      f"{len(windows)} windows ({sum(w.kind == 'micro' for w in windows)} micro, "
                      f"{sum(w.kind == 'macro' for w in windows)} macro, {sum(w.kind == 'blink' for w in windows)} "
                      f"blink), detection floor {floor.pct_iod if floor else '-'} % IOD, in {wall:.1f} s", flush=True)
            gt = read_ground_truth(gt_path)
            pred = read_predictions(pred_dir)
            score = evaluate(gt, pred)
            duration_min = sum(v.n_frames / v.fps for _, v in items) / 60.0
            per_frame_ms = {k: 1000.0 * v / max(1, frames) for k, v in times.items()}
            results[set_name] = {
                "videos": len(items), "frames": frames, "minutes": round(duration_min, 3), "codec": codec,
                "kinds": {k: c.as_dict() for k, c in score.by_kind.items()}, "overall": score.overall.as_dict(),
                "fp_per_min": {k: round(c.fp / duration_min, 3) for k, c in score.by_kind.items()},
                "ms_per_frame": {k: round(v, 3) for k, v in per_frame_ms.items()},
                "blinks": blinks,
                "floor_pct_iod": floors,
            }
    finally:
        if tmp is not None:
            tmp.cleanup()
    print()
    print(f"MEGC spotting benchmark (IoU >= 0.5, counts pooled over videos; codec {codec}; "
          f"spotter roi-flow {json.dumps(spot_overrides)})")
    header = f"{'set':<12} {'kind':<8} {'GT':>5} {'pred':>5} {'TP':>5} {'FP':>5} {'FN':>5} {'prec':>6} {'rec':>6} " \
             f"{'F1':>6} {'FP/min':>7}"
    print(header)
    print("-" * len(header))
    for set_name, r in results.items():
        rows = list(r["kinds"].items()) + [("overall", r["overall"])]
        for kind, c in rows:
            fpm = r["fp_per_min"].get(kind, round(c["fp"] / r["minutes"], 3))
            print(f"{set_name:<12} {kind:<8} {c['n_gt']:>5} {c['n_pred']:>5} {c['tp']:>5} {c['fp']:>5} {c['fn']:>5} "
                  f"{c['precision']:>6.3f} {c['recall']:>6.3f} {c['f1']:>6.3f} {fpm:>7.2f}")
    print()
    print(f"{'set':<12} {'frames':>7} {'decode-only':>12} {'decode wait':>12} {'face':>8} {'spot':>8} {'flow':>8}"
          "   (ms per frame, same run)")
    for set_name, r in results.items():
        t = r["ms_per_frame"]
        print(f"{set_name:<12} {r['frames']:>7} {t['decode_only']:>12.2f} {t['decode_wait']:>12.2f} {t['face']:>8.2f} "
              f"{t['spot']:>8.2f} {t['flow']:>8.2f}")
    blinks_all = {k: sum(r["blinks"][k] for r in results.values()) for k in ("planted", "labelled_blink")}
    print(f"\nblinks planted: {blinks_all['planted']}, windows labelled blink: {blinks_all['labelled_blink']}; "
          f"total {time.perf_counter() - t_start:.0f} s")
    if args.output:
        args.output.write_text(json.dumps({"codec": codec, "spot": spot_overrides, "quick": args.quick,
                                           "sets": results}, indent=2) + "\n")
        print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
