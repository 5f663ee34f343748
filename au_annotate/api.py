"""Python API: `annotate(paths, out_dir, settings)` -> RunReport, the same results the CLI writes.

The recipe for a run: discover videos -> per video the CPU pipeline (pipeline.py) -> flow samples of all videos batched
through the model (infer.py) -> AU decode (aus.py) + FACS emotion rules (rules.py) -> writers -> combined CSV.
A failing video is recorded with a one-line reason and the run goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from au_annotate import __version__
from au_annotate.aus import AUDecoder
from au_annotate.discover import DiscoverError, discover
from au_annotate.engines import EngineError, get_engine
from au_annotate.face import parse_faces
from au_annotate.manifest import Manifest, _now, output_key, segments_from_csv, sweep_temporaries
from au_annotate.pipeline import VideoFailure, VideoWork
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


LOCK_NAME = ".au-annotate.lock"


@contextlib.contextmanager
def _run_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `out_dir` for a run, so that a second run into the same folder stops at once with a
    clear message instead of interleaving its manifest and sweeping the first run's temporary files.

    An advisory `flock` on a file in the folder: the kernel drops it when the process ends however it ends, so a
    killed run leaves no stale lock. Where `fcntl` does not exist (Windows), or the file system refuses locks (NFS
    without a lock manager), the run goes on unlocked; on NFS mounted `nolock`/`local_lock` the lock is local only."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None  # type: ignore[assignment]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fh = open(out_dir / LOCK_NAME, "a")  # noqa: SIM115 - held for the run; stays empty (identical outputs)
    except OSError as e:
        raise OutputError(f"{out_dir}: output folder is not writable ({e.strerror or e})") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputError(f"{out_dir}: another au-annotate run is writing to this folder; wait for it to "
                                  "finish or use another -o") from None
            except OSError as e:  # the file system does not do locks: nothing to protect against here
                log.warning("%s: cannot lock the output folder (%s); make sure no other run writes to it",
                            out_dir, e.strerror or e)
        yield
    finally:
        fh.close()  # releases the lock


@dataclass
class _Model:
    """Everything the model side of a run needs, loaded once."""

    runner: object
    decoder: AUDecoder
    rules: object
    name: str
    sha256: str
    input_layout: str


def _load_model(settings: Settings) -> _Model:
    from au_annotate.infer import BatchRunner
    from au_annotate.rules import RuleSet
    from au_annotate.weights import load_weights

    loaded = load_weights(settings.weights, au_order=settings.au_order)  # registry order + pinned checksum
    runner = BatchRunner(loaded, device=settings.device, batch_size=settings.batch_size)
    decoder = AUDecoder.from_model(loaded.au_names, loaded.thresholds, loaded.reliable, all_aus=settings.all_aus)
    rules = RuleSet.load(settings.rules)
    return _Model(runner=runner, decoder=decoder, rules=rules, name=loaded.name, sha256=loaded.sha256,
                  input_layout=loaded.input_layout)


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
            flow_image=s.image, apex_crop=s.apex_thumb,
        ))
    return tuple(out)


def _engine_options(settings: Settings) -> dict[str, object]:
    if settings.engine == "local":
        from au_annotate.engines.local import default_jobs

        return {"jobs": settings.jobs or default_jobs()}
    return {"address": settings.ray_address, "jobs": settings.jobs}


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
    from au_annotate.infer import InferenceError
    from au_annotate.rules import RulesError
    from au_annotate.weights import WeightsError
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
    with _run_lock(out):  # one run per output folder: the manifest and the temporaries sweep assume it
        _check_writable(out)
        try:
            get_writers(settings.formats)
            parse_faces(settings.faces)
            if not isinstance(settings.stall_timeout_s, int | float) or not settings.stall_timeout_s > 0:
                raise ValueError(f"stall_timeout_s must be a positive number of seconds, got {settings.stall_timeout_s!r}")
            model = _load_model(settings)
            if settings.input_layout == "auto":
                settings = settings.replace(input_layout=model.input_layout)  # the picture layout the model was trained on
            elif settings.input_layout != model.input_layout:
                raise AnnotateError(f"{model.name}: the model was trained on '{model.input_layout}' flow pictures, not "
                                    f"'{settings.input_layout}': use --input-layout {model.input_layout} or other weights")
            engine = get_engine(settings.engine, **_engine_options(settings))
        except (ValueError, OSError, WeightsError, RulesError, InferenceError, EngineError) as e:
            raise AnnotateError(str(e)) from None
        ctx = WriteContext(tool_version=__version__, model_name=model.name, model_sha256=model.sha256,
                           settings=settings.as_dict(), au_tiers=settings.au_tiers, au_names=model.decoder.au_names)
        manifest = Manifest.load(out)
        sweep_temporaries(out)  # litter of a killed earlier run: never trusted, only removed
        manifest.save(started=_now(), finished=None, interrupted=False, inputs=[str(p) for p in paths],
                      settings=settings.as_dict(), model={"name": model.name, "sha256": model.sha256},
                      summary=None, elapsed_s=None)
        keys: dict[VideoJob, str | None] = {}
        results: dict[VideoJob, VideoResult] = {}
        todo: list[VideoJob] = []
        for job in found.jobs:
            try:
                keys[job] = output_key(job, settings, model.sha256)
            except OSError:
                keys[job] = None
            entry = None if settings.overwrite or keys[job] is None else manifest.reusable(job, keys[job])  # type: ignore[arg-type]
            if entry is None:
                todo.append(job)
                continue
            csv_out = job.out_dir / f"{job.stem}.segments.csv"
            try:
                segs = segments_from_csv(csv_out, job.rel.as_posix()) if csv_out.is_file() else ()
            except Exception:  # unreadable earlier output: recompute instead of trusting it
                todo.append(job)
                continue
            results[job] = VideoResult(job=job, status="skipped", error=None, segments=segs,
                                       frames=int(entry.get("frames", 0)), frames_with_face=int(entry.get("frames_with_face", 0)),
                                       outputs=tuple(out / o for o in entry.get("outputs", [])))
        hook.start_run(tuple(todo))
        pending: list[VideoWork] = []

        def write(res: VideoResult) -> VideoResult:
            try:
                written = write_video_outputs(res, ctx, settings.formats)
            except OSError as e:
                failed = VideoResult(job=res.job, status="failed", info=res.info,
                                     error=f"{res.job.path}: cannot write outputs: {e.strerror or e}",
                                     frames=res.frames, elapsed_s=res.elapsed_s)
                hook.message(failed.error or "")
                return failed
            return replace(res, outputs=written)

        def finish(res: VideoResult) -> None:
            results[res.job] = res
            manifest.record(res, keys.get(res.job) if res.status in ("done", "no_face") else None)
            warning = manifest.videos.get(res.job.rel.as_posix(), {}).get("warning")
            if warning:
                hook.message(warning)
            hook.end_video(res)

        def flush() -> None:
            """Run the model on the flow samples of all pending videos at once, then write those videos."""
            if not pending:
                return
            pictures = [s.image for w in pending for s in w.samples]
            probs = model.runner.predict(np.stack(pictures)) if pictures else None  # type: ignore[attr-defined]
            start = 0
            for work in pending:
                n = len(work.samples)
                segs = _segments(work, probs[start : start + n], model) if n else ()  # type: ignore[index]
                start += n
                finish(write(VideoResult(job=work.job, status="done", info=work.info, segments=segs, frames=work.frames,
                                         frames_with_face=work.frames_with_face, faces=work.faces,
                                         elapsed_s=work.elapsed_s, signal=work.signal)))
            pending.clear()

        last_flush = time.monotonic()

        def consume(outcome: VideoWork | VideoFailure) -> None:
            nonlocal last_flush
            if isinstance(outcome, VideoFailure):
                if settings.verbose and outcome.detail:
                    log.error("%s", outcome.detail)
                hook.message(outcome.error)
                res = VideoResult(job=outcome.job, status=outcome.status, error=outcome.error,  # type: ignore[arg-type]
                                  elapsed_s=outcome.elapsed_s, frames=outcome.frames, info=outcome.info)
                finish(write(res) if outcome.status == "no_face" else res)
                return
            pending.append(outcome)
            # a full batch, or 30 s since the last write: bounds what a killed run can lose (results do not depend on
            # batch composition: infer.py runs fixed-shape batches)
            if sum(len(w.samples) for w in pending) >= settings.batch_size or time.monotonic() - last_flush >= 30.0:
                flush()
                last_flush = time.monotonic()

        # Outcomes may complete in any order (parallel workers); they are consumed in input order so that batches, and
        # therefore results, are identical whatever the number of workers.
        order = {job: i for i, job in enumerate(todo)}
        waiting: dict[int, VideoWork | VideoFailure] = {}
        next_i = 0
        try:
            for job, outcome in engine.run(todo, settings, hook):
                waiting[order[job]] = outcome
                while next_i in waiting:
                    consume(waiting.pop(next_i))
                    next_i += 1
            flush()
        except KeyboardInterrupt:
            manifest.save(finished=_now(), interrupted=True)
            raise
        ordered = tuple(results[j] for j in found.jobs)
        combined = write_combined_csv(ordered, out / "segments.csv", ctx)
        report = RunReport(results=ordered, out_dir=out, skipped_files=found.skipped,
                           elapsed_s=time.perf_counter() - t_run, outputs=(combined,))
        if settings.report:
            from au_annotate.writers.report import write_report

            report = RunReport(results=report.results, out_dir=out, skipped_files=found.skipped,
                               elapsed_s=report.elapsed_s,
                               outputs=(combined, write_report(report, out / "report.html", ctx)))
        manifest.save(finished=_now(), interrupted=False, elapsed_s=round(report.elapsed_s, 3),
                      summary={status: sum(1 for r in ordered if r.status == status)
                               for status in ("done", "skipped", "failed", "no_face")})
        hook.end_run(report)
        return report
