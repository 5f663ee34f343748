"""The run around the per-video pipeline: interrupts keep finished work, usage errors create nothing, the summary tells
the truth, and the README's Python example runs as printed."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console
from synth import PlantedEvent, make_video

import au_annotate.plan as plan_module
from au_annotate.api import AnnotateError, annotate
from au_annotate.cli import main
from au_annotate.pipeline import run_video
from au_annotate.records import RunReport, VideoInfo, VideoJob, VideoResult
from au_annotate.settings import DEFAULTS
from au_annotate.ui import print_summary

REPO = Path(__file__).resolve().parents[1]
EVENTS = (PlantedEvent("brow_raise", 0.5, 0.65, 0.85, 3.0),)


@pytest.fixture(scope="module")
def three_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run") / "videos"
    root.mkdir()
    for i in range(3):
        make_video(root / f"clip{i}.mp4", fps=30, duration_s=1.5, size=(320, 240), events=EVENTS, seed=40 + i,
                   head_motion_px=0.5, noise_sigma=1.0)
    return root


class _InterruptedEngine:
    """Finishes clip0 and clip2 (clip2 ahead of clip1, which is still 'running'), then the user presses Ctrl-C."""

    def run(self, jobs, settings, hook):  # noqa: ANN001, ANN201 - the Engine protocol
        by_name = {j.path.name: j for j in jobs}
        for name in ("clip0.mp4", "clip2.mp4"):
            job = by_name[name]
            yield job, run_video(job, settings)
        raise KeyboardInterrupt


def test_interrupt_writes_every_finished_video(three_clips: Path, weights: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Finished videos waiting for a model batch (clip0) or for an earlier video (clip2) are written on Ctrl-C."""
    monkeypatch.setattr(plan_module, "get_engine", lambda name, **kw: _InterruptedEngine())
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        annotate([three_clips], out, DEFAULTS.replace(weights=weights, formats=("csv", "json")))
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["interrupted"] is True
    assert {k: v["status"] for k, v in manifest["videos"].items()} == {"clip0.mp4": "done", "clip2.mp4": "done"}
    for stem in ("clip0", "clip2"):
        assert (out / f"{stem}.segments.csv").is_file() and (out / f"{stem}.json").is_file()
    assert not (out / "clip1.segments.csv").exists()
    assert not list(out.rglob(".au-annotate-tmp-*"))


def test_sigterm_is_handled_like_ctrl_c(three_clips: Path, weights: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM during a run: finished videos written, exit code 130, one line, no traceback."""

    class TerminatedEngine:
        def run(self, jobs, settings, hook):  # noqa: ANN001, ANN202
            yield jobs[0], run_video(jobs[0], settings)
            os.kill(os.getpid(), signal.SIGTERM)
            yield jobs[1], run_video(jobs[1], settings)  # never reached: the handler raises KeyboardInterrupt

    monkeypatch.setattr(plan_module, "get_engine", lambda name, **kw: TerminatedEngine())
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["annotate", str(three_clips), "-o", str(out), "--weights", weights, "-q"])
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output and "Interrupted" in result.output
    assert (out / "clip0.segments.csv").is_file() and not (out / "clip1.segments.csv").exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the CLI gives the previous handler back


@pytest.mark.parametrize("option", [("--format", "csv,pdf"), ("--device", "tpu"), ("--weights", "no-such-model"),
                                    ("--rules", "RULES"), ("--faces", "many")])
def test_usage_errors_create_no_output_folder(three_clips: Path, weights: str, tmp_path: Path,
                                              option: tuple[str, str]) -> None:
    """A bad option is exit 2 with one line, and nothing is created (no folder, no lock file)."""
    bad_rules = tmp_path / "rules.toml"
    bad_rules.write_text("[[rule]]\nname = 1\n", encoding="utf-8")
    name, value = option[0], str(bad_rules) if option[1] == "RULES" else option[1]
    extra = [] if name == "--weights" else ["--weights", weights]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["annotate", str(three_clips), "-o", str(out), name, value, "-q", *extra])
    assert result.exit_code == 2, result.output
    assert "Error" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_api_usage_error_names_the_cause(three_clips: Path, weights: str, tmp_path: Path) -> None:
    with pytest.raises(AnnotateError, match="stall_timeout_s"):
        annotate([three_clips], tmp_path / "out", DEFAULTS.replace(weights=weights, stall_timeout_s=0))
    assert not (tmp_path / "out").exists()


def test_json_segments_carry_their_video(three_clips: Path, weights: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = annotate([three_clips / "clip0.mp4"], out, DEFAULTS.replace(weights=weights, formats=("json",)))
    assert report.segments, "the planted brow raise should give a segment"
    doc = json.loads((out / "clip0.json").read_text(encoding="utf-8"))
    assert [s["video"] for s in doc["segments"]] == ["clip0.mp4"] * len(doc["segments"])
    assert report.results[0].decoded_s == pytest.approx(1.5, abs=1 / 30 + 1e-6)
    assert set(report.results[0].stage_s or {}) == {"decode", "face", "spot", "flow"}


def _summary_text(report: RunReport, **kw: object) -> str:
    console = Console(record=True, width=160)
    print_summary(report, console, **kw)  # type: ignore[arg-type]
    return console.export_text()


def test_summary_shows_decoded_duration_wall_time_and_failures(tmp_path: Path) -> None:
    def job(name: str) -> VideoJob:
        from pathlib import PurePosixPath

        return VideoJob(path=tmp_path / name, rel=PurePosixPath(name), out_dir=tmp_path)

    info = VideoInfo(path=tmp_path / "half.mp4", backend="opencv", width=640, height=480, fps=30.0, n_frames=1800, duration_s=60.0)
    half = VideoResult(job=job("half.mp4"), status="done", info=info, frames=900, decoded_s=30.0)
    bad = VideoResult(job=job("bad.mp4"), status="failed", error="bad.mp4: corrupt video data")
    text = _summary_text(RunReport(results=(half, bad), out_dir=tmp_path, elapsed_s=3.0), wall_s=28.4)
    row = next(ln for ln in text.splitlines() if "half.mp4" in ln)
    assert "0:30" in row and "1:00" not in row  # what was decoded, not the container's duration
    assert "in 0:28." in text  # the command's wall time, not the run's 3 s
    assert "failed: bad.mp4: corrupt video data" in text and "warning:" not in text and "0 warnings" in text


def test_readme_python_example_runs_verbatim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The README's Python API block, on the bundled demo (made by its documented command)."""
    import runpy

    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = next(b for b in blocks if "au_annotate.annotate(" in b)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["make_demo.py", "examples/demo"])
    runpy.run_path(str(REPO / "examples" / "make_demo.py"), run_name="__main__")
    exec(compile(example, "README.md", "exec"), {})  # noqa: S102 - the documented example itself
    printed = capsys.readouterr().out
    assert "astronaut_demo.mp4" in printed  # the demo's segments were printed by the example's loop


def test_header_only_csv_has_no_decision_column_for_uncalibrated_aus(tmp_path: Path) -> None:
    """A video without segments still gets the default model's columns: `_p` for every AU with --all-aus, `_c` only for
    those with a calibrated threshold (the same columns a video with segments gets)."""
    from au_annotate.segments import load_model
    from au_annotate.writers import read_segments_csv

    settings = DEFAULTS.replace(all_aus=True, formats=("csv",))
    uncalibrated = load_model(settings).decoder.uncalibrated
    assert uncalibrated, "the default model has AUs with too few positives for a threshold"
    still = make_video(tmp_path / "v" / "still.mp4", fps=30, duration_s=1.0, size=(320, 240), events=(), seed=3)
    annotate([still.path], tmp_path / "out", settings)
    columns = list(read_segments_csv(tmp_path / "out" / "still.segments.csv").columns)
    for name in uncalibrated:
        assert f"{name}_p" in columns and f"{name}_c" not in columns
    assert "AU01_c" in columns
