"""Shared fixtures: the checkpoint end-to-end tests annotate with, and synthetic face videos made from a real face
picture (skimage's astronaut, public domain)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def weights(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The checkpoint for end-to-end runs: the shipped default weights when present, else a seed-config checkpoint with
    fixed random weights (outputs need a model, not a trained one); see tests.corpus.local_checkpoint."""
    from tests.corpus import local_checkpoint

    return local_checkpoint(Path(tmp_path_factory.mktemp("weights")))


@pytest.fixture(scope="session")
def planted_clips(tmp_path_factory: pytest.TempPathFactory):
    """A folder with two 5 s 30 fps clips with planted micro-movements, one text file and one corrupt .mp4."""
    from synth import PlantedEvent, make_video

    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    a = make_video(root / "clip_a.mp4", fps=30, duration_s=5.0, seed=1, head_motion_px=1.5, noise_sigma=1.5,
                   events=[PlantedEvent("brow_raise", 1.2, 1.4, 1.6, 3.0),
                           PlantedEvent("lip_corner_pull", 3.3, 3.5, 3.75, 3.0)])
    b = make_video(root / "sub" / "clip_b.mp4", fps=30, duration_s=5.0, seed=2, head_motion_px=1.5, noise_sigma=1.5,
                   events=[PlantedEvent("lip_corner_pull", 2.0, 2.2, 2.45, 3.0)])
    (root / "notes.txt").write_text("not a video\n", encoding="utf-8")
    good = a.path.read_bytes()
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200) + good[-5000:])
    return root, (a, b)
