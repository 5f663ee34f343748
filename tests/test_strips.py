"""Frame strips and slowed previews of every window (au_annotate/strips.py) end to end: a planted micro-expression and
a planted blink through the real pipeline with a report, checked in the records, in the page, and in headless
Chromium (the pictures load and the preview animates)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from synth import PlantedEvent, make_video

from au_annotate.api import annotate
from au_annotate.records import RunReport
from au_annotate.settings import Settings
from au_annotate.strips import PREVIEW_TILE, SLOW, TILE, strip_frames
from au_annotate.writers.report import REASONS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, weights: str) -> RunReport:
    root = tmp_path_factory.mktemp("strips")
    make_video(root / "in" / "clip.mp4", fps=30, duration_s=6.0, seed=4, noise_sigma=1.5,
               events=[PlantedEvent("brow_raise", 2.0, 2.15, 2.35, 3.0),
                       PlantedEvent("blink", 4.0, 4.07, 4.2, 6.0, kind="blink")])
    return annotate([root / "in"], root / "out", Settings(weights=weights, report=True, jobs=1, quiet=True))


def _jpeg(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def test_every_window_has_its_strip_and_preview(run: RunReport) -> None:
    (res,) = run.results
    micro = [s for s in res.segments if s.kind == "micro" and abs(s.apex_s - 2.15) < 0.1]
    assert micro, res.segments
    for s in res.segments:
        st = s.strip
        assert st is not None and st.strip_frames == (s.onset_frame, (s.onset_frame + s.apex_frame) // 2, s.apex_frame,
                                                      (s.apex_frame + s.offset_frame + 1) // 2, s.offset_frame)
        assert _jpeg(st.strip_jpeg).shape == (TILE, 5 * TILE, 3)
        assert _jpeg(st.preview_jpeg).shape == (PREVIEW_TILE, st.preview_n * PREVIEW_TILE, 3)  # decoded as colour
        assert st.preview_n >= 5 and st.slow == SLOW
        assert s.duration_s < st.preview_s < 3 * s.duration_s + 0.2  # before the onset to after the offset
        assert s.regions and set(s.regions) <= {"brow_l", "brow_r", "eye_l", "eye_r", "lid_l", "lid_r", "cheek_l",
                                                "cheek_r", "mouth_l", "mouth_r", "lip_upper", "lip_lower"}
    # the brow raise: its regions are outlined in red on the strip, and the apex tile differs from the onset tile
    s = micro[0]
    assert any(r.startswith("brow") for r in s.regions), s.regions
    strip = _jpeg(s.strip.strip_jpeg).astype(int)
    red = (strip[:, :, 2] > 150) & (strip[:, :, 1] < 90) & (strip[:, :, 0] < 90)
    assert red[:, :TILE].sum() > 20 and red[:, 2 * TILE : 3 * TILE].sum() > 20  # outlines on the onset and apex tiles
    onset, apex = strip[:, :TILE], strip[:, 2 * TILE : 3 * TILE]
    assert np.abs(apex - onset)[~red[:, :TILE]].mean() > 0.5  # the face moved between them


def test_dropped_windows_carry_their_reason_and_pictures(run: RunReport) -> None:
    (res,) = run.results
    blink = [w for w in res.unreported if w.reason == "blink"]
    assert blink and abs(blink[0].apex / 30 - 4.07) < 0.15, res.unreported
    for w in res.unreported:
        assert w.reason in REASONS, w
        assert w.strip is not None and w.strip.strip_frames == strip_frames(w) and w.face_id == "face0"
    assert not [s for s in res.segments if abs(s.apex_s - 4.07) < 0.15]  # the blink is not among the segments


def test_report_shows_strips_and_reasons_within_its_size_bound(run: RunReport) -> None:
    page = (run.out_dir / "report.html").read_text(encoding="utf-8")
    (res,) = run.results
    assert page.count('<tr class="pair" data-segment-id=') == len(res.segments)
    assert len(re.findall(r'<tr class="dropped [a-z]+" data-reason="([a-z_]+)"', page)) == len(res.unreported)
    assert 'data-reason="blink"' in page and REASONS["blink"] in page
    assert page.count('class="preview" role="img"') == len(res.segments) + len(res.unreported)
    # the pictures are embedded (no file next to the report) and small: about 30 KB a window
    pics = re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", page)
    assert len(pics) == 2 * (len(res.segments) + len(res.unreported))
    per_window = sum(len(base64.b64decode(p)) for p in pics) / (len(res.segments) + len(res.unreported))
    assert per_window < 35_000, per_window
    assert "score (× threshold)" in page and "1.0 = just reported" in page
    for seg in res.segments:  # the model's own emotion beside the FACS rule's, and the quality/context column
        if seg.emotion_model:
            assert f"model: {seg.emotion_model} {seg.emotion_model_p:.2f}" in page
    assert "quality / context" in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_strips_load_and_previews_animate_in_headless_chromium(run: RunReport, tmp_path: Path) -> None:
    """The coder's view: every strip decodes in the browser at its size and every preview runs its looping animation;
    screenshots of a reported and a dropped window are written next to the test's files."""
    path = run.out_dir / "report.html"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    proc = subprocess.run([*cmd, "--virtual-time-budget=5000", "--dump-dom", path.as_uri()], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    widths = re.findall(r'<img class="strip"[^>]*data-natural-width="(\d+)"', dom)
    (res,) = run.results
    assert widths and all(int(w) == 5 * TILE for w in widths) and len(widths) == len(res.segments) + len(
        res.unreported)
    anim = re.findall(r'<div class="preview"[^>]*data-animation="([^"]*)"', dom)
    assert anim and all(a.startswith("pv ") for a in anim), anim
    for name, row in (("reported", 'tr class="pair" data-segment-id'), ("dropped", 'tr class="dropped')):
        assert row in dom, name
    shot = tmp_path / "report.png"
    proc = subprocess.run([*cmd, "--window-size=1280,2400", f"--screenshot={shot}", path.as_uri()],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and shot.stat().st_size > 20_000
