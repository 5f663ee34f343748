"""What the outputs decide and where (issue 25): AU presence and both emotions on micro windows only, the model emotion
only on quality-ok micro windows and `uncertain` below the checkpoint's bar, the thresholds in every output's header;
the emotion bar and the positive ratio chosen on out-of-fold predictions only."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from au_annotate.aus import AUDecoder
from au_annotate.records import FlowSample, VideoInfo, VideoJob, VideoResult, Window
from au_annotate.rules import RuleSet
from au_annotate.segments import UNCERTAIN, ModelBundle, build_segments
from au_annotate.training.folds import emotion_bar, positive_ratio
from au_annotate.work import VideoWork
from au_annotate.writers import CSVWriter, JSONWriter, WriteContext, read_segments_csv

AUS = ("AU06", "AU12")
CLASSES = ("negative", "positive", "surprise")


def _bundle(bar: float | None) -> ModelBundle:
    dec = AUDecoder.from_model(AUS, np.array([0.5, 0.5], np.float32), np.array([True, True]),
                               calibrated=np.array([True, True]))
    return ModelBundle(runner=None, decoder=dec, rules=RuleSet.load(), name="m", sha256="0" * 64,  # type: ignore[arg-type]
                       input_layout="face", emotion_classes=CLASSES, n_aus=2, emotion_bar=bar)


def _work(tmp: Path, windows: list[Window]) -> VideoWork:
    job = VideoJob(path=tmp / "v.mp4", rel=PurePosixPath("v.mp4"), out_dir=tmp)
    info = VideoInfo(path=job.path, backend="t", width=8, height=8, fps=30.0, n_frames=300, duration_s=10.0)
    samples = [FlowSample(face_id="face0", window=w, onset_s=w.onset / 30, apex_s=w.apex / 30, offset_s=w.offset / 30,
                          image=np.zeros((28, 28, 3), np.uint8)) for w in windows]
    return VideoWork(job=job, info=info, samples=samples, frames=300, frames_with_face=300, faces=1,
                     signal=np.zeros((0, 4), np.float32))


def _logits(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def test_decisions_on_micro_windows_only_and_an_emotion_that_abstains(tmp_path: Path) -> None:
    windows = [Window(10, 12, 14, 2.0, "micro"), Window(40, 50, 70, 2.0, "macro"),
               Window(100, 102, 104, 2.0, "micro", quality="head_motion"), Window(200, 202, 204, 2.0, "micro")]
    aus = np.array([[0.9, 0.9]] * 4, np.float32)  # 6+12 present where decided: happiness by the FACS rules
    # emotion outputs are sigmoid(logit); emotion_softmax recovers the class probabilities from them
    sure, unsure = np.array([0.05, 0.9, 0.05]), np.array([0.3, 0.4, 0.3])
    emo = np.stack([sure, sure, sure, unsure])
    probs = np.concatenate([aus, 1 / (1 + np.exp(-np.log(emo)))], axis=1).astype(np.float32)
    segs = build_segments(_work(tmp_path, windows), probs, _bundle(bar=0.6))
    micro, macro, gated, low = segs
    assert micro.aus == "6+12" and micro.emotion == "happiness" and micro.emotion_model == "positive"
    assert micro.emotion_model_p == pytest.approx(0.9, abs=1e-4)
    assert macro.aus == "" and not macro.present.any() and macro.emotion == "" and macro.emotion_model == ""
    assert macro.probs.tolist() == pytest.approx([0.9, 0.9])  # probabilities stay
    assert gated.aus == "6+12" and gated.emotion_model == ""  # a gated micro window: AUs yes, the model emotion no
    assert low.emotion_model == UNCERTAIN and low.emotion_model_p == pytest.approx(0.4, abs=1e-4)
    assert build_segments(_work(tmp_path, windows[3:]), probs[3:], _bundle(bar=None))[0].emotion_model == "positive"


def test_thresholds_and_what_is_decided_are_in_every_header(tmp_path: Path) -> None:
    work = _work(tmp_path, [Window(10, 12, 14, 2.0, "micro")])
    segs = build_segments(work, np.full((1, 5), 0.9, np.float32), _bundle(bar=0.5))
    res = VideoResult(job=work.job, status="done", info=work.info, segments=segs, frames=300, frames_with_face=300)
    ctx = WriteContext(tool_version="t", model_name="m", model_sha256="0" * 64, au_names=AUS,
                       thresholds=(("AU06", 0.412),), uncalibrated=("AU12",))
    CSVWriter().write(res, tmp_path / "v.csv", ctx)
    head = [ln for ln in (tmp_path / "v.csv").read_text(encoding="utf-8").splitlines() if ln.startswith("#")]
    assert "# thresholds: AU06 0.412; probability only: AU12" in head
    assert any(ln.startswith("# decisions: an AU is present") and "micro windows only" in ln for ln in head)
    assert any(ln.startswith("# emotions: emotion_facs = a FACS rule") and "emotion_model = the model's" in ln
               for ln in head)
    assert len(read_segments_csv(tmp_path / "v.csv")) == 1
    JSONWriter().write(res, tmp_path / "v.json", ctx)
    doc = json.loads((tmp_path / "v.json").read_text(encoding="utf-8"))
    assert doc["thresholds"] == {"AU06": 0.412} and "micro windows only" in doc["decisions"]


def test_emotion_bar_is_the_lowest_that_keeps_the_precision() -> None:
    """Sorted by confidence the predictions are right, right, wrong, right, wrong, wrong: precision of the top n is
    1, 1, .67, .75, .6, .5, so at 0.75 the top 4 are kept and the bar lies between the 4th and 5th probability."""
    top = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    right = [True, True, False, True, False, False]
    probs = np.zeros((6, 3))
    probs[:, 0] = top
    probs[:, 1] = probs[:, 2] = (1 - top) / 2
    classes = np.array([0 if r else 1 for r in right])
    assert emotion_bar(probs, classes, 0.75) == pytest.approx(0.65)
    assert emotion_bar(probs, classes, 0.5) == 0.0  # every prediction together reaches it: never uncertain
    assert emotion_bar(probs, np.array([1] * 6), 0.75) > 1.0  # never right: always uncertain
    assert emotion_bar(probs, np.array([-1] * 6), 0.75) > 1.0  # no known class: always uncertain


def test_positive_ratio_is_the_share_called_over_the_prevalence() -> None:
    y = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], bool)
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.9], [0.1, 0.3]])
    ratio = positive_ratio(y, scores, np.array([0.5, 0.5]))
    assert ratio.tolist() == pytest.approx([3.0, 1.0])  # AU a: 3 of 4 called at prevalence 1/4


def test_a_threshold_decides_only_with_ten_positives_and_at_most_twice_the_prevalence() -> None:
    from au_annotate.training.train import calibrated_mask

    names = ("AU01", "AU02", "AU04", "AU05", "AU06")
    got = calibrated_mask(names, [10, 10, 9, 40, 40], {"AU01": 2.0, "AU02": 2.01, "AU04": 1.0, "AU05": float("nan")})
    assert got == [True, False, False, False, False]  # AU06: no ratio known
