"""Python API: `annotate(paths, out_dir, settings)` -> RunReport, the same results the CLI writes.

The recipe for a run: plan (discover the videos, check every option, load the model: nothing is created before this
succeeds) -> lock the output folder -> resume (skip videos an earlier run finished) -> run the videos (the per-video
CPU pipeline in an engine, flow samples of all videos batched through the model, segments, outputs: collect.py) ->
the combined CSV, the report and the manifest. A failing video is recorded with a one-line reason and the run goes on;
an interrupt (Ctrl-C, or SIGTERM where the CLI maps it) still writes every video that finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from au_annotate.collect import Collector
from au_annotate.errors import AnnotateError, OutputError
from au_annotate.manifest import Manifest, _now, environment, sweep_temporaries
from au_annotate.plan import RunPlan, plan_run, resume
from au_annotate.progress import ProgressHook
from au_annotate.records import RunReport, VideoResult
from au_annotate.settings import DEFAULTS, Settings
from au_annotate.spot import SpotConfig

__all__ = ["AnnotateError", "OutputError", "annotate"]

log = logging.getLogger("au_annotate")


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


def annotate(
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    settings: Settings | None = None,
    *,
    progress: ProgressHook | None = None,
) -> RunReport:
    """Annotate every video found under `paths`, write outputs under `out_dir`, and return the run's report.

    Raises DiscoverError (missing input / no videos), OutputError (unwritable or busy output) or AnnotateError
    (weights, rules, formats, options) before anything is written; per-video problems are recorded in the report
    instead. KeyboardInterrupt propagates after the finished videos are written and the manifest marks the run
    interrupted."""
    t_run = time.perf_counter()
    hook = progress or ProgressHook()
    plan = plan_run(paths, out_dir, settings or DEFAULTS)
    with _run_lock(plan.out):  # one run per output folder: the manifest and the temporaries sweep assume it
        _check_writable(plan.out)
        manifest = _start_manifest(plan)
        todo = resume(plan, manifest)
        hook.start_run(tuple(todo.todo))
        for error in plan.errors:
            hook.error(error)
        collector = Collector(plan, manifest, hook, todo.todo, todo.keys)
        try:
            collector.run(plan.engine.run(todo.todo, plan.settings, hook))
        except KeyboardInterrupt:
            collector.drain()  # what finished is written; videos still running are not
            manifest.save(finished=_now(), interrupted=True)
            raise
        results = {**todo.reused, **collector.results}
        return _finish(plan, tuple(results[j] for j in plan.found.jobs), manifest, hook, t_run, collector.model_s)


def _start_manifest(plan: RunPlan) -> Manifest:
    """Load the folder's manifest (for resume), sweep a killed run's temporaries and record this run's start."""
    manifest = Manifest.load(plan.out)
    sweep_temporaries(plan.out)  # litter of a killed earlier run: never trusted, only removed
    manifest.save(started=_now(), finished=None, interrupted=False, inputs=list(plan.paths),
                  settings=plan.settings.as_dict(), spotting=SpotConfig.from_any(plan.settings.spot).as_dict(),
                  model={"name": plan.model.name, "sha256": plan.model.sha256},
                  environment=environment(), summary=None, elapsed_s=None, errors=list(plan.errors))
    return manifest


def _finish(plan: RunPlan, ordered: tuple[VideoResult, ...], manifest: Manifest, hook: ProgressHook, t_run: float,
            model_s: float) -> RunReport:
    """Dataset-level outputs (combined CSV, optional HTML report), the manifest's summary, and the report."""
    from au_annotate.writers import write_combined_csv

    outputs = [write_combined_csv(ordered, plan.out / "segments.csv", plan.ctx)]
    report = RunReport(results=ordered, out_dir=plan.out, skipped_files=plan.found.skipped,
                       elapsed_s=time.perf_counter() - t_run, outputs=tuple(outputs), model_s=model_s,
                       errors=plan.errors)
    if plan.settings.report:
        from au_annotate.writers.report import write_report

        outputs.append(write_report(report, plan.out / "report.html", plan.ctx))
    elapsed = time.perf_counter() - t_run  # the whole call, the report included
    report = RunReport(results=ordered, out_dir=plan.out, skipped_files=plan.found.skipped, elapsed_s=elapsed,
                       outputs=tuple(outputs), model_s=model_s, errors=plan.errors)
    manifest.save(finished=_now(), interrupted=False, elapsed_s=round(elapsed, 3),
                  summary={status: sum(1 for r in ordered if r.status == status)
                           for status in ("done", "skipped", "failed", "no_face")})
    hook.end_run(report)
    return report
