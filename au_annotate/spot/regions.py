"""Region motion: DIS optical flow between two aligned crops, the face's own motion fitted and removed, and one motion
vector per facial region of interest (placed from the 5 landmarks), in pixels of a 224-px crop.

Steps 1-3 of the spotter (au_annotate/spot/__init__.py): flow on the downscaled crops, a polynomial face-motion model
(`motion_model`) fitted robustly to the face and subtracted, then per region the mean of its strongest residual vectors
(`top_fraction`; 1 = the plain region mean, computed without a residual per pixel)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from au_annotate.quality import StepSignals
from au_annotate.spot.config import DIS_PRESETS, MOTION_DEGREES, SpotConfig

REF_SIZE = 224.0  # motion is reported in pixels of a 224-px aligned crop, whatever the crop and flow sizes

# Regions of interest: (name, landmark anchor (index, or "mc" = mouth centre), centre offset (x, y) and half-size (x, y)
# in inter-ocular distances). Landmarks: 0 left eye, 1 right eye, 2 nose, 3 mouth left, 4 mouth right.
ROIS: tuple[tuple[str, int | str, tuple[float, float], tuple[float, float]], ...] = (
    ("brow_l", 0, (0.0, -0.36), (0.30, 0.16)),
    ("brow_r", 1, (0.0, -0.36), (0.30, 0.16)),
    ("eye_l", 0, (0.0, -0.04), (0.22, 0.11)),
    ("eye_r", 1, (0.0, -0.04), (0.22, 0.11)),
    ("lid_l", 0, (0.0, 0.13), (0.22, 0.08)),
    ("lid_r", 1, (0.0, 0.13), (0.22, 0.08)),
    ("cheek_l", 0, (-0.05, 0.45), (0.24, 0.15)),
    ("cheek_r", 1, (0.05, 0.45), (0.24, 0.15)),
    ("mouth_l", 3, (0.0, 0.0), (0.20, 0.18)),
    ("mouth_r", 4, (0.0, 0.0), (0.20, 0.18)),
    ("lip_upper", "mc", (0.0, -0.09), (0.24, 0.09)),  # upper and lower lip apart: they often move in opposite
    ("lip_lower", "mc", (0.0, 0.13), (0.24, 0.10)),  # directions (lip press, lips part), which one mean would cancel
)
ROI_NAMES = tuple(r[0] for r in ROIS)
EYE_ROIS = (ROI_NAMES.index("eye_l"), ROI_NAMES.index("eye_r"))
EYE_AREA_ROIS = EYE_ROIS + (ROI_NAMES.index("lid_l"), ROI_NAMES.index("lid_r"))


def roi_boxes(lm: np.ndarray, n: int) -> list[tuple[int, int, int, int]]:
    """Each region's box (y0, y1, x0, x1), ROIS order, in a crop of side n whose 5 landmarks are `lm` (crop pixels)."""
    iod = max(4.0, float(np.linalg.norm(lm[1] - lm[0])))
    mc = (lm[3] + lm[4]) / 2
    boxes = []
    for _, anchor, (ox, oy), (hx, hy) in ROIS:
        base = mc if anchor == "mc" else lm[anchor]
        cx, cy = base[0] + ox * iod, base[1] + oy * iod
        rx, ry = max(2.0, hx * iod), max(2.0, hy * iod)
        x0, x1 = int(np.clip(cx - rx, 0, n - 2)), int(np.clip(cx + rx + 1, 2, n))
        y0, y1 = int(np.clip(cy - ry, 0, n - 2)), int(np.clip(cy + ry + 1, 2, n))
        boxes.append((y0, max(y1, y0 + 2), x0, max(x1, x0 + 2)))
    return boxes


class RegionMotion:
    """Region motion between crops for one spotter: its DIS instance and the per-landmark-set geometry cache."""

    def __init__(self, config: SpotConfig) -> None:
        self.config = config
        self.dis = cv2.DISOpticalFlow.create(DIS_PRESETS[config.dis_preset])
        self.dis.setFinestScale(int(config.dis_finest_scale))
        if config.dis_patch_stride > 0:
            self.dis.setPatchStride(int(config.dis_patch_stride))
        self.cache: dict[bytes, _Geometry] = {}
        self.last_step: _StepFit | None = None  # what the gate needs of the latest flow computed with stats=True

    def geometry(self, lm: np.ndarray) -> _Geometry:
        """ROI slices and the rigid-fit design in flow-size coordinates, cached per landmark set."""
        key = np.round(lm, 1).tobytes()
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        n = self.config.flow_size
        iod = max(4.0, float(np.linalg.norm(lm[1] - lm[0])))
        boxes = roi_boxes(lm, n)
        # all ROI pixels in one padded (R, Nmax) table of flat indices, so per-region statistics are vectorised
        sizes = [(y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in boxes]
        nmax = max(sizes)
        flat = np.zeros((len(boxes), nmax), np.intp)
        valid = np.zeros((len(boxes), nmax), bool)
        for r, (y0, y1, x0, x1) in enumerate(boxes):
            gy, gx = np.mgrid[y0:y1, x0:x1]
            flat[r, : sizes[r]] = (gy * n + gx).ravel()
            valid[r, : sizes[r]] = True
        fy, fx = np.divmod(flat, n)
        degree = MOTION_DEGREES[self.config.motion_model]
        coords = _basis(fx, fy, n, degree).astype(np.float32)  # (R, Nmax, M)
        tops = np.maximum(1, (np.asarray(sizes) * self.config.top_fraction).astype(int))
        fx0, fx1 = lm[0, 0] - 0.7 * iod, lm[1, 0] + 0.7 * iod
        fy0, fy1 = min(lm[0, 1], lm[1, 1]) - 0.8 * iod, max(lm[3, 1], lm[4, 1]) + 0.5 * iod
        step = max(1, int(round(n / 40)))
        face = (slice(int(np.clip(fy0, 0, n - 8)), int(np.clip(fy1, 8, n)), step),
                slice(int(np.clip(fx0, 0, n - 8)), int(np.clip(fx1, 8, n)), step))
        gy, gx = np.mgrid[face[0], face[1]]
        design = _basis(gx.ravel(), gy.ravel(), n, degree)
        top_col = nmax - tops  # column of each region's tops[r]-th largest magnitude in its ascending sort
        pad = np.where(valid, 0.0, -np.inf).astype(np.float32)  # padding never reaches a region's top-k
        weights = (valid / np.asarray(sizes, np.float64)[:, None]).astype(np.float32)  # 1/size on each ROI pixel
        mean_coords = np.einsum("rn,rnm->rm", weights, coords).astype(np.float32)
        normal_inv = np.linalg.inv(design.T @ design + 1e-6 * np.eye(design.shape[1]))
        geo = _Geometry(flat, valid, coords, tops, weights, mean_coords, face, design, normal_inv, top_col,
                        np.arange(len(boxes)), pad, design[_GATE_SUB].astype(np.float32))
        if len(self.cache) > 64:
            self.cache.clear()
        self.cache[key] = geo
        return geo

    def motion(self, a: np.ndarray, b: np.ndarray, lm: np.ndarray, stats: bool = False) -> np.ndarray:
        """Per-region motion (R, 2) from crop a to crop b, head motion removed, in pixels of a 224-px crop (`stats`:
        also what the gate's StepSignals of this flow are made from, in `last_step`)."""
        flow = self.dis.calc(a, b, None)
        geo = self.geometry(lm)
        grid = flow[geo.face].reshape(-1, 2)
        coef = _fit_motion(grid, geo.design, geo.normal_inv).astype(np.float32)
        if stats:  # what the gate needs of this flow, kept small; its signals are computed only for a window's steps
            self.last_step = _StepFit(coef, np.ascontiguousarray(grid[_GATE_SUB]), geo.gate_design)
        r, nmax = geo.flat.shape
        # gather each (dx, dy) pair as one 8-byte item: 12x faster than fancy-indexing rows of a (N, 2) array
        picked = np.ascontiguousarray(flow, dtype=np.float32).reshape(-1).view(np.uint64).take(geo.flat.ravel())
        if self.config.top_fraction >= 1.0:  # the plain region mean: mean flow minus the motion model at the mean point
            mean_flow = np.matmul(geo.weights[:, None, :], picked.view(np.float32).reshape(r, nmax, 2))[:, 0]
            out = mean_flow - geo.mean_coords @ coef
            return (out * np.float32(REF_SIZE / self.config.flow_size)).astype(np.float32)
        v = (picked.view(np.float32).reshape(-1, 2) - geo.coords.reshape(r * nmax, -1) @ coef).reshape(r, nmax, 2)
        mag = v[..., 0] ** 2 + v[..., 1] ** 2 + geo.pad  # squared magnitude; padding entries at -inf
        # mean of each region's `tops[r]` strongest vectors: threshold at its tops[r]-th largest magnitude (one sort of
        # all rows: twice as fast as a partition at the regions' ~10 distinct ranks), then a masked sum (ties at the
        # threshold are rare and all kept)
        thr = np.sort(mag, axis=1)[geo.rows, geo.top_col]
        sel = ((mag >= thr[:, None]) & geo.valid).astype(np.float32)
        out = np.matmul(sel[:, None, :], v)[:, 0] / sel.sum(1)[:, None]
        return (out * np.float32(REF_SIZE / self.config.flow_size)).astype(np.float32)



@dataclass(frozen=True, eq=False)
class _Geometry:
    """Cached per landmark set: ROI pixels as a padded table (flat indices, validity, motion basis, how many strongest
    vectors to average, plain-mean weights), and the face sample grid with its motion-model design matrix."""

    flat: np.ndarray  # (R, Nmax) flat pixel indices
    valid: np.ndarray  # (R, Nmax) bool
    coords: np.ndarray  # (R, Nmax, M) float32: the motion basis (`_basis`) at each ROI pixel
    tops: np.ndarray  # (R,) int
    weights: np.ndarray  # (R, Nmax) float32: 1 / region size on the region's pixels, 0 on padding (the plain mean)
    mean_coords: np.ndarray  # (R, M) float32: the motion basis averaged over each region
    face: tuple[slice, slice]
    design: np.ndarray
    normal_inv: np.ndarray  # (design^T design + eps I)^-1, for the first fit
    top_col: np.ndarray  # (R,) column of the tops[r]-th largest value in an ascending sort of a (R, Nmax) row
    rows: np.ndarray  # (R,) 0 .. R-1, to pick each row's top_col entry
    pad: np.ndarray  # (R, Nmax) float32: 0 for ROI pixels, -inf for padding (below any squared magnitude)
    gate_design: np.ndarray  # (N / 4, M) float32: the design rows of the face points the gate uses (`_GATE_SUB`)


_GATE_SUB = slice(None, None, 4)  # the gate uses every 4th face point of a flow: a median and a mean need no more


@dataclass(frozen=True, eq=False)
class _StepFit:
    """What the gate needs of one flow step (~5 KB; it keeps none of the geometry's large tables alive, so the step ring
    stays small however often the landmarks change): the motion model's coefficients, the flow at every 4th face point
    and the design rows there. Its StepSignals are computed only for the steps around a window (most steps never are)."""

    coef: np.ndarray  # (M, 2) float32
    grid: np.ndarray  # (N / 4, 2) float32: the flow at the face points `_GATE_SUB`
    design: np.ndarray  # (N / 4, M) float32: the motion basis at those points


def _step_signals(fit: _StepFit | None, scale: float) -> StepSignals | None:
    """The gate signals of a flow step, in pixels of a 224-px crop (`scale` = 224 / flow size): the rotation/scale/shear
    part of the fitted motion (a translation is fitted exactly: no fit error) and the median residual over the face."""
    if fit is None:
        return None
    rigid = fit.design @ fit.coef
    d = fit.grid - rigid
    dev = rigid - rigid.mean(0)
    head = float(np.sqrt((dev * dev).sum(1)).mean()) * scale
    res = (d * d).sum(1)
    spread = math.sqrt(float(np.partition(res, len(res) // 2)[len(res) // 2])) * scale  # median residual
    return StepSignals(head_px=head, spread_px=spread)


def _basis(x: np.ndarray, y: np.ndarray, n: int, degree: int) -> np.ndarray:
    """Polynomial motion basis (..., M) at flow-size pixel coordinates x, y: 1, x, y (M = 3, affine), then the
    monomials of degree 2..`degree` of the centred coordinates (x - n/2, y - n/2) / (n/2), times n/2 so that every
    column has the same scale as x and y (a well-conditioned fit)."""
    h = n / 2.0
    u, v = (x - h) / h, (y - h) / h
    cols = [np.ones_like(x, dtype=np.float64), x.astype(np.float64), y.astype(np.float64)]
    for d in range(2, degree + 1):
        cols += [h * u ** (d - j) * v ** j for j in range(d + 1)]
    return np.stack(cols, axis=-1)


def _fit_motion(u: np.ndarray, design: np.ndarray, normal_inv: np.ndarray | None = None) -> np.ndarray:
    """Face motion (M, 2) fitting flow vectors u (N, 2) at points design (N, M) (`_basis`); robust: the worst 30 %
    of points (moving facial parts, background) are dropped and the fit repeated. `normal_inv` is the cached inverse
    of the first fit's normal matrix (it depends on the points only)."""
    u = u.astype(np.float64)
    if normal_inv is None:
        normal_inv = np.linalg.inv(design.T @ design + 1e-6 * np.eye(design.shape[1]))
    coef = normal_inv @ (design.T @ u)
    d = design @ coef - u
    res = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]
    cut = int(0.7 * len(res))
    keep = (res <= np.partition(res, cut)[cut]).astype(np.float64)
    dw = design.T * keep  # the kept rows by a 0/1 weight: the same sums as indexing them, without the copies
    normal = dw @ design
    normal[np.diag_indices(len(normal))] += 1e-6
    return np.linalg.solve(normal, dw @ u)


