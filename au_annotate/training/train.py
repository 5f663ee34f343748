"""Train HTNet on flow pictures: seeded, deterministic on CPU, with flow-respecting augmentation and inner-CV thresholds.

Recipe: BCE-with-logits (optional per-AU pos_weight, optional label smoothing), Adam, fixed epochs, mini-batches in a
seeded order. Augmentation respects the seed encoding (hue = flow angle / 2): a horizontal flip turns the flow (u, v)
into (-u, v), so the angle t becomes 180 - t and the OpenCV hue h (0..179) becomes (90 - h) mod 180; the picture is
flipped AND its hue mirrored (saturation and value kept). Translations shift by whole pixels with edge replication.

Decision thresholds are chosen on the training samples only: out-of-fold probabilities from an inner group-k-fold over
the training subjects, then per AU the threshold that maximises F1 on them (``au_annotate.training.folds``). The
reliable AUs of a checkpoint come from ``au_annotate.training.reliability``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from au_annotate.aus import emotion_softmax  # noqa: F401  (re-exported: evaluation and annotate share it)
from au_annotate.errors import check_keys
from au_annotate.fileio import load_toml
from au_annotate.flow import HTNET_ENCODING, SEED_ENCODING, TVL1_METHOD, flip_uv_strain, images_to_input
from au_annotate.model import HTNet, HTNetConfig, HTNetEnsemble
from au_annotate.training.baselines import LOGREG_C, LogRegModel, blend_module, fit_logreg
from au_annotate.training.folds import (
    EMOTION_MIN_PRECISION,
    emotion_bar,
    inner_folds,
    positive_ratio,
    select_thresholds,
)
from au_annotate.training.reliability import CALIBRATED_MIN, KAPPA_RULE, RELIABILITY
from au_annotate.weights import save_checkpoint

if TYPE_CHECKING:
    from au_annotate.training.data import AUDataset

ProgressFn = Callable[[int, int], None]  # (done, total)

MODEL_KEYS = ("patch_size", "dim", "heads", "num_hierarchies", "block_repeats", "mlp_mult", "dropout")


LATER_DEFAULTS: dict[str, Any] = {"refit": True, "emotion_weight": 1.0, "blend_logreg": 0.0}  # keys added later


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
    refit: bool = True  # final model(s) refit on all samples; False: the inner-fold models are the ensemble (cheaper)
    emotion_weight: float = 1.0  # weight of the 3-class emotion cross-entropy when the data has emotion labels
    blend_logreg: float = 0.0  # > 0: each AU's probability is (1 - w) HTNet's + w the pixel logistic regression's
    # (training.baselines; fitted on the AU-coded rows), thresholds on the blend's inner out-of-fold probabilities
    model: dict[str, Any] = field(default_factory=dict)  # HTNetConfig overrides (dim, heads, block_repeats, ...)

    def __post_init__(self) -> None:
        """Validate values with a message naming the key."""
        checks = [
            ("epochs", self.epochs >= 1), ("lr", self.lr > 0), ("weight_decay", self.weight_decay >= 0),
            ("batch_size", self.batch_size >= 1), ("pos_weight_cap", self.pos_weight_cap >= 1),
            ("label_smoothing", 0 <= self.label_smoothing < 0.5), ("translate", 0 <= self.translate <= 6),
            ("ensemble", self.ensemble >= 1), ("inner_folds", self.inner_folds >= 2),
            ("emotion_weight", self.emotion_weight >= 0), ("blend_logreg", 0 <= self.blend_logreg <= 1),
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
        check_keys(self.model, MODEL_KEYS, "model option", TrainConfigError)
        try:
            self.model_config(2)
        except ValueError as exc:
            raise TrainConfigError(f"invalid model options: {exc}") from exc

    def model_config(self, num_classes: int) -> HTNetConfig:
        """The HTNet configuration: the seed's, with this recipe's overrides and `num_classes` outputs."""
        return HTNetConfig(**{**HTNetConfig().to_dict(), **self.model, "num_classes": num_classes})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (recipe stored in checkpoints and reports); keys added later appear only when not at their default,
        so recipes written before them still compare equal."""
        d = asdict(self)
        d["model"] = dict(self.model)
        for key, default in LATER_DEFAULTS.items():
            if d[key] == default:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are an error."""
        check_keys(d, (f.name for f in fields(cls)), "training option", TrainConfigError)
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
    data = load_toml(p, TrainConfigError)
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


@dataclass(frozen=True)
class Targets:
    """What a sample is trained on besides its AU labels: which rows have AU labels, and the emotion class index."""

    au_mask: np.ndarray | None = None  # bool (N,); None = every row has AU labels
    emotions: np.ndarray | None = None  # int (N,), -1 unknown; None = no emotion outputs
    n_emotions: int = 0  # emotion outputs appended after the AU outputs (0 = AU model only)

    def take(self, idx: np.ndarray) -> Targets:
        """The targets of the samples at idx."""
        return Targets(None if self.au_mask is None else self.au_mask[idx],
                       None if self.emotions is None else self.emotions[idx], self.n_emotions)

    def mask(self, n: int) -> np.ndarray:
        """bool (n,): rows with AU labels."""
        return np.ones(n, bool) if self.au_mask is None else np.asarray(self.au_mask, bool)


NO_TARGETS = Targets()


def flip_for(encoding: str) -> Callable[[np.ndarray], np.ndarray]:
    """The horizontal mirror that respects an encoding: hue mirrored (seed HSV) or u negated (HTNet u/v/strain)."""
    if encoding == HTNET_ENCODING:
        return flip_uv_strain
    if encoding == SEED_ENCODING:
        return flip_pictures
    raise ValueError(f"unknown flow encoding {encoding!r}")


def fit_epochs(
    model: torch.nn.Module, opt: torch.optim.Optimizer, images: np.ndarray, rng: np.random.Generator,
    loss_fn: Callable[[torch.Tensor, np.ndarray], torch.Tensor], *, epochs: int, batch_size: int, flip: bool,
    encoding: str, translate: int = 0, progress: ProgressFn | None = None,
) -> None:
    """The one training loop (train_model and the review's fine-tuning): per epoch a seeded order of mini-batches,
    each sample mirrored with p = 0.5 (``flip_for(encoding)``) and shifted by up to `translate` pixels, then one
    optimiser step on ``loss_fn(outputs, batch indices)``. Leaves the model in eval mode.

    Random draws come from `rng` in a fixed order (order, flips, shifts), so the same inputs give the same weights."""
    x = torch.from_numpy(images_to_input(images))
    x_flip = torch.from_numpy(images_to_input(flip_for(encoding)(images))) if flip else None
    n = len(x)
    steps = math.ceil(n / batch_size)
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(n)
        for s in range(steps):
            idx = order[s * batch_size : (s + 1) * batch_size]
            xb = x[idx]
            if x_flip is not None:
                use = torch.from_numpy(rng.random(len(idx)) < 0.5)
                xb = torch.where(use[:, None, None, None], x_flip[idx], xb)
            if translate:
                t = translate
                xb = _shift(xb, rng.integers(-t, t + 1, len(idx)), rng.integers(-t, t + 1, len(idx)), t)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), idx)
            loss.backward()
            opt.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    model.eval()


def train_model(
    images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, *, seed: int | None = None,
    progress: ProgressFn | None = None, targets: Targets = NO_TARGETS, encoding: str = SEED_ENCODING,
) -> HTNet:
    """Train one HTNet on uint8 RGB pictures (N, 28, 28, 3) and 0/1 labels (N, K); same inputs -> same weights.

    With targets.n_emotions > 0 the model has K + E outputs: masked BCE on the AU outputs (rows with AU labels) plus
    emotion_weight x cross-entropy on the emotion outputs (rows with a known emotion)."""
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need matching non-empty images and labels, got {len(images)} and {len(labels)}")
    seed = cfg.seed if seed is None else seed
    rng = np.random.default_rng(seed)
    mask_np = targets.mask(len(images))
    y = torch.from_numpy(labels.astype(np.float32))
    if cfg.label_smoothing:
        y = y * (1 - cfg.label_smoothing) + cfg.label_smoothing / 2
    au_mask = torch.from_numpy(mask_np.astype(np.float32))
    n_emo = targets.n_emotions
    emo = torch.from_numpy(np.asarray(targets.emotions, np.int64)) if n_emo else None
    pos_weight = _pos_weight(labels[mask_np], cfg) if mask_np.any() else None
    k = labels.shape[1]

    def loss_fn(out: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        m = au_mask[idx]
        bce = F.binary_cross_entropy_with_logits(out[:, :k], y[idx], pos_weight=pos_weight, reduction="none")
        loss = (bce.mean(1) * m).sum() / m.sum().clamp(min=1.0)
        if emo is not None:
            e = emo[idx]
            known = e >= 0
            if bool(known.any()):
                loss = loss + cfg.emotion_weight * F.cross_entropy(out[known, k:], e[known])
        return loss

    with _deterministic(seed):
        model = HTNet.from_config(cfg.model_config(k + n_emo))
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        fit_epochs(model, opt, images, rng, loss_fn, epochs=cfg.epochs, batch_size=cfg.batch_size, flip=cfg.flip,
                   encoding=encoding, translate=cfg.translate, progress=progress)
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
    images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, progress: ProgressFn | None = None,
    targets: Targets = NO_TARGETS, encoding: str = SEED_ENCODING,
) -> list[HTNet]:
    """cfg.ensemble models with seeds seed, seed+1, ... (one model when ensemble == 1)."""
    models = []
    for k in range(cfg.ensemble):
        def prog(done: int, total: int, k: int = k) -> None:
            if progress is not None:
                progress(k * total + done, cfg.ensemble * total)

        models.append(train_model(images, labels, cfg, seed=cfg.seed + k, progress=prog, targets=targets,
                                  encoding=encoding))
    return models


def ensemble_proba(models: list[HTNet], images: np.ndarray) -> np.ndarray:
    """Mean probability of the models."""
    return np.mean([predict_proba(m, images) for m in models], axis=0).astype(np.float32)


@dataclass
class FittedHTNet:
    """Models trained on all given samples plus thresholds chosen by inner cross-validation on those samples."""

    models: list[HTNet]
    thresholds: np.ndarray
    oof: np.ndarray  # inner out-of-fold probabilities the thresholds came from (the blend's on the AU columns)
    emotion_bar: float = 0.0  # below this class probability the model's emotion is "uncertain" (folds.emotion_bar)
    positive_ratio: np.ndarray | None = None  # per AU: share its threshold calls positive on the OOF / prevalence
    logreg: LogRegModel | None = None  # the pixel regression blended in (cfg.blend_logreg > 0)
    blend: float = 0.0

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Mean probability of the ensemble, its AU columns blended with the pixel regression when there is one."""
        probs = ensemble_proba(self.models, images)
        if self.logreg is not None:
            k = len(self.thresholds)
            probs[:, :k] = (1 - self.blend) * probs[:, :k] + self.blend * self.logreg.predict_proba(images)
        return probs

    def module(self) -> torch.nn.Module:
        """The model a checkpoint stores: the network(s), with the regression blended in (model.PixelBlend)."""
        net = self.models[0] if len(self.models) == 1 else HTNetEnsemble(list(self.models))
        return net if self.logreg is None else blend_module(net, self.logreg, self.blend)


def fit_htnet(
    images: np.ndarray, labels: np.ndarray, groups: np.ndarray, cfg: TrainConfig, progress: ProgressFn | None = None,
    targets: Targets = NO_TARGETS, encoding: str = SEED_ENCODING,
) -> FittedHTNet:
    """Thresholds from inner group-k-fold OOF predictions on these samples, then the final model(s) on all of them.

    cfg.refit False: no final fit, the inner-fold models together are the ensemble (one training's cost less).
    Thresholds use only the rows with AU labels."""
    folds = inner_folds(groups, cfg.inner_folds)
    total = (len(folds) + int(cfg.refit)) * cfg.ensemble * cfg.epochs
    done = [0]

    def stage(offset: int) -> ProgressFn:
        def prog(d: int, _t: int) -> None:
            if progress is not None:
                progress(offset + d, total)

        return prog

    k = labels.shape[1]
    oof = np.zeros((len(labels), k + targets.n_emotions), dtype=np.float32)
    inner: list[HTNet] = []
    for tr, te in folds:
        models = train_ensemble(images[tr], labels[tr], cfg, stage(done[0]), targets.take(tr), encoding)
        done[0] += cfg.ensemble * cfg.epochs
        oof[te] = ensemble_proba(models, images[te])
        inner += models
    mask = targets.mask(len(labels))
    logreg = None
    if cfg.blend_logreg > 0:  # the regression on the AU-coded rows; the thresholds see the blend's inner OOF
        logreg = fit_logreg(images[mask], labels[mask], groups[mask], inner_folds=cfg.inner_folds, seed=cfg.seed)
        assert logreg.oof is not None
        oof[mask, :k] = (1 - cfg.blend_logreg) * oof[mask, :k] + cfg.blend_logreg * logreg.oof
    thresholds = select_thresholds(labels[mask], oof[mask, :k])
    ratio = positive_ratio(labels[mask], oof[mask, :k], thresholds)
    bar = 0.0
    if targets is not None and targets.n_emotions:
        bar = emotion_bar(emotion_softmax(oof[:, k:]), np.asarray(targets.emotions))
    models = train_ensemble(images, labels, cfg, stage(done[0]), targets, encoding) if cfg.refit else inner
    return FittedHTNet(models, thresholds, oof, emotion_bar=bar, positive_ratio=ratio, logreg=logreg,
                       blend=cfg.blend_logreg)


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


def checkpoint_metrics(eval_report: Mapping[str, Any], reliable: list[str], rule_text: str) -> dict[str, Any]:
    """The evaluation report as stored in a checkpoint: its `reliable` and `reliable_rule` are what the checkpoint applied.

    A report written under an older rule lists other AUs; its own values are kept under `as_reported` so the stored
    metrics never contradict the checkpoint's reliable mask and nothing of the report is lost."""
    metrics = dict(eval_report)
    own = {k: metrics[k] for k in ("reliable", "reliable_rule") if k in metrics}
    if own.get("reliable", reliable) != reliable or own.get("reliable_rule", rule_text) != rule_text:
        metrics["as_reported"] = own
    metrics["reliable"] = list(reliable)
    metrics["reliable_rule"] = rule_text
    return metrics


def _reliable_from_report(dataset: AUDataset, cfg: TrainConfig, eval_report: Mapping[str, Any],
                          positive_ratio: Mapping[str, float]) -> tuple[list[str], str, dict[str, Any]]:
    """(reliable AUs, rule text, metrics to store) from an evaluation report made with this recipe on this data and the
    trained model's positive ratios (folds.positive_ratio, per AU).

    A LOSO + LODO report (``rows``, from ``training.crossdata``) gets the kappa rule; an older per-method report
    (``tables``) the original rule. Either way the rule in code decides, not a list copied from the file."""
    try:
        same = TrainConfig.from_dict(dict(eval_report.get("recipe", {}))).to_dict() == cfg.to_dict()
    except TrainConfigError:
        same = False
    if not same:
        raise TrainConfigError("the evaluation report was made with another recipe; re-run evaluate with this one")
    if eval_report.get("data", {}).get("files_sha256") != dataset.identity.get("files_sha256"):
        raise TrainConfigError("the evaluation report was made on other data (files_sha256 differs)")
    if list(eval_report.get("au_names", [])) != list(dataset.au_names):
        raise TrainConfigError("the evaluation report has another AU label space")
    if "rows" in eval_report:
        try:
            verdicts = KAPPA_RULE.verdicts(eval_report, positive_ratio)
        except (KeyError, TypeError) as exc:
            raise TrainConfigError(f"the evaluation report cannot decide the reliable AUs ({exc})") from exc
        chosen = [au for au, v in verdicts.items() if v["reliable"]]
        metrics = dict(eval_report)
        metrics["reliable"] = chosen
        metrics["reliable_rule"] = KAPPA_RULE.describe()
        metrics["verdicts"] = verdicts
        return chosen, KAPPA_RULE.describe(), metrics
    try:
        chosen = RELIABILITY.apply(eval_report["tables"])
    except (KeyError, TypeError) as exc:
        raise TrainConfigError(f"the evaluation report has no per-AU tables ({exc})") from exc
    rule_text = RELIABILITY.describe()
    return chosen, rule_text, checkpoint_metrics(eval_report, chosen, rule_text)


def calibrated_mask(au_names: Sequence[str], positives: Sequence[float], ratios: Mapping[str, float]) -> list[bool]:
    """Which AUs' thresholds decide (`_c`, `aus`): >= CALIBRATED_MIN training positives, and a threshold that marks at
    most KAPPA_RULE.max_positive_ratio x the prevalence positive on the training data (an unknown ratio: no)."""
    return [int(n) >= CALIBRATED_MIN and float(ratios.get(au, math.nan)) <= KAPPA_RULE.max_positive_ratio
            for au, n in zip(au_names, positives, strict=True)]


def train_checkpoint(
    dataset: AUDataset, cfg: TrainConfig, out_path: str | Path, *, eval_report: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> tuple[str, FittedHTNet, list[bool]]:
    """Train on every sample of `dataset` (an AUDataset), choose thresholds by inner CV, write a checkpoint.

    eval_report: the metrics.json of an evaluation run (or LOSO + LODO merged) with the SAME recipe and data; the rule
    in code applied to it gives the reliable mask, and the report is stored in the checkpoint. Without it, reliable =
    AUs with enough positives and the checkpoint says that no cross-validated metrics back it. With emotion labels the
    model gets the 3-class emotion outputs after the AU outputs (``emotion_classes`` in the checkpoint). AUs with fewer
    than CALIBRATED_MIN positives get no usable threshold (``calibrated`` False). Returns (sha256, fit, reliable)."""
    if cfg.ensemble != 1:
        raise TrainConfigError("train writes one model per checkpoint: use ensemble = 1 (ensembles are for evaluate)")
    if eval_report is not None:  # a report that cannot back this recipe and data fails before any training
        _reliable_from_report(dataset, cfg, eval_report, {})
    n_emo = len(dataset.emotion_classes) if dataset.emotions is not None else 0
    targets = Targets(au_mask=dataset.au_known, emotions=dataset.emotions, n_emotions=n_emo)
    fit = fit_htnet(dataset.images, dataset.labels, dataset.subjects, cfg, progress, targets, dataset.encoding)
    counts = dataset.labels[dataset.au_mask].sum(0)
    positives = {au: int(s) for au, s in zip(dataset.au_names, counts, strict=True)}
    ratios = {au: float(r) for au, r in zip(dataset.au_names, fit.positive_ratio, strict=True)} \
        if fit.positive_ratio is not None else {}
    metrics: dict[str, Any] | None = None
    if eval_report is not None:
        chosen, rule_text, metrics = _reliable_from_report(dataset, cfg, eval_report, ratios)
    else:
        chosen = RELIABILITY.apply_without_metrics(dataset.au_names, counts)
        rule_text = RELIABILITY.describe_without_metrics()
    reliable = [au in chosen for au in dataset.au_names]
    calibrated = calibrated_mask(dataset.au_names, counts, ratios)
    meta = {
        "input": {"encoding": dataset.encoding},
        "training": {
            "data": dict(dataset.identity),
            "missing_images": list(dataset.missing),
            "positives": positives,
            "label_rule": "AU present at any intensity/side, ref(..) counts, 'X or Y' counts every option (facs rule 'all')",
            "recipe": cfg.to_dict(),
            "thresholds": "per-AU best F1 on inner group-k-fold out-of-fold probabilities over the training subjects",
            "blend": (f"each AU's probability is {1 - cfg.blend_logreg:g} x HTNet's + {cfg.blend_logreg:g} x a "
                      f"logistic regression's on the picture's standardised pixels (C = {LOGREG_C:g}, balanced; "
                      "fitted on the AU-coded training rows; the thresholds are chosen on the blend)"
                      if fit.logreg is not None else None),
            "reliable_rule": rule_text,
            "calibrated_rule": f"an AU's threshold is used only with >= {CALIBRATED_MIN} training positives and when it "
                               f"marks at most {KAPPA_RULE.max_positive_ratio:g}x its training prevalence positive",
            "positive_ratio": ratios,
            "emotion_bar": fit.emotion_bar if n_emo else None,
            "emotion_bar_rule": (f"the lowest class probability at which the inner-fold out-of-fold emotion predictions "
                                 f"are right >= {EMOTION_MIN_PRECISION:g} of the time; below it: uncertain"),
        },
        "calibrated": calibrated,
        "metrics": metrics,
    }
    if dataset.encoding != SEED_ENCODING:
        meta["flow"] = {"method": TVL1_METHOD, "library": "cv2.optflow.DualTVL1OpticalFlow_create (defaults)"}
    names = list(dataset.au_names)
    config = fit.models[0].config
    sha = save_checkpoint(
        out_path, fit.module(), config=config, au_names=names, thresholds=fit.thresholds, reliable=reliable,
        meta=meta, emotion_classes=dataset.emotion_classes if n_emo else (),
    )
    return sha, fit, reliable
