"""AU decode + emotion rules: one video's flow samples and their model probabilities -> Segments.

The model side of a run is loaded once, at the start of the run, (`load_model`): the batch runner, the AU decoder (thresholds, reliable AUs)
and the FACS emotion rules.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from au_annotate.aus import AUDecoder, active_aus, emotion_softmax
from au_annotate.records import Segment, Window
from au_annotate.settings import Settings
from au_annotate.work import VideoWork

if TYPE_CHECKING:  # torch loads only when a run loads its model (`import au_annotate.api` stays light)
    from au_annotate.infer import BatchRunner
    from au_annotate.rules import RuleSet


@dataclass
class ModelBundle:
    """Everything the model side of a run needs, loaded once."""

    runner: BatchRunner
    decoder: AUDecoder
    rules: RuleSet
    name: str
    sha256: str
    input_layout: str
    input_encoding: str = "seed-hsv"
    emotion_classes: tuple[str, ...] = ()  # the model's emotion outputs, after its AU outputs; () = none
    n_aus: int = 0  # AU outputs of the model (the emotion outputs follow)
    min_score: float | dict[str, float] | None = None  # settings.min_score: spotting cut-off (None = none)
    emotion_bar: float | None = None  # the model emotion is "uncertain" below this probability (None: never)


def load_model(settings: Settings) -> ModelBundle:
    """Weights (registry order + pinned checksum), the batch runner on the chosen device, the decoder and the rules.
    Raises WeightsError, InferenceError or RulesError with a one-line message."""
    from au_annotate.infer import BatchRunner
    from au_annotate.rules import RuleSet
    from au_annotate.weights import load_weights

    loaded = load_weights(settings.weights, au_order=settings.au_order)
    runner = BatchRunner(loaded, device=settings.device, batch_size=settings.batch_size)
    decoder = AUDecoder.from_model(loaded.au_names, loaded.thresholds, loaded.reliable, all_aus=settings.all_aus,
                                   calibrated=loaded.calibrated).with_thresholds(settings.au_thresholds or {})
    min_score_for(settings.min_score, "micro")  # a bad value fails the run before it starts (ValueError)
    return ModelBundle(runner=runner, decoder=decoder, rules=RuleSet.load(settings.rules), name=loaded.name,
                       sha256=loaded.sha256, input_layout=loaded.input_layout, input_encoding=loaded.input_encoding,
                       emotion_classes=loaded.emotion_classes, n_aus=loaded.n_aus, min_score=settings.min_score,
                       emotion_bar=_emotion_bar(loaded.meta))


def _emotion_bar(meta: dict) -> float | None:
    """The checkpoint's emotion bar (meta.training.emotion_bar, chosen in inner folds), None when it has none."""
    bar = (meta.get("training") or {}).get("emotion_bar")
    return float(bar) if isinstance(bar, int | float) and not isinstance(bar, bool) else None


def min_score_for(min_score: float | dict[str, float] | None, kind: str) -> float:
    """The spotting cut-off of one window kind from settings.min_score (-inf when none); ValueError when malformed."""
    if min_score is None:
        return float("-inf")
    if isinstance(min_score, dict):
        bad = [k for k in min_score if k not in ("micro", "macro", "blink")]
        if bad:
            raise ValueError(f"min_score: unknown window kind {bad[0]!r} (micro, macro or blink)")
        value = min_score.get(kind)
        if value is None:
            return float("-inf")
    else:
        value = min_score
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"min_score must be a number or a table of numbers per kind, got {value!r}")
    return float(value)


UNCERTAIN = "uncertain"  # the model emotion below its bar (ModelBundle.emotion_bar)


def build_segments(work: VideoWork, probs: np.ndarray, model: ModelBundle) -> tuple[Segment, ...]:
    """One Segment per flow sample: its window, times, reported AUs (probability, presence, code) and emotion."""
    if model.min_score is not None:  # a study's calibrated spotting threshold: weaker windows are not reported
        keep = [i for i, s in enumerate(work.samples)
                if s.window.score >= min_score_for(model.min_score, s.window.kind)]
        work = replace(work, samples=[work.samples[i] for i in keep])
        probs = probs[keep]
    if not work.samples:
        return ()
    k = model.n_aus or probs.shape[1] - len(model.emotion_classes)
    p, present, codes = model.decoder.decode(probs[:, :k])
    emo = emotion_softmax(probs[:, k:]) if model.emotion_classes else None
    out = []
    for i, (s, code) in enumerate(zip(work.samples, codes, strict=True)):
        w = s.window
        if w.kind != "micro":  # trained on micro-expression apex flow only: probabilities, no decisions (README)
            present[i] = False
            code = ""
        emotion, rule = model.rules.match(active_aus(model.decoder.au_names, present[i]))
        e_name, e_p = "", float("nan")
        if emo is not None and w.kind == "micro" and w.quality == "ok":  # the model's class only where it was trained
            e_p = float(emo[i].max())
            sure = model.emotion_bar is None or e_p >= model.emotion_bar
            e_name = model.emotion_classes[int(emo[i].argmax())] if sure else UNCERTAIN
        out.append(Segment(
            video=work.job.rel.as_posix(), face_id=s.face_id, segment_id=i, kind=w.kind,
            onset_frame=w.onset, apex_frame=w.apex, offset_frame=w.offset,
            onset_s=round(s.onset_s, 6), apex_s=round(s.apex_s, 6), offset_s=round(s.offset_s, 6),
            duration_s=round(max(0.0, s.offset_s - s.onset_s), 6), score=float(w.score),
            au_names=model.decoder.au_names, probs=p[i], present=present[i], aus=code, emotion=emotion, rule=rule,
            emotion_model=e_name, emotion_model_p=round(e_p, 6), uncalibrated=model.decoder.uncalibrated,
            flow_image=s.image, apex_crop=s.apex_thumb, quality=w.quality, context=w.context, strip=w.strip,
            regions=w.regions,
        ))
    return tuple(out)


def below_min_score(work: VideoWork, model: ModelBundle) -> tuple[Window, ...]:
    """The windows a study's calibrated cut-off (settings.min_score) leaves out, with reason "below_min_score"."""
    if model.min_score is None:
        return ()
    return tuple(replace(s.window, reason="below_min_score") for s in work.samples
                 if s.window.score < min_score_for(model.min_score, s.window.kind))
