"""HTML run report: self-contained page, expected structure, robustness; and the page in a real headless browser."""

from __future__ import annotations

import dataclasses
import inspect
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from au_annotate.records import DetectionFloor, RunReport, Segment, VideoInfo, VideoJob, VideoResult, Window
from au_annotate.writers import WriteContext
from au_annotate.writers.report import FONT_PT, _heatmap, _timeline, render_report, timeline_layout, write_report

AU_NAMES = ("AU04", "AU07", "AU12")
CTX = WriteContext(tool_version="1.2.3", model_name="htnet-test", model_sha256="cd" * 32, settings={"report": True})
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _segment(video: str, sid: int, onset: int, kind: str = "micro") -> Segment:
    rng = np.random.default_rng(sid)
    probs = rng.random(len(AU_NAMES)).astype(np.float32)
    present = probs > 0.5
    return Segment(video=video, face_id="face0", segment_id=sid, kind=kind, onset_frame=onset, apex_frame=onset + 4,
                   offset_frame=onset + 9, onset_s=onset / 30, apex_s=(onset + 4) / 30, offset_s=(onset + 9) / 30,
                   duration_s=0.3, score=1.5, au_names=AU_NAMES, probs=probs, present=present,
                   aus="+".join(str(int(n[2:])) for n, p in zip(AU_NAMES, present, strict=True) if p),
                   emotion="anger" if sid % 2 else "", rule="anger" if sid % 2 else "",
                   flow_image=rng.integers(0, 255, (28, 28, 3), dtype=np.uint8))  # fmt: skip


def _result(tmp: Path, rel: str, n_segments: int, status: str = "done", signal: bool = True) -> VideoResult:
    job = VideoJob(path=tmp / rel, rel=PurePosixPath(rel), out_dir=tmp / "out")
    if status != "done":
        return VideoResult(job=job, status=status, error=f"{rel}: cannot decode" if status == "failed" else
                           f"{rel}: no face found")  # fmt: skip
    info = VideoInfo(path=job.path, backend="test", width=640, height=480, fps=30.0, n_frames=600, duration_s=20.0)
    segs = tuple(_segment(rel, i, 40 * i + 10, "macro" if i == 2 else "micro") for i in range(n_segments))
    sig = np.stack([np.arange(600), np.abs(np.sin(np.arange(600) / 9.0))], axis=1) if signal else None
    floors = {"face0": DetectionFloor(pct_iod=2.345, regions=(("brow_l", 2.345),), steps=580)} if n_segments else {}
    return VideoResult(job=job, status="done", info=info, segments=segs, frames=600, frames_with_face=590, faces=1,
                       elapsed_s=3.0, signal=sig, floors=floors)  # fmt: skip


@pytest.fixture
def run(tmp_path: Path) -> RunReport:
    results = (
        _result(tmp_path, "sessão 1/entrevista <b>&.mp4", 5),
        _result(tmp_path, "b.mp4", 0),
        _result(tmp_path, "broken.mp4", 0, status="failed"),
        _result(tmp_path, "blank.mp4", 0, status="no_face"),
        _result(tmp_path, "c.mp4", 3, signal=False),
    )
    return RunReport(results=results, out_dir=tmp_path / "out", elapsed_s=9.5)


class _Collect(HTMLParser):
    """Tags with their attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def _tags(page: str) -> list[tuple[str, dict[str, str]]]:
    p = _Collect()
    p.feed(page)
    return p.tags


def _classes(attrs: dict[str, str]) -> set[str]:
    return set(attrs.get("class", "").split())


def _check_structure(page: str) -> None:
    """What both the generated file and the browser's DOM must show."""
    tags = _tags(page)
    rows = [a for t, a in tags if t == "tr" and "segment" in _classes(a)]
    assert len(rows) == 8
    sections = [a for t, a in tags if t == "section" and "video" in _classes(a)]
    assert [(s["data-video"], s["data-segments"]) for s in sections] == [
        ("sessão 1/entrevista <b>&.mp4", "5"),
        ("b.mp4", "0"),
        ("c.mp4", "3"),
    ]  # failed / no-face: overview only
    assert not [a for t, a in tags if "plot-error" in _classes(a)]
    flows = [a for t, a in tags if t == "img" and "flow" in _classes(a)]
    assert len(flows) == 8 and all(a["src"].startswith("data:image/png;base64,") for a in flows)


def test_report_structure_and_self_contained(run: RunReport, tmp_path: Path) -> None:
    path = write_report(run, tmp_path / "out" / "report.html", CTX)
    page = path.read_text(encoding="utf-8")
    _check_structure(page)
    tags = _tags(page)
    # self-contained: every image is embedded, no external scripts, styles, fonts or links
    assert all(a["src"].startswith("data:") for t, a in tags if t in ("img", "script") and "src" in a)
    assert not [a for t, a in tags if t == "link"]
    assert all(a["href"].startswith("#") for t, a in tags if t == "a")
    assert not re.search(r"https?://|@import|url\(", page)
    # overview: counts, failures with reasons, model checksum, timelines for videos with a signal or segments
    body = next(a for t, a in tags if t == "body")
    assert (body["data-videos"], body["data-segments"]) == ("5", "8")
    assert "broken.mp4: cannot decode" in page and "blank.mp4: no face found" in page
    assert "cd" * 32 in page
    plots = [a["alt"] for t, a in tags if t == "img" and "plot" in _classes(a)]
    assert plots == ["segments per AU",
                     "spotting timeline of sessão 1/entrevista <b>&.mp4", "AU probabilities of sessão 1/entrevista <b>&.mp4",
                     "spotting timeline of b.mp4",
                     "spotting timeline of c.mp4", "AU probabilities of c.mp4"]  # fmt: skip
    assert "<b>&.mp4" not in page  # the file name is escaped, not markup
    floors = [a for t, a in tags if t == "span" and "floor" in _classes(a)]  # the videos that have one: 2 of 3
    assert len(floors) == 2 and page.count("detection floor 2.35 % of the eye distance") == 2


_BAR = re.compile(
    r'<span class="(on)?" title="[^"]*">(AU\d+)</span><span class="bar( on)?"><i style="width:([\d.]+)%">'
)


def test_report_probability_bars_follow_the_record(run: RunReport) -> None:
    page = render_report(run, CTX)
    seg = run.results[0].segments[1]
    row = re.search(r'<tr class="segment[^"]*" data-segment-id="1".*?</tr>', page, re.S)
    assert row is not None
    bars = _BAR.findall(row.group(0))
    assert [b[1] for b in bars] == [AU_NAMES[j] for j in np.argsort(-seg.probs, kind="stable")]  # highest first
    for on, name, bar_on, width in bars:
        j = AU_NAMES.index(name)
        assert float(width) == pytest.approx(seg.probs[j] * 100, abs=0.051)
        assert bool(on) == bool(bar_on) == bool(seg.present[j])


def test_bars_keep_every_present_au_and_cap_the_rest() -> None:
    from au_annotate.writers.report import BARS_SHOWN, _bars_html

    names = tuple(f"AU{i:02d}" for i in range(1, 26))
    probs = np.linspace(0.9, 0.02, 25)
    present = np.zeros(25, bool)
    present[[2, 20, 24]] = True  # two present AUs with low probabilities (low per-AU thresholds)
    s = _segment("v.mp4", 0, 10)
    s = Segment(**{**s.__dict__, "au_names": names, "probs": probs, "present": present})
    bars = _BAR.findall(_bars_html(s))
    shown = [b[1] for b in bars]
    assert len(shown) == BARS_SHOWN
    assert {"AU03", "AU21", "AU25"} <= set(shown)
    assert shown[: BARS_SHOWN - 2] == [f"AU{i:02d}" for i in range(1, BARS_SHOWN - 1)]
    assert f"+{25 - BARS_SHOWN} more AUs" in _bars_html(s)


def test_bad_signal_gives_plot_error_not_a_crash(run: RunReport, tmp_path: Path) -> None:
    bad = dataclasses.replace(run.results[0], signal=np.zeros((10, 5)))
    run = dataclasses.replace(run, results=(bad, *run.results[1:]))
    page = write_report(run, tmp_path / "r.html", CTX).read_text(encoding="utf-8")
    errors = [a for t, a in _tags(page) if "plot-error" in _classes(a)]
    assert len(errors) == 1
    assert "signal must be an (N, 2), (N, 3) or (N, 4) array" in page
    assert len([a for t, a in _tags(page) if t == "tr" and "segment" in _classes(a)]) == 8


def test_no_signals_parameter() -> None:
    """Signals come from each VideoResult; the old `signals` mapping parameter is gone."""
    for fn in (render_report, write_report):
        assert "signals" not in inspect.signature(fn).parameters


def _video(tmp: Path, rel: str, seconds: float, fps: float = 30.0, blinks: int = 1) -> VideoResult:
    """A done video of `seconds` with micro and macro segments, an (N, 3) signal (macro sampled every 6th frame, NaN
    elsewhere, like the 5 Hz macro detector at 30 fps) and `blinks` unreported blink windows."""
    job = VideoJob(path=tmp / rel, rel=PurePosixPath(rel), out_dir=tmp / "out")
    n = int(round(seconds * fps))
    info = VideoInfo(path=job.path, backend="test", width=1280, height=720, fps=fps, n_frames=n, duration_s=seconds)
    t = np.arange(n, dtype=np.float32)
    macro = np.full(n, np.nan, np.float32)
    macro[::6] = 2 + np.cos(t[::6] / 40)
    sig = np.stack([t, 0.5 + 0.4 * np.abs(np.sin(t / 9)), macro], axis=1).astype(np.float32)
    step = max(30, n // 8)
    segs = tuple(_segment(rel, i, onset, "macro" if i % 3 == 2 else "micro")
                 for i, onset in enumerate(range(15, n - 20, step)))  # fmt: skip
    hidden = tuple(Window(o, o + 3, o + 7, 3.0, "blink") for o in range(60, n - 10, max(60, n // max(blinks, 1))))
    return VideoResult(job=job, status="done", info=info, segments=segs, frames=n, frames_with_face=n, faces=1,
                       elapsed_s=1.0, signal=sig, unreported=hidden[:blinks])  # fmt: skip


def _texts(fig) -> list[str]:  # noqa: ANN001 - a matplotlib Figure
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_timeline_draws_the_macro_signal_with_nans_skipped(tmp_path: Path) -> None:
    res = _video(tmp_path, "v.mp4", 8.0)
    fig = _timeline(res)
    lines = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() == "macro signal"]
    assert len(lines) == 1
    x = np.asarray(lines[0].get_xdata(), float)
    y = np.asarray(lines[0].get_ydata(), float)
    frames = np.arange(0, 240, 6)
    np.testing.assert_allclose(x, frames / 30.0, rtol=1e-6)  # only the frames the macro detector sampled, no NaN
    np.testing.assert_allclose(y, res.signal[frames, 2], rtol=1e-6)
    micro = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label() == "micro signal"]
    assert len(micro) == 1 and len(micro[0].get_xdata()) == 240
    assert {"micro signal", "macro signal", "micro window", "macro window"} <= set(_texts(fig))


def test_timeline_accepts_the_older_two_column_signal(run: RunReport) -> None:
    fig = _timeline(run.results[0])  # (N, 2): frame index, micro signal
    labels = [ln.get_label() for ax in fig.axes for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert labels == ["micro signal"] and "macro signal" not in _texts(fig)


def test_timeline_labels_unreported_blinks(tmp_path: Path) -> None:
    res = _video(tmp_path, "v.mp4", 8.0)
    (blink,) = res.unreported
    fig = _timeline(res)
    bands = [c for ax in fig.axes for c in ax.collections if c.get_label() == "blink (not reported)"]
    assert len(bands) == 1 and bands[0].get_hatch()
    (x0, _), (x1, _) = bands[0].get_paths()[0].get_extents().get_points()
    assert (x0, x1) == pytest.approx((blink.onset / 30, (blink.offset + 1) / 30))
    assert "blink (not reported)" in _texts(fig)
    page = render_report(RunReport(results=(res,), out_dir=tmp_path), CTX)
    assert "not in the outputs (grey hatched on the timeline; table below): 1 blink" in page
    plain = _timeline(dataclasses.replace(res, unreported=()))
    assert "blink (not reported)" not in _texts(plain)


@pytest.mark.parametrize(("seconds", "rows", "width"), [(8, 1, 480 + 24 * 8), (30, 1, 1200), (60, 2, 1200),
                                                         (600, 20, 1200), (1800, 20, 1200)])  # fmt: skip
def test_timeline_layout_scales_and_splits_into_rows(seconds: float, rows: int, width: int) -> None:
    row_len, n, px = timeline_layout(seconds)
    assert (n, px) == (rows, width)
    assert row_len * n >= seconds
    if n > 1:
        assert row_len == (30 if seconds <= 600 else 90)


def test_ten_minute_timeline_has_rows_and_the_page_says_so(tmp_path: Path) -> None:
    short, long = _video(tmp_path, "short.mp4", 8.0), _video(tmp_path, "long.mp4", 600.0, blinks=12)
    fig = _timeline(long)
    row_axes = [a for a in fig.axes if a.get_label().startswith("timeline row")]
    assert len(row_axes) == 20
    assert [a.get_xlim() for a in row_axes[:2]] == [(0, 30), (30, 60)]
    assert row_axes[-1].get_xlim() == (570, 600)
    page = render_report(RunReport(results=(short, long), out_dir=tmp_path), CTX)
    shown = {a["alt"]: a for t, a in _tags(page) if t == "img" and "timeline" in _classes(a)}
    assert (shown["spotting timeline of short.mp4"]["data-rows"], shown["spotting timeline of short.mp4"]["width"]) == (
        "1",
        str(480 + 24 * 8),
    )
    assert (shown["spotting timeline of long.mp4"]["data-rows"], shown["spotting timeline of long.mp4"]["width"]) == (
        "20",
        "1200",
    )
    assert int(shown["spotting timeline of long.mp4"]["height"]) == 80 + 20 * 130


def test_plot_text_is_readable(tmp_path: Path) -> None:
    from matplotlib.text import Text

    res = _video(tmp_path, "v.mp4", 20.0)
    for fig in (_timeline(res), _heatmap(res.segments)):
        FigureCanvasAgg(fig).draw()
        sizes = {t.get_text(): t.get_fontsize() for t in fig.findobj(Text) if t.get_text() and t.get_visible()}
        assert sizes and min(sizes.values()) >= FONT_PT >= 10, sizes


def test_empty_run(tmp_path: Path) -> None:
    rep = RunReport(results=(_result(tmp_path, "x.mp4", 0, status="no_face"),), out_dir=tmp_path)
    page = write_report(rep, tmp_path / "report.html", CTX).read_text(encoding="utf-8")
    assert "x.mp4: no face found" in page and 'data-segments="0"' in page


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_in_headless_chromium(run: RunReport, tmp_path: Path) -> None:
    path = write_report(run, tmp_path / "out" / "report ü.html", CTX)
    proc = _chromium(["--virtual-time-budget=5000", "--dump-dom", path.as_uri()], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    body = next(a for t, a in _tags(dom) if t == "body")
    assert body.get("data-ready") == "1"  # the inline script ran to its end without an error
    _check_structure(dom)
    shot = tmp_path / "report.png"
    proc = _chromium(["--window-size=1280,2000", f"--screenshot={shot}", path.as_uri()], tmp_path)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000  # the page renders (no pixel assertions)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_timelines_in_headless_chromium(tmp_path: Path) -> None:
    """An 8 s and a 10 min video: one row at a width that follows the length, and 20 stacked rows at the page width;
    both shown 1:1 (not shrunk by the browser, so the text keeps its size)."""
    rep = RunReport(results=(_video(tmp_path, "short.mp4", 8.0), _video(tmp_path, "long.mp4", 600.0, blinks=12)),
                    out_dir=tmp_path / "out")  # fmt: skip
    path = write_report(rep, tmp_path / "out" / "report.html", CTX)
    proc = _chromium(["--window-size=1280,2000", "--virtual-time-budget=5000", "--dump-dom", path.as_uri()], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tags = _tags(proc.stdout)
    assert next(a for t, a in tags if t == "body").get("data-ready") == "1"
    shown = {a["alt"]: a for t, a in tags if t == "img" and "timeline" in _classes(a)}
    short, long = shown["spotting timeline of short.mp4"], shown["spotting timeline of long.mp4"]
    assert (short["data-rows"], short["data-natural-width"], short["data-shown-width"]) == ("1", "672", "672")
    assert (long["data-rows"], long["data-natural-width"], long["data-shown-width"]) == ("20", "1200", "1200")
    shot = tmp_path / "timelines.png"
    proc = _chromium(["--window-size=1280,4200", f"--screenshot={shot}", path.as_uri()], tmp_path)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000
