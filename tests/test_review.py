"""The coder review loop: review tiers in the EAF, a scripted review read back, agreement, calibrate and finetune.

The coder is scripted with pympi on the `.eaf` the product wrote (confirm, reject, correct AUs, move an offset, add a
missed window), then the file is rewritten the way ELAN 3.0 saves it. Agreement and calibration numbers are checked
by hand on tiny tables; finetune uses synthetic videos with planted expressions and their ground truth as the coder.
"""

from __future__ import annotations

import math
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pympi
import pytest
from click.testing import CliRunner
from corpus import local_checkpoint
from synth import PlantedEvent, SynthVideo, make_video

import au_annotate
from au_annotate.cli import main
from au_annotate.errors import AnnotateError
from au_annotate.megc import iou
from au_annotate.review.agreement import cohen_kappa, compute_agreement
from au_annotate.review.calibrate import calibrate
from au_annotate.review.importer import import_reviews, read_reviewed, write_reviewed
from au_annotate.settings import DEFAULTS, build_settings, load_config
from au_annotate.writers import read_segments_csv
from au_annotate.writers.review_schema import CODER_TIER, DECISION_VALUES, REVIEW_CV, REVIEW_TIER

AU_OF = {"brow_raise": "1+2", "brow_lower": "4", "lip_corner_pull": "12"}  # what the planted movements are in FACS
DEMO_EVENTS = [  # examples/make_demo.py's demo
    PlantedEvent("brow_raise", 1.0, 1.2, 1.45, 3.0),
    PlantedEvent("lip_corner_pull", 3.0, 3.2, 3.4, 3.0),
    PlantedEvent("blink", 4.2, 4.3, 4.45, 8.0, kind="blink"),
    PlantedEvent("brow_lower", 5.2, 6.0, 7.2, 6.0, kind="macro"),
]


@dataclass
class Run:
    root: Path
    videos: Path
    out: Path
    weights: str
    clips: dict[str, SynthVideo]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The demo plus two short clips, annotated once with the test weights."""
    root = tmp_path_factory.mktemp("review")
    videos = root / "videos"
    videos.mkdir()
    clips = [
        make_video(videos / "astronaut_demo.mp4", fps=30, duration_s=8.0, events=DEMO_EVENTS, head_motion_px=2.0,
                   noise_sigma=1.5, seed=7),
        make_video(videos / "clip_b.mp4", fps=30, duration_s=4.0, size=(320, 240), seed=3, head_motion_px=0.8,
                   noise_sigma=1.0, events=[PlantedEvent("brow_raise", 0.8, 1.0, 1.25, 2.5),
                                            PlantedEvent("lip_corner_pull", 2.4, 2.6, 2.85, 2.5)]),
        make_video(videos / "clip_c.mp4", fps=30, duration_s=4.0, size=(320, 240), seed=5, head_motion_px=0.8,
                   noise_sigma=1.0, events=[PlantedEvent("lip_corner_pull", 0.9, 1.1, 1.3, 2.5),
                                            PlantedEvent("brow_raise", 2.5, 2.7, 2.95, 2.5)]),
    ]
    weights = local_checkpoint(root)
    out = root / "out"
    au_annotate.annotate([videos], out, DEFAULTS.replace(weights=weights, quiet=True, jobs=1))
    return Run(root, videos, out, weights, {c.path.name: c for c in clips})


# ------------------------------------------------------------------------------------------ the scripted coder


def _find(eaf: pympi.Elan.Eaf, tier: str, start: int) -> tuple[int, int, str]:
    hits = [a for a in eaf.get_annotation_data_for_tier(tier) if a[0] == start]
    assert len(hits) == 1, (tier, start, eaf.get_annotation_data_for_tier(tier))
    return hits[0]


def _edit(eaf: pympi.Elan.Eaf, tier: str, start: int, value: str, times: tuple[int, int] | None = None) -> None:
    """What a coder does in ELAN: change an annotation's value and maybe its boundaries."""
    s, e, _ = _find(eaf, tier, start)
    eaf.remove_annotation(tier, (s + e) // 2)
    eaf.add_annotation(tier, *(times or (s, e)), value=value)


def elan_resave(src: Path, dst: Path, annotator: str | None = None) -> Path:
    """Rewrite a pympi-saved EAF the way ELAN 3.0 saves it: 3.0 header and schema, CVE_REF on the controlled
    vocabulary's annotations, ANNOTATOR on the review tiers, a LICENSE, and a tier of the coder's own."""
    tree = ET.parse(src)
    doc = tree.getroot()
    xsi = "{http://www.w3.org/2001/XMLSchema-instance}noNamespaceSchemaLocation"
    doc.set("VERSION", "3.0")
    doc.set("FORMAT", "3.0")
    doc.set(xsi, "http://www.mpi.nl/tools/elan/EAFv3.0.xsd")
    lic = ET.Element("LICENSE", {"LICENSE_URL": ""})
    doc.insert(0, lic)
    ids = {}
    for cv in doc.iter("CONTROLLED_VOCABULARY"):
        for entry in cv.iter("CV_ENTRY_ML"):
            ids[(cv.get("CV_ID"), entry.find("CVE_VALUE").text)] = entry.get("CVE_ID")
    for tier in doc.iter("TIER"):
        if tier.get("TIER_ID", "").startswith(REVIEW_TIER):
            if annotator:
                tier.set("ANNOTATOR", annotator)
            for ann in tier.iter("ALIGNABLE_ANNOTATION"):
                ann.set("CVE_REF", ids[(REVIEW_CV, ann.find("ANNOTATION_VALUE").text)])
    mine = ET.SubElement(doc, "TIER", {"LINGUISTIC_TYPE_REF": "segment", "TIER_ID": "my notes"})
    mine.tail = "\n"
    # a TIER must come before the LINGUISTIC_TYPEs in the schema: move it after the last tier
    doc.remove(mine)
    last = max(i for i, el in enumerate(doc) if el.tag == "TIER")
    doc.insert(last + 1, mine)
    tree.write(dst, encoding="UTF-8", xml_declaration=True)
    return dst


def gt_review(eaf_path: Path, clip: SynthVideo, csv_path: Path, dst: Path) -> Path:
    """The planted ground truth as the coder: matched windows confirmed/corrected with the planted AUs, the others
    rejected, missed events added."""
    eaf = pympi.Elan.Eaf(str(eaf_path))
    segs = read_segments_csv(csv_path)
    events = [e for e in clip.events if e.kind != "blink"]
    gt = [(round(e.onset_s * clip.fps), round(e.offset_s * clip.fps)) for e in events]
    used: set[int] = set()
    for r in segs.itertuples(index=False):
        start = max(0, round(r.onset_s * 1000))
        best = max(range(len(gt)), key=lambda i: iou(*gt[i], r.onset_frame, r.offset_frame), default=None)
        if best is not None and best not in used and iou(*gt[best], r.onset_frame, r.offset_frame) >= 0.3:
            used.add(best)
            code = AU_OF[events[best].action]
            _edit(eaf, REVIEW_TIER, start, "confirmed" if code == r.aus else "corrected")
            _edit(eaf, CODER_TIER, start, code)
        else:
            _edit(eaf, REVIEW_TIER, start, "rejected")
    for i, e in enumerate(events):
        if i not in used:
            eaf.add_annotation(CODER_TIER, round(e.onset_s * 1000), round(e.offset_s * 1000), AU_OF[e.action])
    dst.parent.mkdir(parents=True, exist_ok=True)
    pympi.Elan.to_eaf(str(dst), eaf)
    return dst


# ------------------------------------------------------------------------------------------------------- tests


def test_every_eaf_has_review_tiers_prefilled(run: Run) -> None:
    eaf = pympi.Elan.Eaf(str(run.out / "astronaut_demo.eaf"))
    segs = read_segments_csv(run.out / "astronaut_demo.segments.csv")
    assert len(segs) >= 3, "the demo should give its three planted windows"
    review = sorted(eaf.get_annotation_data_for_tier(REVIEW_TIER))
    coder = sorted(eaf.get_annotation_data_for_tier(CODER_TIER))
    assert [v for *_, v in review] == ["unreviewed"] * len(segs)
    assert [v for *_, v in coder] == list(segs.sort_values("onset_s")["aus"])
    assert [(s, e) for s, e, _ in review] == [(s, e) for s, e, _ in coder]
    assert eaf.get_parameters_for_tier(REVIEW_TIER)["PARTICIPANT"] == "face0"
    cv = eaf.get_parameters_for_linguistic_type(eaf.get_parameters_for_tier(REVIEW_TIER)["LINGUISTIC_TYPE_REF"])
    assert cv["CONTROLLED_VOCABULARY_REF"] == REVIEW_CV
    values = [v[0][0][0] for v in eaf.get_cv_entries(REVIEW_CV).values()]
    assert values == list(DECISION_VALUES)


def test_scripted_review_round_trips_through_review_import(run: Run) -> None:
    src = run.out / "astronaut_demo.eaf"
    eaf = pympi.Elan.Eaf(str(src))
    segs = read_segments_csv(run.out / "astronaut_demo.segments.csv").sort_values("onset_s").reset_index(drop=True)
    starts = [max(0, round(t * 1000)) for t in segs["onset_s"]]
    ends = [round(t * 1000) for t in segs["offset_s"]]
    _edit(eaf, REVIEW_TIER, starts[0], "confirmed")
    _edit(eaf, REVIEW_TIER, starts[1], "rejected")
    _edit(eaf, REVIEW_TIER, starts[2], "corrected")
    _edit(eaf, CODER_TIER, starts[2], "4+7", (starts[2], ends[2] + 200))  # AUs corrected, offset moved 200 ms later
    eaf.add_annotation(CODER_TIER, 7400, 7700, "L12")  # a window the tool missed
    edited = run.root / "edit" / "astronaut_demo.eaf"
    edited.parent.mkdir()
    pympi.Elan.to_eaf(str(edited), eaf)
    reviewed_file = elan_resave(edited, run.root / "edit" / "resaved.eaf", annotator="alice")
    res = CliRunner().invoke(main, ["review-import", str(reviewed_file), "-o", str(run.root / "rev"), "--run",
                                    str(run.out)])
    assert res.exit_code == 0, res.output
    df = read_reviewed(run.root / "rev")
    assert set(df["coder"]) == {"alice"}  # from the tier's ANNOTATOR
    tool = df[df["window"] >= 0].set_index("window").sort_index()
    assert len(tool) == len(segs)
    by_id = segs.set_index("segment_id")
    first, second, third = (int(segs.loc[i, "segment_id"]) for i in range(3))
    assert tool.loc[first, "decision"] == "confirmed" and tool.loc[first, "coder_aus"] == by_id.loc[first, "aus"]
    assert tool.loc[second, "decision"] == "rejected"
    assert tool.loc[third, "decision"] == "corrected"
    assert tool.loc[third, "coder_aus"] == "4+7" and tool.loc[third, "coder_code"] == "4+7"
    assert tool.loc[third, "offset_error_ms"] == 200 and tool.loc[third, "onset_error_ms"] == 0
    assert tool.loc[first, "offset_error_ms"] == 0
    for w in tool.index:  # the tool's side comes from the run's CSV, exactly
        assert tool.loc[w, "score"] == pytest.approx(by_id.loc[w, "score"], abs=1e-6)
        assert tool.loc[w, "tool_apex_frame"] == by_id.loc[w, "apex_frame"]
        for c in [c for c in segs.columns if c.startswith("AU") and c.endswith("_p")]:
            assert tool.loc[w, c] == pytest.approx(by_id.loc[w, c], abs=1e-6)
    added = df[df["decision"] == "added"]
    assert len(added) == 1
    assert added.iloc[0]["coder_aus"] == "12" and added.iloc[0]["kind"] == "micro"
    assert added.iloc[0]["coder_onset_s"] == pytest.approx(7.4) and added.iloc[0]["coder_offset_s"] == pytest.approx(7.7)
    # the unreviewed clips in the run folder import as unreviewed, the foreign tier is ignored
    res = CliRunner().invoke(main, ["review-import", str(run.out), "-o", str(run.root / "rev_all")])
    assert res.exit_code == 0, res.output
    assert set(read_reviewed(run.root / "rev_all")["decision"]) == {"unreviewed"}


def test_bad_files_and_codes_are_one_line_each_and_the_rest_imports(run: Run) -> None:
    folder = run.root / "mixed"
    folder.mkdir()
    shutil.copy(run.out / "clip_b.eaf", folder / "clip_b.eaf")
    foreign = pympi.Elan.Eaf()
    foreign.add_tier("words")
    pympi.Elan.to_eaf(str(folder / "foreign.eaf"), foreign)
    (folder / "broken.eaf").write_text("<ANNOTATION_DOCUMENT><HEADER", encoding="utf-8")
    text = (run.out / "clip_c.eaf").read_text(encoding="utf-8")
    (folder / "elsewhere.eaf").write_text(text.replace(">clip_c.mp4<", ">not/in/the/run.mp4<"), encoding="utf-8")
    eaf = pympi.Elan.Eaf(str(run.out / "clip_c.eaf"))
    start = sorted(eaf.get_annotation_data_for_tier(CODER_TIER))[0][0]
    _edit(eaf, REVIEW_TIER, start, "corrected")
    _edit(eaf, CODER_TIER, start, "4++7")
    pympi.Elan.to_eaf(str(folder / "clip_c.eaf"), eaf)
    result = import_reviews([folder], run=run.out)
    problems = "\n".join(result.problems)
    assert len(result.problems) == 4, problems
    assert "foreign.eaf: not written by au-annotate" in problems
    assert "broken.eaf: not a readable ELAN file" in problems
    assert "not/in/the/run.mp4: not in the run's manifest" in problems
    assert "clip_c.eaf" in problems and "'4++7'" in problems
    assert result.files == 2 and set(result.table["video"]) == {"clip_b.mp4", "clip_c.mp4"}
    bad = result.table[result.table["coder_code"] == "4++7"]
    assert len(bad) == 1 and bad.iloc[0]["code_error"] and bad.iloc[0]["coder_aus"] == ""
    res = CliRunner().invoke(main, ["review-import", str(folder), "-o", str(run.root / "mixed_out"), "--run",
                                    str(run.out)])
    assert res.exit_code == 1 and (run.root / "mixed_out" / "reviewed.csv").is_file()


def _table(rows: list[dict]) -> pd.DataFrame:
    """A tiny review table in reviewed.csv's shape (the columns agreement and calibrate use)."""
    base = {"video": "v.mp4", "face_id": "face0", "coder": "a", "window": 0, "kind": "micro", "score": 1.0,
            "decision": "confirmed", "onset_error_ms": 0.0, "offset_error_ms": 0.0, "tool_aus": "", "AU04_p": 0.1,
            "AU04_c": 0, "coder_code": "", "coder_aus": "", "code_error": "", "model_sha256": "x"}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_agreement_numbers_by_hand(tmp_path: Path) -> None:
    nan = float("nan")
    a = [dict(window=0, decision="confirmed", AU04_c=1, coder_aus="4"),
         dict(window=1, decision="corrected", AU04_c=1, coder_aus="7", offset_error_ms=90.0, onset_error_ms=-30.0),
         dict(window=2, decision="rejected", AU04_c=0),
         dict(window=3, decision="confirmed", AU04_c=0, coder_aus="4"),
         dict(window=4, decision="unreviewed"),
         dict(window=-1, decision="added", coder_aus="12", score=nan, AU04_c=-1)]
    b = [dict(window=0, decision="confirmed", AU04_c=1, coder_aus="4"),
         dict(window=1, decision="confirmed", AU04_c=1, coder_aus="4+7"),
         dict(window=2, decision="confirmed", AU04_c=0, coder_aus=""),
         dict(window=3, decision="rejected", AU04_c=0)]
    df = _table([{**r, "coder": "a"} for r in a] + [{**r, "coder": "b"} for r in b])
    ag = compute_agreement(df[df["coder"] == "a"])
    (spot,) = [r for r in ag.spotting if r["kind"] == "micro"]
    # coder a: 4 reviewed tool windows, 3 real, 1 rejected, 1 added
    assert spot["reviewed"] == 4 and spot["unreviewed"] == 1 and spot["added"] == 1
    assert spot["precision"] == pytest.approx(3 / 4) and spot["recall"] == pytest.approx(3 / 4)
    assert spot["offset_mae_ms"] == pytest.approx(30.0) and spot["onset_mae_ms"] == pytest.approx(10.0)
    assert spot["onset_bias_ms"] == pytest.approx(-10.0) and spot["moved"] == 1
    (au,) = ag.aus  # AU04 over the real windows 0, 1, 3: tool 1,1,0 vs coder 1,0,1
    assert (au["tp"], au["fp"], au["fn"], au["tn"]) == (1, 1, 1, 0)
    assert au["f1"] == pytest.approx(0.5)
    assert au["kappa"] == pytest.approx(-0.5)  # po 1/3, pe 5/9
    both = compute_agreement(df)
    real = [r for r in both.coders if r["subject"] == "real expression"][0]
    assert real["windows"] == 4 and real["kappa_coders"] == pytest.approx(-1 / 3)  # po 1/2, pe 5/8
    au04 = [r for r in both.coders if r["subject"] == "AU04"][0]
    assert au04["windows"] == 2  # windows 0 and 1: both coders called them real
    assert au04["kappa_coders"] == pytest.approx(0.0) and au04["kappa_tool_a"] == pytest.approx(0.0)
    assert math.isnan(au04["kappa_tool_b"])  # tool and coder b both say AU04 on both: chance agreement is 1
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    # the command: rich tables, CSV, JSON and the HTML section
    write_reviewed(type("R", (), {"table": df, "files": 2})(), tmp_path)
    res = CliRunner().invoke(main, ["agreement", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "coder vs coder" in res.output
    tidy = pd.read_csv(tmp_path / "agreement.csv")
    row = tidy[(tidy["section"] == "spotting") & (tidy["subject"] == "all") & (tidy["metric"] == "precision")]
    assert float(row["value"].iloc[0]) == pytest.approx((3 + 3) / (4 + 4))  # both coders pooled: 6 real of 8
    page = (tmp_path / "agreement.html").read_text(encoding="utf-8")
    assert 'id="agreement"' in page and "agreement-coders" in page


def test_calibrate_threshold_reaches_the_precision_on_the_review(tmp_path: Path) -> None:
    """20 micro windows (the minimum: au_annotate.review.calibrate.MIN_REVIEWED), 5 of them rejected among the lowest
    scores, AU04 coded on the 5 real windows with the highest probability; 20 macro windows, the 5 real ones scoring
    lowest (no cut-off can reach the target)."""
    rows = []
    for s in range(1, 21):
        if s in (1, 2, 3, 4, 6):
            rows.append(dict(window=s, score=float(s), decision="rejected", AU04_p=0.9))
        else:
            pos = s >= 16
            rows.append(dict(window=s, score=float(s), decision="corrected" if pos else "confirmed",
                             AU04_p=0.5 + s / 100 if pos else 0.2 + s / 100, coder_aus="4+7" if pos else "",
                             AU04_c=int(s % 2 == 0)))
    rows.append(dict(window=-1, score=float("nan"), decision="added", coder_aus="4", AU04_c=-1))
    rows += [dict(window=100 + i, score=9.0 + i, kind="macro", decision="confirmed" if i < 5 else "rejected")
             for i in range(20)]
    df = _table(rows)
    cal = calibrate(df, 0.8)
    (micro,) = [c for c in cal.spotting if c.kind == "micro"]
    assert 2.0 < micro.cut < 3.0  # the lowest cut with precision >= 0.8: 15 real of the 18 windows scoring >= 3
    tool = df[(df["window"] >= 0) & (df["kind"] == "micro")]
    kept = tool[tool["score"] >= micro.cut]
    real = kept["decision"].isin(["confirmed", "corrected"])
    assert real.mean() >= 0.8 and micro.precision == pytest.approx(real.mean())
    assert micro.recall == pytest.approx(15 / 16)  # the coder-added window counts as missed
    lower = tool[tool["score"] >= 2.0]
    assert lower["decision"].isin(["confirmed", "corrected"]).mean() < 0.8  # no lower cut reaches it
    (macro,) = [c for c in cal.spotting if c.kind == "macro"]
    assert macro.cut is None and macro.status == "out_of_reach"  # out of reach: named, not invented
    loose = [c for c in calibrate(df, 0.6).spotting if c.kind == "micro"][0]
    assert loose.cut is None and loose.reached  # every window together already reaches 0.6: nothing to cut
    (au,) = cal.aus  # real windows: the 5 coder positives have p 0.66..0.70, the 10 negatives 0.25..0.35
    assert 0.35 < au.threshold <= 0.66 and au.f1_after == pytest.approx(1.0)
    write_reviewed(type("R", (), {"table": df, "files": 1})(), tmp_path)
    out = tmp_path / "study.toml"
    res = CliRunner().invoke(main, ["calibrate", str(tmp_path), "-o", str(out), "--precision", "0.8"])
    assert res.exit_code == 0, res.output  # the file is written: exit 0; macro's missing cut-off is said
    assert "macro: precision 0.8 is out of reach" in res.output
    cfg = load_config(out)
    assert cfg["min_score"] == {"micro": pytest.approx(micro.cut)}
    assert cfg["au_thresholds"] == {"AU04": pytest.approx(au.threshold)}
    assert "review_sha256" in out.read_text(encoding="utf-8")
    assert build_settings(out).min_score == cfg["min_score"]


def test_annotate_uses_the_study_settings(run: Run, tmp_path: Path) -> None:
    segs = read_segments_csv(run.out / "astronaut_demo.segments.csv")
    micro = segs[segs["kind"] == "micro"]["score"]
    cut = float(micro.max())
    au = next(c[:-2] for c in segs.columns if c.endswith("_c"))
    study = tmp_path / "study.toml"
    study.write_text(f"[annotate]\nmin_score = {{micro = {cut - 1e-4}}}\nau_thresholds = {{{au} = 0.0}}\n"
                     "[calibration]\nreview_table = 'x'\n", encoding="utf-8")
    settings = build_settings(study, weights=run.weights, quiet=True, jobs=1)
    report = au_annotate.annotate([run.videos / "astronaut_demo.mp4"], tmp_path / "out", settings)
    got = report.segments
    assert [s.kind for s in got if s.kind == "micro"] == ["micro"]  # only the top-scoring micro window is left
    assert sum(1 for s in got if s.kind == "macro") == int((segs["kind"] == "macro").sum())  # macro not filtered
    j = got[0].au_names.index(au)
    assert all(bool(s.present[j]) == (s.kind == "micro") for s in got)  # threshold 0: present on every micro window
    # (macro windows carry probabilities only: the model was trained on micro-expression apex flow)
    with pytest.raises(AnnotateError, match="AU99"):
        au_annotate.annotate([run.videos / "astronaut_demo.mp4"], tmp_path / "bad",
                             settings.replace(au_thresholds={"AU99": 0.5}))


def test_finetune_keeps_only_a_model_not_worse_on_held_out_videos(run: Run) -> None:
    from au_annotate.review.finetune import FinetuneConfig, finetune, held_out_score, review_dataset
    from au_annotate.weights import load_weights

    coder = run.root / "gt_coder"
    for name, clip in run.clips.items():
        stem = Path(name).stem
        gt_review(run.out / f"{stem}.eaf", clip, run.out / f"{stem}.segments.csv", coder / f"{stem}.eaf")
    result = import_reviews([coder], run=run.out)
    assert result.problems == [] and result.files == 3
    write_reviewed(result, coder)
    df = read_reviewed(coder)
    assert (df["decision"].isin(["confirmed", "corrected", "added"])).sum() >= 5
    out = run.root / "weights" / "study.pt"
    res = finetune(df, run.videos, out, weights=run.weights, cfg=FinetuneConfig(epochs=4, holdout=0.34),
                   provenance={"review_sha256": "test"})
    assert res.held_out_videos and not set(res.held_out_videos) & set(res.train_videos)  # split by video
    assert set(res.candidates) == {"head", "full"}  # both measured
    assert out.is_file() == res.kept
    if not res.kept:
        assert "below the base" in res.reason
        return
    # independently: the kept model's AUs on the held-out windows are not worse than the base model's
    base, new = load_weights(run.weights), load_weights(str(out))
    held = df[df["video"].isin(res.held_out_videos)]
    settings = DEFAULTS.replace(input_layout=base.input_layout)
    images, labels, _ = review_dataset(held, run.videos, base.au_names, settings)
    assert len(images) == res.held_out_windows
    from au_annotate.training.train import predict_proba

    reported = np.asarray(base.reliable, bool) if np.any(base.reliable) else np.ones(len(base.au_names), bool)
    k = len(base.au_names)
    before = held_out_score(predict_proba(base.model, images)[:, :k], labels, base.thresholds, reported)
    after = held_out_score(predict_proba(new.model, images)[:, :k], labels, new.thresholds, reported)
    assert after["f1"] >= before["f1"]
    assert new.meta["review"]["review_sha256"] == "test" and new.meta["review"]["mode"] == res.mode
    assert out.with_suffix(".md").is_file()


def test_overflow_lanes_and_several_faces_read_back(tmp_path: Path) -> None:
    from dataclasses import replace
    from pathlib import PurePosixPath

    from au_annotate.manifest import Manifest
    from au_annotate.records import Segment, VideoInfo, VideoJob, VideoResult
    from au_annotate.writers import WriteContext, write_video_outputs

    def seg(i: int, face: str, kind: str, on: float, off: float, p: float) -> Segment:
        return Segment(video="v.mp4", face_id=face, segment_id=i, kind=kind, onset_frame=round(on * 30),  # type: ignore[arg-type]
                       apex_frame=round((on + off) * 15), offset_frame=round(off * 30), onset_s=on,
                       apex_s=(on + off) / 2, offset_s=off, duration_s=off - on, score=2.0 + i, au_names=("AU04",),
                       probs=np.array([p], np.float32), present=np.array([p >= 0.5]), aus="4" if p >= 0.5 else "",
                       emotion="")

    segs = [seg(0, "face0", "macro", 1.0, 3.0, 0.9), seg(1, "face0", "micro", 1.5, 1.8, 0.1),
            seg(2, "face1", "micro", 2.0, 2.3, 0.2)]
    out = tmp_path / "out"
    job = VideoJob(path=tmp_path / "v.mp4", rel=PurePosixPath("v.mp4"), out_dir=out)
    info = VideoInfo(path=job.path, backend="test", width=640, height=480, fps=30.0, n_frames=150, duration_s=5.0)
    res = VideoResult(job=job, status="done", info=info, segments=tuple(segs), frames=150, faces=2)
    ctx = WriteContext(tool_version="t", model_name="m.pt", model_sha256="ab" * 32, au_names=("AU04",))
    out.mkdir()
    written = write_video_outputs(res, ctx, ("csv", "eaf"))
    Manifest(out / "manifest.json").record(replace(res, outputs=written), "key")
    eaf = pympi.Elan.Eaf(str(out / "v.eaf"))
    assert {"review face0", "review face0 2", "review face1", "AUs (coder) face0 2"} <= set(eaf.get_tier_names())
    _edit(eaf, "review face0", 1000, "confirmed")
    _edit(eaf, "review face0 2", 1500, "rejected")
    _edit(eaf, "review face1", 2000, "corrected")
    _edit(eaf, "AUs (coder) face1", 2000, "R12+L4")
    eaf.add_annotation("AUs (coder) face1", 4000, 4800, "7")
    pympi.Elan.to_eaf(str(tmp_path / "v.eaf"), eaf)
    result = import_reviews([tmp_path / "v.eaf"], run=out, coder="bob")
    assert result.problems == []
    df = result.table.set_index("window")
    assert list(df.loc[[0, 1, 2], "decision"]) == ["confirmed", "rejected", "corrected"]
    assert list(df.loc[[0, 1, 2], "face_id"]) == ["face0", "face0", "face1"]
    assert df.loc[2, "coder_aus"] == "4+12" and df.loc[0, "coder_aus"] == "4"
    added = df.loc[-1]
    assert added["face_id"] == "face1" and added["kind"] == "macro" and added["coder"] == "bob"


def test_finetune_needs_two_reviewed_videos(run: Run, tmp_path: Path) -> None:
    coder = tmp_path / "one"
    clip = run.clips["clip_b.mp4"]
    gt_review(run.out / "clip_b.eaf", clip, run.out / "clip_b.segments.csv", coder / "clip_b.eaf")
    write_reviewed(import_reviews([coder], run=run.out), coder)
    res = CliRunner().invoke(main, ["finetune", str(coder), "--videos", str(run.videos), "-o",
                                    str(tmp_path / "w.pt"), "--weights", run.weights, "--epochs", "1"])
    assert res.exit_code == 1 and "at least 2" in res.output and not (tmp_path / "w.pt").exists()


def _one_face_run(tmp_path: Path, spans: list[tuple[float, float]]) -> Path:
    """A run folder (manifest, segments CSV, EAF) of one face with a micro window per span, each with AU04 (`4`)."""
    from dataclasses import replace
    from pathlib import PurePosixPath

    from au_annotate.manifest import Manifest
    from au_annotate.records import Segment, VideoInfo, VideoJob, VideoResult
    from au_annotate.writers import WriteContext, write_video_outputs

    segs = tuple(Segment(video="v.mp4", face_id="face0", segment_id=i, kind="micro", onset_frame=round(on * 30),
                         apex_frame=round((on + off) * 15), offset_frame=round(off * 30), onset_s=on,
                         apex_s=(on + off) / 2, offset_s=off, duration_s=off - on, score=2.0, au_names=("AU04",),
                         probs=np.array([0.9], np.float32), present=np.array([True]), aus="4", emotion="")
                 for i, (on, off) in enumerate(spans))
    out = tmp_path / "out"
    out.mkdir()
    job = VideoJob(path=tmp_path / "v.mp4", rel=PurePosixPath("v.mp4"), out_dir=out)
    info = VideoInfo(path=job.path, backend="test", width=640, height=480, fps=30.0, n_frames=300, duration_s=10.0)
    res = VideoResult(job=job, status="done", info=info, segments=segs, frames=300, faces=1)
    ctx = WriteContext(tool_version="t", model_name="m.pt", model_sha256="ab" * 32, au_names=("AU04",))
    written = write_video_outputs(res, ctx, ("csv", "eaf"))
    Manifest(out / "manifest.json").record(replace(res, outputs=written), "key")
    return out


def test_changed_but_unreviewed_windows_count_as_corrected(tmp_path: Path) -> None:
    """docs/review.md: a window whose code or times the coder changed but whose decision was left `unreviewed` is
    taken as `corrected` (with a note); the same AUs written another way, or an explicit decision, are kept."""
    out = _one_face_run(tmp_path, [(1.0, 1.3), (2.0, 2.3), (3.0, 3.3), (4.0, 4.3), (5.0, 5.3)])
    eaf = pympi.Elan.Eaf(str(out / "v.eaf"))
    _edit(eaf, CODER_TIER, 1000, "4+7")  # window 0: code changed, decision left unreviewed
    _edit(eaf, CODER_TIER, 2000, "4", (2000, 2500))  # window 1: offset moved 200 ms, code kept
    _edit(eaf, CODER_TIER, 3000, "L4")  # window 2: the same AU set written another way
    _edit(eaf, REVIEW_TIER, 5000, "confirmed")  # window 4: an explicit decision wins over a changed code
    _edit(eaf, CODER_TIER, 5000, "4+7")
    pympi.Elan.to_eaf(str(tmp_path / "v.eaf"), eaf)
    result = import_reviews([tmp_path / "v.eaf"], run=out, coder="carol")
    assert result.problems == []
    df = result.table.set_index("window").sort_index()
    assert list(df["decision"]) == ["corrected", "corrected", "unreviewed", "unreviewed", "confirmed"]
    assert all("taken as corrected" in n for n in df.loc[[0, 1], "note"])
    assert list(df.loc[[2, 3, 4], "note"]) == ["", "", ""]
    assert df.loc[0, "coder_aus"] == "4+7" and df.loc[1, "coder_aus"] == "4" and df.loc[2, "coder_aus"] == "4"
    assert df.loc[1, "offset_error_ms"] == 200 and df.loc[0, "offset_error_ms"] == 0


def test_added_windows_up_to_half_a_second_are_micro(tmp_path: Path) -> None:
    """A window the coder added is a micro-expression when it lasts up to MICRO_MAX_S (0.5 s, the spotter's default
    cut), a macro-expression when longer."""
    from au_annotate.review.importer import MICRO_MAX_S

    assert MICRO_MAX_S == 0.5
    out = _one_face_run(tmp_path, [(1.0, 1.3)])
    eaf = pympi.Elan.Eaf(str(out / "v.eaf"))
    eaf.add_annotation(CODER_TIER, 4000, 4500, "12")  # exactly 0.5 s
    eaf.add_annotation(CODER_TIER, 6000, 6501, "12")  # 1 ms longer
    pympi.Elan.to_eaf(str(tmp_path / "v.eaf"), eaf)
    result = import_reviews([tmp_path / "v.eaf"], run=out)
    added = result.table[result.table["decision"] == "added"].sort_values("coder_onset_s")
    assert result.problems == [] and list(added["kind"]) == ["micro", "macro"]


def test_min_score_keeps_a_window_scoring_exactly_the_cut(run: Run, tmp_path: Path) -> None:
    """A study's spotting cut-off leaves out the windows scoring *below* it: a window scoring exactly the cut stays."""
    segs = read_segments_csv(run.out / "astronaut_demo.segments.csv")
    micro = segs[segs["kind"] == "micro"].sort_values("score")
    assert len(micro) >= 2
    cut = float(micro["score"].iloc[-1])  # the top micro window's score, as the run computed it
    settings = DEFAULTS.replace(weights=run.weights, quiet=True, jobs=1, min_score={"micro": cut})
    report = au_annotate.annotate([run.videos / "astronaut_demo.mp4"], tmp_path / "out", settings)
    kept = [s for s in report.segments if s.kind == "micro"]
    assert [s.score for s in kept] == [cut]


def test_split_holds_out_at_least_one_video() -> None:
    """The held-out share is at least one video even when `holdout` x videos rounds to 0, and never every video."""
    from au_annotate.review.finetune import FinetuneError, split_videos

    videos = np.array(["a.mp4", "a.mp4", "b.mp4", "c.mp4"])
    for holdout in (0.0, 0.1, 0.34, 1.0):
        train, test = split_videos(videos, holdout, seed=0)
        held = set(videos[test])
        assert 1 <= len(held) <= 2 and not held & set(videos[train]) and (train ^ test).all()
    with pytest.raises(FinetuneError, match="at least 2"):
        split_videos(np.array(["a.mp4", "a.mp4"]), 0.5, seed=0)


def test_held_out_metric_by_hand() -> None:
    """The fixed metric: macro F1 over the reported AUs at the checkpoint's thresholds (p >= threshold is present); an
    AU with neither coder positives nor predictions scores 1; unreported AUs do not count."""
    from au_annotate.review.finetune import held_out_score

    probs = np.array([[0.5, 0.1, 0.9], [0.2, 0.1, 0.9], [0.7, 0.2, 0.9]], np.float32)
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0]], np.float32)
    thresholds = np.array([0.5, 0.5, 0.5], np.float32)
    s = held_out_score(probs, labels, thresholds, np.array([True, True, False]))
    assert s["f1"] == pytest.approx((2 * 1 / (2 * 1 + 1 + 1) + 1.0) / 2)  # AU 0: tp 1, fp 1, fn 1; AU 1: empty -> 1
    p = np.clip(probs[:, :2], 1e-6, 1 - 1e-6)
    y = labels[:, :2]
    assert s["log_loss"] == pytest.approx(float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()), rel=1e-6)


def test_finetune_keeps_a_candidate_exactly_as_good_as_the_base(run: Run, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """'Kept only if not worse': a candidate whose held-out F1 equals the base model's is kept (and written)."""
    import copy

    from au_annotate.review import finetune as ft

    rng = np.random.default_rng(0)
    images = (rng.random((8, 28, 28, 3)) * 255).astype(np.uint8)
    videos = np.array(["a.mp4", "a.mp4", "b.mp4", "b.mp4", "c.mp4", "c.mp4", "d.mp4", "d.mp4"])

    def dataset(df: pd.DataFrame, videos_dir: object, au_names: tuple[str, ...], settings: object,
                problems: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return images, (rng.random((8, len(au_names))) < 0.5).astype(np.float32), videos

    monkeypatch.setattr(ft, "review_dataset", dataset)
    monkeypatch.setattr(ft, "_train", lambda model, *a, **k: copy.deepcopy(model))  # candidates = the base model
    out = tmp_path / "same.pt"
    res = ft.finetune(pd.DataFrame(), run.videos, out, weights=run.weights, cfg=ft.FinetuneConfig(modes=("head",)))
    assert res.candidates["head"]["f1"] == res.base["f1"]
    assert res.kept and out.is_file() and ">=" in res.reason


def test_a_blink_is_never_a_micro_or_macro_window(run: Run, tmp_path: Path) -> None:
    """The demo's planted blink (4.2-4.45 s) is spotted as kind `blink`: left out of the outputs by default, written
    with kind `blink` under spot = {blinks = "label"}, never as a micro- or macro-expression."""
    blink = (4.2, 4.45)
    segs = read_segments_csv(run.out / "astronaut_demo.segments.csv")
    assert set(segs["kind"]) <= {"micro", "macro"}
    assert not [(a, b) for a, b in zip(segs["onset_s"], segs["offset_s"], strict=True) if a < blink[1] and b > blink[0]]
    settings = DEFAULTS.replace(weights=run.weights, quiet=True, jobs=1, spot={"blinks": "label"})
    report = au_annotate.annotate([run.videos / "astronaut_demo.mp4"], tmp_path / "out", settings)
    labelled = [(s.onset_s, s.offset_s) for s in report.segments if s.kind == "blink"]
    assert len(labelled) == 1 and labelled[0][0] < blink[1] and labelled[0][1] > blink[0]
    others = [(s.kind, s.onset_s, s.offset_s) for s in report.segments if s.kind != "blink"]
    assert others == [(k, pytest.approx(a, abs=1e-6), pytest.approx(b, abs=1e-6))
                      for k, a, b in zip(segs["kind"], segs["onset_s"], segs["offset_s"], strict=True)]


def test_finetuning_a_blended_model_moves_the_network_and_keeps_the_regression() -> None:
    """A checkpoint whose AU probabilities blend HTNet with the pixel regression (model.PixelBlend): fine-tuning trains
    the network and leaves the regression's weights exactly as they were (it was fitted by its own recipe)."""
    import torch

    from au_annotate.flow import SEED_ENCODING
    from au_annotate.model import HTNet, HTNetConfig, PixelBlend
    from au_annotate.review.finetune import FinetuneConfig, _train

    torch.manual_seed(0)
    cfg = HTNetConfig(dim=16, heads=2, block_repeats=1, num_classes=3)
    blend = PixelBlend(HTNet.from_config(cfg), 3, 0.5)
    with torch.no_grad():
        blend.linear.weight.normal_(0, 0.01)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 28, 28, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, (12, 3)).astype(np.int8)
    tuned = _train(blend, images, labels, 3, FinetuneConfig(epochs=2), "full", SEED_ENCODING)
    assert isinstance(tuned, PixelBlend) and tuned is not blend
    assert torch.equal(tuned.linear.weight, blend.linear.weight) and torch.equal(tuned.mean, blend.mean)
    before, after = blend.net.state_dict(), tuned.net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
