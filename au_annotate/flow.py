"""Onset->apex optical flow and the seed's 28x28 flow-picture encoding (pure NumPy/OpenCV, no I/O but PNG helpers).

The encoding reproduces the seed data exactly (pinned by tests/test_stages.py): Farneback (0.5, 3, 15, 3, 5, 1.2, 0)
on 224x224 grayscale crops; magnitude/angle in degrees; HSV with H = angle/2, S = 255, V = min-max(magnitude) to
0..255; HSV->RGB; resize to 28x28 with INTER_AREA. The model input is that RGB picture as float in [0, 1], channels first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

PICTURE_SIZE = 28


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
