"""Fine-tune the AU model on a study's review, and keep the result only if held-out reviewed videos do not get worse.

1. Windows: every window the coder called a real expression (confirmed, corrected, added) whose code parsed, at the
   coder's onset/offset (the tool's apex when it lies inside, else the middle); labels = the coder's AUs.
2. Flow: the product's own pipeline (decode -> face tracking -> flow picture, au_annotate/pipeline.py) with the
   spotter replaced by these windows, in the layout and encoding the base checkpoint was trained on.
3. Split BY VIDEO (seeded): `holdout` of the reviewed videos (at least one) are held out; nothing of them is trained on.
4. Candidates, both measured: `head` (the backbone frozen, only the final classification layer trained on the review)
   and `full` (every weight trained at a low learning rate on the review, mixed with the base training data when
   `base_data` is given). The thresholds and reliable AUs of the base checkpoint are kept.
5. The metric, fixed before anything runs: macro F1 over the AUs the checkpoint reports (an AU with neither coder
   positives nor predictions scores 1), the checkpoint's thresholds, on the held-out windows. The better candidate
   (F1, then lower log-loss) is kept only if its F1 is not below the base model's; otherwise nothing is written.

The checkpoint's meta (`review`) and its model card (`<out>.md`) record the review it came from.
"""

from __future__ import annotations

import copy
import math
import os
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from au_annotate.facs import au_number
from au_annotate.records import AlignedFace, VideoJob, Window
from au_annotate.review.agreement import REAL
from au_annotate.review.importer import coder_au_sets
from au_annotate.settings import DEFAULTS, Settings
from au_annotate.writers.review_schema import ADDED

METRIC = ("macro F1 over the checkpoint's reported AUs (an AU with no coder positive and no prediction scores 1), "
          "checkpoint thresholds, held-out videos' windows")


class FinetuneError(ValueError):
    """The review cannot be used for fine-tuning (the message says why)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune: epochs, learning rates, the held-out share of videos, the candidates and the seed."""

    epochs: int = 30
    lr_head: float = 3e-3
    lr_full: float = 3e-4
    batch_size: int = 16
    holdout: float = 0.34  # share of reviewed videos held out (at least one)
    modes: tuple[str, ...] = ("head", "full")
    seed: int = 0
    flip: bool = True


# ---------------------------------------------------------------------------------------------- windows and flow


def training_windows(df: pd.DataFrame) -> pd.DataFrame:
    """The review's real windows with parsed codes: video, face, onset/apex/offset frames, coder AUs."""
    d = df[df["decision"].isin((*REAL, ADDED)) & (df["code_error"] == "")].copy()
    onset = d["coder_onset_frame"].astype(int).to_numpy()
    offset = np.maximum(onset, d["coder_offset_frame"].astype(int).to_numpy())
    apex = d["tool_apex_frame"].astype(int).to_numpy()
    inside = (apex >= onset) & (apex <= offset)
    d["onset"], d["offset"] = onset, offset
    d["apex"] = np.where(inside, apex, (onset + offset) // 2)
    d.loc[d["apex"] == d["onset"], "apex"] = np.minimum(d["onset"] + 1, d["offset"])
    return d.reset_index(drop=True)


class _ScriptedSpotter:
    """A 'spotter' that emits given windows (the coder's) once their apex frame has been seen, keeping the faces and
    times of its latest frames (as a real spotter does) for their flow pictures."""

    def __init__(self, windows: list[Window]) -> None:
        self._todo = sorted(windows, key=lambda w: (w.apex, w.onset))
        self.max_latency_frames = max([w.apex - w.onset for w in windows] + [0]) + 4
        self._faces: deque[AlignedFace] = deque(maxlen=self.max_latency_frames + 2)
        self._times: dict[int, float] = {}

    def process_frame(self, index: int, pts_s: float, face: AlignedFace | None) -> list[Window]:
        if face is not None:
            self._faces.append(face)
        self._times[index] = pts_s
        self._times.pop(index - self.max_latency_frames - 2, None)
        out = [w for w in self._todo if w.apex <= index]
        self._todo = self._todo[len(out):]
        return out

    def face_pair(self, onset: int, apex: int) -> tuple[AlignedFace, AlignedFace] | None:
        """The apex's own (or nearest earlier) face and the face of its tracking epoch nearest to onset."""
        apex_face = max((f for f in self._faces if f.index <= apex), key=lambda f: f.index, default=None)
        if apex_face is None:
            return None
        same = [f for f in self._faces if f.epoch == apex_face.epoch and f.index <= apex_face.index]
        onset_face = min(same, key=lambda f: (abs(f.index - onset), f.index))
        return onset_face, apex_face

    def time_at(self, index: int) -> float | None:
        return self._times.get(index)

    def face_at(self, index: int) -> AlignedFace | None:
        return next((f for f in self._faces if f.index == index), None)

    def near_misses(self) -> list[Window]:
        """No detector, so no below-threshold peaks."""
        return []

    def flush(self) -> list[Window]:
        out, self._todo = self._todo, []
        return out

    def detection_floor(self) -> None:
        """No detector, so no floor."""
        return None


def extract_flow(video: Path, rel: str, windows: dict[str, list[Window]], settings: Settings) -> dict[
    tuple[str, int, int], np.ndarray
]:
    """Flow pictures of the given windows of one video, per (face, onset, apex), via the annotate pipeline."""
    from au_annotate.pipeline import VideoRun

    def scripted(face_id: str, fps: float, on_signal: object) -> _ScriptedSpotter:
        return _ScriptedSpotter(windows.get(face_id, []))

    job = VideoJob(path=video, rel=PurePosixPath(rel), out_dir=video.parent)
    work = VideoRun(job, settings, spotter_factory=scripted).run()  # type: ignore[arg-type]
    return {(s.face_id, s.window.onset, s.window.apex): s.image for s in work.samples}


def review_dataset(df: pd.DataFrame, videos_dir: str | os.PathLike[str], au_names: tuple[str, ...],
                   settings: Settings, problems: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pictures uint8 (N, 28, 28, 3), labels (N, K) in `au_names` order, video per sample) of the review's windows."""
    wins = training_windows(df)
    problems = problems if problems is not None else []
    images, labels, videos = [], [], []
    nums = [au_number(n) for n in au_names]
    for video, group in wins.groupby("video", sort=True):
        path = Path(videos_dir) / str(video)
        if not path.is_file():
            problems.append(f"{path}: video not found under --videos: its {len(group)} windows are left out")
            continue
        per_face: dict[str, list[Window]] = {}
        for r in group.itertuples(index=False):
            per_face.setdefault(str(r.face_id), []).append(Window(int(r.onset), int(r.apex), int(r.offset), 1.0,
                                                                  str(r.kind) if r.kind in ("micro", "macro") else "micro"))
        try:
            pics = extract_flow(path, str(video), per_face, settings)
        except Exception as e:  # one bad video must not cost the rest of the review
            problems.append(f"{path}: {' '.join(str(e).split())[:160]}")
            continue
        for r, aus in zip(group.itertuples(index=False), coder_au_sets(group["coder_aus"]), strict=True):
            pic = pics.get((str(r.face_id), int(r.onset), int(r.apex)))
            if pic is None:
                problems.append(f"{video}: {r.face_id} window at frame {r.onset}: no face crop there, left out")
                continue
            images.append(pic)
            labels.append([float(n in aus) for n in nums])
            videos.append(str(video))
    if not images:
        return np.zeros((0, 28, 28, 3), np.uint8), np.zeros((0, len(au_names)), np.float32), np.array([], str)
    return np.stack(images), np.asarray(labels, np.float32), np.asarray(videos)


# ---------------------------------------------------------------------------------------------------- training


def split_videos(videos: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, held out) splitting samples by video (seeded); FinetuneError with fewer than 2 videos."""
    names = sorted(set(videos.tolist()))
    if len(names) < 2:
        raise FinetuneError(f"the review covers {len(names)} video(s): a held-out check needs at least 2")
    rng = np.random.default_rng(seed)
    n_hold = min(len(names) - 1, max(1, round(holdout * len(names))))
    held = {names[i] for i in rng.permutation(len(names))[:n_hold]}
    test = np.array([v in held for v in videos], bool)
    return ~test, test


def held_out_score(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, reported: np.ndarray) -> dict[
    str, float
]:
    """The fixed metric (METRIC) and mean log-loss over the reported AUs."""
    f1s = []
    for j in np.flatnonzero(reported):
        pred, y = probs[:, j] >= thresholds[j], labels[:, j] > 0.5
        tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
        f1s.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    p = np.clip(probs[:, reported], 1e-6, 1 - 1e-6)
    y = labels[:, reported]
    bce = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if p.size else float("nan")
    return {"f1": float(np.mean(f1s)) if f1s else float("nan"), "log_loss": bce}


def _train(model: Any, images: np.ndarray, labels: np.ndarray, n_aus: int, cfg: FinetuneConfig, mode: str,
           encoding: str) -> Any:
    """Fine-tune a copy of `model`: only the classification head (`head`) or every weight (`full`). An ensemble's
    members are fine-tuned one by one (seeds seed, seed+1, ...) and stay an ensemble. The loss is on the AU outputs
    only: in `head` mode an emotion head's weights do not move; in `full` mode the shared backbone does; a blended
    pixel regression (model.PixelBlend) is kept as it was. The loop
    is training's own (``training.train.fit_epochs``: seeded batches, the encoding's flip, no shifts)."""
    import dataclasses

    import torch
    import torch.nn.functional as F

    from au_annotate.model import HTNetEnsemble, PixelBlend
    from au_annotate.training.train import _deterministic, fit_epochs

    if isinstance(model, PixelBlend):  # the network is fine-tuned; the pixel regression blended in stays as trained
        blend = copy.deepcopy(model)
        blend.net = _train(model.net, images, labels, n_aus, cfg, mode, encoding)
        return blend
    if isinstance(model, HTNetEnsemble):
        return HTNetEnsemble([_train(m, images, labels, n_aus, dataclasses.replace(cfg, seed=cfg.seed + k), mode,
                                     encoding) for k, m in enumerate(model.members)])
    model = copy.deepcopy(model)
    rng = np.random.default_rng(cfg.seed)
    y = torch.from_numpy(labels.astype(np.float32))

    def loss_fn(out: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out[:, :n_aus], y[idx])

    with _deterministic(cfg.seed):
        for p in model.parameters():
            p.requires_grad_(mode == "full")
        if mode == "head":
            for p in model.mlp_head.parameters():
                p.requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr_head if mode == "head" else cfg.lr_full)
        fit_epochs(model, opt, images, rng, loss_fn, epochs=cfg.epochs, batch_size=cfg.batch_size, flip=cfg.flip,
                   encoding=encoding)
        for p in model.parameters():
            p.requires_grad_(True)
    return model


@dataclass
class FinetuneResult:
    """What fine-tuning measured and whether a checkpoint was written."""

    kept: bool
    mode: str | None
    base: dict[str, float]
    candidates: dict[str, dict[str, float]]
    train_windows: int
    held_out_windows: int
    train_videos: list[str]
    held_out_videos: list[str]
    path: Path | None = None
    sha256: str | None = None
    problems: list[str] = field(default_factory=list)
    reason: str = ""


def finetune(reviewed: pd.DataFrame, videos_dir: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
             weights: str | None = None, settings: Settings = DEFAULTS, cfg: FinetuneConfig = FinetuneConfig(),
             base_data: str | os.PathLike[str] | None = None, provenance: dict[str, Any] | None = None,
             progress: Callable[[str], None] | None = None) -> FinetuneResult:
    """Fine-tune `weights` on the review, compare on held-out videos, write `out_path` only if not worse."""
    import torch

    from au_annotate.plan import settings_for_model
    from au_annotate.segments import load_model
    from au_annotate.training.train import predict_proba
    from au_annotate.weights import load_weights, save_checkpoint

    say = progress or (lambda _m: None)
    base = load_weights(weights)
    if not isinstance(base.model, torch.nn.Module):
        raise FinetuneError(f"{base.name}: not an HTNet checkpoint")
    run_settings = settings_for_model(settings.replace(weights=str(base.path)), load_model(
        settings.replace(weights=str(base.path), device="cpu")))
    problems: list[str] = []
    say("extracting the flow of the reviewed windows")
    images, labels, videos = review_dataset(reviewed, videos_dir, base.au_names, run_settings, problems)
    if not len(images):
        raise FinetuneError("no reviewed window could be extracted (no real windows with parsed codes, or no videos)")
    train, test = split_videos(videos, cfg.holdout, cfg.seed)
    reported = np.asarray(base.reliable, bool) if np.any(base.reliable) else np.ones(len(base.au_names), bool)
    thresholds = np.asarray(base.thresholds, np.float32)
    k = len(base.au_names)

    def score(model: Any) -> dict[str, float]:
        return held_out_score(predict_proba(model, images[test])[:, :k], labels[test], thresholds, reported)

    base_score = score(base.model)
    tr_x, tr_y = images[train], labels[train]
    if base_data is not None:
        from au_annotate.training.data import load_dataset

        ds = load_dataset(base_data, au_names=base.au_names)
        extra_x, extra_y = ds.images, ds.labels
    else:
        extra_x = extra_y = None
    candidates: dict[str, dict[str, float]] = {}
    models: dict[str, Any] = {}
    for mode in cfg.modes:
        say(f"fine-tuning ({mode})")
        x, y = (tr_x, tr_y)
        if mode == "full" and extra_x is not None:
            x, y = np.concatenate([tr_x, extra_x]), np.concatenate([tr_y, extra_y])
        models[mode] = _train(base.model, x, y, k, cfg, mode, base.input_encoding)
        candidates[mode] = score(models[mode])
    best = max(candidates, key=lambda m: (candidates[m]["f1"], -candidates[m]["log_loss"])) if candidates else None
    result = FinetuneResult(
        kept=False, mode=best, base=base_score, candidates=candidates, train_windows=int(train.sum()),
        held_out_windows=int(test.sum()), train_videos=sorted(set(videos[train].tolist())),
        held_out_videos=sorted(set(videos[test].tolist())), problems=problems)
    if best is None:
        result.reason = "no candidate mode"
        return result
    new = candidates[best]["f1"]
    if not (math.isfinite(new) and new >= base_score["f1"] - 1e-12):
        result.reason = (f"held-out {METRIC.split(' (')[0]} {new:.3f} ({best}) is below the base model's "
                         f"{base_score['f1']:.3f}: nothing written")
        return result
    meta = dict(base.meta)
    review_meta = {
        "base_model": {"name": base.name, "sha256": base.sha256},
        "mode": best, "metric": METRIC, "base": base_score, "candidates": candidates,
        "train_windows": result.train_windows, "held_out_windows": result.held_out_windows,
        "train_videos": result.train_videos, "held_out_videos": result.held_out_videos,
        "config": {k2: list(v) if isinstance(v, tuple) else v for k2, v in asdict(cfg).items()},
        "base_data": str(base_data) if base_data is not None else None, **(provenance or {}),
    }
    meta["review"] = review_meta
    out = Path(out_path)
    sha = save_checkpoint(out, models[best], config=base.config, au_names=base.au_names, thresholds=thresholds,
                          reliable=base.reliable, meta=meta, emotion_classes=base.emotion_classes)
    result.kept, result.path, result.sha256 = True, out, sha
    result.reason = f"held-out F1 {new:.3f} ({best}) >= base {base_score['f1']:.3f}"
    write_model_card(result, review_meta, out.with_suffix(".md"))
    return result


def write_model_card(result: FinetuneResult, review: dict[str, Any], path: Path) -> Path:
    """A short model card for a fine-tuned checkpoint: base model, the review, the split and the held-out numbers."""
    from au_annotate.fileio import atomic_open

    rows = [f"| base ({review['base_model']['name']}) | {result.base['f1']:.3f} | {result.base['log_loss']:.3f} |"]
    rows += [f"| {m} | {s['f1']:.3f} | {s['log_loss']:.3f} |" for m, s in result.candidates.items()]
    text = "\n".join([
        f"# {path.stem}: fine-tuned on a coder review", "",
        f"- base model: `{review['base_model']['name']}` sha256 `{review['base_model']['sha256']}`",
        f"- review table: `{review.get('review_table', '?')}` sha256 `{review.get('review_sha256', '?')}`",
        f"- coders: {', '.join(review.get('coders', [])) or '?'}; created {review.get('created', '?')}",
        f"- training windows: {result.train_windows} from {len(result.train_videos)} videos "
        f"({', '.join(result.train_videos)}); base training data: {review.get('base_data') or 'none'}",
        f"- held out (split by video, seed {review['config']['seed']}): {result.held_out_windows} windows from "
        f"{', '.join(result.held_out_videos)}",
        f"- metric (fixed before training): {METRIC}", f"- kept: `{result.mode}` ({result.reason})",
        "- thresholds and reliable AUs: the base checkpoint's (re-fit them with `au-annotate calibrate`)", "",
        "| model | held-out F1 | held-out log-loss |", "|---|---:|---:|", *rows, "",
        "The held-out windows are few: these numbers say the study's model did not get worse on them, not how well "
        "it does in general.", ""])
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path
