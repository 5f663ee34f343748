"""Train HTNet on flow pictures: seeded, deterministic on CPU, with flow-respecting augmentation and inner-CV thresholds.

Recipe: BCE-with-logits (optional per-AU pos_weight, optional label smoothing), Adam, fixed epochs, mini-batches in a
seeded order. Augmentation respects the seed encoding (hue = flow angle / 2): a horizontal flip turns the flow (u, v)
into (-u, v), so the angle t becomes 180 - t and the OpenCV hue h (0..179) becomes (90 - h) mod 180; the picture is
flipped AND its hue mirrored (saturation and value kept). Translations shift by whole pixels with edge replication.

Decision thresholds are chosen on the training samples only: out-of-fold probabilities from an inner group-k-fold over
the training subjects, then per AU the threshold that maximises F1 on them (midway between the two neighbouring scores).
"""

from __future__ import annotations

import contextlib
import math
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import GroupKFold

from au_annotate.flow import images_to_input
from au_annotate.model import HTNet, HTNetConfig

if TYPE_CHECKING:
    from au_annotate.training.data import AUDataset

ProgressFn = Callable[[int, int], None]  # (done, total)

MODEL_KEYS = ("patch_size", "dim", "heads", "num_hierarchies", "block_repeats", "mlp_mult", "dropout")


class TrainConfigError(ValueError):
    """A training option or config file is invalid (message names the key or the file)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (stored in the checkpoint as the recipe)."""

    epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    seed: int = 0
    pos_weight: str = "none"  # none | balanced (neg/pos per AU, capped at pos_weight_cap) | a number for every AU
    pos_weight_cap: float = 10.0
    label_smoothing: float = 0.0  # targets become y*(1-s) + s/2
    flip: bool = True  # horizontal flip with the hue mirrored (p = 0.5 per sample)
    translate: int = 2  # random shifts of up to this many pixels
    ensemble: int = 1  # average the probabilities of this many seeds (seed, seed+1, ...)
    inner_folds: int = 3  # inner group-k-fold for threshold selection
    model: dict[str, Any] = field(default_factory=dict)  # HTNetConfig overrides (dim, heads, block_repeats, ...)

    def __post_init__(self) -> None:
        """Validate values with a message naming the key."""
        checks = [
            ("epochs", self.epochs >= 1), ("lr", self.lr > 0), ("weight_decay", self.weight_decay >= 0),
            ("batch_size", self.batch_size >= 1), ("pos_weight_cap", self.pos_weight_cap >= 1),
            ("label_smoothing", 0 <= self.label_smoothing < 0.5), ("translate", 0 <= self.translate <= 6),
            ("ensemble", self.ensemble >= 1), ("inner_folds", self.inner_folds >= 2),
        ]
        for key, ok in checks:
            if not ok:
                raise TrainConfigError(f"invalid training option {key}={getattr(self, key)!r}")
        if self.pos_weight not in ("none", "balanced"):
            try:
                if float(self.pos_weight) <= 0:
                    raise ValueError
            except ValueError:
                raise TrainConfigError(
                    f"invalid training option pos_weight={self.pos_weight!r} (none, balanced or a positive number)"
                ) from None
        unknown = sorted(set(self.model) - set(MODEL_KEYS))
        if unknown:
            raise TrainConfigError(f"unknown model option(s) {', '.join(unknown)} (known: {', '.join(MODEL_KEYS)})")
        try:
            self.model_config(2)
        except ValueError as exc:
            raise TrainConfigError(f"invalid model options: {exc}") from exc

    def model_config(self, num_classes: int) -> HTNetConfig:
        """The HTNet configuration: the seed's, with this recipe's overrides and `num_classes` outputs."""
        return HTNetConfig(**{**HTNetConfig().to_dict(), **self.model, "num_classes": num_classes})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (recipe stored in checkpoints and reports)."""
        d = asdict(self)
        d["model"] = dict(self.model)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TrainConfigError(f"unknown training option(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values = dict(d)
        if "pos_weight" in values:
            values["pos_weight"] = str(values["pos_weight"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise TrainConfigError(f"invalid training options: {exc}") from exc


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a TOML recipe: top-level keys or a ``[train]`` table, plus an optional ``[model]`` table."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainConfigError(f"{p}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TrainConfigError(f"{p}: not valid TOML ({exc})") from exc
    values = dict(data.get("train", {}))
    values.update({k: v for k, v in data.items() if k not in ("train", "model")})
    if "model" in data:
        values["model"] = dict(data["model"])
    try:
        return TrainConfig.from_dict(values)
    except TrainConfigError as exc:
        raise TrainConfigError(f"{p}: {exc}") from exc


# ------------------------------------------------------------------------------------------------------ augmentation


def flip_pictures(images: np.ndarray) -> np.ndarray:
    """Horizontal mirror of uint8 RGB flow pictures (N, H, W, 3) with the flow angle mirrored (hue h -> 90 - h)."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        h = hsv[..., 0].astype(np.int16)
        hsv[..., 0] = ((90 - h) % 180).astype(np.uint8)
        out[i] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[:, ::-1]
    return out


def _shift(x: torch.Tensor, dx: np.ndarray, dy: np.ndarray, t: int) -> torch.Tensor:
    """Shift each picture of (B, C, H, W) by (dx, dy) pixels with edge replication."""
    padded = F.pad(x, (t, t, t, t), mode="replicate")
    h, w = x.shape[2:]
    return torch.stack([padded[i, :, t + dy[i] : t + dy[i] + h, t + dx[i] : t + dx[i] + w] for i in range(len(x))])


# ---------------------------------------------------------------------------------------------------------- training


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seed torch and train on one thread for the block, restoring the caller's RNG state and thread count after.

    One thread makes the float reductions independent of the machine's core count; the CPU kernels HTNet uses are
    deterministic (``torch.use_deterministic_algorithms`` is not called: it imports torch._inductor, ~10 s)."""
    threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng_state)


def _pos_weight(labels: np.ndarray, cfg: TrainConfig) -> torch.Tensor | None:
    """Per-AU positive weight for BCE: none, balanced (neg/pos capped), or one number."""
    if cfg.pos_weight == "none":
        return None
    if cfg.pos_weight == "balanced":
        pos = labels.sum(0)
        neg = len(labels) - pos
        w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
        return torch.from_numpy(np.clip(w, 1.0, cfg.pos_weight_cap).astype(np.float32))
    return torch.full((labels.shape[1],), float(cfg.pos_weight), dtype=torch.float32)


def train_model(
    images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, *, seed: int | None = None,
    progress: ProgressFn | None = None,
) -> HTNet:
    """Train one HTNet on uint8 RGB pictures (N, 28, 28, 3) and 0/1 labels (N, K); same inputs -> same weights."""
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need matching non-empty images and labels, got {len(images)} and {len(labels)}")
    seed = cfg.seed if seed is None else seed
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(images_to_input(images))
    x_flip = torch.from_numpy(images_to_input(flip_pictures(images))) if cfg.flip else None
    y = torch.from_numpy(labels.astype(np.float32))
    if cfg.label_smoothing:
        y = y * (1 - cfg.label_smoothing) + cfg.label_smoothing / 2
    pos_weight = _pos_weight(labels, cfg)
    n = len(x)
    steps = math.ceil(n / cfg.batch_size)
    with _deterministic(seed):
        model = HTNet.from_config(cfg.model_config(labels.shape[1]))
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        model.train()
        for epoch in range(cfg.epochs):
            order = rng.permutation(n)
            for s in range(steps):
                idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                xb = x[idx]
                if x_flip is not None:
                    use = torch.from_numpy(rng.random(len(idx)) < 0.5)
                    xb = torch.where(use[:, None, None, None], x_flip[idx], xb)
                if cfg.translate:
                    t = cfg.translate
                    xb = _shift(xb, rng.integers(-t, t + 1, len(idx)), rng.integers(-t, t + 1, len(idx)), t)
                opt.zero_grad(set_to_none=True)
                loss = F.binary_cross_entropy_with_logits(model(xb), y[idx], pos_weight=pos_weight)
                loss.backward()
                opt.step()
            if progress is not None:
                progress(epoch + 1, cfg.epochs)
        model.eval()
    return model


def predict_proba(model: HTNet, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Sigmoid probabilities float32 (N, K) for uint8 RGB pictures."""
    x = torch.from_numpy(images_to_input(images))
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out.append(torch.sigmoid(model(x[i : i + batch_size])).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.config.num_classes), np.float32)


def train_ensemble(
    images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, progress: ProgressFn | None = None
) -> list[HTNet]:
    """cfg.ensemble models with seeds seed, seed+1, ... (one model when ensemble == 1)."""
    models = []
    for k in range(cfg.ensemble):
        def prog(done: int, total: int, k: int = k) -> None:
            if progress is not None:
                progress(k * total + done, cfg.ensemble * total)

        models.append(train_model(images, labels, cfg, seed=cfg.seed + k, progress=prog))
    return models


def ensemble_proba(models: list[HTNet], images: np.ndarray) -> np.ndarray:
    """Mean probability of the models."""
    return np.mean([predict_proba(m, images) for m in models], axis=0).astype(np.float32)


# -------------------------------------------------------------------------------------------------------- thresholds


def best_f1_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """Threshold on `scores` maximising F1 for 0/1 `y` (predict positive when score >= threshold).

    The threshold sits midway between the lowest score predicted positive and the next lower score, so it generalises
    instead of sitting exactly on a training score. No positives: 1.0 plus a margin above every score (never fires).
    Ties in F1 go to the higher threshold (fewer positives)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        return float(max(1.0, s.max(initial=0.0)) + 1e-6) if s.size else 1.0
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # only cut where the score changes (a threshold cannot split tied scores)
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    f1 = np.where(last, 2 * tp / (2 * tp + fp + (y.sum() - tp)), -1.0)
    k = int(np.argmax(f1))  # first maximum = highest threshold among ties
    lower = s_sorted[k + 1] if k + 1 < len(s_sorted) else s_sorted[k] - 1e-3
    return float((s_sorted[k] + lower) / 2)


def select_thresholds(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-AU best-F1 thresholds (float32 (K,)) from out-of-fold scores of training samples, clipped to [0, 1]."""
    thr = [best_f1_threshold(labels[:, j], scores[:, j]) for j in range(labels.shape[1])]
    return np.clip(np.asarray(thr, dtype=np.float32), 0.0, 1.0)


def inner_folds(groups: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group-k-fold splits over `groups` (k capped at the number of groups); deterministic."""
    n_groups = len(np.unique(groups))
    k = min(k, n_groups)
    if k < 2:
        raise ValueError(f"need at least 2 subjects for inner folds, got {n_groups}")
    return list(GroupKFold(n_splits=k).split(np.zeros(len(groups)), groups=groups))


def oof_scores(
    images: np.ndarray, labels: np.ndarray, groups: np.ndarray, fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray],
    k: int,
) -> np.ndarray:
    """Out-of-fold scores over an inner group-k-fold: fit_predict(train_idx, test_idx) -> scores of test_idx."""
    scores = np.zeros(labels.shape, dtype=np.float32)
    for tr, te in inner_folds(groups, k):
        scores[te] = fit_predict(tr, te)
    return scores


@dataclass
class FittedHTNet:
    """Models trained on all given samples plus thresholds chosen by inner cross-validation on those samples."""

    models: list[HTNet]
    thresholds: np.ndarray
    oof: np.ndarray  # inner out-of-fold probabilities the thresholds came from

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Mean probability of the ensemble."""
        return ensemble_proba(self.models, images)


def fit_htnet(
    images: np.ndarray, labels: np.ndarray, groups: np.ndarray, cfg: TrainConfig, progress: ProgressFn | None = None
) -> FittedHTNet:
    """Thresholds from inner group-k-fold OOF predictions on these samples, then the final model(s) on all of them."""
    folds = inner_folds(groups, cfg.inner_folds)
    total = (len(folds) + 1) * cfg.ensemble * cfg.epochs
    done = [0]

    def stage(offset: int) -> ProgressFn:
        def prog(d: int, _t: int) -> None:
            if progress is not None:
                progress(offset + d, total)

        return prog

    oof = np.zeros(labels.shape, dtype=np.float32)
    for tr, te in folds:
        models = train_ensemble(images[tr], labels[tr], cfg, stage(done[0]))
        done[0] += cfg.ensemble * cfg.epochs
        oof[te] = ensemble_proba(models, images[te])
    thresholds = select_thresholds(labels, oof)
    models = train_ensemble(images, labels, cfg, stage(done[0]))
    return FittedHTNet(models, thresholds, oof)


def with_overrides(cfg: TrainConfig, **overrides: Any) -> TrainConfig:
    """A copy of cfg with the non-None overrides applied (model keys go into cfg.model)."""
    model = dict(cfg.model)
    top: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in MODEL_KEYS:
            model[key] = value
        else:
            top[key] = str(value) if key == "pos_weight" else value
    try:
        return replace(cfg, model=model, **top)
    except TypeError as exc:
        raise TrainConfigError(f"invalid training options: {exc}") from exc


# ------------------------------------------------------------------------------------------------------ checkpoints


def train_checkpoint(
    dataset: AUDataset, cfg: TrainConfig, out_path: str | Path, *, eval_report: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> tuple[str, FittedHTNet, list[bool]]:
    """Train on every sample of `dataset` (an AUDataset), choose thresholds by inner CV, write a checkpoint.

    eval_report: the metrics.json of an evaluation run with the SAME recipe and data; it supplies the reliable mask
    (frequent AUs that beat both baselines) and the metrics stored in the checkpoint. Without it, reliable = AUs with at
    least 10 positives and the checkpoint says that no cross-validated metrics back it. Returns (sha256, fit, reliable).
    """
    from au_annotate.training.evaluate import FREQUENT, MIN_F1, reliable_aus
    from au_annotate.weights import save_checkpoint

    if cfg.ensemble != 1:
        raise TrainConfigError("train writes one model per checkpoint: use ensemble = 1 (ensembles are for evaluate)")
    if eval_report is not None:
        if dict(eval_report.get("recipe", {})) != cfg.to_dict():
            raise TrainConfigError("the evaluation report was made with another recipe; re-run evaluate with this one")
        if eval_report.get("data", {}).get("files_sha256") != dataset.identity.get("files_sha256"):
            raise TrainConfigError("the evaluation report was made on other data (files_sha256 differs)")
        if list(eval_report.get("au_names", [])) != list(dataset.au_names):
            raise TrainConfigError("the evaluation report has another AU label space")
        try:
            rel = set(reliable_aus(eval_report["tables"]))  # the rule in code, not a list copied from the file
        except (KeyError, TypeError) as exc:
            raise TrainConfigError(f"the evaluation report has no per-AU tables ({exc})") from exc
        reliable = [au in rel for au in dataset.au_names]
    else:
        reliable = [bool(s >= FREQUENT) for s in dataset.labels.sum(0)]
    fit = fit_htnet(dataset.images, dataset.labels, dataset.subjects, cfg, progress)
    model = fit.models[0]
    positives = {au: int(s) for au, s in zip(dataset.au_names, dataset.labels.sum(0), strict=True)}
    meta = {
        "training": {
            "data": dict(dataset.identity),
            "missing_images": list(dataset.missing),
            "positives": positives,
            "label_rule": "AU present at any intensity/side, ref(..) counts, 'X or Y' counts every option (facs rule 'all')",
            "recipe": cfg.to_dict(),
            "thresholds": "per-AU best F1 on inner group-k-fold out-of-fold probabilities over the training subjects",
            "reliable_rule": (
                f"support >= {FREQUENT}, cross-validated F1 >= {MIN_F1}, >= 2x all-positive and > logistic regression"
            ),
        },
        "metrics": dict(eval_report) if eval_report is not None else None,
    }
    sha = save_checkpoint(
        out_path, model, config=model.config, au_names=dataset.au_names, thresholds=fit.thresholds, reliable=reliable,
        meta=meta,
    )
    return sha, fit, reliable
