"""Onset->apex optical flow and the two 28x28 flow-picture encodings (pure NumPy/OpenCV, no I/O but PNG helpers).

Two encodings, named in every checkpoint (``meta["input"]["encoding"]``): ``seed-hsv`` (below) and ``htnet-uvs``, the
official HTNet / STSTNet picture (TV-L1 flow, R = u, G = v, B = optical strain, each min-max scaled per picture) as the
MEGC2019 composite publishes it, computed here on the inner face region of our aligned crop.

The encoding reproduces the seed data exactly (pinned by tests/test_stages.py): Farneback (0.5, 3, 15, 3, 5, 1.2, 0)
on 224x224 grayscale crops; magnitude/angle in degrees; HSV with H = angle/2, S = 255, V = min-max(magnitude) to
0..255; HSV->RGB; resize to 28x28 with INTER_AREA. The model input is that RGB picture as float in [0, 1], channels first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from au_annotate.errors import check_keys

PICTURE_SIZE = 28
FLOW_METHOD = "farneback"  # the name checkpoints record in meta["flow"]["method"]


@dataclass(frozen=True)
class FarnebackParams:
    """cv2.calcOpticalFlowFarneback parameters; the defaults are the seed's."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2
    flags: int = 0

    def to_meta(self) -> dict[str, Any]:
        """The parameters as checkpoint meta (``meta["flow"]``): the method name plus every field."""
        return {"method": FLOW_METHOD, **asdict(self)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> FarnebackParams:
        """Parameters back from checkpoint meta, so a checkpoint's recorded flow can be compared with the pipeline's.

        Another method or an unknown key is a ValueError (the flow would not be what the model was trained on)."""
        values = dict(meta)
        method = values.pop("method", FLOW_METHOD)
        if method != FLOW_METHOD:
            raise ValueError(f"flow method {method!r} is not {FLOW_METHOD!r}")
        check_keys(values, (f.name for f in fields(cls)), "Farneback parameter")
        return cls(**values)


SEED_FARNEBACK = FarnebackParams()


def farneback_flow(onset: np.ndarray, apex: np.ndarray, params: FarnebackParams = SEED_FARNEBACK) -> np.ndarray:
    """Dense flow (H, W, 2) float32 from the onset crop to the apex crop (both grayscale uint8 of one size)."""
    if onset.shape != apex.shape or onset.ndim != 2:
        raise ValueError(f"onset and apex must be 2-D grayscale images of one shape, got {onset.shape} and {apex.shape}")
    return cv2.calcOpticalFlowFarneback(
        onset, apex, None, params.pyr_scale, params.levels, params.winsize, params.iterations, params.poly_n,
        params.poly_sigma, params.flags,
    )


def encode_flow(flow: np.ndarray, size: int = PICTURE_SIZE) -> np.ndarray:
    """The seed's flow picture: uint8 RGB (size, size, 3) from a (H, W, 2) flow field."""
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    magnitude, angle = cv2.cartToPolar(flow[..., 0], flow[..., 1], angleInDegrees=True)
    hsv = np.zeros((*flow.shape[:2], 3), dtype=np.uint8)
    hsv[..., 0] = angle / 2  # OpenCV hue is 0..179 for 0..358 degrees; float->uint8 assignment truncates like the seed
    hsv[..., 1] = 255
    hsv[..., 2] = cv2.normalize(magnitude, None, 0, 255, cv2.NORM_MINMAX)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)


def flow_picture(onset: np.ndarray, apex: np.ndarray, params: FarnebackParams = SEED_FARNEBACK) -> np.ndarray:
    """Farneback onset->apex, then the seed encoding: uint8 RGB (28, 28, 3)."""
    return encode_flow(farneback_flow(onset, apex, params))


def mosaic_picture(
    onset: np.ndarray, apex: np.ndarray, landmarks: np.ndarray, params: FarnebackParams = SEED_FARNEBACK
) -> np.ndarray:
    """Official-HTNet layout: a 2x2 mosaic of 14x14 flow patches around both eyes and both mouth corners.

    landmarks: (5, 2) in crop coordinates (left_eye, right_eye, nose, mouth_left, mouth_right). Each patch is a square of
    a fifth of the crop side around the landmark, encoded like the whole-face picture (min-max per patch)."""
    flow = farneback_flow(onset, apex, params)
    side = onset.shape[0]
    half = max(4, side // 10)
    tiles = []
    for k in (0, 1, 3, 4):
        cx, cy = (int(round(v)) for v in landmarks[k])
        x0, y0 = min(max(cx - half, 0), side - 2 * half), min(max(cy - half, 0), side - 2 * half)
        tiles.append(encode_flow(flow[y0 : y0 + 2 * half, x0 : x0 + 2 * half], PICTURE_SIZE // 2))
    top = np.concatenate(tiles[:2], axis=1)
    bottom = np.concatenate(tiles[2:], axis=1)
    return np.concatenate([top, bottom], axis=0)


# ------------------------------------------------------------------------------- the HTNet / STSTNet encoding (TV-L1)

SEED_ENCODING = "seed-hsv"  # Farneback, HSV picture (the seed's data)
HTNET_ENCODING = "htnet-uvs"  # TV-L1, R = u, G = v, B = optical strain, per-channel min-max (MEGC2019 composite)
ENCODINGS = (SEED_ENCODING, HTNET_ENCODING)
TVL1_METHOD = "tvl1"
# Face region of the composite's pictures inside our 224 aligned crop: a square of 0.67 of the side, centred
# horizontally, its centre at 0.56 of the height (measured by matching the composite's apex crops into ours: 150 px at
# (37..40, 48..51) for both casme2-frames clips). Their crop is tighter than ours (brows to chin).
HTNET_REGION = (0.67, 0.56)


def htnet_region(crop: np.ndarray, region: tuple[float, float] = HTNET_REGION) -> np.ndarray:
    """The inner face square of an aligned crop that the composite's pictures cover (side fraction, centre height)."""
    n = crop.shape[0]
    side = int(round(region[0] * n))
    x0 = int(round(n / 2 - side / 2))
    y0 = min(max(int(round(region[1] * n - side / 2)), 0), n - side)
    return crop[y0 : y0 + side, x0 : x0 + side]


@dataclass(frozen=True)
class TVL1Params:
    """How the product computes HTNet's TV-L1 flow: the inner face square resized to `side` px (None: as cropped), and
    the solver's pyramid scales, warps and iterations (OpenCV's defaults: 5, 5, 10 x 30). The channels are min-max
    scaled per picture, so the square's size does not change their scale (benchmarks/tvl1_cost.py, docs/au-model.md)."""

    side: int | None = None
    scales: int = 5
    warps: int = 5
    outer: int = 10
    inner: int = 30

    def create(self) -> Any:
        optflow = getattr(cv2, "optflow", None)
        if optflow is None:
            raise RuntimeError("TV-L1 flow needs opencv-contrib-python-headless (cv2.optflow is missing)")
        return optflow.DualTVL1OpticalFlow_create(nscales=self.scales, warps=self.warps, innnerIterations=self.inner,
                                                  outerIterations=self.outer)


OPENCV_TVL1 = TVL1Params()  # OpenCV's defaults on the square as cropped (150 px of a 224 crop)
# `--tvl1 fast` (docs/au-model.md, "TV-L1 cost"): a 112 px square, 3 scales, 1 warp, 5 x 10 iterations: the same median
# agreement with the published pictures on 98 real CASME II clips at a tenth of the time, but a higher v-channel error on
# the two raw clips of the reproduce check (its bound, fixed before, fails), so not the default
FAST_TVL1 = TVL1Params(side=112, scales=3, warps=1, outer=5, inner=10)
TVL1_PRESETS = {"exact": OPENCV_TVL1, "fast": FAST_TVL1}  # Settings.tvl1
PRODUCT_TVL1 = OPENCV_TVL1  # what htnet_picture uses when not told


def tvl1_flow(onset: np.ndarray, apex: np.ndarray, params: TVL1Params = OPENCV_TVL1) -> np.ndarray:
    """Dual TV-L1 flow (H, W, 2) float32 onset -> apex (needs opencv-contrib: cv2.optflow); `params.side` resizes both
    images to that square first."""
    if onset.shape != apex.shape or onset.ndim != 2:
        raise ValueError(f"onset and apex must be 2-D grayscale images of one shape, got {onset.shape} and {apex.shape}")
    if params.side is not None and onset.shape != (params.side, params.side):
        size = (params.side, params.side)
        onset = cv2.resize(onset, size, interpolation=cv2.INTER_AREA)
        apex = cv2.resize(apex, size, interpolation=cv2.INTER_AREA)
    return params.create().calc(onset, apex, None)


def optical_strain(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Optical strain magnitude sqrt(ux^2 + vy^2 + (uy + vx)^2 / 2) by central differences (STSTNet's third channel)."""
    uy, ux = np.gradient(u.astype(np.float64))
    vy, vx = np.gradient(v.astype(np.float64))
    return np.sqrt(ux**2 + vy**2 + 0.5 * (uy + vx) ** 2)


def _minmax255(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)


def encode_uv_strain(flow: np.ndarray, size: int = PICTURE_SIZE) -> np.ndarray:
    """HTNet's picture: u and v area-resized to size x size, strain of the resized flow, each channel min-max to 0..255.

    Of the orders tried against the composite's pictures (normalise then resize, resize then normalise, strain at full
    size or after the resize) this one agreed best on both casme2-frames clips (docs/au-model.md)."""
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    u = cv2.resize(np.ascontiguousarray(flow[..., 0]), (size, size), interpolation=cv2.INTER_AREA)
    v = cv2.resize(np.ascontiguousarray(flow[..., 1]), (size, size), interpolation=cv2.INTER_AREA)
    chans = [_minmax255(u.astype(np.float64)), _minmax255(v.astype(np.float64)), _minmax255(optical_strain(u, v))]
    return np.clip(np.round(np.stack(chans, axis=-1)), 0, 255).astype(np.uint8)


def htnet_picture(onset: np.ndarray, apex: np.ndarray, params: TVL1Params | None = None) -> np.ndarray:
    """TV-L1 onset -> apex on the inner face region of the aligned crops, then HTNet's u/v/strain encoding (28x28);
    `params` None: the product's (PRODUCT_TVL1)."""
    return encode_uv_strain(tvl1_flow(htnet_region(onset), htnet_region(apex), params or PRODUCT_TVL1))


def flip_uv_strain(images: np.ndarray) -> np.ndarray:
    """Horizontal mirror of HTNet pictures (N, H, W, 3): a mirror turns u into -u, so min-max(u) becomes 255 - it."""
    out = images[:, :, ::-1].copy()
    out[..., 0] = 255 - out[..., 0]
    return out


def picture_for(spec: str, onset: np.ndarray, apex: np.ndarray, landmarks: np.ndarray | None,
                tvl1: str = "exact") -> np.ndarray:
    """The model input a picture spec asks for: "face" / "mosaic" (seed encoding) or "face:htnet-uvs" (HTNet's, its
    TV-L1 by the `tvl1` preset of TVL1_PRESETS)."""
    layout, _, encoding = spec.partition(":")
    encoding = encoding or SEED_ENCODING
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown flow encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
    if encoding == HTNET_ENCODING:
        if layout != "face":
            raise ValueError(f"the {HTNET_ENCODING} encoding has a whole-face layout only, not {layout!r}")
        if tvl1 not in TVL1_PRESETS:
            raise ValueError(f"tvl1 must be one of {', '.join(TVL1_PRESETS)}, got {tvl1!r}")
        return htnet_picture(onset, apex, TVL1_PRESETS[tvl1])
    if layout == "mosaic":
        if landmarks is None:
            raise ValueError("the mosaic layout needs the face's landmarks")
        return mosaic_picture(onset, apex, landmarks)
    return flow_picture(onset, apex)


def images_to_input(images: np.ndarray) -> np.ndarray:
    """Model input from flow pictures: uint8 RGB (N, 28, 28, 3) -> float32 (N, 3, 28, 28) in [0, 1], no mean/std."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) RGB pictures, got {images.shape}")
    x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32, copy=False)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def load_flow_png(path: str | Path) -> np.ndarray:
    """Read a flow picture as uint8 RGB (H, W, 3); raises ValueError naming the file when it is not a colour image."""
    data = np.fromfile(str(path), dtype=np.uint8)  # np.fromfile + imdecode handles non-ASCII paths
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"{path}: expected an RGB flow picture, got shape {img.shape}")
    return cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)


def save_flow_png(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 RGB picture as PNG (atomically)."""
    from au_annotate.fileio import atomic_path

    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: could not encode PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
