"""HTNet checkpoints: the on-disk format, the registry of known weights with checksums, and the one explicit download.

This is the only module that reads or writes ``.pt`` files. Our format is a dict loadable with
``torch.load(weights_only=True)`` that carries its own configuration (architecture, AU names in output order, per-AU
thresholds, reliable AUs, input encoding, training data identity and metrics). The seed's published checkpoint is a
plain state dict; it loads with ``au_order="seed25"``. Nothing here downloads except ``fetch``, which only the
``au-annotate weights fetch`` command calls.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from au_annotate.fileio import atomic_path, sha256_file, shipped_dirs
from au_annotate.flow import ENCODINGS, SEED_ENCODING, SEED_FARNEBACK
from au_annotate.model import HTNet, HTNetConfig, HTNetEnsemble, PixelBlend
from au_annotate.settings import DEFAULT_WEIGHTS  # the LODO winner (weights/MODEL_CARD.htnet-megc.md)

FORMAT = "au-annotate-htnet"
FORMAT_VERSION = 2  # the newest format this version reads (2: a pixel regression blended in, `pixel_blend`)
PLAIN_FORMAT_VERSION = 1  # what a checkpoint without a blend is written as (readable by every version)

SEED25_AU_ORDER: tuple[str, ...] = (
    "AU04", "AU07", "AU43", "AU15", "AU17", "AU25", "AU26", "AU20", "AU21", "AU05", "AU24", "AU02", "AU06", "AU12",
    "AU31", "AU09", "AU61", "AU14", "AU10", "AU01", "AU08", "AU39", "AU13", "AU38", "AU56",
)  # fmt: skip
AU_ORDERS: dict[str, tuple[str, ...]] = {"seed25": SEED25_AU_ORDER}

SAMM_WEIGHTS = "htnet-samm"

# What the seed data and our pipeline feed the model (flow.py's docstring); stored in every checkpoint we write.
DEFAULT_INPUT_META: dict[str, Any] = {
    "encoding": SEED_ENCODING,  # H = angle/2, S = 255, V = min-max(magnitude), HSV->RGB, 28x28 INTER_AREA
    "layout": "face",  # or "mosaic" (official HTNet: 2x2 patches around eyes and mouth corners); as Settings.input_layout
    "channel_order": "RGB",
    "scale": "uint8/255",
    "crop_size": 224,
}
DEFAULT_FLOW_META: dict[str, Any] = SEED_FARNEBACK.to_meta()  # the pipeline's Farneback parameters (flow.py)

_CHUNK = 1 << 20
_CHECKPOINT_KEYS = ("format", "format_version", "config", "au_names", "thresholds", "reliable", "meta", "state_dict")


class WeightsError(Exception):
    """A checkpoint cannot be found, read, verified or loaded; the message is one line naming the file and the cause."""


@dataclass(frozen=True)
class WeightsEntry:
    """A known checkpoint: where it lives (shipped file or URL), its checksum and its AU output order."""

    name: str
    filename: str
    sha256: str | None  # pinned checksum, verified on every load by name and by fetch; None: not pinned
    url: str | None  # None: shipped with the package, never downloaded
    au_order: str | None  # for plain state dicts: a key of AU_ORDERS; None when the file names its AUs
    description: str


REGISTRY: dict[str, WeightsEntry] = {
    DEFAULT_WEIGHTS: WeightsEntry(
        name=DEFAULT_WEIGHTS,
        filename="htnet-megc.pt",
        sha256="0b7e75b54edc5fa1bd737310fd8314188082f4da1f102301b802a725e62e7b00",
        url=None,
        au_order=None,
        description="au-annotate HTNet on the MEGC2019 composite (HTNet TV-L1 u/v/strain encoding; AUs from SAMM + "
        "CASME II, 3-class emotion from all 442); see weights/MODEL_CARD.htnet-megc.md",
    ),
    SAMM_WEIGHTS: WeightsEntry(
        name=SAMM_WEIGHTS,
        filename="htnet-samm.pt",
        # pinned to the shipped file: a re-trained or edited htnet-samm.pt is refused by name (load it by path)
        sha256="a1effbc3cf544eb4a28f36362ff1b92595b867117a8324d4135b7023b0bdb216",
        url=None,
        au_order=None,
        description="au-annotate HTNet trained on SAMM flow pictures (all 29 subjects); see weights/MODEL_CARD.md",
    ),
    "seed": WeightsEntry(
        name="seed",
        filename="best_htnet_model.pth",
        sha256="51fb9fc5c3a6adcb92b710b0dd87e98ef837c252564d8fac9e059d156f3815cf",
        # pinned to the commit that holds the file (not a branch), so the checksum stays valid
        url="https://raw.githubusercontent.com/joelibaceta/htnet-microexp-au-multilabel/"
        "f55dec46cf89d4f345d6e8327154bc4947e33226/models/best_htnet_model.pth",
        au_order="seed25",
        description="the seed paper's published HTNet (plain state dict, 25 AUs in seed order; its metrics are invalid)",
    ),
}


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A checkpoint ready for inference: the model (eval mode, CPU) plus everything needed to read its outputs."""

    model: HTNet | HTNetEnsemble | PixelBlend  # an ensemble's (a blend's) forward gives the logit of the mean probability
    config: HTNetConfig
    au_names: tuple[str, ...]
    thresholds: np.ndarray  # float32 (n_aus,), decision thresholds on probabilities
    reliable: np.ndarray  # bool (n_aus,)
    sha256: str
    path: Path
    name: str
    meta: dict

    @property
    def n_aus(self) -> int:
        """Number of model outputs."""
        return len(self.au_names)

    emotion_classes: tuple[str, ...] = ()  # model emotion outputs after the AU outputs; () = no emotion head

    @property
    def input_layout(self) -> str:
        """Flow-picture layout the model was trained on: "face" (seed, whole aligned face; default) or "mosaic"."""
        return str(self.meta.get("input", {}).get("layout", "face"))

    @property
    def input_encoding(self) -> str:
        """Flow-picture encoding the model was trained on (flow.ENCODINGS; checked on load)."""
        return str(self.meta.get("input", {}).get("encoding", SEED_ENCODING))

    @property
    def calibrated(self) -> np.ndarray:
        """bool (n_aus,): AUs whose threshold is usable (enough training positives); older checkpoints: all."""
        values = self.meta.get("calibrated")
        if values is None or len(values) != len(self.au_names):
            return np.ones(len(self.au_names), bool)
        return np.asarray(values, bool)


# ----------------------------------------------------------------------------------------------------------- helpers


def normalize_au_name(name: str | int) -> str:
    """"4", "au4", "AU04", 4 -> "AU04" (zero-padded to two digits); ValueError on anything else."""
    text = str(name).strip().upper()
    digits = text[2:] if text.startswith("AU") else text
    if not digits.isdigit() or not 0 < int(digits) < 100:
        raise ValueError(f"not an AU name: {name!r}")
    return f"AU{int(digits):02d}"


def parse_au_order(spec: str) -> tuple[str, ...]:
    """An AU order: a known name ("seed25") or a comma-separated list of AU names ("AU01,AU02,4")."""
    if spec in AU_ORDERS:
        return AU_ORDERS[spec]
    if "," not in spec:
        raise ValueError(f"unknown AU order {spec!r} (known: {', '.join(AU_ORDERS)}, or a comma-separated AU list)")
    names = tuple(normalize_au_name(part) for part in spec.split(",") if part.strip())
    if len(set(names)) != len(names):
        raise ValueError(f"AU order {spec!r} names an AU twice")
    return names


def _plain(value: Any, where: str) -> Any:
    """Convert meta values to types torch.load(weights_only=True) accepts (dict/list/str/int/float/bool/None)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value), where)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v, f"{where}[]") for v in value]
    raise TypeError(f"checkpoint {where} holds a {type(value).__name__}, which a weights-only checkpoint cannot store")


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """Short one-line cause from an exception (torch's messages can span many lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _strict_load(model: torch.nn.Module, state_dict: Mapping[str, Any], path: Path) -> None:
    """Load with strict=True; turn missing/unexpected/size-mismatch errors into one WeightsError line."""
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise WeightsError(f"{path}: state dict holds non-tensor values")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) e.g. {unexpected[0]}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es) e.g. {wrong[0]}")
    if problems:
        raise WeightsError(f"{path}: weights do not fit the HTNet configuration: {'; '.join(problems)}")
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:  # dtype trouble and the like
        raise WeightsError(f"{path}: cannot load the state dict: {_first_line(exc)}") from exc


def _build(config: HTNetConfig, ensemble_size: int, blend: tuple[int, float] | None = None
           ) -> HTNet | HTNetEnsemble | PixelBlend:
    """A fresh model of the configuration: one HTNet, or an ensemble of `ensemble_size` members; `blend` = (AUs,
    weight): that network with a pixel regression blended in (model.PixelBlend)."""
    net = HTNet.from_config(config) if ensemble_size == 1 else HTNetEnsemble.from_config(config, ensemble_size)
    return net if blend is None else PixelBlend(net, blend[0], blend[1])


def _vector(values: Any, n: int, dtype: type, default: Any, what: str, path: Path) -> np.ndarray:
    """Per-AU vector from a checkpoint field (list/tensor/None) with its length checked."""
    if values is None:
        return np.full(n, default, dtype=dtype)
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    try:
        arr = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: {what} is not a list of numbers ({_first_line(exc)})") from exc
    if arr.shape != (n,):
        raise WeightsError(f"{path}: {what} has shape {arr.shape}, expected ({n},) for {n} AUs")
    return arr


# ------------------------------------------------------------------------------------------------------ save / load


def save_checkpoint(
    path: str | os.PathLike[str],
    model: HTNet | HTNetEnsemble | PixelBlend | Mapping[str, torch.Tensor] | Sequence[HTNet],
    *,
    config: HTNetConfig,
    au_names: Iterable[str],
    thresholds: Iterable[float] | np.ndarray | None = None,
    reliable: Iterable[bool] | np.ndarray | None = None,
    meta: Mapping[str, Any] | None = None,
    emotion_classes: Sequence[str] = (),
) -> str:
    """Write a checkpoint in our format atomically; returns its sha256. Meta is merged over input/flow defaults.

    `model` is one HTNet (or its state dict), or an ensemble: an HTNetEnsemble or a list of HTNets whose probabilities
    are averaged at inference (stored as one state dict with `members.K.` prefixes and `ensemble_size`), or a
    PixelBlend of either (stored with `net.` prefixes and `pixel_blend`: its AU count and weight)."""
    path = Path(path)
    names = tuple(normalize_au_name(a) for a in au_names)
    emotions = tuple(str(e) for e in emotion_classes)
    n = config.num_classes - len(emotions)
    if len(names) != n or len(set(names)) != n:
        raise ValueError(f"au_names must be {n} distinct AU names (config.num_classes - emotion classes), got "
                         f"{len(names)}: {names}")
    thr = np.full(n, 0.5, np.float32) if thresholds is None else np.asarray(list(thresholds), dtype=np.float32)
    rel = np.ones(n, bool) if reliable is None else np.asarray(list(reliable), dtype=bool)
    if thr.shape != (n,) or rel.shape != (n,):
        raise ValueError(f"thresholds and reliable must have {n} entries, got {thr.shape} and {rel.shape}")
    if not np.all((thr >= 0) & (thr <= 1)):
        raise ValueError(f"thresholds must be probabilities in [0, 1], got {thr.tolist()}")
    if isinstance(model, list | tuple):
        model = HTNetEnsemble(list(model)) if len(model) > 1 else model[0]
    blend = None
    if isinstance(model, PixelBlend):
        if model.n_aus != n:
            raise ValueError(f"the blend has {model.n_aus} AU outputs, the checkpoint {n}")
        blend = (model.n_aus, model.weight)
        size = len(model.net.members) if isinstance(model.net, HTNetEnsemble) else 1
        state = model.state_dict()
    else:
        state = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
        if isinstance(model, HTNetEnsemble):
            size = len(model.members)
        else:  # an ensemble's state dict names its members "members.K."
            members = {k.split(".")[1] for k in state if k.startswith("members.")}
            size = max(1, len(members))
        if size == 1 and any(k.startswith("members.0.") for k in state):  # a one-member ensemble is a plain HTNet
            state = {k.removeprefix("members.0."): v for k, v in state.items()}
    # validate against the configuration before writing anything (a mismatched file must never be produced)
    _strict_load(_build(config, size, blend), state, path)
    from au_annotate._version import __version__

    full_meta: dict[str, Any] = {
        "input": dict(DEFAULT_INPUT_META),
        "flow": dict(DEFAULT_FLOW_META),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "au_annotate_version": __version__,
    }
    for key, value in (meta or {}).items():
        if key == "flow" and isinstance(value, Mapping) and value.get("method") != full_meta["flow"].get("method"):
            full_meta[key] = dict(value)  # another flow method: the Farneback defaults do not apply
        elif isinstance(value, Mapping) and isinstance(full_meta.get(key), dict):
            full_meta[key] = {**full_meta[key], **value}
        else:
            full_meta[key] = value
    training = full_meta.setdefault("training", {})
    if isinstance(training, dict) and not training.get("reliable_rule"):  # every checkpoint says how its AUs were chosen
        training["reliable_rule"] = ("no rule: every AU reported" if reliable is None else
                                     "no rule stated: the reliable AUs were set by the writer of this checkpoint")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if blend is not None else PLAIN_FORMAT_VERSION,
        "config": config.to_dict(),
        "au_names": list(names),
        "thresholds": [float(t) for t in thr],
        "reliable": [bool(r) for r in rel],
        "meta": _plain(full_meta, "meta"),
        "ensemble_size": size,
        "state_dict": {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()},
    }
    if emotions:  # an AU-only checkpoint keeps the original key set
        payload["emotion_classes"] = list(emotions)
    if blend is not None:  # a plain HTNet checkpoint keeps the original key set
        payload["pixel_blend"] = {"aus": blend[0], "weight": blend[1]}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return sha256_file(path)


def _read(path: Path) -> Any:
    """torch.load(weights_only=True) on CPU, every failure as a WeightsError naming the file."""
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file")
    if not path.is_file():
        raise WeightsError(f"{path}: not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated pickle, forbidden globals: all "not a readable checkpoint"
        raise WeightsError(f"{path}: not a readable checkpoint ({_load_cause(path, exc)})") from exc


def _load_cause(path: Path, exc: BaseException) -> str:
    """A short reason for a failed torch.load (its own messages are long and mention unrelated defaults)."""
    text = " ".join(str(exc).split())
    if "Unsupported global" in text:
        match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = match.group(1) if match else "a Python object"
        return f"it holds {what}, which a weights-only load refuses; only tensors and plain data are accepted"
    if path.stat().st_size == 0:
        return "empty file"
    if not zipfile.is_zipfile(path):
        return "corrupt, truncated or not a PyTorch file"
    return _first_line(exc)


def load_checkpoint(path: str | os.PathLike[str], *, au_order: str | None = None) -> LoadedModel:
    """Load our format or a plain HTNet state dict (which needs au_order, e.g. "seed25") into an eval-mode CPU model."""
    path = Path(path).expanduser()
    obj = _read(path)
    digest = sha256_file(path)
    order: tuple[str, ...] | None = None
    if au_order is not None:
        try:
            order = parse_au_order(au_order)
        except ValueError as exc:  # the option is wrong, not the file: name the option
            raise WeightsError(f"--au-order: {exc}") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: not an HTNet checkpoint (holds a {type(obj).__name__}, not a dict)")

    if "format" in obj:
        if obj["format"] != FORMAT:
            raise WeightsError(f"{path}: unknown checkpoint format {obj['format']!r} (expected {FORMAT!r})")
        version = obj.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise WeightsError(f"{path}: checkpoint has no valid format_version")
        if version > FORMAT_VERSION or version < 1:
            raise WeightsError(
                f"{path}: checkpoint format version {version} is not supported (this au-annotate reads up to "
                f"{FORMAT_VERSION}; upgrade au-annotate)"
            )
        missing = [k for k in _CHECKPOINT_KEYS if k not in obj]
        if missing:
            raise WeightsError(f"{path}: checkpoint lacks {', '.join(missing)}")
        try:
            config = HTNetConfig.from_dict(dict(obj["config"]))
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"{path}: bad model config: {_first_line(exc)}") from exc
        try:
            names = tuple(normalize_au_name(a) for a in obj["au_names"])
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"{path}: bad AU names: {_first_line(exc)}") from exc
        emotions = obj.get("emotion_classes") or []
        if not isinstance(emotions, list | tuple) or not all(isinstance(e, str) for e in emotions):
            raise WeightsError(f"{path}: emotion_classes is not a list of class names")
        emotions = tuple(emotions)
        if len(names) + len(emotions) != config.num_classes:
            raise WeightsError(f"{path}: {len(names)} AU names + {len(emotions)} emotion classes for "
                               f"{config.num_classes} model outputs")
        if order is not None and order != names:
            raise WeightsError(
                f"{path}: --au-order {au_order} does not match the checkpoint's own AU order ({','.join(names)}); "
                "leave --au-order out for this file"
            )
        thresholds = _vector(obj["thresholds"], len(names), np.float32, 0.5, "thresholds", path)
        reliable = _vector(obj["reliable"], len(names), bool, True, "reliable", path)
        meta = dict(obj["meta"] or {})
        rule = (meta.get("training") or {}).get("reliable_rule")
        if not isinstance(rule, str) or not rule.strip():
            raise WeightsError(f"{path}: checkpoint lacks the rule that chose its reported AUs "
                               "(meta.training.reliable_rule); write it with `au-annotate train`")
        encoding = (meta.get("input") or {}).get("encoding", SEED_ENCODING)
        if encoding not in ENCODINGS:
            raise WeightsError(f"{path}: the checkpoint's flow encoding {encoding!r} is unknown to this au-annotate "
                               f"(known: {', '.join(ENCODINGS)}); upgrade au-annotate or use other weights")
        state = obj["state_dict"]
        if not isinstance(state, dict):
            raise WeightsError(f"{path}: state_dict is not a dict")
        size = obj.get("ensemble_size", 1)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise WeightsError(f"{path}: bad ensemble_size {size!r}")
        blend = obj.get("pixel_blend")
        if blend is not None:
            try:
                blend = (int(blend["aus"]), float(blend["weight"]))
            except (TypeError, KeyError, ValueError):
                raise WeightsError(f"{path}: bad pixel_blend {blend!r}") from None
            if blend[0] != len(names) or not 0 < blend[1] <= 1:
                raise WeightsError(f"{path}: pixel_blend {blend} does not fit {len(names)} AUs")
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if order is None:
            raise WeightsError(
                f"{path}: a plain state dict does not name its AUs; pass --au-order seed25 for the seed's checkpoint "
                "(or a comma-separated AU list)"
            )
        config = HTNetConfig(num_classes=len(order))
        names = order
        thresholds = np.full(len(names), 0.5, np.float32)
        reliable = np.ones(len(names), bool)
        meta = {
            "source": "plain state dict",
            "au_order": au_order,
            "input": dict(DEFAULT_INPUT_META),
            "flow": dict(DEFAULT_FLOW_META),
        }
        state = obj
        size = 1
        emotions = ()
        blend = None
    else:
        raise WeightsError(f"{path}: not an au-annotate checkpoint nor a plain HTNet state dict")

    model = _build(config, size, blend)
    _strict_load(model, state, path)
    model.eval()
    return LoadedModel(
        model=model, config=config, au_names=names, thresholds=thresholds, reliable=reliable, sha256=digest,
        path=path, name=path.name, meta=meta, emotion_classes=emotions,
    )


# ------------------------------------------------------------------------------------------------ registry / lookup


def user_cache_dir() -> Path:
    """User cache for fetched weights: $AU_ANNOTATE_CACHE, else $XDG_CACHE_HOME/au-annotate, else ~/.cache/au-annotate."""
    if env := os.environ.get("AU_ANNOTATE_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "au-annotate"


def search_dirs(cache: Path | None = None) -> tuple[Path, ...]:
    """Where registry files are looked for, in order: wheel `_weights/`, source checkout `weights/`, user cache."""
    return (*shipped_dirs(), cache if cache is not None else user_cache_dir())


def locate(name: str, *, cache: Path | None = None) -> Path | None:
    """The local file of a registry entry, or None when it is nowhere on disk."""
    entry = REGISTRY[name]
    for folder in search_dirs(cache):
        candidate = folder / entry.filename
        if candidate.is_file():
            return candidate
    return None


def _missing_hint(entry: WeightsEntry) -> str:
    """How to get a registry checkpoint that is not on disk."""
    if entry.url is not None:
        return f"download it with `au-annotate weights fetch {entry.name}`"
    return "reinstall au-annotate, or train your own with `au-annotate train ... -o my.pt` and pass `--weights my.pt`"


def _mismatch_hint(entry: WeightsEntry) -> str:
    """What to do when a registry file on disk is not the pinned one."""
    if entry.url is not None:
        return f"delete it and download it again with `au-annotate weights fetch {entry.name}`"
    return "it is not the shipped file: reinstall au-annotate, or load your own checkpoint by path (`--weights PATH`)"


def resolve_weights(spec: str | os.PathLike[str] | None) -> Path:
    """A registry name (None = default) or a path -> an existing local file; never downloads."""
    if spec is None:
        spec = DEFAULT_WEIGHTS
    text = os.fspath(spec)
    if text in REGISTRY:
        found = locate(text)
        if found is None:
            entry = REGISTRY[text]
            where = ", ".join(str(d) for d in search_dirs())
            raise WeightsError(f"weights '{text}' ({entry.filename}) not found in {where}; {_missing_hint(entry)}")
        return found
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise WeightsError(f"{path}: not a file")
    if os.sep not in text and "/" not in text and not path.suffix:
        raise WeightsError(f"unknown weights '{text}' (known: {', '.join(REGISTRY)}; or give a path to a .pt file)")
    raise WeightsError(f"{path}: no such weights file")


def load_weights(spec: str | os.PathLike[str] | None = None, *, au_order: str | None = None) -> LoadedModel:
    """Resolve and load; a registry entry supplies its AU order and has its pinned checksum verified."""
    path = resolve_weights(spec)
    text = DEFAULT_WEIGHTS if spec is None else os.fspath(spec)
    entry = REGISTRY.get(text)
    if entry is not None and au_order is None:
        au_order = entry.au_order
    loaded = load_checkpoint(path, au_order=au_order)
    if entry is None:
        return loaded
    if entry.sha256 is not None and loaded.sha256 != entry.sha256:
        raise WeightsError(
            f"{path}: checksum mismatch for '{entry.name}' (got {loaded.sha256[:12]}..., expected "
            f"{entry.sha256[:12]}...); {_mismatch_hint(entry)}"
        )
    return dataclasses.replace(loaded, name=entry.name)


@dataclass(frozen=True)
class WeightsStatus:
    """One row of `au-annotate weights list`."""

    entry: WeightsEntry
    path: Path | None  # local file, None when absent
    sha256: str | None  # of the local file
    checksum: str  # "ok", "MISMATCH", "not pinned", "absent"


def list_weights(*, cache: Path | None = None, verify: bool = True) -> list[WeightsStatus]:
    """Every registry entry with its local file and checksum state."""
    rows = []
    for name, entry in REGISTRY.items():
        path = locate(name, cache=cache)
        digest = sha256_file(path) if (path is not None and verify) else None
        if path is None:
            state = "absent"
        elif entry.sha256 is None:
            state = "not pinned"
        elif not verify:
            state = "unchecked"
        else:
            state = "ok" if digest == entry.sha256 else "MISMATCH"
        rows.append(WeightsStatus(entry=entry, path=path, sha256=digest, checksum=state))
    return rows


# -------------------------------------------------------------------------------------------------------- download


def _default_opener(url: str) -> IO[bytes]:
    """urllib with a timeout (the only network call in the product)."""
    request = urllib.request.Request(url, headers={"User-Agent": "au-annotate"})
    return urllib.request.urlopen(request, timeout=60)  # noqa: S310 - fixed https URLs from REGISTRY


def fetch(
    name: str,
    *,
    cache_dir: Path | None = None,
    opener: Callable[[str], Any] = _default_opener,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download a registry checkpoint into the cache, verify its sha256, rename into place; nothing left on failure."""
    if name not in REGISTRY:
        raise WeightsError(f"unknown weights '{name}' (known: {', '.join(REGISTRY)})")
    entry = REGISTRY[name]
    if entry.url is None:
        raise WeightsError(f"weights '{name}' ship with au-annotate and are not downloadable")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else user_cache_dir()
    dest = folder / entry.filename
    if dest.is_file() and entry.sha256 is not None and sha256_file(dest) == entry.sha256:
        return dest
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"{folder}: cannot create the cache folder ({_first_line(exc)})") from exc
    digest = hashlib.sha256()
    done = 0
    try:
        with atomic_path(dest) as tmp, opener(entry.url) as response, open(tmp, "wb") as out:
            total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            total_n = int(total) if total and str(total).isdigit() else None
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total_n)
            out.flush()
            got = digest.hexdigest()
            if entry.sha256 is not None and got != entry.sha256:
                raise WeightsError(
                    f"{entry.url}: checksum mismatch (got {got}, expected {entry.sha256}); nothing was saved"
                )
    except WeightsError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise WeightsError(f"{entry.url}: download failed ({_first_line(exc)}); nothing was saved") from exc
    return dest
