"""Throughput benchmark: is annotation as fast as decoding, flat in memory, linear in length, parallel?

One command makes its inputs and prints one table:

    python benchmarks/throughput.py                        # defaults: 60 s + 10 min 720p30 H.264, 3 repeats
    python benchmarks/throughput.py --repeats 5 --json out.json
    python benchmarks/throughput.py --long-s 300 --repeats 2   # shorter, for a quick look

Inputs (cached in --workdir): a 10 s 720p30 face clip rendered from a real face picture (skimage's astronaut, planted
micro/macro movements, head motion, sensor noise) and encoded with ffmpeg's libx264, then concatenated with
`ffmpeg -stream_loop -c copy` into a 60 s video (the base), a 120 s video (2x, for P3), a 10-minute video (P2) and four
30 s videos (P4). Rendering is the slow part on 2 cores, so only 10 s are rendered.

Every measurement runs in a fresh subprocess (its peak RSS is its own `ru_maxrss`), repeated and interleaved
(decode, annotate 1x, annotate 2x, ...) so that load from other users of the machine hits all of them alike:

- P1: end-to-end `annotate` frames/s over decode-only frames/s of the same file with the same backend and the same
  pixels (target >= 0.8). annotate decodes luma only (Settings.luma), so decode-only does too; the colour (BGR)
  decode-only rate is also measured and printed, as the figure a plain `cap.read()` loop gives.
- P2: peak RSS annotating the 10-minute video / the 60 s video (target <= 1.10).
- P3: wall time of the 120 s video / the 60 s video (target <= 2.1); also on CPU time (user + system of the run), which
  other users' load barely moves.
- P4: wall time of `--jobs 1` / `--jobs 2` on four videos (speedup; 2 cores here).
- Per-stage time per frame (decode wait, face, spot, flow from each video's stage_s; model from the run's model_s).

Medians with min..max over the repeats; ratios are medians of per-repeat ratios. "annotate" is the library call the CLI
makes (`au_annotate.annotate`, csv + eaf outputs, progress hook off), timed from the call to its return: model and
detector loading included, Python/torch import excluded. Without --weights the shipped default model is used (issue 25:
its TV-L1 encoding costs more than the seed's Farneback, so the figure is the one users get).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a source checkout without installing

LOOP_S = 10.0
SIZE = (1280, 720)
FPS = 30.0


# -- inputs ------------------------------------------------------------------------------------------------------------

def _render_loop(path: Path) -> None:
    """The 10 s 720p30 H.264 face clip every input is made of (deterministic)."""
    from synth import PlantedEvent, make_video

    events = [PlantedEvent("brow_raise", 1.2, 1.4, 1.6, 4.0), PlantedEvent("lip_corner_pull", 3.3, 3.5, 3.75, 4.0),
              PlantedEvent("blink", 5.0, 5.1, 5.25, 4.0, kind="blink"),
              PlantedEvent("cheek_raise", 6.5, 7.0, 7.8, 4.0, kind="macro"),
              PlantedEvent("brow_lower", 8.6, 8.8, 9.0, 4.0)]
    make_video(path, fps=FPS, duration_s=LOOP_S, size=SIZE, events=events, head_motion_px=2.0, noise_sigma=2.0,
               seed=6, codec="h264")


def _loop_to(src: Path, dst: Path, seconds: float) -> None:
    """`seconds` of video by repeating `src` (stream copy: no re-encode, seconds instead of minutes)."""
    loops = max(0, int(round(seconds / LOOP_S)) - 1)
    tmp = dst.with_name(dst.stem + ".tmp" + dst.suffix)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops), "-i", str(src), "-c", "copy",
                    str(tmp)], check=True)
    tmp.replace(dst)


def make_inputs(workdir: Path, base_s: float, long_s: float, multi_s: float) -> dict[str, object]:
    """Create (or reuse) the benchmark videos; returns their paths."""
    if shutil.which("ffmpeg") is None:
        sys.exit("throughput benchmark: needs the ffmpeg program (apt-get install ffmpeg)")
    workdir.mkdir(parents=True, exist_ok=True)
    loop = workdir / f"loop{int(LOOP_S)}s_{SIZE[1]}p30.mp4"
    if not loop.is_file():
        t0 = time.perf_counter()
        _render_loop(loop)
        print(f"rendered {loop.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    paths: dict[str, object] = {}
    for name, seconds in (("base", base_s), ("double", 2 * base_s), ("long", long_s)):
        p = workdir / f"{name}_{int(seconds)}s.mp4"
        if not p.is_file():
            _loop_to(loop, p, seconds)
        paths[name] = p
    multi = workdir / f"four_{int(multi_s)}s"
    multi.mkdir(exist_ok=True)
    one = workdir / f"multi_{int(multi_s)}s.mp4"
    if not one.is_file():
        _loop_to(loop, one, multi_s)
    for i in range(4):
        p = multi / f"video{i}.mp4"
        if not p.is_file():
            shutil.copyfile(one, p)
    paths["multi"] = multi
    return paths


# -- one measurement (runs in a child process) -------------------------------------------------------------------------

def _child(args: argparse.Namespace) -> dict[str, object]:
    """Decode-only or annotate one input here; returns figures (printed as JSON by the child)."""
    import cv2

    from au_annotate.decode import open_video

    if args.mode in ("decode", "decode-color"):
        t0, c0 = time.perf_counter(), time.process_time()
        n = 0
        with open_video(args.input, args.decoder, gray=args.mode == "decode" and not args.no_luma) as stream:
            backend = f"{stream.info.backend}/{stream.info.pixels}"
            for _frame in stream:
                n += 1
        wall = time.perf_counter() - t0
        return {"frames": n, "wall_s": wall, "cpu_s": time.process_time() - c0, "backend": backend,
                "cv2_threads": cv2.getNumThreads()}

    from au_annotate.api import annotate
    from au_annotate.settings import DEFAULTS

    weights = args.weights  # None: the shipped default model, so its flow encoding (TV-L1) is what gets timed
    settings = DEFAULTS.replace(weights=weights, jobs=args.jobs, decoder=args.decoder, device=args.device,
                                luma=not args.no_luma, overwrite=True)
    t0, c0 = time.perf_counter(), time.process_time()
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = annotate([args.input], Path(args.out) / "annotations", settings)
    wall = time.perf_counter() - t0
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker processes (--jobs 2), reaped when the pool closed
    cpu = time.process_time() - c0 + (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    frames = sum(r.frames for r in report.results)
    stages = {"decode": 0.0, "face": 0.0, "spot": 0.0, "flow": 0.0, "model": report.model_s}
    for r in report.results:  # per-stage times of every video (collected from the worker processes too)
        for k, v in (r.stage_s or {}).items():
            stages[k] += v
    backends = {f"{r.info.backend}/{r.info.pixels}" for r in report.results if r.info is not None}
    failed = [r.error for r in report.results if r.status not in ("done", "no_face")]
    return {"frames": frames, "wall_s": wall, "cpu_s": cpu, "stages_s": stages if args.jobs == 1 else {},
            "segments": len(report.segments), "failed": failed, "backend": ",".join(sorted(backends)),
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _tree_rss(proc: object) -> int:
    """Resident memory of a process and its children (bytes); 0 once it is gone."""
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]  # type: ignore[attr-defined]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def _measure(mode: str, path: Path, opts: argparse.Namespace, jobs: int = 1) -> dict[str, object]:
    """Run one measurement in a fresh subprocess (peak RSS is then that run's own). A child whose memory (with its
    workers) passes --max-rss-mb is killed, so a decoder that buffers the whole video cannot take the machine down."""
    import psutil

    with tempfile.TemporaryDirectory(prefix="au-bench-") as out:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--input", str(path), "--out", out,
               "--jobs", str(jobs), "--decoder", opts.decoder, "--device", opts.device]
        if opts.no_luma:
            cmd.append("--no-luma")
        if opts.weights:
            cmd += ["--weights", opts.weights]
        # output goes to files, not pipes: a chatty child must not block on a full pipe nobody reads until it exits
        out_f, err_f = open(Path(out) / "stdout.txt", "w+"), open(Path(out) / "stderr.txt", "w+")  # noqa: SIM115
        child = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True)
        ps = psutil.Process(child.pid)
        peak = 0
        cap = opts.max_rss_mb * 2**20
        while child.poll() is None:
            peak = max(peak, _tree_rss(ps))
            if peak > cap:
                for p in [*ps.children(recursive=True), ps]:
                    with contextlib.suppress(psutil.Error):
                        p.kill()
                child.wait()
                out_f.close()
                err_f.close()
                return {"killed": True, "tree_peak_rss_mb": peak / 2**20, "frames": 0, "wall_s": float("nan")}
            time.sleep(0.1)
        child.wait()
        out_f.seek(0)
        err_f.seek(0)
        stdout, stderr = out_f.read(), err_f.read()
        out_f.close()
        err_f.close()
        if child.returncode != 0:
            sys.exit(f"benchmark child failed ({' '.join(cmd)}):\n{stderr[-3000:]}")
        result = json.loads(stdout.strip().splitlines()[-1])
        result["tree_peak_rss_mb"] = peak / 2**20  # sampled every 0.1 s, workers included (for --jobs 2)
    if result.get("failed"):
        sys.exit(f"benchmark: a video failed: {result['failed']}")
    return result


# -- the run -----------------------------------------------------------------------------------------------------------

def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _fmt(s: dict[str, float], digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}..{s['max']:.{digits}f})"


def run(opts: argparse.Namespace) -> dict[str, object]:
    """All measurements, interleaved per repeat; returns the figures (and prints the table)."""
    paths = make_inputs(Path(opts.workdir), opts.base_s, opts.long_s, opts.multi_s)
    rows: dict[str, list[dict[str, object]]] = {k: [] for k in ("decode", "decode_color", "base", "double", "jobs1",
                                                                 "jobs2")}
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    for r in range(opts.repeats):
        print(f"repeat {r + 1}/{opts.repeats} ...", file=sys.stderr)
        rows["decode"].append(_measure("decode", paths["base"], opts))  # type: ignore[arg-type]
        if not opts.no_luma:
            rows["decode_color"].append(_measure("decode-color", paths["base"], opts))  # type: ignore[arg-type]
        rows["base"].append(_measure("annotate", paths["base"], opts))  # type: ignore[arg-type]
        rows["double"].append(_measure("annotate", paths["double"], opts))  # type: ignore[arg-type]
        if not opts.skip_jobs:
            rows["jobs1"].append(_measure("annotate", paths["multi"], opts, jobs=1))  # type: ignore[arg-type]
            rows["jobs2"].append(_measure("annotate", paths["multi"], opts, jobs=2))  # type: ignore[arg-type]
    long_runs = [] if opts.skip_long else [_measure("annotate", paths["long"], opts)  # type: ignore[arg-type]
                                           for _ in range(opts.long_repeats)]

    for name, runs in rows.items():
        if any(x.get("killed") for x in runs):
            sys.exit(f"benchmark: the {name} measurement passed --max-rss-mb {opts.max_rss_mb:.0f} and was killed")

    def fps(row: dict[str, object]) -> float:
        return float(row["frames"]) / float(row["wall_s"])  # type: ignore[arg-type]

    decode_backend = rows["decode"][0]["backend"]
    annotate_backend = rows["base"][0]["backend"]
    if decode_backend != annotate_backend:
        sys.exit(f"benchmark: decode-only used {decode_backend}, annotate used {annotate_backend}; pass --decoder")
    res: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_avg_1m": load_start, "device": opts.device, "backend": decode_backend,
        "repeats": opts.repeats, "base_frames": rows["base"][0]["frames"],
        "decode_fps": _stats([fps(x) for x in rows["decode"]]),
        "annotate_fps": _stats([fps(x) for x in rows["base"]]),
        "P1_ratio": _stats([fps(a) / fps(d) for a, d in zip(rows["base"], rows["decode"], strict=True)]),
        "decode_color_fps": _stats([fps(x) for x in rows["decode_color"]]) if rows["decode_color"] else None,
        "P1_vs_color_decode": _stats([fps(a) / fps(d) for a, d in zip(rows["base"], rows["decode_color"], strict=True)])
        if rows["decode_color"] else None,
        "P3_ratio": _stats([float(b["wall_s"]) / float(a["wall_s"])  # type: ignore[arg-type]
                            for a, b in zip(rows["base"], rows["double"], strict=True)]),
        "P3_cpu_ratio": _stats([float(b["cpu_s"]) / float(a["cpu_s"])  # type: ignore[arg-type]
                                for a, b in zip(rows["base"], rows["double"], strict=True)]),
        "decode_cpu_ms": _stats([1000 * float(x["cpu_s"]) / float(x["frames"])  # type: ignore[arg-type]
                                 for x in rows["decode"]]),
        "annotate_cpu_ms": _stats([1000 * float(x["cpu_s"]) / float(x["frames"])  # type: ignore[arg-type]
                                   for x in rows["base"]]),
        "base_rss_mb": _stats([float(x["maxrss_mb"]) for x in rows["base"]]),  # type: ignore[arg-type]
    }
    stage_ms = {k: _stats([1000 * float(x["stages_s"][k]) / float(x["frames"])  # type: ignore[index,arg-type]
                           for x in rows["base"]]) for k in ("decode", "face", "spot", "flow", "model")}
    stage_ms["total (end-to-end)"] = _stats([1000 * float(x["wall_s"]) / float(x["frames"])  # type: ignore[arg-type]
                                            for x in rows["base"]])
    res["stage_ms_per_frame"] = stage_ms
    if long_runs and any(x.get("killed") for x in long_runs):
        res["long_killed_at_mb"] = max(float(x["tree_peak_rss_mb"]) for x in long_runs)  # type: ignore[arg-type]
        res["P2_ratio"] = res["long_killed_at_mb"] / res["base_rss_mb"]["median"]  # type: ignore[index]
    elif long_runs:
        res["long_frames"] = long_runs[0]["frames"]
        res["long_rss_mb"] = _stats([float(x["maxrss_mb"]) for x in long_runs])  # type: ignore[arg-type]
        res["P2_ratio"] = res["long_rss_mb"]["median"] / res["base_rss_mb"]["median"]  # type: ignore[index]
        res["long_annotate_fps"] = _stats([fps(x) for x in long_runs])
    if rows["jobs1"]:
        res["P4_speedup"] = _stats([float(a["wall_s"]) / float(b["wall_s"])  # type: ignore[arg-type]
                                    for a, b in zip(rows["jobs1"], rows["jobs2"], strict=True)])
        res["jobs1_fps"] = _stats([fps(x) for x in rows["jobs1"]])
        res["jobs2_fps"] = _stats([fps(x) for x in rows["jobs2"]])
    res["benchmark_wall_s"] = time.perf_counter() - t_start
    res["load_avg_1m_end"] = os.getloadavg()[0]
    _print_table(res, opts)
    return res


def _print_table(res: dict[str, object], opts: argparse.Namespace) -> None:
    r = res
    print(f"\nau-annotate throughput ({r['machine']}; device {r['device']}; decoder {r['backend']}; "
          f"{opts.repeats} repeats; load average {r['load_avg_1m']:.1f} -> {r['load_avg_1m_end']:.1f})")
    print("median (min..max) over repeats\n")
    print("| figure | value | target |")
    print("|---|---|---|")
    print(f"| decode-only, {opts.base_s:.0f} s 720p30 H.264 | {_fmt(r['decode_fps'], 0)} frames/s | |")  # type: ignore[arg-type]
    print(f"| annotate end-to-end, same file, --jobs 1 | {_fmt(r['annotate_fps'], 0)} frames/s | |")  # type: ignore[arg-type]
    print(f"| P1 annotate / decode-only | {_fmt(r['P1_ratio'])} | >= 0.8 |")  # type: ignore[arg-type]
    if r.get("decode_color_fps"):
        print(f"| decode-only in colour (BGR), same file | {_fmt(r['decode_color_fps'], 0)} frames/s | |")  # type: ignore[arg-type]
        print(f"| annotate / colour decode-only | {_fmt(r['P1_vs_color_decode'])} | |")  # type: ignore[arg-type]
    print(f"| CPU ms per frame: decode-only / annotate | {_fmt(r['decode_cpu_ms'])} / {_fmt(r['annotate_cpu_ms'])} | |")  # type: ignore[arg-type]
    if "long_killed_at_mb" in r:
        print(f"| P2 peak RSS {opts.long_s:.0f} s / {opts.base_s:.0f} s video | > {r['P2_ratio']:.2f} (killed at "
              f"{r['long_killed_at_mb']:.0f} MB, --max-rss-mb; {r['base_rss_mb']['median']:.0f} MB for "  # type: ignore[index]
              f"{opts.base_s:.0f} s) | <= 1.10 |")
    elif "P2_ratio" in r:
        print(f"| P2 peak RSS {opts.long_s:.0f} s / {opts.base_s:.0f} s video | {r['P2_ratio']:.3f} "
              f"({r['long_rss_mb']['median']:.0f} / {r['base_rss_mb']['median']:.0f} MB) | <= 1.10 |")  # type: ignore[index]
    print(f"| P3 time {2 * opts.base_s:.0f} s / {opts.base_s:.0f} s video | {_fmt(r['P3_ratio'])} | <= 2.1 |")  # type: ignore[arg-type]
    print(f"| P3 on CPU time (insensitive to other users' load) | {_fmt(r['P3_cpu_ratio'])} | <= 2.1 |")  # type: ignore[arg-type]
    if "P4_speedup" in r:
        print(f"| P4 --jobs 2 speedup, 4 x {opts.multi_s:.0f} s videos | {_fmt(r['P4_speedup'])} "
              f"({r['jobs1_fps']['median']:.0f} -> {r['jobs2_fps']['median']:.0f} frames/s) | |")  # type: ignore[index]
    print(f"\nper-stage time per frame, ms (--jobs 1, the {opts.base_s:.0f} s video; decode = waiting for the decode "
          "thread; the rest of the total is setup and writing)\n")
    print("| stage | ms/frame |")
    print("|---|---|")
    for k, v in r["stage_ms_per_frame"].items():  # type: ignore[attr-defined]
        print(f"| {k} | {_fmt(v)} |")
    print(f"\nbenchmark wall time {r['benchmark_wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    """Parse options; run the benchmark (or, with --child, one measurement)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each short measurement (default 3)")
    ap.add_argument("--long-repeats", type=int, default=1, help="repeats of the long video (default 1)")
    ap.add_argument("--base-s", type=float, default=60.0, help="base video length in seconds (default 60)")
    ap.add_argument("--long-s", type=float, default=600.0, help="long video length in seconds (default 600)")
    ap.add_argument("--multi-s", type=float, default=30.0, help="length of each of the 4 videos for P4 (default 30)")
    ap.add_argument("--decoder", default="auto", help="decode backend for both decode-only and annotate")
    ap.add_argument("--no-luma", action="store_true", help="decode in colour for both (Settings.luma off)")
    ap.add_argument("--device", default="cpu", help="model device: cpu, cuda, auto (default cpu)")
    ap.add_argument("--weights", default=None, help="checkpoint (default: the shipped default model)")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "au-annotate-bench"),
                    help="where the inputs are made and cached")
    ap.add_argument("--skip-long", action="store_true", help="skip P2 (the 10-minute video)")
    ap.add_argument("--skip-jobs", action="store_true", help="skip P4")
    ap.add_argument("--max-rss-mb", type=float, default=6000.0,
                    help="kill a measurement whose memory passes this (default 6000 MB); reported as such")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--child", choices=("decode", "decode-color", "annotate"), help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--jobs", type=int, default=1, help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.child:
        opts.mode = opts.child
        print(json.dumps(_child(opts)))
        return 0
    res = run(opts)
    if opts.json:
        Path(opts.json).write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
