"""Reproduce the MEGC composite's flow pictures from raw frames through the product's own face, align and flow stages.

For each clip of a frames folder (``casme2-frames``: ``labels.csv`` + ``<clip>/img<N>.jpg``) the frames from onset to
apex go through `FaceTracker` (MTCNN once, template matching after: the annotate pipeline's aligned 224x224 crops), then
`flow.htnet_picture` on the onset and apex crops. Agreement with the composite's picture of the same clip: per channel
(R = u, G = v, B = strain) the Pearson correlation and the mean absolute difference in grey levels (0..255).
With a checkpoint, the model's probabilities on both pictures are compared too (`agreement_rule`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from au_annotate.flow import htnet_picture, load_flow_png

CHANNELS = ("u", "v", "strain")
MAX_PROB_DIFF = 0.20  # fixed before measuring: a model is usable on the product's pictures when no AU with >= 15
# training positives moves by more than this between the published and the product's picture, and the model emotion
# is the same class on both (for every reproduced clip).


class ReproduceError(ValueError):
    """A frames folder or the composite lacks what the reproduction needs (message names the file)."""


@dataclass(frozen=True)
class Reproduction:
    """One clip: the product's picture, the published one and their per-channel agreement."""

    clip: str
    sample_id: str
    ours: np.ndarray  # uint8 (28, 28, 3)
    published: np.ndarray
    corr: tuple[float, float, float]
    mae: tuple[float, float, float]


def read_labels(frames_dir: Path) -> list[dict[str, str]]:
    """The coding-sheet rows of a frames folder (Subject, Filename, OnsetFrame, ApexFrame, ...)."""
    path = frames_dir / "labels.csv"
    if not path.is_file():
        raise ReproduceError(f"{path}: labels table not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    for col in ("Subject", "Filename", "OnsetFrame", "ApexFrame"):
        if rows and col not in rows[0]:
            raise ReproduceError(f"{path}: missing column {col}")
    return rows


def aligned_pair(clip_dir: Path, onset: int, apex: int, fps: float = 200.0) -> tuple[np.ndarray, np.ndarray]:
    """The product's aligned gray 224x224 crops of the onset and apex frames (tracked over onset..apex)."""
    from au_annotate.face import FaceTracker
    from au_annotate.records import Frame

    tracker = FaceTracker(fps, crop_size=224)
    crops: dict[int, np.ndarray] = {}
    for i, n in enumerate(range(onset, apex + 1)):
        path = clip_dir / f"img{n}.jpg"
        img = cv2.imread(str(path))
        if img is None:
            raise ReproduceError(f"{path}: missing or unreadable frame")
        faces = tracker.process_all(Frame(i, i / fps, img, "bgr"))
        if faces:
            crops[n] = faces[0].crop
    if onset not in crops or apex not in crops:
        raise ReproduceError(f"{clip_dir}: no face tracked on the onset or apex frame")
    return crops[onset], crops[apex]


def channel_agreement(ours: np.ndarray, ref: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per channel: Pearson r and mean |difference| in grey levels."""
    a, b = ours.astype(np.float64), ref.astype(np.float64)
    corr = tuple(float(np.corrcoef(a[..., k].ravel(), b[..., k].ravel())[0, 1]) for k in range(3))
    mae = tuple(float(np.abs(a[..., k] - b[..., k]).mean()) for k in range(3))
    return corr, mae


def reproduce(frames_dir: str | Path, composite_dir: str | Path) -> list[Reproduction]:
    """Every clip of the frames folder that the composite also holds (sample id ``casme2_sub{SS}_{clip}``)."""
    frames_dir, composite_dir = Path(frames_dir), Path(composite_dir)
    out = []
    for row in read_labels(frames_dir):
        clip = row["Filename"]
        sample = f"casme2_sub{int(row['Subject']):02d}_{clip}"
        ref_path = composite_dir / "flows" / f"{sample}.png"
        if not ref_path.is_file():
            raise ReproduceError(f"{ref_path}: the composite has no picture of {clip}")
        onset, apex = aligned_pair(frames_dir / clip, int(row["OnsetFrame"]), int(row["ApexFrame"]))
        ours = htnet_picture(onset, apex)
        ref = load_flow_png(ref_path)
        corr, mae = channel_agreement(ours, ref)
        out.append(Reproduction(clip, sample, ours, ref, corr, mae))  # type: ignore[arg-type]
    return out


def probability_agreement(loaded: Any, reps: list[Reproduction], min_positives: int = 15) -> dict[str, Any]:
    """The model's outputs on the published vs the product's picture of each clip, and the usability verdict."""
    from au_annotate.aus import emotion_softmax
    from au_annotate.infer import BatchRunner

    runner = BatchRunner(loaded, device="cpu", batch_size=8)
    k = loaded.n_aus
    positives = loaded.meta.get("training", {}).get("positives", {})
    judged = [j for j, au in enumerate(loaded.au_names) if int(positives.get(au, 0)) >= min_positives]
    clips = {}
    ok = True
    for r in reps:
        p = runner.predict(np.stack([r.published, r.ours]))
        diff = np.abs(p[0, :k] - p[1, :k])
        entry: dict[str, Any] = {
            "published": {au: float(p[0, j]) for j, au in enumerate(loaded.au_names) if j in judged},
            "ours": {au: float(p[1, j]) for j, au in enumerate(loaded.au_names) if j in judged},
            "max_abs_diff": float(diff[judged].max()) if judged else 0.0,
        }
        same = True
        if loaded.emotion_classes:
            e = emotion_softmax(p[:, k:])
            entry["emotion"] = [loaded.emotion_classes[int(i)] for i in e.argmax(1)]
            entry["emotion_p"] = [float(x) for x in e.max(1)]
            same = entry["emotion"][0] == entry["emotion"][1]
        entry["agrees"] = entry["max_abs_diff"] <= MAX_PROB_DIFF and same
        ok = ok and entry["agrees"]
        clips[r.clip] = entry
    return {"rule": f"max |p_published - p_ours| <= {MAX_PROB_DIFF:g} over AUs with >= {min_positives} training "
                    "positives, and the same model emotion, on every clip", "clips": clips, "usable": ok}
