"""Run settings: one table of defaults, overridden by a TOML config file, overridden by the command line.

The library takes a `Settings` object; the CLI builds it. Precedence: CLI > config file > DEFAULTS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from au_annotate.errors import check_keys

DEFAULT_WEIGHTS = "htnet-megc"  # the shipped default checkpoint (au_annotate.weights registry; here so --help needs no torch)


class SettingsError(ValueError):
    """A settings value or config file is invalid (message names the key or the file)."""


@dataclass(frozen=True)
class Settings:
    """Everything that determines what `annotate` does and what it writes."""

    # discover
    recursive: bool = True
    # decode
    decoder: str = "auto"  # auto | decord | opencv
    luma: bool = True  # decode only the luma plane where the backend can (OpenCV): every stage works in gray
    stall_timeout_s: float = 120.0  # a video that does not open, or gives no frame, for this long fails (hung decoder)
    ranges: tuple[str, ...] = ()  # START-END time ranges analysed in every video (au_annotate.ranges); () = all
    range_table: Path | None = None  # CSV of ranges per video (video, start, end)
    range_tier: str | None = None  # ranges from this tier of the ELAN file next to each video
    # face
    crop_size: int = 224  # aligned crop side (the seed's 224x224)
    track_template_px: int = 64  # template matching runs on each face downscaled (integer factor) to about this side
    search_margin: float = 0.25  # search area around the last position, as a fraction of the face size
    redetect_below: float = 0.55  # re-detect when the TM_CCOEFF_NORMED match score drops below this
    redetect_every_s: float = 10.0  # also re-detect periodically to refresh the template (0 = never)
    min_face_size: int = 40  # MTCNN minimum face size in pixels
    faces: str = "all"  # all | largest | N: which faces get a track (face0 = the largest at first detection)
    # spot
    spotter: str = "roi-flow"
    spot: dict[str, Any] = field(default_factory=dict)  # overrides of au_annotate.spot.SpotConfig fields
    # flow / model
    tvl1: str = "exact"  # TV-L1 of the HTNet encoding: exact (OpenCV's defaults, ~0.35 s a window) | fast (~0.035 s)
    input_layout: str = "auto"  # auto (the checkpoint's) | face (seed: whole face) | mosaic (official HTNet: 4 patches)
    weights: str | None = None  # None = the shipped default checkpoint; else a registry name or a path
    au_order: str | None = None  # None = the checkpoint's own; "seed25" for the seed's plain state dict
    all_aus: bool = False  # report every AU, not only those the model card marks reliable
    # per-study calibration (`au-annotate calibrate` writes them into a study.toml): windows whose spotting score is
    # below min_score are not reported (a number for every kind, or {micro = .., macro = ..}); au_thresholds
    # {AU04 = 0.42, ...} replace the checkpoint's decision thresholds of those AUs
    min_score: float | dict[str, float] | None = None
    au_thresholds: dict[str, float] = field(default_factory=dict)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 256
    # output
    formats: tuple[str, ...] = ("csv", "eaf")
    au_tiers: bool = False
    rules: Path | None = None  # None = the shipped EMFACS-based rules
    report: bool = False
    # run
    jobs: int = 0  # worker processes for the per-video CPU work; 0 = auto (one per two cores)
    engine: str = "local"  # local | ray
    ray_address: str | None = None  # for --engine ray: None/"auto" = local or discovered cluster, or HOST:PORT
    overwrite: bool = False
    quiet: bool = False
    verbose: bool = False

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (unknown names raise SettingsError)."""
        check_keys(changes, (f.name for f in dataclasses.fields(self)), "setting", SettingsError, list_known=False)
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view, recorded in outputs so a result says how it was made."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        return out


DEFAULTS = Settings()


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; keys live at top level or under an `[annotate]` table."""
    from au_annotate.fileio import load_toml

    p = Path(path)
    data = load_toml(p, SettingsError)
    data = data.get("annotate", data)
    check_keys(data, (f.name for f in dataclasses.fields(Settings)), "setting", SettingsError, where=str(p),
               list_known=False)
    for key in ("formats", "ranges"):
        if key in data and isinstance(data[key], list):
            data[key] = tuple(data[key])
    for key in ("rules", "range_table"):
        if key in data and data[key] is not None:
            data[key] = Path(data[key])
    return data


def build_settings(config_file: str | Path | None = None, **cli: Any) -> Settings:
    """Defaults, then the config file, then the CLI values that were given (None = not given)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(load_config(config_file))
    values.update({k: v for k, v in cli.items() if v is not None})
    return DEFAULTS.replace(**values)
