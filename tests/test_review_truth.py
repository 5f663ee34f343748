"""The review loop tells the truth (issue 25, item 6): nothing it reports rests on something it did not say.

- review-import refuses an EAF read against another run (other model or result-changing settings): one line naming
  both files and what differs, exit 2, nothing written (it used to report "corrected 4" where the coder corrected 1);
- agreement lists the AUs the coder coded that the tool does not decide, per AU with the windows (they used to vanish);
- calibrate says how many windows each figure rests on, fits nothing below its minimums, and its exit code says
  whether the study file was written (it used to fit a cut-off on 4 windows, print precision and recall 1.000, write
  the file and exit 1);
- the issue's bad inputs through the CLI: an EAF from another run, a review with no window of some kind, an AU code
  the FACS parser does not know: one clear line each, exit code as documented.

Runs are built directly with the writers (no video is decoded): fast and exact.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pympi
import pytest
from click.testing import CliRunner

from au_annotate.cli import main
from au_annotate.review.agreement import compute_agreement
from au_annotate.review.calibrate import MIN_EACH, MIN_REAL, MIN_REVIEWED, CalibrationError, calibrate
from au_annotate.review.importer import ReviewError, import_reviews, read_reviewed, write_reviewed
from au_annotate.settings import DEFAULTS, load_config
from au_annotate.writers.review_schema import CODER_TIER, REVIEW_TIER

SPANS = [(1.0, 1.3), (2.0, 2.3), (3.0, 3.3), (4.0, 4.3), (5.0, 5.3)]


def make_run(root: Path, name: str, spans: list[tuple[float, float]], settings: dict[str, Any],
             sha: str = "ab" * 32, model: str = "m.pt") -> Path:
    """A run folder (manifest, segments CSV, EAF) of one video `v.mp4`, one micro window with AU04 per span, written
    with the given model and settings the way annotate writes them."""
    from au_annotate.manifest import Manifest
    from au_annotate.records import Segment, VideoInfo, VideoJob, VideoResult
    from au_annotate.writers import WriteContext, write_video_outputs

    segs = tuple(Segment(video="v.mp4", face_id="face0", segment_id=i, kind="micro", onset_frame=round(on * 30),  # type: ignore[arg-type]
                         apex_frame=round((on + off) * 15), offset_frame=round(off * 30), onset_s=on,
                         apex_s=(on + off) / 2, offset_s=off, duration_s=off - on, score=2.0, au_names=("AU04",),
                         probs=np.array([0.9], np.float32), present=np.array([True]), aus="4", emotion="")
                 for i, (on, off) in enumerate(spans))
    out = root / name
    out.mkdir(parents=True)
    job = VideoJob(path=root / "v.mp4", rel=PurePosixPath("v.mp4"), out_dir=out)
    info = VideoInfo(path=job.path, backend="test", width=640, height=480, fps=30.0, n_frames=300, duration_s=10.0)
    res = VideoResult(job=job, status="done", info=info, segments=segs, frames=300, faces=1)
    ctx = WriteContext(tool_version="t", model_name=model, model_sha256=sha, settings=settings, au_names=("AU04",))
    written = write_video_outputs(res, ctx, ("csv", "eaf"))
    manifest = Manifest(out / "manifest.json")
    manifest.record(replace(res, outputs=written), "key")
    manifest.save(settings=settings, model={"name": model, "sha256": sha})
    return out


def _edit(eaf: pympi.Elan.Eaf, tier: str, start: int, value: str) -> None:
    """What a coder does in ELAN: change the value of the annotation starting at `start` ms."""
    ((s, e, _),) = [a for a in eaf.get_annotation_data_for_tier(tier) if a[0] == start]
    eaf.remove_annotation(tier, (s + e) // 2)
    eaf.add_annotation(tier, s, e, value=value)


def reviewed_eaf(run: Path, dst: Path, code: str = "4+7") -> Path:
    """The run's EAF reviewed by a coder: window 0 confirmed, window 1 corrected to `code`, the rest left alone."""
    eaf = pympi.Elan.Eaf(str(run / "v.eaf"))
    _edit(eaf, REVIEW_TIER, 1000, "confirmed")
    _edit(eaf, REVIEW_TIER, 2000, "corrected")
    _edit(eaf, CODER_TIER, 2000, code)
    dst.parent.mkdir(parents=True, exist_ok=True)
    pympi.Elan.to_eaf(str(dst), eaf)
    return dst


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------- 1. review-import --run


def test_review_import_refuses_an_eaf_from_another_run(tmp_path: Path) -> None:
    """The user's case: a review of run A read with --run B, whose other spotting settings moved every window: it
    reported 4 corrected windows for the coder's 1. Now: refused with one line naming the EAF, B's segment CSV and the
    setting that differs; exit 2 (usage error) and no reviewed.csv. Against its own run it imports as the coder left it;
    settings that never change results (jobs, quiet: manifest._RUNTIME_ONLY) do not count."""
    settings = DEFAULTS.replace(jobs=1).as_dict()
    run_a = make_run(tmp_path, "a", SPANS, settings)
    other = DEFAULTS.replace(jobs=1, spot={"p": 3.0}).as_dict()
    run_b = make_run(tmp_path, "b", [(on - 0.1, off + 0.1) for on, off in SPANS], other)
    eaf = reviewed_eaf(run_a, tmp_path / "reviews" / "alice" / "v.eaf")

    ok = CliRunner().invoke(main, ["review-import", str(eaf), "--run", str(run_a), "-o", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    assert read_reviewed(tmp_path / "ok")["decision"].value_counts().to_dict() == {
        "confirmed": 1, "corrected": 1, "unreviewed": 3}

    res = CliRunner().invoke(main, ["review-import", str(eaf), "--run", str(run_b), "-o", str(tmp_path / "bad")])
    assert res.exit_code == 2, res.output
    (line,) = _lines(res.stderr)
    assert line.startswith("Error: ") and str(eaf) in line and str(run_b / "v.segments.csv") in line
    assert "spot" in line and "nothing written" in line
    assert not (tmp_path / "bad" / "reviewed.csv").exists()

    # the library: the refusal is its own list, and such a result cannot be written
    result = import_reviews([eaf], run=run_b)
    assert len(result.refused) == 1 and result.files == 0
    with pytest.raises(ReviewError, match="refused"):
        write_reviewed(result, tmp_path / "bad")
    assert not (tmp_path / "bad" / "reviewed.csv").exists()

    # runtime-only settings differ: the same results, imported
    run_c = make_run(tmp_path, "c", SPANS, DEFAULTS.replace(jobs=4, quiet=True, batch_size=8).as_dict())
    res = CliRunner().invoke(main, ["review-import", str(eaf), "--run", str(run_c), "-o", str(tmp_path / "c_out")])
    assert res.exit_code == 0, res.output


def test_review_import_refuses_an_eaf_made_with_another_model(tmp_path: Path) -> None:
    """Same windows and settings but other weights (sha256): the probabilities would be another model's. Refused with
    both checksums named, exit 2 and nothing written, also when another EAF in the import is fine (that one used to be
    written alone, exit 1: a table that passed for the whole review)."""
    settings = DEFAULTS.replace(jobs=1).as_dict()
    run_a = make_run(tmp_path, "a", SPANS, settings)
    run_b = make_run(tmp_path, "b", SPANS, settings, sha="cd" * 32, model="other.pt")
    eaf = reviewed_eaf(run_a, tmp_path / "reviews" / "alice" / "v.eaf")
    reviewed_eaf(run_b, tmp_path / "reviews" / "bob" / "v.eaf")
    res = CliRunner().invoke(main, ["review-import", str(tmp_path / "reviews"), "--run", str(run_b), "-o",
                                    str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    (line,) = _lines(res.stderr)
    assert "model m.pt (abababababab) vs other.pt (cdcdcdcdcdcd)" in line and str(eaf) in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------- 2. agreement


def _table(rows: list[dict]) -> pd.DataFrame:
    """A tiny review table in reviewed.csv's shape (AU04 decided, AU12 probability only)."""
    base = {"video": "v.mp4", "face_id": "face0", "coder": "a", "window": 0, "kind": "micro", "score": 1.0,
            "decision": "confirmed", "onset_error_ms": 0.0, "offset_error_ms": 0.0, "tool_aus": "", "AU04_p": 0.1,
            "AU04_c": 0, "AU12_p": 0.3, "AU12_c": -1, "coder_code": "", "coder_aus": "", "code_error": "",
            "note": "", "eaf": "v.eaf", "model_sha256": "x"}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_agreement_lists_coder_aus_the_tool_does_not_decide(tmp_path: Path) -> None:
    """The coder's AU18 and AU6 vanished from the agreement (the model does not output them). Now they are counted per
    AU (windows the coder coded it on, of them coder-added) in the Agreement, its note, the terminal print,
    agreement.csv / .json / .html; AUs the tool decides and rejected windows are not in that list."""
    nan = float("nan")
    df = _table([
        dict(window=0, AU04_c=1, coder_aus="4+18"),
        dict(window=1, decision="corrected", coder_aus="6"),
        dict(window=2, decision="corrected", coder_aus="12+18"),
        dict(window=3, decision="rejected", coder_aus="9"),  # a rejected window's code is not the coder's AU
        dict(window=-1, decision="added", coder_aus="6+18", score=nan, AU04_c=-1, AU04_p=nan, AU12_p=nan),
    ])
    ag = compute_agreement(df)
    assert [r["au"] for r in ag.aus] == ["AU04"]
    by_au = {r["au"]: r for r in ag.coder_only}
    assert set(by_au) == {"AU06", "AU12", "AU18"}
    assert (by_au["AU18"]["windows"], by_au["AU18"]["added"]) == (3, 1)
    assert (by_au["AU06"]["windows"], by_au["AU06"]["added"]) == (2, 1)
    assert by_au["AU12"]["probability_only"] == 1 and by_au["AU06"]["probability_only"] == 0
    (note,) = [n for n in ag.notes if "AU18" in n]
    assert "AU06 on 2 windows (1 coder-added)" in note and "AU18 on 3 windows (1 coder-added)" in note

    write_reviewed(type("R", (), {"table": df, "files": 1})(), tmp_path)
    res = CliRunner().invoke(main, ["agreement", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "AU18 on 3 windows" in " ".join(res.output.split())
    tidy = pd.read_csv(tmp_path / "agreement.csv")
    only = tidy[tidy["section"] == "coder_only"]
    assert float(only[(only["subject"] == "AU18") & (only["metric"] == "windows")]["value"].iloc[0]) == 3
    data = json.loads((tmp_path / "agreement.json").read_text(encoding="utf-8"))
    assert {r["au"]: r["windows"] for r in data["coder_only"]} == {"AU06": 2, "AU12": 1, "AU18": 3}
    assert "AU18 on 3 windows" in (tmp_path / "agreement.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------- 3. calibrate


def test_calibrate_refuses_a_review_too_small_to_fit_and_writes_nothing(tmp_path: Path) -> None:
    """The user's case: 4 micro windows gave a cut-off with precision 1.000 / recall 1.000, no warning, the file
    written, then exit 1 (macro out of reach). Now: one line with the counts and the minimums, exit 1, no file."""
    rows = [dict(window=i, score=s, decision=d, coder_aus=c) for i, (s, d, c) in enumerate([
        (1.0, "rejected", ""), (2.0, "confirmed", "4"), (3.0, "confirmed", ""), (4.0, "corrected", "4")])]
    rows += [dict(window=4 + i, score=9.0 + i, kind="macro", decision="rejected") for i in range(2)]
    df = _table(rows)
    with pytest.raises(CalibrationError, match="too few"):
        calibrate(df, 0.8)
    write_reviewed(type("R", (), {"table": df, "files": 1})(), tmp_path)
    out = tmp_path / "study.toml"
    res = CliRunner().invoke(main, ["calibrate", str(tmp_path), "-o", str(out)])
    assert res.exit_code == 1, res.output
    (line,) = _lines(res.output)
    assert line.startswith("Error: too few reviewed windows") and "micro 4 reviewed (3 real)" in line
    assert f"at least {MIN_REVIEWED} reviewed windows" in line and "nothing written" in line
    assert not out.exists()


def _review(n_micro: int = 25, macro: int = 3) -> pd.DataFrame:
    """A review big enough to calibrate micro windows (scores 1..n; the 8 lowest-scoring but one rejected; AU04 coded
    on the 6 real windows with the highest probability) and `macro` reviewed macro windows (too few)."""
    rows: list[dict] = []
    rejected = {1, 2, 3, 4, 5, 6, 7, 9}
    real = [s for s in range(1, n_micro + 1) if s not in rejected]
    au_pos = set(real[-6:])
    for s in range(1, n_micro + 1):
        if s in rejected:
            rows.append(dict(window=s, score=float(s), decision="rejected", AU04_p=0.5))
        else:
            pos = s in au_pos
            rows.append(dict(window=s, score=float(s), decision="confirmed", coder_aus="4" if pos else "",
                             AU04_p=0.6 + s / 100 if pos else 0.1 + s / 100, AU04_c=int(pos and s % 2 == 0)))
    rows.append(dict(window=-1, score=float("nan"), decision="added", coder_aus="4", AU04_c=-1))
    rows += [dict(window=100 + i, score=9.0 + i, kind="macro", decision="rejected") for i in range(macro)]
    return _table(rows)


def test_calibrate_figures_say_the_windows_they_rest_on_and_exit_0_when_written(tmp_path: Path) -> None:
    """Every printed figure carries its window counts (also as comments and fields in the study file); a kind below
    the minimums (macro, 3 windows) is named with its counts and gets no cut-off; the file is written and the exit code
    is 0 (it was 1 after writing the file)."""
    df = _review()
    cal = calibrate(df, 0.8)
    micro, macro = sorted(cal.spotting, key=lambda c: c.kind != "micro")
    assert micro.status == "cut" and micro.reviewed == 25 and micro.real == 17
    assert macro.status == "too_few" and macro.cut is None and macro.reviewed == 3
    (au,) = cal.aus
    assert au.threshold is not None and (au.positives, au.negatives) == (6, 11)
    write_reviewed(type("R", (), {"table": df, "files": 1})(), tmp_path)
    out = tmp_path / "study.toml"
    res = CliRunner().invoke(main, ["calibrate", str(tmp_path), "-o", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())
    assert (f"micro: min_score {micro.cut:.6g} -> precision {micro.precision:.3f} ({micro.kept_real} real of "
            f"{micro.kept} kept windows), recall {micro.recall:.3f} ({micro.kept_real} of 18 real windows, 1 of them "
            "coder-added); from 25 reviewed windows (17 real, 8 rejected)") in text
    assert ("macro: too few windows to fit a cut-off: 3 reviewed windows (0 real, 3 rejected)" in text
            and f"need at least {MIN_REVIEWED} reviewed, {MIN_REAL} of them real" in text)
    assert "on 17 windows (6 coder positives, 11 negatives; in-sample)" in text
    study = out.read_text(encoding="utf-8")
    assert "#   micro: min_score" in study and "#   macro: too few windows" in study
    cfg = load_config(out)
    assert cfg["min_score"] == {"micro": pytest.approx(micro.cut)} and "AU04" in cfg["au_thresholds"]
    import tomllib

    spot = {c["kind"]: c for c in tomllib.loads(study)["calibration"]["spotting"]}
    assert (spot["micro"]["kept"], spot["micro"]["kept_real"], spot["micro"]["reviewed"]) == (
        micro.kept, micro.kept_real, 25)
    assert spot["macro"]["status"] == "too_few" and "cut" not in spot["macro"]
    assert tomllib.loads(study)["calibration"]["aus"][0]["windows"] == 17


def test_calibrate_minimums_are_the_documented_ones() -> None:
    """docs/review.md states the minimums; a kind one reviewed window short of them gets no cut-off."""
    assert (MIN_REVIEWED, MIN_REAL, MIN_EACH) == (20, 5, 5)
    docs = " ".join((Path(__file__).parents[1] / "docs" / "review.md").read_text(encoding="utf-8").split())
    assert "at least 20 reviewed tool windows" in docs and "at least 5 coder positives and 5 negatives" in docs
    cal = calibrate(_review(n_micro=MIN_REVIEWED - 1, macro=0), 0.8)
    (micro,) = cal.spotting
    assert micro.reviewed == MIN_REVIEWED - 1 and micro.status == "too_few"


# ------------------------------------------------------------------------------ the bad inputs, via the CLI


def test_bad_inputs_give_one_clear_line_each(tmp_path: Path) -> None:
    """An EAF from another run (above), a review with no window of some kind, an AU code the FACS parser does not know:
    one line each, the exit code as documented (docs/review.md)."""
    # a review with no reviewed window of a kind: macro only coder-added -> named with its counts, micro still fitted
    df = _review(macro=0)
    df = pd.concat([df, _table([dict(window=-1, kind="macro", decision="added", coder_aus="6", score=float("nan"),
                                     AU04_c=-1)])], ignore_index=True)
    write_reviewed(type("R", (), {"table": df, "files": 1})(), tmp_path / "nomacro")
    out = tmp_path / "study.toml"
    res = CliRunner().invoke(main, ["calibrate", str(tmp_path / "nomacro"), "-o", str(out)])
    assert res.exit_code == 0 and out.is_file(), res.output
    (macro,) = [line for line in _lines(res.stdout) if line.startswith("macro:")]
    assert "0 reviewed windows" in macro and "1 coder-added" in macro and "no cut-off" in macro
    ag = CliRunner().invoke(main, ["agreement", str(tmp_path / "nomacro")])
    assert ag.exit_code == 0, ag.output

    # a review with no reviewed window at all: one line, exit 1, nothing written
    unreviewed = _table([dict(window=i, decision="unreviewed") for i in range(3)])
    write_reviewed(type("R", (), {"table": unreviewed, "files": 1})(), tmp_path / "none")
    res = CliRunner().invoke(main, ["calibrate", str(tmp_path / "none"), "-o", str(tmp_path / "none.toml")])
    assert res.exit_code == 1 and len(_lines(res.output)) == 1 and "no tool window has been reviewed" in res.output
    assert not (tmp_path / "none.toml").exists()

    # an AU code the parser does not know: one line naming the file, window and code; the row kept (exit 1)
    run = make_run(tmp_path, "run", SPANS, DEFAULTS.as_dict())
    eaf = reviewed_eaf(run, tmp_path / "reviews" / "v.eaf", code="4+smile")
    res = CliRunner().invoke(main, ["review-import", str(eaf), "--run", str(run), "-o", str(tmp_path / "rev")])
    assert res.exit_code == 1, res.output
    (line,) = _lines(res.stderr)
    assert str(eaf) in line and "2000 ms" in line and "'smile'" in line and "left out of the AU agreement" in line
    table = read_reviewed(tmp_path / "rev")
    assert (table["code_error"] != "").sum() == 1
