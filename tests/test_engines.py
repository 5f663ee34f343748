"""Engines: parallel workers and Ray give the same outputs as one process; failures stay per video; progress adds up."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from au_annotate.api import annotate
from au_annotate.discover import discover
from au_annotate.pipeline import VideoFailure, VideoWork, run_video
from au_annotate.progress import ProgressHook
from au_annotate.settings import DEFAULTS, Settings


class CountingHook(ProgressHook):
    """Records what the engine reports, to check the progress bar's numbers."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.frames: dict[str, int] = {}
        self.ended: list[str] = []

    def start_video(self, job, info) -> None:  # noqa: ANN001
        self.started.append(job.rel.as_posix())

    def advance(self, job, frames: int) -> None:  # noqa: ANN001
        assert frames > 0
        key = job.rel.as_posix()
        self.frames[key] = self.frames.get(key, 0) + frames

    def end_video(self, result) -> None:  # noqa: ANN001
        self.ended.append(result.job.rel.as_posix())


def _settings(weights: str, **changes: object) -> Settings:
    return DEFAULTS.replace(weights=str(weights), formats=("csv",), **changes)


def _csv_contents(out: Path) -> dict[str, list[str]]:
    """Every CSV under `out` by relative path, without the `#` metadata lines (they carry timestamps and settings)."""
    return {p.relative_to(out).as_posix(): [ln for ln in p.read_text(encoding="utf-8").splitlines()
                                             if not ln.startswith("#")]
            for p in sorted(out.rglob("*.csv"))}


@pytest.fixture(scope="module")
def one_process(planted_clips, weights, tmp_path_factory):
    """The reference run: --engine local --jobs 1."""
    root, _ = planted_clips
    out = tmp_path_factory.mktemp("jobs1")
    hook = CountingHook()
    report = annotate([root], out, _settings(weights, jobs=1), progress=hook)
    return out, report, hook


def test_jobs2_output_equals_jobs1(planted_clips, weights, one_process, tmp_path: Path) -> None:
    root, clips = planted_clips
    ref_out, ref_report, _ = one_process
    hook = CountingHook()
    report = annotate([root], tmp_path, _settings(weights, jobs=2), progress=hook)
    ref = _csv_contents(ref_out)
    assert set(ref) == {"clip_a.segments.csv", "sub/clip_b.segments.csv", "segments.csv"}
    assert sum(len(rows) - 1 for name, rows in ref.items() if name != "segments.csv") >= len(clips)  # real segments
    assert _csv_contents(tmp_path) == ref
    assert [(r.job.rel, r.status, r.frames) for r in report.results] == \
        [(r.job.rel, r.status, r.frames) for r in ref_report.results]
    # progress with parallel workers: every frame counted once, every video started and ended once
    done = {r.job.rel.as_posix(): r.frames for r in report.results if r.status == "done"}
    assert hook.frames == done
    assert sorted(hook.started) == sorted(done)
    assert sorted(hook.ended) == sorted(r.job.rel.as_posix() for r in report.results)


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def test_large_frame_outputs_do_not_depend_on_what_the_process_did_before(weights, tmp_path: Path) -> None:
    """--jobs 1 (and each worker of --jobs N) runs videos one after another with one shared face detector: a video's
    output must not depend on the videos before it. Frames over 640 px are where the detector adapts (its 1600-px
    retry for small faces), so: a 4K wide shot with a small face after a faceless 1080p video, and alone."""
    import shutil

    from skimage import data

    rng = np.random.default_rng(0)
    face = cv2.resize(data.astronaut()[30:230, 150:300, ::-1], (90, 120), interpolation=cv2.INTER_AREA)
    wide = []
    for _ in range(20):  # the ~50x65 px face is below MTCNN's reach at 640 px: only the 1600-px retry finds it
        img = np.full((2160, 3840, 3), 110, np.uint8)
        img[1000:1120, 2000:2090] = np.clip(face + rng.normal(0, 1.5, face.shape), 0, 255).astype(np.uint8)
        wide.append(img)
    both, alone = tmp_path / "both", tmp_path / "alone"
    _write_video(both / "a" / "empty.mp4", [np.full((1080, 1920, 3), 90, np.uint8)] * 40)  # processed first
    _write_video(both / "b" / "wide.mp4", wide)
    (alone / "b").mkdir(parents=True)
    shutil.copyfile(both / "b" / "wide.mp4", alone / "b" / "wide.mp4")

    def run(root: Path) -> tuple[dict[str, tuple], dict[str, list[str]]]:
        out = tmp_path / "out" / root.name
        report = annotate([root], out, _settings(weights, jobs=1))
        return ({r.job.rel.as_posix(): (r.status, r.frames, r.frames_with_face, r.faces) for r in report.results},
                _csv_contents(out))

    after_blank, by_itself = run(both), run(alone)
    assert after_blank[0] == {"a/empty.mp4": ("no_face", 40, 0, 0), "b/wide.mp4": ("done", 20, 20, 1)}
    assert by_itself[0] == {"b/wide.mp4": ("done", 20, 20, 1)}  # the face found on every frame, in both runs
    assert after_blank[1]["b/wide.segments.csv"] == by_itself[1]["b/wide.segments.csv"]


# -- Ray ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs and no dashboard, shut down after this module."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _jobs(root: Path, out: Path):
    return list(discover([root], out, recursive=True).jobs)


def test_ray_output_equals_local(planted_clips, weights, one_process, local_ray, tmp_path: Path) -> None:
    root, _ = planted_clips
    ref_out, ref_report, _ = one_process
    hook = CountingHook()
    report = annotate([root], tmp_path, _settings(weights, engine="ray"), progress=hook)
    assert local_ray.is_initialized()  # the engine reused the running instance and left it running
    assert _csv_contents(tmp_path) == _csv_contents(ref_out)
    assert [(r.job.rel, r.status) for r in report.results] == [(r.job.rel, r.status) for r in ref_report.results]
    broken = [r for r in report.results if r.job.path.name == "broken.mp4"]
    assert broken and broken[0].status == "failed" and "broken.mp4" in (broken[0].error or "")
    done = {r.job.rel.as_posix(): r.frames for r in report.results if r.status == "done"}
    assert hook.frames == done and sorted(hook.started) == sorted(done)
    # same manifest: a second run with the local engine reuses everything the Ray run wrote
    again = annotate([root], tmp_path, _settings(weights, jobs=1))
    assert {r.status for r in again.results if r.job.path.name != "broken.mp4"} == {"skipped"}


def test_ray_tasks_reserve_two_cpus_where_a_node_has_them(local_ray) -> None:
    """A video keeps ~1.7 cores busy: tasks reserve 2 CPUs (the local engine's one worker per two cores), but never
    more than the biggest alive node has, or they would wait forever; the in-flight limit follows."""
    from au_annotate.engines.ray_engine import RayEngine, task_cpus

    def node(cpus: float, alive: bool = True) -> dict:
        return {"Alive": alive, "Resources": {"CPU": cpus}}

    assert task_cpus([node(64), node(1)]) == 2
    assert task_cpus([node(1), node(1)]) == 1
    assert task_cpus([node(1), node(8, alive=False)]) == 1
    assert task_cpus([]) == 1
    assert task_cpus(local_ray.nodes()) == 2  # this module's 2-CPU local instance
    engine = RayEngine()
    engine._cpus = task_cpus(local_ray.nodes())  # noqa: SLF001 - as a run sets it
    assert engine._limit() == 1  # noqa: SLF001 - 2 CPUs / 2 per video


def test_ray_task_that_raises_fails_only_its_video(planted_clips, weights, local_ray, tmp_path: Path) -> None:
    from au_annotate.engines.ray_engine import RayEngine

    root, _ = planted_clips

    def flaky(job, settings, **callbacks):  # noqa: ANN001, ANN202 - runs in a Ray worker (pickled by value)
        if job.path.name == "clip_a.mp4":
            raise RuntimeError("planted failure")
        return run_video(job, settings, **callbacks)

    jobs = [j for j in _jobs(root, tmp_path) if j.path.name != "broken.mp4"]
    outcomes = dict(RayEngine(video_fn=flaky).run(jobs, _settings(weights), CountingHook()))
    assert set(outcomes) == set(jobs)
    for job, outcome in outcomes.items():
        if job.path.name == "clip_a.mp4":
            assert isinstance(outcome, VideoFailure) and outcome.status == "failed"
            assert "planted failure" in outcome.error and "clip_a.mp4" in outcome.error
            assert "\n" not in outcome.error
        else:
            assert isinstance(outcome, VideoWork) and outcome.samples and outcome.job is job


def test_ray_worker_killed_mid_task_is_retried(planted_clips, weights, local_ray, tmp_path: Path) -> None:
    from au_annotate.engines.ray_engine import RayEngine

    root, _ = planted_clips
    marker = tmp_path / "killed-once"

    def dies_once(job, settings, on_start=None, on_frames=None):  # noqa: ANN001, ANN202 - runs in a Ray worker
        seen = 0

        def frames(n: int) -> None:
            nonlocal seen
            seen += n
            if on_frames:
                on_frames(n)
            if seen >= 100 and not marker.exists():  # mid-task: after frames were processed and reported
                marker.write_text(str(os.getpid()))
                os._exit(1)

        return run_video(job, settings, on_start=on_start, on_frames=frames)

    jobs = [j for j in _jobs(root, tmp_path) if j.path.name == "clip_a.mp4"]
    hook = CountingHook()
    outcomes = list(RayEngine(video_fn=dies_once).run(jobs, _settings(weights), hook))
    assert marker.exists()  # the first attempt really died
    [(job, outcome)] = outcomes
    assert isinstance(outcome, VideoWork) and outcome.samples
    assert hook.frames == {"clip_a.mp4": outcome.frames}  # frames of the lost attempt are not counted twice
    # without retries the same death is a failed video with a one-line reason, not a crashed run
    marker.unlink()
    [(job, outcome)] = list(RayEngine(video_fn=dies_once, max_retries=0).run(jobs, _settings(weights), hook))
    assert isinstance(outcome, VideoFailure) and "Ray task failed" in outcome.error and "\n" not in outcome.error


def test_ray_missing_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from au_annotate.engines import EngineError, get_engine

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.delitem(sys.modules, "au_annotate.engines.ray_engine", raising=False)
    with pytest.raises(EngineError, match=r"pip install 'au-annotate\[ray\]'"):
        get_engine("ray", address=None, jobs=0)
