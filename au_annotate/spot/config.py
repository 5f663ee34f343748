"""The roi-flow spotter's options (`SpotConfig`: every duration in seconds) and its error type."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import cv2

from au_annotate.errors import check_keys

MOTION_DEGREES = {"affine": 1, "quadratic": 2, "cubic": 3}  # polynomial degree of the face motion model
BLINK_OPTIONS = ("report", "label", "keep", "drop")


class SpotError(ValueError):
    """Unknown spotter name or invalid spotting configuration."""


@dataclass(frozen=True)
class SpotConfig:
    """Parameters of the roi-flow spotter; every duration is in seconds (converted with the video's fps)."""

    flow_size: int = 128  # crops are downscaled to this side for the spotting flow
    dis_preset: str = "ultrafast"  # DIS preset: ultrafast | fast | medium
    dis_finest_scale: int = 1  # DIS finest pyramid level (0 = full flow_size; the ultrafast preset's own is 2: too coarse)
    dis_patch_stride: int = 0  # DIS patch stride in pixels (0 = the preset's: 4 for ultrafast)
    k_s: float = 0.2  # frame-k-back distance for micro-expressions (about half a micro-expression)
    macro_k_s: float = 0.8  # frame-K-back distance for macro-expressions (0 disables the macro detector)
    smooth_s: float = 0.04  # temporal smoothing of the region motion (centred moving average)
    micro_rate: float = 100.0  # the micro signal is computed on about this many frames per second (every frame below)
    macro_rate: float = 5.0  # same for the macro signal (macro-expressions last 1.5-4 s: 5 Hz resolves them)
    top_fraction: float = 0.3  # mean of this fraction of the strongest residual vectors per region (1: plain mean)
    motion_model: str = "affine"  # face motion removed before the regions: affine | quadratic | cubic (polynomial)
    p: float = 4.0  # threshold: score > p * noise level of the region (micro detector)
    macro_p: float = 6.0  # same for the macro detector
    min_motion_px: float = 0.1  # floor of the threshold, in pixels of a 224-px crop (noise-free video)
    sensitivity: float = 1.0  # divides both thresholds and the floor (2: windows of half the motion are reported; the
    # score stays a multiple of the threshold actually applied, so 1.0 is always "just reported")
    history_s: float = 30.0  # sliding history for the noise level
    warmup_s: float = 1.0  # history needed before the first decision (early decisions wait for it)
    min_gap_s: float | None = None  # peaks closer than this merge (default: 2 k_s)
    max_micro_s: float = 0.5  # micro-expression if onset..offset lasts at most this
    max_window_s: float = 4.0  # longest window reported (macro cap)
    extent_fraction: float = 0.95  # onset/offset where the displacement from the apex reaches this share of its plateau
    # (0.8 until round 9 of docs/spotting.md: it cut real micro-expressions short of their coded onset and offset)
    min_duration_s: float = 0.06  # shorter windows are discarded (flicker)
    blinks: str = "report"  # what to do with blinks: report (default): kind "blink", shown in the HTML report, not
    # written; label: also written as kind "blink"; keep: not told apart (micro/macro); drop: discarded
    return_ratio: float = 0.0  # > 0: a micro window's net onset->offset motion must be at most this share of its
    # excursion (the go-and-return test; off by default since round 9 of docs/spotting.md: real offsets often do not
    # return to the onset state, and it dropped 24 of 58 real CASME II micro-expressions)
    context_s: float = 0.0  # local noise: a region's median motion this long before/after an event (0: off, default)
    gate: str = "label"  # label: each window gets a quality (au_annotate.quality); off: every window is "ok"
    gated: str = "drop"  # drop: windows with a quality other than ok are not written (report only); label: written
    match_drop: float = 0.15  # gate: tracking_lost when the match falls this far below the track's running median
    lighting_jump: float = 0.06  # gate: lighting when the crop's mean brightness changes this share within k
    spread_ratio: float = 0.0  # gate (> 0): occlusion when the median residual over the face reaches this share of the
    # event (the whole-face rule; off by default since round 9: it gated real smiles and 14 real CASME II clips)
    head_ratio: float = 1.0  # gate: head_motion when the rigid motion exceeds this multiple of the event's motion (used
    # only where the landmark model gives no head pose: with landmarks, head motion comes from the pose)
    landmarks: str = "on"  # on: blinks, speech, head pose and occlusion from dense landmarks (facestate.py); off: none
    held: str = "off"  # on: held expressions (a smile, frown, brow raise that stays) as macro windows, proposed by the
    # flow and confirmed by the landmarks (spot/held.py; needs landmarks on); off: only movements that go and return

    @staticmethod
    def from_any(config: SpotConfig | dict[str, Any] | None) -> SpotConfig:
        """A SpotConfig from None (defaults), an instance, or a dict of overrides (unknown keys raise SpotError)."""
        if config is None:
            return SpotConfig()
        if isinstance(config, SpotConfig):
            return config
        check_keys(config, (f.name for f in dataclasses.fields(SpotConfig)), "spotting option", SpotError)
        cfg = SpotConfig(**config)
        cfg.validate()
        return cfg

    def as_dict(self) -> dict[str, Any]:
        """Every option with its value in effect (the manifest's `spotting` field)."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise SpotError on values that cannot work."""
        if self.dis_preset not in DIS_PRESETS:
            raise SpotError(f"dis_preset must be one of {', '.join(DIS_PRESETS)}, got {self.dis_preset!r}")
        if self.blinks not in BLINK_OPTIONS:
            raise SpotError(f"blinks must be one of {', '.join(BLINK_OPTIONS)}, got {self.blinks!r}")
        if self.gate not in ("label", "off") or self.gated not in ("drop", "label"):
            raise SpotError(f"gate must be label or off and gated drop or label, got {self.gate!r}, {self.gated!r}")
        if self.landmarks not in ("on", "off") or self.held not in ("on", "off"):
            raise SpotError(f"landmarks and held must be on or off, got {self.landmarks!r}, {self.held!r}")
        if self.held == "on" and (self.landmarks != "on" or self.macro_k_s <= 0):
            raise SpotError("held = \"on\" needs landmarks = \"on\" and macro_k_s > 0 (the macro motion proposes, the "
                            "landmarks confirm)")
        if self.motion_model not in MOTION_DEGREES:
            raise SpotError(f"motion_model must be one of {', '.join(MOTION_DEGREES)}, got {self.motion_model!r}")
        if self.context_s < 0:
            raise SpotError(f"context_s must be >= 0, got {self.context_s}")
        if self.flow_size < 32:
            raise SpotError(f"flow_size must be >= 32, got {self.flow_size}")
        for name in ("k_s", "max_micro_s", "max_window_s", "history_s", "p", "macro_p", "sensitivity"):
            if getattr(self, name) <= 0:
                raise SpotError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.top_fraction <= 1 or not 0 < self.extent_fraction < 1:
            raise SpotError("top_fraction must be in (0, 1] and extent_fraction in (0, 1)")



DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}

