"""Pictures of a window for the HTML report, made while the spotter's ring still holds its faces: a frame strip
(onset, a frame between, apex, a frame between, offset) with the regions that fired outlined, and a sprite of the
frames from before the onset to after the offset for a looping preview `SLOW` times slower than real time.

Both are JPEG of the aligned face crop at TILE / PREVIEW_TILE pixels, so a window costs about 30 KB of pictures
(about 40 KB of report, base64) whatever the video's resolution, and a video keeps at most MAX_STRIPS_PER_VIDEO of them in memory
(the pipeline's bound): the report stays self-contained and small, and an hour-long video does not grow the memory."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from au_annotate.records import AlignedFace, Window, WindowStrip
from au_annotate.spot.regions import ROI_NAMES, roi_boxes

TILE = 112  # strip tile side (px)
PREVIEW_TILE = 80  # preview tile side (px)
PREVIEW_MAX = 16  # preview frames at most (evenly spread over its span)
PREVIEW_PAD = 0.5  # the preview starts and ends this share of the window's span before the onset / after the offset
SLOW = 4.0  # preview slow-down
JPEG_QUALITY = 80  # the strip (colour: the outlines)
PREVIEW_QUALITY = 60  # the preview (gray: the crop is gray; a sprite of 16 tiles is most of a window's bytes)
MAX_STRIPS_PER_VIDEO = 300  # windows with pictures per video (about 10 MB of report at most; the rest: CSV only)
MAX_NEAR_MISSES = 20  # below-threshold peaks with pictures per face: the strongest ones
REGION_COLOR = (40, 40, 230)  # BGR: red outlines of the regions that fired
NO_FACE = 60  # grey level of a tile whose frame had no face


def _tile(face: AlignedFace | None, side: int) -> np.ndarray:
    """A BGR tile of the face crop (a dark tile when the frame had no face)."""
    if face is None:
        return np.full((side, side, 3), NO_FACE, np.uint8)
    crop = face.crop
    gray = crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)


def _outline(tile: np.ndarray, face: AlignedFace | None, regions: tuple[str, ...]) -> None:
    """Draw the boxes of `regions` (placed from the face's 5 landmarks, as the spotter placed them) onto the tile."""
    if face is None or not regions:
        return
    side = tile.shape[0]
    lm = np.asarray(face.landmarks, np.float64) * (side / face.crop.shape[0])
    boxes = roi_boxes(lm, side)
    for name in regions:
        if name in ROI_NAMES:
            y0, y1, x0, x1 = boxes[ROI_NAMES.index(name)]
            cv2.rectangle(tile, (x0, y0), (x1 - 1, y1 - 1), REGION_COLOR, 1)


def _jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def strip_frames(window: Window) -> tuple[int, ...]:
    """The frames of the strip: onset, halfway to the apex, apex, halfway to the offset, offset."""
    w = window
    return (w.onset, (w.onset + w.apex) // 2, w.apex, (w.apex + w.offset + 1) // 2, w.offset)


def make_strip(window: Window, face_at: Callable[[int], AlignedFace | None],
               time_at: Callable[[int], float | None], newest: int) -> WindowStrip:
    """The strip and preview of one window from the faces still at hand (`face_at(frame)`; `newest` = latest frame fed,
    the preview never reaches past it). Frames without a face show as dark tiles."""
    frames = strip_frames(window)
    tiles = []
    for i in frames:
        face = face_at(i)
        tile = _tile(face, TILE)
        _outline(tile, face, window.regions)
        tiles.append(tile)
    span = window.offset - window.onset + 1
    pad = max(1, int(round(PREVIEW_PAD * span)))
    first, last = max(0, window.onset - pad), min(newest, window.offset + pad)
    while first < window.onset and face_at(first) is None and time_at(first) is None:
        first += 1  # before the ring's start
    last = max(last, first)
    n = min(PREVIEW_MAX, last - first + 1)
    picks = np.unique(np.round(np.linspace(first, last, n)).astype(int))
    sprite = np.concatenate([_tile(face_at(int(i)), PREVIEW_TILE)[:, :, 0] for i in picks], axis=1)
    t0, t1 = time_at(first), time_at(last)
    seconds = (t1 - t0) if t0 is not None and t1 is not None and t1 > t0 else (last - first + 1) / 30.0
    return WindowStrip(strip_jpeg=_jpeg(np.concatenate(tiles, axis=1)), strip_frames=frames, tile=TILE,
                       preview_jpeg=_jpeg(sprite, PREVIEW_QUALITY), preview_n=len(picks), preview_tile=PREVIEW_TILE,
                       preview_s=float(seconds), slow=SLOW)
