"""Time ranges (`--range`, `--ranges TABLE`, `--range-tier TIER`): parsing, exact seeking, only the range analysed on
the video's own time axis, resume keys, and one line per bad input with the other videos processed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pympi
import pytest
from synth import PlantedEvent, make_video

from au_annotate.decode import VideoStream, open_video
from au_annotate.ranges import RangeError, check_ranges, parse_range, parse_time

FFMPEG = shutil.which("ffmpeg")
EVENTS = [PlantedEvent("brow_raise", 2.0, 2.15, 2.35, 3.0), PlantedEvent("lip_corner_pull", 7.0, 7.2, 7.4, 3.0)]


def test_times_and_ranges_parse() -> None:
    assert parse_time("75.5") == 75.5 and parse_time("1:15.5") == 75.5 and parse_time("0:01:15.5") == 75.5
    assert parse_range("60-90") == (60.0, 90.0) and parse_range("1:00-1:30.5") == (60.0, 90.5)
    for bad in ("", "x", "-3", "1:75", "nan", "inf"):
        with pytest.raises(RangeError):
            parse_time(bad)
    for bad in ("60", "90-60", "60-60", "a-b", "1-2-3"):
        with pytest.raises(RangeError):
            parse_range(bad)
    assert check_ranges([(5, 8), (1, 4)], "x") == ((1, 4), (5, 8))
    with pytest.raises(RangeError, match="overlap"):
        check_ranges([(1, 4), (3, 6)], "x")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ranges")
    return make_video(root / "in" / "a.mp4", fps=30, duration_s=10.0, seed=1, events=EVENTS).path


@pytest.mark.parametrize("codec", ["mp4v", "h264"])
@pytest.mark.parametrize("gray", [False, True])
def test_seek_gives_the_frames_of_a_sequential_decode(clip: Path, tmp_path: Path, codec: str, gray: bool) -> None:
    """The frames of a range, read after a seek, are those a decode from the start gives: same indices, times and
    pixels (H.264 with keyframes 2 s apart: the seek lands on a keyframe and decodes forward)."""
    path = clip
    if codec == "h264":
        if FFMPEG is None:
            pytest.skip("ffmpeg is not installed")
        path = tmp_path / "h.mp4"
        subprocess.run([FFMPEG, "-loglevel", "error", "-i", str(clip), "-c:v", "libx264", "-g", "60", "-pix_fmt",
                        "yuv420p", str(path)], check=True)
    with open_video(path, gray=gray) as s:
        seeked = [(f.index, round(f.pts_s, 6), f.gray().copy()) for f in s.between(7.1, 8.0)]
    with open_video(path, gray=gray) as s:
        seq = [(f.index, round(f.pts_s, 6), f.gray().copy()) for f in VideoStream.between(s, 7.1, 8.0)]
    assert [x[:2] for x in seeked] == [x[:2] for x in seq] and seq[0][0] == 213 and len(seq) == 27
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(seeked, seq, strict=True))


def _annotate(clip: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "au_annotate", "annotate", str(clip.parent), "-o", str(out), "-q",
                           *args], capture_output=True, text=True, timeout=600, check=False)


def test_range_analyses_only_the_range_on_the_videos_own_time_axis(clip: Path, tmp_path: Path, weights: str) -> None:
    w = ("--weights", weights)
    whole = _annotate(clip, tmp_path / "whole", *w)
    assert whole.returncode == 0, whole.stderr
    full = pd.read_csv(tmp_path / "whole" / "a.segments.csv", comment="#")
    late = full[full.apex_s > 5]
    assert len(late) == 1 and len(full) == 2, full

    out = tmp_path / "ranged"
    proc = _annotate(clip, out, *w, "--range", "5-10")
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(out / "a.segments.csv", comment="#")
    cols = ["kind", "onset_frame", "apex_frame", "offset_frame", "onset_s", "apex_s", "offset_s"]
    assert got[cols].reset_index(drop=True).equals(late[cols].reset_index(drop=True))  # same frames and times
    entry = json.loads((out / "manifest.json").read_text())["videos"]["a.mp4"]
    assert entry["ranges"] == [[5.0, 10.0]] and entry["frames"] == 150 and entry["decoded_s"] == pytest.approx(5.0)
    eaf = pympi.Elan.Eaf(str(out / "a.eaf"))
    assert eaf.get_annotation_data_for_tier("analysed ranges") == [(5000, 10000, "analysed")]

    # resume: the same range is reused, another range recomputes the video
    again = _annotate(clip, out, *w, "--range", "5-10")
    assert again.returncode == 0 and json.loads((out / "manifest.json").read_text())["videos"]["a.mp4"]["finished"] \
        == entry["finished"]
    other = _annotate(clip, out, *w, "--range", "0:01-0:04", "--range", "5-10")
    assert other.returncode == 0, other.stderr
    both = pd.read_csv(out / "a.segments.csv", comment="#")
    assert sorted(both.apex_frame) == sorted(full.apex_frame)  # both events, each in its range


def _two_clips(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    make_video(root / "a.mp4", fps=30, duration_s=6.0, seed=1, events=EVENTS[:1])
    make_video(root / "b.mp4", fps=30, duration_s=6.0, seed=2, events=EVENTS[:1])
    return root


def _run(root: Path, out: Path, weights: str, *args: str) -> tuple[int, str, dict]:
    proc = subprocess.run([sys.executable, "-m", "au_annotate", "annotate", str(root), "-o", str(out), "--weights",
                           weights, *args], capture_output=True, text=True, timeout=600, check=False)
    man = out / "manifest.json"
    videos = json.loads(man.read_text())["videos"] if man.exists() else {}
    return proc.returncode, proc.stderr, videos


def test_bad_ranges_fail_one_video_with_one_line(tmp_path: Path, weights: str) -> None:
    """Each bad input: one line naming the file and the cause, the other video processed, the documented exit code."""
    root = _two_clips(tmp_path)
    table = tmp_path / "ranges.csv"

    def lines(err: str, text: str) -> list[str]:
        return [ln for ln in err.splitlines() if text in ln]

    # overlapping --range: concerns every video, nothing runs (usage error)
    rc, err, videos = _run(root, tmp_path / "o1", weights, "--range", "0-4", "--range", "3-5")
    assert rc == 2 and len(lines(err, "overlap")) == 1 and not videos
    # a table: overlapping rows for a, a row for a video that is not an input; b is processed
    table.write_text("video,start,end\na.mp4,0,4\na.mp4,3,5\nb.mp4,0:00,0:05\nnope.mp4,1,3\n", encoding="utf-8")
    rc, err, videos = _run(root, tmp_path / "o2", weights, "--ranges", str(table))
    assert rc == 1 and len(lines(err, "overlap")) == 1 and len(lines(err, "nope.mp4")) == 1
    assert videos["a.mp4"]["status"] == "failed" and "overlap" in videos["a.mp4"]["reason"]
    assert videos["b.mp4"]["status"] == "done" and videos["b.mp4"]["ranges"] == [[0.0, 5.0]]
    # a range after the end (a) and one shorter than the warm-up (b): both fail, each with its line
    table.write_text("video,start,end\na.mp4,8,9\nb.mp4,1,2.5\n", encoding="utf-8")
    rc, err, videos = _run(root, tmp_path / "o3", weights, "--ranges", str(table))
    assert rc == 1 and len(lines(err, "after the video's end")) == 1 and len(lines(err, "shorter than")) == 1
    assert {v["status"] for v in videos.values()} == {"failed"}
    # an ELAN tier: present next to a, missing next to b
    eaf = pympi.Elan.Eaf()
    eaf.add_tier("answers")
    eaf.add_annotation("answers", 500, 4500, "answer 1")
    eaf.to_file(str(root / "a.eaf"))
    rc, err, videos = _run(root, tmp_path / "o4", weights, "--range-tier", "answers")
    assert rc == 1 and len(lines(err, "no ELAN file b.eaf")) == 1
    assert videos["a.mp4"]["status"] == "done" and videos["a.mp4"]["ranges"] == [[0.5, 4.5]]
    rc, err, videos = _run(root, tmp_path / "o5", weights, "--range-tier", "questions")
    assert rc == 1 and len(lines(err, "no tier 'questions' (tiers: answers")) == 1
    # a bad table is a usage error before anything runs
    table.write_text("video,begin,end\na.mp4,1,3\n", encoding="utf-8")
    rc, err, videos = _run(root, tmp_path / "o6", weights, "--ranges", str(table))
    assert rc == 2 and "needs the columns video, start, end" in err and not videos
