"""Python API: `annotate(paths, out_dir, settings)` -> RunReport, the same results the CLI writes.

The recipe for a run: discover videos -> per video the CPU pipeline (pipeline.py) -> flow samples of all videos batched
through the model (infer.py) -> AU decode (aus.py) + FACS emotion rules (rules.py) -> writers -> combined CSV.
A failing video is recorded with a one-line reason and the run goes on.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from au_annotate import __version__
from au_annotate.aus import AUDecoder
from au_annotate.decode import DecodeError
from au_annotate.discover import DiscoverError, discover
from au_annotate.pipeline import NoFaceError, VideoWork, process_video
from au_annotate.progress import ProgressHook
from au_annotate.records import RunReport, Segment, VideoJob, VideoResult
from au_annotate.settings import DEFAULTS, Settings

log = logging.getLogger("au_annotate")


class OutputError(RuntimeError):
    """The output folder cannot be created or written."""


class AnnotateError(RuntimeError):
    """A run cannot start (bad weights, rules, formats...); the message is one line."""


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".au-annotate-probe-", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{out_dir}: output folder is not writable ({e.strerror or e})") from None


@dataclass
class _Model:
    """Everything the model side of a run needs, loaded once."""

    runner: object
    decoder: AUDecoder
    rules: object
    name: str
    sha256: str


def _load_model(settings: Settings) -> _Model:
    from au_annotate.infer import BatchRunner
    from au_annotate.rules import RuleSet
    from au_annotate.weights import load_checkpoint, resolve_weights

    loaded = load_checkpoint(resolve_weights(settings.weights), au_order=settings.au_order)
    runner = BatchRunner(loaded, device=settings.device, batch_size=settings.batch_size)
    decoder = AUDecoder.from_model(loaded.au_names, loaded.thresholds, loaded.reliable, all_aus=settings.all_aus)
    rules = RuleSet.load(settings.rules)
    return _Model(runner=runner, decoder=decoder, rules=rules, name=loaded.name, sha256=loaded.sha256)


def _segments(work: VideoWork, probs: np.ndarray, model: _Model) -> tuple[Segment, ...]:
    """Turn one video's flow samples and their probabilities into Segments (AU codes + emotion)."""
    if not work.samples:
        return ()
    p, present, codes = model.decoder.decode(probs)
    out = []
    for i, (s, code) in enumerate(zip(work.samples, codes, strict=True)):
        aus = {int(n[2:]) for n, on in zip(model.decoder.au_names, present[i], strict=True) if on}
        emotion, rule = model.rules.match(aus)  # type: ignore[attr-defined]
        w = s.window
        out.append(Segment(
            video=work.job.rel.as_posix(), face_id=s.face_id, segment_id=i, kind=w.kind,
            onset_frame=w.onset, apex_frame=w.apex, offset_frame=w.offset,
            onset_s=round(s.onset_s, 6), apex_s=round(s.apex_s, 6), offset_s=round(s.offset_s, 6),
            duration_s=round(max(0.0, s.offset_s - s.onset_s), 6), score=float(w.score),
            au_names=model.decoder.au_names, probs=p[i], present=present[i], aus=code, emotion=emotion, rule=rule,
            flow_image=s.image,
        ))
    return tuple(out)


def annotate(
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    settings: Settings | None = None,
    *,
    progress: ProgressHook | None = None,
) -> RunReport:
    """Annotate every video found under `paths`, write outputs under `out_dir`, and return the run's report.

    Raises DiscoverError (missing input / no videos), OutputError (unwritable output) or AnnotateError (weights, rules,
    formats) before any video is touched; per-video problems are recorded in the report instead."""
    from au_annotate.writers import WriteContext, get_writers, write_combined_csv, write_video_outputs

    settings = settings or DEFAULTS
    hook = progress or ProgressHook()
    t_run = time.perf_counter()
    out = Path(out_dir)
    found = discover(paths, out, recursive=settings.recursive)
    if not found.jobs:
        where = ", ".join(str(p) for p in paths)
        raise DiscoverError(f"{where}: no video files found" + (f" ({len(found.skipped)} other files skipped)"
                                                                 if found.skipped else ""))
    _check_writable(out)
    try:
        get_writers(settings.formats)
        model = _load_model(settings)
    except (ValueError, OSError) as e:
        raise AnnotateError(str(e)) from None
    except Exception as e:
        if type(e).__name__ in ("WeightsError", "RulesError", "InferenceError"):
            raise AnnotateError(str(e)) from None
        raise
    ctx = WriteContext(tool_version=__version__, model_name=model.name, model_sha256=model.sha256,
                       settings=settings.as_dict(), au_tiers=settings.au_tiers)
    hook.start_run(found.jobs)
    results: dict[VideoJob, VideoResult] = {}
    pending: list[tuple[VideoWork, float]] = []

    def finish(work: VideoWork, probs: np.ndarray, elapsed: float) -> None:
        segs = _segments(work, probs, model)
        res = VideoResult(job=work.job, status="done", info=work.info, segments=segs, frames=work.frames,
                          frames_with_face=work.frames_with_face, faces=work.faces, elapsed_s=elapsed,
                          signal=work.signal)
        res = _write(res, ctx)
        results[work.job] = res
        hook.end_video(res)

    def _write(res: VideoResult, ctx: WriteContext) -> VideoResult:
        try:
            paths_out = write_video_outputs(res, ctx, settings.formats)
        except OSError as e:
            failed = VideoResult(job=res.job, status="failed", info=res.info,
                                 error=f"{res.job.path}: cannot write outputs: {e.strerror or e}",
                                 frames=res.frames, elapsed_s=res.elapsed_s)
            hook.message(failed.error or "")
            return failed
        from dataclasses import replace

        return replace(res, outputs=tuple(paths_out))

    def flush() -> None:
        if not pending:
            return
        stacked = [s.image for w, _ in pending for s in w.samples]
        probs = model.runner.predict(np.stack(stacked)) if stacked else np.zeros((0, 0), np.float32)  # type: ignore[attr-defined]
        start = 0
        for work, elapsed in pending:
            n = len(work.samples)
            finish(work, probs[start : start + n], elapsed)
            start += n
        pending.clear()

    for job in found.jobs:
        t0 = time.perf_counter()
        try:
            work = process_video(job, settings, on_start=lambda info, j=job: hook.start_video(j, info),
                                 on_frames=lambda n, j=job: hook.advance(j, n))
        except NoFaceError as e:
            res = _write(VideoResult(job=job, status="no_face", error=str(e), elapsed_s=time.perf_counter() - t0),
                         ctx)
            results[job] = res
            hook.message(str(e))
            hook.end_video(res)
            continue
        except DecodeError as e:
            res = VideoResult(job=job, status="failed", error=str(e), elapsed_s=time.perf_counter() - t0)
            results[job] = res
            hook.message(str(e))
            hook.end_video(res)
            continue
        except Exception as e:  # one bad video must not cost the rest of the run
            log.debug("traceback for %s:\n%s", job.path, traceback.format_exc())
            msg = f"{job.path}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            res = VideoResult(job=job, status="failed", error=msg, elapsed_s=time.perf_counter() - t0)
            results[job] = res
            hook.message(msg)
            hook.end_video(res)
            continue
        pending.append((work, time.perf_counter() - t0))
        if sum(len(w.samples) for w, _ in pending) >= settings.batch_size:
            flush()
    flush()
    ordered = tuple(results[j] for j in found.jobs)
    combined = write_combined_csv(ordered, out / "segments.csv", ctx)
    report = RunReport(results=ordered, out_dir=out, skipped_files=found.skipped,
                       elapsed_s=time.perf_counter() - t_run, outputs=(combined,))
    if settings.report:
        from au_annotate.writers.report import write_report

        report = RunReport(results=report.results, out_dir=out, skipped_files=found.skipped,
                           elapsed_s=report.elapsed_s,
                           outputs=(combined, write_report(report, out / "report.html", ctx)))
    hook.end_run(report)
    return report
