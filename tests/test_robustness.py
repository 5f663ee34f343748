"""Nothing lost, nothing crashes: every case of the bad-input corpus (tests/corpus.py) through the real CLI.

One run of `au-annotate annotate` over a folder holding all the damaged, odd and good inputs together: each case is then
checked on its own (status and reason in the manifest, one clean line on the terminal, outputs or none), which also
proves the bad inputs did not stop the good ones. Invocation-level problems (missing path, unwritable output, bad
weights, bad rules...) each get their own run and must exit 2 with one `Error:` line.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from au_annotate.cli import main
from au_annotate.quality import SHORT_VIDEO_S
from tests.corpus import (
    FACE_GONE_S,
    FPS,
    GOOD_EVENT,
    RETURN_EVENT,
    VFR_SLOW_FRAMES,
    Corpus,
    build_corpus,
    ffmpeg_exe,
)

NATIVE_NOISE = re.compile(r"Traceback|\.cc:\d+|\[\d\d:\d\d:\d\d\]|Check failed|0x[0-9a-f]{6,}")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def corpus_run(corpus: Corpus, weights: str, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("corpus-out")
    result = CliRunner().invoke(main, ["annotate", str(corpus.root), "-o", str(out), "--weights", weights,
                                       "--jobs", "1"])
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return result, out, manifest


def _need(corpus: Corpus, name: str) -> None:
    if name not in corpus.files:
        pytest.skip(f"{name} needs the ffmpeg program")


def _lines_about(output: str, path: Path) -> list[str]:
    return [ln for ln in output.splitlines() if str(path) in ln]


def _segments(out: Path, rel: str) -> pd.DataFrame:
    p = PurePosixPath(rel)
    return pd.read_csv(out.joinpath(*p.parent.parts, f"{p.stem}.segments.csv"), comment="#")


def _invoke(args: list[str]) -> tuple[int, str, list[str]]:
    result = CliRunner().invoke(main, ["annotate", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result.exit_code, result.output, [ln for ln in result.output.splitlines() if ln.startswith("Error")]


# -- the whole corpus in one run ---------------------------------------------------------------------------------------

def test_run_completes_with_exit_1_and_no_traceback(corpus_run, corpus: Corpus) -> None:
    result, out, manifest = corpus_run
    assert result.exit_code == 1, result.output  # some inputs failed: documented exit code 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not NATIVE_NOISE.search(result.output), result.output
    assert manifest["interrupted"] is False and manifest["finished"]
    assert set(manifest["videos"]) == {corpus.rel(n) for n in corpus.files}  # every video once, loop not followed
    assert manifest["summary"]["failed"] == sum(v["status"] == "failed" for v in manifest["videos"].values())
    assert not list(out.rglob(".au-annotate-tmp-*"))
    combined = pd.read_csv(out / "segments.csv", comment="#")
    done = {k for k, v in manifest["videos"].items() if v["status"] == "done"}
    assert set(combined["video"]) <= done and {"good.mp4", "leave_return.mp4"} <= set(combined["video"])


FAILED = {  # case -> words the one-line reason must hold
    "zero.mp4": "empty file (0 bytes)",
    "text.mp4": "cannot open as a video: invalid data",
    "truncated.mp4": "cannot open as a video",
    "audio_only.mp4": "cannot open as a video: no video stream",
    "broken_link.mp4": "broken symbolic link",
}


@pytest.mark.parametrize("name", sorted(FAILED))
def test_unreadable_file_fails_with_one_clean_line(corpus_run, corpus: Corpus, name: str) -> None:
    _need(corpus, name)
    result, out, manifest = corpus_run
    entry = manifest["videos"][corpus.rel(name)]
    assert entry["status"] == "failed" and entry["key"] is None and entry["outputs"] == []
    reason = entry["reason"]
    assert reason.startswith(str(corpus.files[name]) + ": ") and FAILED[name] in reason, reason
    assert "\n" not in reason and not NATIVE_NOISE.search(reason), reason
    lines = _lines_about(result.output, corpus.files[name])
    assert lines and all(FAILED[name] in ln for ln in lines), result.output
    assert not list(out.glob(f"{Path(name).stem}.*"))  # nothing written for it


@pytest.mark.parametrize("name", ["corrupt_middle.mp4", "truncated_faststart.mp4"])
def test_damaged_file_decodes_what_it_can(corpus_run, corpus: Corpus, name: str) -> None:
    """A damaged stream is decoded up to the damage (no hang, no traceback) and the manifest says what was lost."""
    _need(corpus, name)
    result, out, manifest = corpus_run
    entry = manifest["videos"][corpus.rel(name)]
    assert entry["status"] == "done", entry
    assert 0 < entry["frames"] < entry["frames_expected"]
    assert entry["warning"].startswith(str(corpus.files[name])) and "decoding stopped" in entry["warning"]
    assert not NATIVE_NOISE.search(entry["warning"])
    assert any("decoding stopped" in ln for ln in _lines_about(result.output, corpus.files[name])), result.output
    assert (out / f"{Path(name).stem}.segments.csv").is_file()


def test_damaged_stream_decodes_the_same_frames_every_time(corpus: Corpus) -> None:
    """decord notices damage a varying number of frames late; OpenCV takes over, so every run decodes as much."""
    from au_annotate.decode import open_video

    path = corpus.files["corrupt_middle.mp4"]
    runs = []
    for backend in ("decord", "opencv", "decord", "decord"):
        with open_video(path, backend) as stream:
            runs.append([(f.index, round(f.pts_s, 6)) for f in stream])
    assert all(r == runs[0] for r in runs) and 0 < len(runs[0]) < 60
    assert [i for i, _ in runs[0]] == list(range(len(runs[0])))


@pytest.mark.parametrize(("name", "frames"), [("one_frame.mp4", 1), ("short.mp4", 9), ("big_4k.mp4", 10),
                                              ("gray.mp4", 45), ("rotated.mp4", 45), ("small_face.mp4", 30)])
def test_odd_but_valid_video_is_annotated(corpus_run, corpus: Corpus, name: str, frames: int) -> None:
    """Tiny, huge, grayscale, rotated (upright only if the rotation is applied) or small-face videos: face on every
    frame, outputs written, and no warning but, for a video under 2 s, the one that it is too short to judge."""
    _need(corpus, name)
    _, out, manifest = corpus_run
    entry = manifest["videos"][corpus.rel(name)]
    assert entry["status"] == "done" and entry["reason"] is None, entry
    if entry["decoded_s"] < SHORT_VIDEO_S:
        assert len(entry["warnings"]) == 1 and "too short to judge" in entry["warnings"][0], entry
    else:
        assert entry["warnings"] == [] and entry["warning"] is None, entry
    assert entry["frames"] == frames and entry["frames_with_face"] == frames, entry
    df = _segments(out, corpus.rel(name))
    assert len(df) == entry["segments"]
    assert (out / f"{Path(name).stem}.eaf").is_file()


def test_no_face_video(corpus_run, corpus: Corpus) -> None:
    result, out, manifest = corpus_run
    entry = manifest["videos"]["no_face.mp4"]
    assert entry["status"] == "no_face" and entry["reason"] == f"{corpus.files['no_face.mp4']}: no face found in 45 frames"
    assert entry["key"] is not None  # a settled outcome: a rerun does not redo it
    assert len(_segments(out, "no_face.mp4")) == 0
    assert any("no face found" in ln for ln in _lines_about(result.output, corpus.files["no_face.mp4"]))


def test_face_leaves_and_comes_back(corpus_run) -> None:
    """The tracker loses the face while it is gone, re-detects it, and the movement planted after the return is found."""
    _, out, manifest = corpus_run
    entry = manifest["videos"]["leave_return.mp4"]
    gone = round((FACE_GONE_S[1] - FACE_GONE_S[0]) * FPS)
    assert entry["status"] == "done" and entry["frames"] == 105
    assert entry["frames"] - gone - round(0.6 * FPS) <= entry["frames_with_face"] <= entry["frames"] - gone
    df = _segments(out, "leave_return.mp4")
    assert ((df["apex_s"] - RETURN_EVENT.apex_s).abs() <= 0.1).any(), df[["onset_s", "apex_s", "offset_s"]]


def test_two_faces(corpus_run) -> None:
    _, out, manifest = corpus_run
    entry = manifest["videos"]["two_faces.mp4"]
    # two people side by side: two tracks, a face on every frame, the planted event on the larger (left) one
    assert entry["status"] == "done" and entry["faces"] == 2 and entry["frames_with_face"] == entry["frames"]
    df = _segments(out, "two_faces.mp4")
    assert (((df["apex_s"] - GOOD_EVENT.apex_s).abs() <= 0.1) & (df["face_id"] == "face0")).any(), df


def test_unicode_and_spaces_in_names(corpus_run, corpus: Corpus) -> None:
    _, out, manifest = corpus_run
    rel = corpus.rel("unicode")
    assert rel == "sübfolder with spaces/vidéo ☺ 1.mp4"
    assert manifest["videos"][rel]["status"] == "done"
    csv_path = out / "sübfolder with spaces" / "vidéo ☺ 1.segments.csv"
    df, good = pd.read_csv(csv_path, comment="#"), _segments(out, "good.mp4")
    assert list(df["video"].unique()) == [rel]
    assert df["apex_frame"].tolist() == good["apex_frame"].tolist() and len(df) >= 1  # same pixels, same result
    assert manifest["videos"][rel]["outputs"] == ["sübfolder with spaces/vidéo ☺ 1.segments.csv",
                                                  "sübfolder with spaces/vidéo ☺ 1.eaf"]


def test_symlink_loop_and_non_video_files(corpus_run) -> None:
    result, out, manifest = corpus_run
    assert not any("loop" in k for k in manifest["videos"])
    assert not (out / "sübfolder with spaces" / "loop").exists()
    assert re.search(r"1 non-video files? skipped", " ".join(result.output.split())), result.output


# -- decoding details behind the cases ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["decord", "opencv"])
def test_rotated_video_frames_are_upright_in_both_backends(corpus: Corpus, backend: str) -> None:
    from au_annotate.decode import open_video

    _need(corpus, "rotated.mp4")
    exe = ffmpeg_exe()
    raw = subprocess.run([exe, "-nostdin", "-loglevel", "error", "-i", str(corpus.files["rotated.mp4"]), "-frames:v",
                          "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    reference = np.frombuffer(raw, np.uint8).reshape(240, 320, 3)  # ffmpeg applies the display matrix
    with open_video(corpus.files["rotated.mp4"], backend) as stream:
        assert (stream.info.width, stream.info.height) == (320, 240)
        first = next(iter(stream)).rgb()
    assert first.shape == (240, 320, 3)
    assert np.abs(first.astype(int) - reference).mean() < 3.0


def test_decord_rotation_guard_turns_unrotated_frames(corpus: Corpus) -> None:
    """Builds of decord that ignore rotation metadata give sideways frames; the guard finds the quarter turns."""
    from au_annotate.decode import _decord_turns, open_video

    _need(corpus, "rotated.mp4")
    with open_video(corpus.files["rotated.mp4"], "opencv") as stream:
        upright = next(iter(stream)).rgb()

    class Sideways:
        def __getitem__(self, i: int):
            class F:
                def asnumpy(self) -> np.ndarray:
                    return np.ascontiguousarray(np.rot90(upright, -1))

            return F()

    assert _decord_turns(corpus.files["rotated.mp4"], Sideways()) == 1
    assert _decord_turns(corpus.good, Sideways()) == 0  # no rotation metadata: never turned


@pytest.mark.parametrize("backend", ["decord", "opencv"])
def test_variable_frame_rate_gets_real_times(corpus: Corpus, backend: str) -> None:
    from au_annotate.decode import open_video

    _need(corpus, "vfr.mp4")
    with open_video(corpus.files["vfr.mp4"], backend) as stream:
        times = np.array([f.pts_s for f in stream])
    expected = np.array([(2 * i if i < VFR_SLOW_FRAMES else VFR_SLOW_FRAMES + i) / FPS for i in range(60)])
    assert len(times) == 60
    assert np.abs(times - expected).max() < 1e-3  # not index / fps
    assert np.abs(times - np.arange(60) / 30.0).max() > 0.5


def test_vfr_segment_times_come_from_timestamps(corpus_run) -> None:
    _, out, _ = corpus_run
    df = pd.read_csv(out / "vfr.segments.csv", comment="#")
    for _, row in df.iterrows():
        for col in ("onset", "apex", "offset"):
            i = int(row[f"{col}_frame"])
            t = (2 * i if i < VFR_SLOW_FRAMES else VFR_SLOW_FRAMES + i) / FPS
            assert abs(row[f"{col}_s"] - t) < 1e-3


# -- invocations that cannot start: exit 2, one `Error:` line ---------------------------------------------------------

def test_missing_path(tmp_path: Path) -> None:
    code, output, errors = _invoke([str(tmp_path / "nope"), "-o", str(tmp_path / "out")])
    assert code == 2 and len(errors) == 1 and f"{tmp_path / 'nope'}: no such file or folder" in errors[0], output
    assert not (tmp_path / "out").exists()


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, output, errors = _invoke([str(tmp_path / "empty"), "-o", str(tmp_path / "out")])
    assert code == 2 and len(errors) == 1 and "no video files found" in errors[0], output


def test_folder_of_non_videos(corpus: Corpus, tmp_path: Path) -> None:
    code, output, errors = _invoke([str(corpus.non_videos), "-o", str(tmp_path / "out")])
    assert code == 2 and len(errors) == 1, output
    assert "no video files found (2 other files skipped)" in " ".join(output.split())


@pytest.mark.parametrize("where", ["under_a_file", "is_a_file", "read_only_fs"])
def test_unwritable_output_folder(corpus: Corpus, weights: str, tmp_path: Path, where: str) -> None:
    """As root chmod does not stop writes: a path below a regular file, a path that is a file, or /proc."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    target = {"under_a_file": blocker / "out", "is_a_file": blocker, "read_only_fs": Path("/proc/au-annotate-out")}
    code, output, errors = _invoke([str(corpus.good), "-o", str(target[where]), "--weights", weights])
    assert code == 2 and len(errors) == 1 and "output folder is not writable" in errors[0], output
    assert str(target[where]) in " ".join(output.split())


def test_output_folder_inside_input_folder(corpus: Corpus, weights: str, tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "study"
    src.mkdir()
    shutil.copy(corpus.good, src / "a.mp4")
    out = src / "annotations"
    for attempt in range(2):
        code, output, _ = _invoke([str(src), "-o", str(out), "--weights", weights, "--jobs", "1", "-q"])
        assert code == 0, output
        manifest = json.loads((out / "manifest.json").read_text())
        assert list(manifest["videos"]) == ["a.mp4"]  # our own outputs are never taken as inputs
        assert manifest["summary"]["skipped" if attempt else "done"] == 1
    assert sorted(p.name for p in out.iterdir()) == [".au-annotate.lock", "a.eaf", "a.segments.csv", "manifest.json",
                                                     "segments.csv"]


def test_output_that_cannot_be_written_fails_only_that_video(corpus: Corpus, weights: str, tmp_path: Path) -> None:
    """Like a full disk for one folder: the video whose outputs cannot be written fails by name, the rest complete."""
    import shutil

    src = tmp_path / "study"
    (src / "sub").mkdir(parents=True)
    shutil.copy(corpus.good, src / "a.mp4")
    shutil.copy(corpus.good, src / "sub" / "b.mp4")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where the sub folder should go")
    code, output, _ = _invoke([str(src), "-o", str(out), "--weights", weights, "--jobs", "1"])
    assert code == 1, output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["videos"]["a.mp4"]["status"] == "done"
    entry = manifest["videos"]["sub/b.mp4"]
    assert entry["status"] == "failed" and entry["reason"].startswith(f"{src / 'sub' / 'b.mp4'}: cannot write outputs")
    assert any("cannot write outputs" in ln for ln in _lines_about(output, src / "sub" / "b.mp4")), output
    assert not list(out.rglob(".au-annotate-tmp-*"))


def test_no_network_at_run_time(corpus: Corpus, weights: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole run with every way out to the network blocked still completes (nothing downloads)."""
    import socket
    import urllib.request

    def blocked(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", blocked)
    monkeypatch.setattr(socket, "create_connection", blocked)
    monkeypatch.setattr(urllib.request, "urlopen", blocked)
    code, output, _ = _invoke([str(corpus.good), "-o", str(tmp_path / "out"), "--weights", weights, "--jobs", "1",
                               "-q"])
    assert code == 0, output


def _bad_weights(tmp_path: Path, kind: str) -> Path:
    import torch

    from au_annotate.model import HTNet, HTNetConfig

    path = tmp_path / f"{kind}.pt"
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        from au_annotate.weights import SEED25_AU_ORDER, save_checkpoint

        save_checkpoint(path, HTNet(), config=HTNetConfig(), au_names=SEED25_AU_ORDER)
        path.write_bytes(path.read_bytes()[:20000])
    elif kind == "wrong_shape":
        torch.save(HTNet(dim=32).state_dict(), path)  # a plain state dict of another width
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind", ["corrupt", "truncated", "wrong_shape", "empty"])
def test_unusable_weights(corpus: Corpus, tmp_path: Path, kind: str) -> None:
    path = _bad_weights(tmp_path, kind)
    args = [str(corpus.good), "-o", str(tmp_path / "out"), "--weights", str(path)]
    if kind == "wrong_shape":
        args += ["--au-order", "seed25"]
    code, output, errors = _invoke(args)
    assert code == 2 and len(errors) == 1 and str(path) in " ".join(output.split()), output
    if kind == "wrong_shape":
        assert "do not fit" in errors[0] or "shape" in " ".join(output.split()), output
    assert not list((tmp_path / "out").rglob("*.csv"))


class _Payload:
    def __reduce__(self):  # noqa: ANN204 - what a malicious pickle does on load
        return (Path.touch, (Path(PWNED_FLAG),))


PWNED_FLAG = "/tmp/au-annotate-pwned-flag"


def test_checkpoint_loading_never_runs_pickled_code(corpus: Corpus, tmp_path: Path) -> None:
    """Checkpoints load with torch.load(weights_only=True): a pickle that would run code is refused, not run."""
    import torch

    Path(PWNED_FLAG).unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload()}, path, pickle_protocol=2)
    code, output, errors = _invoke([str(corpus.good), "-o", str(tmp_path / "out"), "--weights", str(path)])
    assert code == 2 and len(errors) == 1 and str(path) in " ".join(output.split()), output
    assert not Path(PWNED_FLAG).exists()


def test_malformed_au_order(corpus: Corpus, weights: str, tmp_path: Path) -> None:
    code, output, errors = _invoke([str(corpus.good), "-o", str(tmp_path / "out"), "--weights", weights,
                                    "--au-order", "AU4,AUx"])
    assert code == 2 and len(errors) == 1 and "AUx" in errors[0], output


@pytest.mark.parametrize("text", ["4++7", "AU", "4+(7", "99Z", "ref(4", ""])
def test_malformed_au_code_string(text: str) -> None:
    from au_annotate import facs

    with pytest.raises(facs.FACSParseError) as info:
        facs.parse(text)
    message = str(info.value)
    assert "\n" not in message and message.strip()
    assert text in message or repr(text) in message or not text


@pytest.mark.parametrize(("content", "words"), [
    ("[[rule]\nname = 'x'\n", "invalid TOML"),
    ("[[rule]]\nname = 'joy'\nrequired = '6++12'\nemotion = 'happiness'\n", ":3: 'required': invalid FACS code '6++12'"),
    ("[[rule]]\nname = 'joy'\nrequires = '6+12'\nemotion = 'happiness'\n", "unknown rule key 'requires'"),
    ("[[rule]]\nemotion = 'happiness'\n", "rule #1"),
])
def test_malformed_rules_file(corpus: Corpus, weights: str, tmp_path: Path, content: str, words: str) -> None:
    rules = tmp_path / "my rules.toml"
    rules.write_text(content, encoding="utf-8")
    code, output, errors = _invoke([str(corpus.good), "-o", str(tmp_path / "out"), "--weights", weights,
                                    "--rules", str(rules)])
    flat = " ".join(output.split())
    assert code == 2 and len(errors) == 1 and str(rules) in flat and words in flat, output


# -- mirrored output paths stay inside the output folder --------------------------------------------------------------

def test_mirrored_paths_never_escape_the_output_folder(tmp_path: Path) -> None:
    from au_annotate.discover import discover

    base = tmp_path / "in"
    (base / "a" / "b").mkdir(parents=True)
    (base / "a" / "b" / "v1.mp4").write_bytes(b"x")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "v2.mp4").write_bytes(b"x")
    (base / "a" / "link").symlink_to(outside, target_is_directory=True)  # a folder symlink pointing out of the tree
    (base / "a" / "v3.mp4").symlink_to(outside / "v2.mp4")
    out = tmp_path / "out"
    inputs = [base, Path(f"{base}/a/b/../b/v1.mp4"), Path("/") / (base / "a" / "b" / "v1.mp4").relative_to("/"),
              base / ".." / "in" / "a"]
    found = discover(inputs, out)
    assert len(found.jobs) >= 4
    root = out.resolve()
    for job in found.jobs:
        assert ".." not in job.rel.parts and not job.rel.is_absolute(), job.rel
        target = (job.out_dir / f"{job.stem}.segments.csv").resolve()
        assert target.is_relative_to(root), target
    assert any(j.rel.as_posix().endswith("link/v2.mp4") for j in found.jobs)


def test_manifest_outputs_cannot_point_outside(tmp_path: Path) -> None:
    """A hand-edited manifest that lists files outside the output folder is not trusted."""
    from au_annotate.manifest import Manifest
    from au_annotate.records import VideoJob

    out = tmp_path / "out"
    out.mkdir()
    secret = tmp_path / "secret.csv"
    secret.write_text("x")
    job = VideoJob(path=tmp_path / "v.mp4", rel=PurePosixPath("v.mp4"), out_dir=out)
    for outputs in (["../secret.csv"], [str(secret)], [], "v.segments.csv"):
        (out / "manifest.json").write_text(json.dumps({"format": "au-annotate-manifest", "videos": {
            "v.mp4": {"status": "done", "key": "k", "outputs": outputs}}}))
        assert Manifest.load(out).reusable(job, "k") is None, outputs
    (out / "v.segments.csv").write_text("x")
    (out / "manifest.json").write_text(json.dumps({"format": "au-annotate-manifest", "videos": {
        "v.mp4": {"status": "done", "key": "k", "outputs": ["v.segments.csv"]}}}))
    assert Manifest.load(out).reusable(job, "k") is not None
