"""MEGC spotting evaluator: IoU with inclusive frames, the 0.5 boundary, one TP per GT, pooling, kinds, files, CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from au_annotate.cli import main
from au_annotate.megc import (
    Counts,
    Interval,
    MegcError,
    evaluate,
    iou,
    match,
    read_ground_truth,
    read_predictions,
)


def iv(on: int, off: int, kind: str = "micro", video: str = "a.mp4") -> Interval:
    return Interval(video=video, onset=on, offset=off, kind=kind)


def test_iou_uses_inclusive_frame_counts() -> None:
    assert iou(0, 9, 0, 9) == 1.0
    assert iou(0, 9, 5, 14) == pytest.approx(5 / 15)  # frames 5..9 shared, 0..14 in the union
    assert iou(0, 9, 10, 19) == 0.0  # touching, not overlapping
    assert iou(0, 9, 9, 18) == pytest.approx(1 / 19)  # one shared frame counts
    assert iou(3, 3, 3, 3) == 1.0


@pytest.mark.parametrize(
    ("gt", "pred", "hit"),
    [
        ((0, 9), (0, 4), True),  # 5 shared / 10 in the union = 0.5 exactly: a match
        ((0, 9), (0, 3), False),  # 4 / 10
        ((0, 5), (2, 7), True),  # 4 shared (2..5) / 8 in the union (0..7) = 0.5: a match
        ((0, 5), (3, 8), False),  # 3 / 9
        ((10, 19), (5, 24), True),  # a prediction twice as long as the GT: 10 / 20
        ((10, 19), (5, 25), False),  # 10 / 21
    ],
)
def test_iou_of_one_half_is_a_match(gt: tuple[int, int], pred: tuple[int, int], hit: bool) -> None:
    assert (iou(*gt, *pred) >= 0.5) == hit
    c = evaluate([iv(*gt)], [iv(*pred)]).by_kind["micro"]
    assert (c.tp, c.fp, c.fn) == ((1, 0, 0) if hit else (0, 1, 1))


def test_each_ground_truth_is_at_most_one_true_positive() -> None:
    s = evaluate([iv(10, 19)], [iv(10, 19), iv(11, 19), iv(12, 20)])
    c = s.by_kind["micro"]
    assert (c.tp, c.fp, c.fn) == (1, 2, 0)
    assert c.precision == pytest.approx(1 / 3) and c.recall == 1.0 and c.f1 == pytest.approx(0.5)


def test_one_prediction_cannot_match_two_ground_truths() -> None:
    s = evaluate([iv(0, 9), iv(5, 14)], [iv(3, 12)])  # IoU .54 and .67 with the two
    c = s.by_kind["micro"]
    assert (c.tp, c.fp, c.fn) == (1, 0, 1)


def test_maximum_matching_beats_greedy() -> None:
    # GT A = 0..9, B = 4..13; P1 = 2..11 overlaps both (0.67), P2 = 0..5 only A (0.6).
    # Greedy (A takes its best, P1) would leave B unmatched; the maximum matching gives A-P2 and B-P1.
    m = match([iv(0, 9), iv(4, 13)], [iv(2, 11), iv(0, 5)])
    assert len(m) == 2
    assert {(x.gt.onset, x.pred.onset) for x in m} == {(0, 0), (4, 2)}


def test_counts_are_pooled_over_videos_not_averaged() -> None:
    gt = [iv(0, 9, video="v1"), iv(0, 9, video="v2"), iv(20, 29, video="v2"), iv(40, 49, video="v2")]
    pred = [iv(0, 9, video="v1"), iv(100, 109, video="v2")]
    c = evaluate(gt, pred).by_kind["micro"]
    assert (c.tp, c.fp, c.fn) == (1, 1, 3)
    assert c.f1 == pytest.approx(2 / (2 + 1 + 3))  # 0.333; the mean of per-video F1s would be 0.5


def test_kinds_are_scored_separately_and_overall_pools_them() -> None:
    gt = [iv(0, 9, "micro"), iv(100, 199, "macro"), iv(300, 399, "macro")]
    pred = [iv(0, 9, "macro"), iv(100, 199, "macro"), iv(500, 509, "micro"), iv(600, 605, "blink")]
    s = evaluate(gt, pred)
    mi, ma, ov = s.by_kind["micro"], s.by_kind["macro"], s.overall
    assert (mi.tp, mi.fp, mi.fn) == (0, 1, 1)  # the macro prediction on the micro GT does not count
    assert (ma.tp, ma.fp, ma.fn) == (1, 1, 1)
    assert (ov.tp, ov.n_pred, ov.n_gt) == (1, 3, 3)  # blinks are not scored
    assert ov.f1 == pytest.approx(1 / 3)


def test_empty_cases() -> None:
    assert Counts(0, 0, 0).f1 == 0.0
    c = evaluate([], [iv(0, 5)]).by_kind["micro"]
    assert (c.tp, c.fp, c.fn, c.precision) == (0, 1, 0, 0.0)
    c = evaluate([iv(0, 5)], []).by_kind["micro"]
    assert (c.tp, c.fn, c.recall) == (0, 1, 0.0)


def test_only_gt_videos_ignores_other_videos() -> None:
    gt, pred = [iv(0, 9, video="a")], [iv(0, 9, video="a"), iv(0, 9, video="other")]
    assert evaluate(gt, pred).by_kind["micro"].fp == 1
    assert evaluate(gt, pred, only_gt_videos=True).by_kind["micro"].fp == 0


def _segments_csv(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# au-annotate segments", "video,face_id,segment_id,kind,onset_frame,apex_frame,offset_frame,score"]
    lines += [f"{v},face0,{i},{k},{a},{b},{c},1.0" for i, (v, k, a, b, c) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")


def test_reads_our_segment_csvs_and_samm_style_ground_truth(tmp_path) -> None:
    _segments_csv(tmp_path / "out" / "sub006" / "006_1.segments.csv",
                  [("sub006/006_1.mp4", "micro", 100, 105, 110), ("sub006/006_1.mp4", "macro", 400, 500, 600)])
    _segments_csv(tmp_path / "out" / "sub007" / "007_3.segments.csv", [("sub007/007_3.mp4", "micro", 10, 12, 14)])
    pred = read_predictions(tmp_path / "out")
    assert len(pred) == 3 and pred[0].video == "sub006/006_1.mp4"
    gt = tmp_path / "samm_lv.csv"
    gt.write_text("Subject;Filename;Onset;Apex;Offset;Type\r\n006;006_1;101;105;111;Micro - 1/2\r\n"
                  "006;006_1;390;480;610;Macro\r\n007;007_3;200;210;220;Micro - 1/2\r\n")
    g = read_ground_truth(gt, video_col="Filename", onset_col="Onset", apex_col="Apex", offset_col="Offset",
                          kind_col="Type")
    assert [x.kind for x in g] == ["micro", "macro", "micro"] and g[0].apex == 105
    s = evaluate(g, pred)
    assert s.video_key == "stem" and s.notes
    assert s.by_kind["micro"].tp == 1 and s.by_kind["micro"].fp == 1 and s.by_kind["micro"].fn == 1
    assert s.by_kind["macro"].tp == 1  # 400..600 vs 390..610: 201/221


def test_combined_segments_csv_is_preferred(tmp_path) -> None:
    _segments_csv(tmp_path / "segments.csv", [("a.mp4", "micro", 0, 1, 2)])
    _segments_csv(tmp_path / "a.segments.csv", [("a.mp4", "micro", 0, 1, 2)])
    assert len(read_predictions(tmp_path)) == 1


def test_kind_from_duration_when_no_kind_column(tmp_path) -> None:
    gt = tmp_path / "gt.csv"
    gt.write_text("video,onset_frame,offset_frame\na.mp4,0,14\na.mp4,100,115\n")
    with pytest.raises(MegcError, match="fps"):
        read_ground_truth(gt)
    kinds = [x.kind for x in read_ground_truth(gt, fps=30.0)]
    assert kinds == ["micro", "macro"]  # 15 frames = 0.5 s is micro, 16 frames is not


def test_file_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("video,onset\na,1\n")
    with pytest.raises(MegcError, match=r"bad\.csv: missing column"):
        read_ground_truth(bad)
    bad.write_text("video,onset_frame,offset_frame,kind\na,x,3,micro\n")
    with pytest.raises(MegcError, match=r"bad\.csv: row 2"):
        read_ground_truth(bad)
    with pytest.raises(MegcError, match="not found"):
        read_predictions(tmp_path / "nope")
    with pytest.raises(MegcError, match="no segments"):
        read_predictions(tmp_path)


def test_cli_prints_table_and_writes_json(tmp_path) -> None:
    gt = tmp_path / "gt.csv"
    gt.write_text("video,onset_frame,apex_frame,offset_frame,kind\na.mp4,0,4,9,micro\na.mp4,50,60,99,macro\n")
    _segments_csv(tmp_path / "out" / "a.segments.csv", [("a.mp4", "micro", 0, 4, 4), ("a.mp4", "micro", 30, 31, 32)])
    res = CliRunner().invoke(main, ["evaluate-spotting", "--gt", str(gt), "--pred", str(tmp_path / "out"),
                                    "-o", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "micro" in res.output and "overall" in res.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["kinds"]["micro"] == {"tp": 1, "fp": 1, "fn": 0, "n_pred": 2, "n_gt": 1, "precision": 0.5,
                                     "recall": 1.0, "f1": pytest.approx(2 / 3, abs=1e-6)}
    assert rep["kinds"]["macro"]["fn"] == 1
    bad = CliRunner().invoke(main, ["evaluate-spotting", "--gt", str(tmp_path / "missing.csv"), "--pred",
                                    str(tmp_path / "out")])
    assert bad.exit_code == 1 and "missing.csv" in bad.output and "Traceback" not in bad.output
