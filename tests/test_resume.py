"""Resume after a rerun, a crash (SIGKILL) or Ctrl-C (SIGINT): done work is kept, nothing half-written is trusted.

The fast tests run the CLI in-process on three short clips; the crash and interrupt tests run `python -m au_annotate`
in a subprocess on six clips and kill it while the manifest shows some, not all, videos done.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from synth import PlantedEvent, make_video

from au_annotate.cli import main

REPO = Path(__file__).resolve().parents[1]
EVENTS = (PlantedEvent("brow_raise", 0.6, 0.75, 0.95, 2.5), PlantedEvent("lip_corner_pull", 1.6, 1.75, 1.95, 2.5))


def _clips(folder: Path, n: int, duration_s: float) -> list[Path]:
    folder.mkdir(parents=True)
    return [make_video(folder / ("sub" if i % 2 else "") / f"clip{i}.mp4", fps=30, duration_s=duration_s,
                       size=(320, 240), events=EVENTS, seed=20 + i, head_motion_px=0.8, noise_sigma=1.0).path
            for i in range(n)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume") / "videos"
    _clips(root, 3, 2.0)
    return root


def _run(videos: Path, out: Path, weights: str, *extra: str) -> dict:
    result = CliRunner().invoke(main, ["annotate", str(videos), "-o", str(out), "--weights", weights, "--jobs", "1",
                                       "-q", *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def _outputs(out: Path) -> dict[str, int]:
    """Per-video output files and their mtimes (ns); the run-level files are rewritten on every run."""
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("manifest.json", "segments.csv", ".au-annotate.lock")}


@pytest.fixture(scope="module")
def pristine(videos: Path, weights: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pristine") / "out"
    manifest = _run(videos, out, weights)
    assert manifest["summary"] == {"done": 3, "skipped": 0, "failed": 0, "no_face": 0}
    return out


@pytest.fixture
def first_run(pristine: Path, tmp_path: Path) -> tuple[Path, dict, dict[str, int]]:
    """A copy (mtimes kept) of a finished first run's output folder."""
    import shutil

    out = shutil.copytree(pristine, tmp_path / "out")
    outputs = _outputs(out)
    assert len(outputs) == 6 and outputs == _outputs(pristine)  # csv + eaf per video
    time.sleep(0.02)  # so a rewrite gets a different mtime
    return out, json.loads((out / "manifest.json").read_text(encoding="utf-8")), outputs


def test_rerun_skips_done_videos_and_leaves_outputs_untouched(first_run, videos: Path, weights: str) -> None:
    out, before, outputs = first_run
    combined = (out / "segments.csv").read_text(encoding="utf-8")
    after = _run(videos, out, weights, "--batch-size", "7")  # runtime-only settings do not invalidate results
    assert after["summary"] == {"done": 0, "skipped": 3, "failed": 0, "no_face": 0}
    assert _outputs(out) == outputs  # not rewritten
    assert after["videos"] == before["videos"]  # entries (keys, finish times) kept as they were
    rows = [ln for ln in (out / "segments.csv").read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
    assert rows == [ln for ln in combined.splitlines() if not ln.startswith("#")] and len(rows) > 3  # rebuilt from CSVs


def test_manifest_records_the_environment_that_made_the_numbers(first_run) -> None:
    """The run field `environment` names the package versions and the machine (spotting near a threshold depends on
    them), with the versions actually imported."""
    import platform

    import cv2
    import numpy as np

    env = first_run[1]["environment"]
    assert env["opencv"] == cv2.__version__ and env["numpy"] == np.__version__
    assert env["python"] == platform.python_version() and env["machine"] == platform.machine()
    assert set(env) == {"python", "numpy", "opencv", "torch", "machine", "system", "processor"}


def test_manifest_records_each_faces_detection_floor(first_run) -> None:
    """Every annotated video's entry says how small a movement its spotter could see (au_annotate.records.
    DetectionFloor): face0's floor, its 12 regions in the spotter's order, the steps behind it, in % of the IOD, and
    how much of the track the landmark model saw."""
    from au_annotate.spot import ROI_NAMES

    entries = first_run[1]["videos"]
    assert entries and all(e["status"] == "done" for e in entries.values())
    for e in entries.values():
        floor = e["detection_floor"]["face0"]
        assert list(floor["regions"]) == list(ROI_NAMES) and floor["steps"] > 0
        assert 0 < floor["pct_iod"] == pytest.approx(float(np.median(list(floor["regions"].values()))), rel=1e-3)
        # the landmark model's coverage of the 2-s clip: sampled on its first face frame (every 2 s), face found
        assert floor["landmarks"] == {"sampled_frames": 1, "face_found": 1}


def test_overwrite_recomputes(first_run, videos: Path, weights: str) -> None:
    out, before, outputs = first_run
    after = _run(videos, out, weights, "--overwrite")
    assert after["summary"]["done"] == 3
    now = _outputs(out)
    assert now.keys() == outputs.keys() and all(now[k] != outputs[k] for k in now)
    assert {k: v["key"] for k, v in after["videos"].items()} == {k: v["key"] for k, v in before["videos"].items()}


@pytest.mark.parametrize("change", [("--faces", "largest"), ("--format", "csv"), ("--no-recursive",)])
def test_changed_result_settings_recompute(first_run, videos: Path, weights: str, change: tuple[str, ...]) -> None:
    out, before, outputs = first_run
    after = _run(videos, out, weights, *change)
    expected = 2 if change == ("--no-recursive",) else 3  # without recursion only the top-level clips are jobs
    assert after["summary"]["done"] == expected and after["summary"]["skipped"] == 0
    changed = [k for k in after["videos"] if after["videos"][k]["key"] != before["videos"][k]["key"]]
    assert len(changed) == expected


def test_changed_weights_recompute(first_run, videos: Path, tmp_path: Path) -> None:
    import torch

    from au_annotate.model import HTNet, HTNetConfig
    from au_annotate.weights import SEED25_AU_ORDER, save_checkpoint

    out, _, _ = first_run
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    save_checkpoint(other, HTNet(), config=HTNetConfig(), au_names=SEED25_AU_ORDER)
    after = _run(videos, out, str(other))
    assert after["summary"]["done"] == 3


def test_changed_or_missing_video_output_recomputes_only_that_video(first_run, videos: Path, weights: str) -> None:
    out, _, outputs = first_run
    clip = videos / "clip0.mp4"
    st = clip.stat()
    os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed
    (out / "sub" / "clip1.eaf").unlink()  # an output the user deleted
    try:
        after = _run(videos, out, weights)
    finally:
        os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns))  # the module's other tests share the clip
    assert after["summary"] == {"done": 2, "skipped": 1, "failed": 0, "no_face": 0}
    now = _outputs(out)
    assert now["sub/clip1.eaf"] and now["clip2.segments.csv"] == outputs["clip2.segments.csv"]
    assert now["clip0.segments.csv"] != outputs["clip0.segments.csv"]


@pytest.mark.parametrize("damage", ["half", "empty", "not_json", "a_list", "bad_entries", "other_tool"])
def test_damaged_manifest_is_not_trusted(first_run, videos: Path, weights: str, damage: str) -> None:
    out, before, _ = first_run
    path = out / "manifest.json"
    text = path.read_text(encoding="utf-8")
    path.write_text({
        "half": text[: len(text) // 2],
        "empty": "",
        "not_json": "\x00\xff garbage",
        "a_list": "[1, 2, 3]",
        "bad_entries": json.dumps({**json.loads(text), "videos": {k: "done" for k in before["videos"]}}),
        "other_tool": json.dumps({**json.loads(text), "format": "something-else"}),
    }[damage], encoding="utf-8")
    after = _run(videos, out, weights)
    assert after["summary"]["done"] == 3 and after["format"] == "au-annotate-manifest"
    assert {k: v["key"] for k, v in after["videos"].items()} == {k: v["key"] for k, v in before["videos"].items()}


def test_resume_key_covers_file_settings_rules_weights_and_version(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A video is skipped only while its key is unchanged: the file (size, mtime), the result-affecting settings, the
    rules file's content (not only its path), the weights and the tool version; runtime-only settings do not count."""
    from pathlib import PurePosixPath

    from au_annotate import manifest
    from au_annotate.records import VideoJob
    from au_annotate.settings import DEFAULTS

    video, rules = tmp_path / "v.mp4", tmp_path / "rules.toml"
    video.write_bytes(b"video")
    rules.write_text("# rules A\n", encoding="utf-8")
    job = VideoJob(path=video, rel=PurePosixPath("v.mp4"), out_dir=tmp_path)
    settings = DEFAULTS.replace(rules=rules)
    key = manifest.output_key(job, settings, "ab")
    assert manifest.output_key(job, settings.replace(jobs=3, batch_size=7, quiet=True), "ab") == key
    changed = {
        "weights": manifest.output_key(job, settings, "cd"),
        "settings": manifest.output_key(job, settings.replace(all_aus=True), "ab"),
        "rules path": manifest.output_key(job, DEFAULTS, "ab"),
    }
    rules.write_text("# rules B\n", encoding="utf-8")  # same path, other rules
    changed["rules content"] = manifest.output_key(job, settings, "ab")
    rules.write_text("# rules A\n", encoding="utf-8")
    assert manifest.output_key(job, settings, "ab") == key
    st = video.stat()
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed["file"] = manifest.output_key(job, settings, "ab")
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.setattr(manifest, "__version__", "0.0.0-other")
    changed["version"] = manifest.output_key(job, settings, "ab")
    assert {what: k != key for what, k in changed.items()} == dict.fromkeys(changed, True)


def test_failed_videos_are_retried_until_fixed(videos: Path, weights: str, tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "study"
    src.mkdir()
    shutil.copy(videos / "clip0.mp4", src / "good.mp4")
    (src / "late.mp4").write_bytes(b"still copying")
    out = tmp_path / "out"
    for attempt in range(2):
        result = CliRunner().invoke(main, ["annotate", str(src), "-o", str(out), "--weights", weights, "-j", "1", "-q"])
        assert result.exit_code == 1, result.output
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["videos"]["late.mp4"]["status"] == "failed" and manifest["videos"]["late.mp4"]["key"] is None
        assert manifest["summary"] == {"done": 0 if attempt else 1, "skipped": attempt, "failed": 1, "no_face": 0}
    shutil.copy(videos / "clip2.mp4", src / "late.mp4")  # the file is complete now
    manifest = _run(src, out, weights)
    assert manifest["summary"] == {"done": 1, "skipped": 1, "failed": 0, "no_face": 0}
    assert manifest["videos"]["late.mp4"]["status"] == "done" and manifest["videos"]["late.mp4"]["reason"] is None


def test_sweep_removes_only_our_temporaries(tmp_path: Path) -> None:
    from au_annotate.manifest import sweep_temporaries

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".au-annotate-tmp-keep.csv").write_text("x")
    (out / "link").symlink_to(outside, target_is_directory=True)
    litter = [out / ".au-annotate-tmp-abc.csv", out / "sub" / ".au-annotate-tmp-def.eaf", out / ".au-annotate-probe-1"]
    keep = [out / "a.segments.csv", out / "sub" / "b.eaf", out / "manifest.json", out / ".au-annotate-other"]
    for p in litter + keep:
        p.write_text("x")
    assert sweep_temporaries(out) == 3
    assert not any(p.exists() for p in litter) and all(p.exists() for p in keep)
    assert (outside / ".au-annotate-tmp-keep.csv").exists()  # symlinked folders are not followed


_KILLED_WRITER = """
import os, signal, sys
from au_annotate.fileio import atomic_open
with atomic_open(sys.argv[1]) as fh:  # killed mid-write: the temporary stays, the target is never replaced
    fh.write(sys.stdin.read())
    fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_write(target: Path, text: str) -> None:
    """Write `target` the way every output is written (fileio.atomic_open) in a process SIGKILLed halfway."""
    r = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], input=text, text=True, cwd=REPO,
                       capture_output=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """fileio: a write that raises (a full disk, a bug, Ctrl-C) removes its temporary and leaves the target as it was;
    only a completed write replaces it."""
    from au_annotate.fileio import TMP_PREFIX, atomic_open

    target = tmp_path / "clip.segments.csv"
    target.write_text("old\n", encoding="utf-8")
    for exc in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), atomic_open(target) as fh:
            fh.write("half")
            raise exc
        assert target.read_text(encoding="utf-8") == "old\n"
        assert [p.name for p in tmp_path.iterdir()] == ["clip.segments.csv"]
    with atomic_open(target) as fh:
        fh.write("new\n")
    assert target.read_text(encoding="utf-8") == "new\n" and not list(tmp_path.glob(TMP_PREFIX + "*"))


def test_resume_sweeps_the_temporaries_of_a_killed_run(first_run, pristine: Path, videos: Path, weights: str) -> None:
    """A run killed while writing leaves half-written `.au-annotate-tmp-*` files (and maybe its writability probe)
    beside outputs it never renamed into place; the next run removes them and ends with the outputs of a clean run."""
    import tempfile

    from au_annotate.fileio import TMP_PREFIX

    out, _, _ = first_run
    combined = (out / "segments.csv").read_bytes()
    for name in ("sub/clip1.segments.csv", "sub/clip1.eaf"):  # this video was being written when the run died
        text = (out / name).read_text(encoding="utf-8")
        (out / name).unlink()
        _killed_write(out / name, text[: len(text) // 2])
    _killed_write(out / "segments.csv", combined.decode("utf-8")[:100])  # so was the combined CSV
    os.close(tempfile.mkstemp(prefix=".au-annotate-probe-", dir=out)[0])
    litter = sorted(p.relative_to(out).as_posix() for p in out.rglob(".au-annotate-*")
                    if p.name.startswith((TMP_PREFIX, ".au-annotate-probe-")))
    assert len(litter) == 4 and sum(n.startswith("sub/") for n in litter) == 2, litter
    assert (out / "segments.csv").read_bytes() == combined  # a killed writer never replaces its target
    assert not (out / "sub" / "clip1.segments.csv").exists()
    after = _run(videos, out, weights)
    assert after["summary"] == {"done": 1, "skipped": 2, "failed": 0, "no_face": 0}
    assert not [p for p in out.rglob("*") if p.name.startswith((TMP_PREFIX, ".au-annotate-probe-"))]
    files = sorted(p.relative_to(pristine).as_posix() for p in pristine.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    for rel in files:
        if rel != "manifest.json":
            assert _normalised(out / rel) == _normalised(pristine / rel), rel


# -- real processes killed midway --------------------------------------------------------------------------------------

_VOLATILE = [re.compile(rb"^# created: .*\n", re.M),  # CSV metadata line
             re.compile(rb' DATE="[^"]*"'),  # EAF document date
             re.compile(rb'<PROPERTY NAME="au-annotate:created">[^<]*</PROPERTY>')]


def _normalised(path: Path) -> bytes:
    data = path.read_bytes()
    for pattern in _VOLATILE:
        data = pattern.sub(b"", data)
    return data


def _cmd(videos: Path, out: Path, weights: str, jobs: int = 1) -> list[str]:
    # --batch-size 1: each video is written (and recorded) as soon as its windows are ready
    return [sys.executable, "-m", "au_annotate", "annotate", str(videos), "-o", str(out), "--weights", weights,
            "--jobs", str(jobs), "--batch-size", "1", "-q"]


def _done(out: Path) -> int:
    try:
        data = json.loads((out / "manifest.json").read_text(encoding="utf-8"))  # atomic: never half-written
    except FileNotFoundError:
        return 0
    return sum(v["status"] == "done" for v in data["videos"].values())


def _start_and_signal(cmd: list[str], out: Path, sig: int, n_videos: int) -> tuple[subprocess.Popen, int]:
    """Start a run in its own process group and send `sig` to the group once 1..n-1 videos are done."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        done = _done(out)
        if done >= 1:
            os.killpg(proc.pid, sig)
            break
        time.sleep(0.01)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run did not stop after the signal")
    assert 1 <= done < n_videos, f"could not catch the run midway ({done} of {n_videos} done)"
    return proc, done


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "videos"
    _clips(root, 6, 3.0)
    return root


@pytest.fixture(scope="module")
def reference(long_videos: Path, weights: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    r = subprocess.run(_cmd(long_videos, out, weights), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.mark.slow
def test_sigkill_midway_then_rerun_gives_identical_outputs(long_videos: Path, weights: str, reference: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc, done = _start_and_signal(_cmd(long_videos, out, weights), out, signal.SIGKILL, 6)
    assert proc.returncode == -signal.SIGKILL
    r = subprocess.run(_cmd(long_videos, out, weights), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["summary"]["skipped"] >= done and manifest["summary"]["done"] + manifest["summary"]["skipped"] == 6
    assert not list(out.rglob(".au-annotate-tmp-*")) and not list(out.rglob(".au-annotate-probe-*"))
    files = sorted(p.relative_to(reference).as_posix() for p in reference.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    for rel in files:
        if rel != "manifest.json":
            assert _normalised(out / rel) == _normalised(reference / rel), rel
    ref = json.loads((reference / "manifest.json").read_text(encoding="utf-8"))
    fields = ("status", "reason", "frames", "frames_with_face", "segments", "micro", "macro", "key", "outputs")
    for k, v in ref["videos"].items():
        assert {f: manifest["videos"][k][f] for f in fields} == {f: v[f] for f in fields}, k


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_exit_130(long_videos: Path, weights: str, reference: Path, tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group, worker processes included (--jobs 2)."""
    out = tmp_path / "out"
    proc, done = _start_and_signal(_cmd(long_videos, out, weights, jobs=2), out, signal.SIGINT, 6)
    text = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "Interrupted" in text
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["interrupted"] is True and manifest["finished"]
    assert 1 <= sum(v["status"] == "done" for v in manifest["videos"].values()) < 6
    assert not list(out.rglob(".au-annotate-tmp-*"))
    r = subprocess.run(_cmd(long_videos, out, weights), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout
    final = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert final["interrupted"] is False and final["summary"]["done"] + final["summary"]["skipped"] == 6
    for csv_path in sorted(reference.rglob("*.csv")):  # same rows; the `# settings` line records --jobs 2
        rel = csv_path.relative_to(reference)
        rows = [ln for ln in (out / rel).read_text(encoding="utf-8").splitlines() if not ln.startswith("#")]
        assert rows == [ln for ln in csv_path.read_text(encoding="utf-8").splitlines() if not ln.startswith("#")], rel
