"""End to end: the real CLI on synthetic face videos (real decode, MTCNN, tracking, spotting, flow, model, writers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from au_annotate.cli import main


@pytest.fixture(scope="module")
def annotated(planted_clips, tmp_path_factory):
    root, clips = planted_clips
    out = tmp_path_factory.mktemp("out")
    result = CliRunner().invoke(main, ["annotate", str(root), "-o", str(out), "--jobs", "1"])
    return root, clips, out, result


def test_exit_code_and_corrupt_file_reported(annotated) -> None:
    root, _, out, result = annotated
    assert result.exit_code == 1, result.output  # one input failed
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if "broken.mp4" in ln]
    assert lines, result.output
    assert any("decord" in ln or "open" in ln or "decod" in ln for ln in lines)
    assert not list(out.rglob("broken*"))  # nothing written for the failed video
    assert not list(out.rglob(".au-annotate-tmp-*"))  # no temporary file left behind
    # not a terminal: progress comes as log lines (one per finished video), ending at all videos and 100 %
    progress = [ln for ln in result.output.splitlines() if "videos" in ln and "frame" in ln]
    assert progress and progress[-1].startswith("3/3 videos") and "100%" in progress[-1]


def test_planted_apexes_found_in_csv(annotated) -> None:
    _, clips, out, _ = annotated
    for clip, csv_path in zip(clips, [out / "clip_a.segments.csv", out / "sub" / "clip_b.segments.csv"], strict=True):
        df = pd.read_csv(csv_path, comment="#")
        assert {"video", "face_id", "segment_id", "kind", "onset_frame", "apex_frame", "offset_frame", "onset_s",
                "apex_s", "offset_s", "duration_s", "score", "aus", "emotion_facs"} <= set(df.columns)
        assert any(c.endswith("_p") for c in df.columns) and any(c.endswith("_c") for c in df.columns)
        for event in clip.events:
            near = df[(df["apex_s"] - event.apex_s).abs() <= 0.1]
            assert len(near) >= 1, f"{csv_path.name}: no segment near planted apex {event.apex_s}\n{df}"
        probs = df[[c for c in df.columns if c.endswith("_p")]].to_numpy()
        assert ((probs >= 0) & (probs <= 1)).all()


def test_combined_csv_and_mirrored_layout(annotated) -> None:
    _, _, out, _ = annotated
    combined = pd.read_csv(out / "segments.csv", comment="#")
    per_video = pd.concat([pd.read_csv(p, comment="#") for p in sorted(out.rglob("*.segments.csv"))])
    assert len(combined) == len(per_video) > 0
    assert set(combined["video"]) == {"clip_a.mp4", "sub/clip_b.mp4"}


def test_eaf_reads_back_with_pympi(annotated) -> None:
    """Every segment is one annotation (overlapping ones on overflow tiers `segments 2`, ...) with the CSV's times in
    ms; only a segment shorter than a ms is lengthened, to one frame (writers/tiers.py)."""
    import pympi

    _, clips, out, _ = annotated
    frame_ms = round(1000 / clips[0].fps)
    for stem, folder in (("clip_a", out), ("clip_b", out / "sub")):
        eaf = pympi.Elan.Eaf(str(folder / f"{stem}.eaf"))
        df = pd.read_csv(folder / f"{stem}.segments.csv", comment="#")
        assert {"segments", "AUs"} <= set(eaf.get_tier_names())
        lanes = [t for t in eaf.get_tier_names() if t == "segments" or (t.startswith("segments ") and t[9:].isdigit())]
        anns = sorted((a[0], a[1]) for t in lanes for a in eaf.get_annotation_data_for_tier(t))
        assert len(anns) == len(df) > 0
        rows = df.sort_values(["onset_s", "offset_s"])
        for (start, end), (_, row) in zip(anns, rows.iterrows(), strict=True):
            want_start, want_end = round(row["onset_s"] * 1000), round(row["offset_s"] * 1000)
            if want_end <= want_start:
                want_end = want_start + frame_ms
            assert abs(start - want_start) <= 1 and abs(end - want_end) <= 1, (start, end, row.to_dict())
        media = eaf.media_descriptors
        assert media and media[0]["MEDIA_URL"].endswith(f"{stem}.mp4")


def test_api_returns_what_the_cli_wrote(annotated, tmp_path) -> None:
    import au_annotate
    from au_annotate.settings import DEFAULTS

    root, _, out, _ = annotated
    report = au_annotate.annotate([root], tmp_path / "api", DEFAULTS.replace(jobs=1))
    cli_df = pd.read_csv(out / "segments.csv", comment="#")
    assert len(report.segments) == len(cli_df)
    assert sorted(s.apex_frame for s in report.segments) == sorted(cli_df["apex_frame"])
    assert [r.status for r in report.results] == ["failed", "done", "done"]


@pytest.mark.parametrize("case", ["missing", "empty", "unwritable", "bad-config-value"])
def test_bad_invocations_give_one_line_and_exit_2(tmp_path: Path, planted_clips, case: str) -> None:
    clips = planted_clips[1]
    if case == "bad-config-value":
        cfg = tmp_path / "c.toml"
        cfg.write_text("stall_timeout_s = -1\n")
        args = [str(clips[0].path), "-o", str(tmp_path / "o"), "--config", str(cfg)]
    elif case == "missing":
        args = [str(tmp_path / "no-such-folder"), "-o", str(tmp_path / "o")]
    elif case == "empty":
        (tmp_path / "empty").mkdir()
        args = [str(tmp_path / "empty"), "-o", str(tmp_path / "o")]
    else:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        args = [str(clips[0].path), "-o", str(blocker / "out")]
    result = CliRunner().invoke(main, ["annotate", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1, result.output


def test_second_run_into_a_busy_output_folder_stops_with_exit_2(tmp_path: Path, planted_clips) -> None:
    """While a run holds the output folder's lock, another run into it stops at once (one line, exit 2, nothing
    written); once the lock is released (the first run ended, however it ended) the folder is usable again."""
    fcntl = pytest.importorskip("fcntl")

    clip = planted_clips[1][0].path
    out = tmp_path / "o"
    out.mkdir()
    with open(out / ".au-annotate.lock", "a") as holder:  # what a running au-annotate holds
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = CliRunner().invoke(main, ["annotate", str(clip), "-o", str(out), "--jobs", "1"])
        assert result.exit_code == 2, result.output
        errors = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
        assert len(errors) == 1 and "another au-annotate run is writing to this folder" in errors[0]
        assert sorted(p.name for p in out.iterdir()) == [".au-annotate.lock"]  # no manifest, no outputs
    result = CliRunner().invoke(main, ["annotate", str(clip), "-o", str(out), "--jobs", "1", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file() and (out / f"{clip.stem}.segments.csv").is_file()


def test_python_dash_m_entry_point() -> None:
    r = subprocess.run([sys.executable, "-m", "au_annotate", "--help"], capture_output=True, text=True, check=True)
    assert "annotate" in r.stdout


def test_help_and_weights_list_name_the_true_default() -> None:
    from au_annotate.weights import DEFAULT_WEIGHTS

    help_text = " ".join(CliRunner().invoke(main, ["annotate", "--help"]).output.split())
    assert f"[{DEFAULT_WEIGHTS}]" in help_text and "htnet-samm]" not in help_text
    listed = CliRunner().invoke(main, ["weights", "list"]).output.splitlines()
    assert [ln.split()[0] for ln in listed if "(default)" in ln] == [DEFAULT_WEIGHTS]


def test_spotting_options_reach_the_spotter_and_the_manifest(tmp_path: Path, planted_clips, weights: str) -> None:
    """--sensitivity / --blinks / --gated are the config file's spot options (the CLI wins key by key), and the
    manifest records every spotting option in effect; a bad value is one line and exit 2."""
    import json

    root, (a, _b) = planted_clips
    config = tmp_path / "study.toml"
    config.write_text('spot = {blinks = "label", p = 5.0}\n', encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["annotate", str(a.path), "-o", str(out), "--weights", weights, "--config",
                                       str(config), "--sensitivity", "1.5", "--gated", "label", "-q"])
    assert result.exit_code == 0, result.output
    spotting = json.loads((out / "manifest.json").read_text())["spotting"]
    assert (spotting["sensitivity"], spotting["gated"], spotting["blinks"], spotting["p"]) == (1.5, "label", "label",
                                                                                              5.0)
    bad = CliRunner().invoke(main, ["annotate", str(a.path), "-o", str(tmp_path / "o2"), "--sensitivity", "0"])
    assert bad.exit_code == 2 and not (tmp_path / "o2").exists()
