"""HTML run report: one self-contained page (no network, no CDN) to look at what a run found.

Top: run overview (videos by status, segments by kind, video time, top AUs, emotions, failures with reasons, the
model and settings). Per video: a timeline of the spotting signals with the windows marked, a heatmap of AU
probabilities per segment, and a sortable segment table whose rows show times, score, code, emotion, rule, per-AU
probability bars (present AUs highlighted) and the 28x28 flow picture the model saw, enlarged 4x (plus the apex face
crop when the record carries one in an `apex_crop` field).

The timeline draws both detectors' signals from `VideoResult.signal` (micro on the left axis, macro on the right, each
in the colour of the windows it finds), shades micro / macro windows, and shows the windows the outputs leave out
(`VideoResult.unreported`: blinks) as grey hatched bands labelled "not reported", so no tall peak goes unexplained.
Its width grows with the video up to the page width and long videos are split into stacked rows of ROW_S seconds, so
a 0.3 s micro-expression stays several pixels wide in a 10 min video; the pictures are shown 1:1, never shrunk, so
their 10 pt text stays readable.

Plots are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend change) and embedded as
base64 PNG; text is HTML-escaped. A plot that fails is replaced by a `<div class="plot-error">` with the reason, so a
bad signal never costs the run its report. A tiny inline script makes the tables sortable and, once the page has
loaded, records each plot's shown and natural width (`data-shown-width`, `data-natural-width`) and sets
`<body data-ready="1">` (the browser test checks them).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import struct
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from au_annotate.fileio import atomic_open
from au_annotate.quality import INSENSITIVE_PCT_IOD
from au_annotate.records import RunReport, Segment, VideoResult, Window, WindowStrip
from au_annotate.writers.base import (
    DECISIONS,
    TOOL_NAME,
    WriteContext,
    au_names_of,
    jsonable,
    thresholds_text,
    utc_now,
)
from au_annotate.writers.tiers import au_description

log = logging.getLogger(__name__)

KIND_COLORS = {"micro": "#d62728", "macro": "#1f77b4", "blink": "#7f7f7f"}
OTHER_COLOR = "#2ca02c"  # windows of any other kind
UNREPORTED_COLOR = "#6f6f6f"  # windows the outputs leave out (blinks): grey, hatched
FLOOR_COLOR = "#6a3d9a"
FLOOR_PX = 120  # height of the detection-floor strip
MICRO_SIGNAL_COLOR = "#8b1a1a"  # each signal in a darker shade of the colour of the windows it found
MACRO_SIGNAL_COLOR = "#14507a"
PLOT_DPI = 100
FONT_PT = 10  # text in every plot: shown 1:1 at 100 dpi, 10 pt is ~14 px, about the page's own text
ROW_S = 30.0  # seconds of video per timeline row (longer rows only when a video would need over MAX_TIMELINE_ROWS)
MAX_TIMELINE_ROWS = 20
TIMELINE_MIN_PX = 480  # timeline width of a very short video: room for the axes' labels and the legend
TIMELINE_PX_PER_S = 24  # the width grows with the video (the row) ...
TIMELINE_MAX_PX = 1200  # ... up to the page's content width (1248 px), so it is never shrunk by the browser
TIMELINE_ROW_PX = 130  # height of one row
TIMELINE_EXTRA_PX = 80  # legend and time axis label
TIMELINE_COLORS = 64  # palette size of the timeline PNG
LEGEND_ENTRY_PX = 170  # legend columns: one per this many px of width
MAX_ROWS_PER_VIDEO = 500  # table rows (and flow pictures) per video; the rest are counted and left to the CSV
MAX_HEATMAP_ROWS = 150
FLOW_SCALE = 4
BARS_SHOWN = 8  # probability bars per segment row (plus any further present AUs)

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1280px;padding:0 16px 48px;
color:#222;background:#fff}
h1{font-size:1.6em;margin:.8em 0 .2em}h2{font-size:1.25em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd}
h3{font-size:1.05em;margin:1em 0 .3em}.muted{color:#666}.mono{font-family:ui-monospace,Menlo,Consolas,monospace}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;
min-width:120px}.card b{display:block;font-size:1.5em}
table{border-collapse:collapse;margin:6px 0;font-size:.9em}th,td{border:1px solid #ddd;padding:3px 6px;vertical-align:top}
th{background:#f4f4f4;cursor:pointer;user-select:none;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.segment.micro td:first-child{border-left:4px solid #d62728}tr.segment.macro td:first-child{border-left:4px solid #1f77b4}
tr.segment.blink td:first-child{border-left:4px solid #7f7f7f}
.bars{display:grid;grid-template-columns:3.4em 80px 2.6em;gap:0 4px;font-size:.78em;line-height:1.15}
.bar{background:#eee;height:.8em;margin-top:.15em}.bar i{display:block;height:100%;background:#9ab}
.bar.on i{background:#d62728}.on{font-weight:600}
img.flow,img.crop{image-rendering:pixelated;border:1px solid #ccc}img.plot{max-width:100%;height:auto}
.plot-error{color:#a00;border:1px solid #a00;padding:4px 8px}
.failed td{background:#fff4f4}section.video{margin-top:2em}details pre{white-space:pre-wrap;font-size:.85em}
nav a{margin-right:.8em}
.frames{display:flex;gap:8px;align-items:flex-start}.frames figure{margin:0}.caps{display:flex;font-size:.75em;color:#555}
.caps span{text-align:center}div.preview{background-repeat:no-repeat;background-position:0 0;border:1px solid #ccc;
animation-name:pv;animation-iteration-count:infinite}@keyframes pv{to{background-position:var(--end) 0}}
.preview figcaption{font-size:.75em;color:#555}.scroll{overflow-x:auto}ul.warnings li{color:#8a5a00}
"""

SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (t) {
  t.querySelectorAll('th').forEach(function (th, i) {
    th.addEventListener('click', function () {
      var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows).filter(function (r) {
        return !r.classList.contains('pair');  // a row's pictures row moves with it
      });
      rows.forEach(function (r) {
        var n = r.nextElementSibling; r._pair = n && n.classList.contains('pair') ? n : null;
      });
      var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
      rows.sort(function (a, b) {
        var x = a.cells[i].dataset.v || a.cells[i].textContent, y = b.cells[i].dataset.v || b.cells[i].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        return dir * ((!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y));
      });
      rows.forEach(function (r) { body.appendChild(r); if (r._pair) { body.appendChild(r._pair); } });
    });
  });
});
window.addEventListener('load', function () {
  // the pixel size each plot is shown at next to its own: a plot shrunk by the browser has shrunk text
  document.querySelectorAll('img.plot, img.strip').forEach(function (im) {
    im.dataset.shownWidth = String(Math.round(im.getBoundingClientRect().width));
    im.dataset.naturalWidth = String(im.naturalWidth);
  });
  // each preview's running animation (name and duration), for the browser test
  document.querySelectorAll('div.preview').forEach(function (el) {
    var cs = getComputedStyle(el); el.dataset.animation = cs.animationName + ' ' + cs.animationDuration;
  });
  document.body.dataset.ready = '1';
});
"""


def _e(value: object) -> str:
    """HTML-escape any value."""
    return html.escape(str(value), quote=True)


def _fig_png(fig: Figure, tight: bool = True, colors: int = 0) -> tuple[str, int, int]:
    """Render a matplotlib figure (Agg canvas) to a base64 PNG data URI, with the picture's width and height in px.

    `tight=False` keeps the figure's own size (the timeline is laid out to an exact width); `colors` > 0 stores a
    palette PNG of that many colours, which keeps a long video's timeline (millions of pixels of antialiased lines)
    at about a third of the bytes without a visible change."""
    canvas = FigureCanvasAgg(fig)
    buf = io.BytesIO()
    if colors and not tight:
        from PIL import Image  # matplotlib's own dependency

        canvas.draw()
        rgb = np.asarray(canvas.buffer_rgba())[..., :3]
        Image.fromarray(rgb).quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(buf, "png", optimize=True)
    else:
        fig.savefig(buf, format="png", dpi=PLOT_DPI, **({"bbox_inches": "tight"} if tight else {}))
    png = buf.getvalue()
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk: every PNG starts with it
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii"), width, height


def _array_png(image: np.ndarray, scale: int = 1) -> str:
    """A uint8 image (H, W) or (H, W, 3) enlarged `scale` times (nearest neighbour) as a base64 PNG data URI."""
    import matplotlib.image as mpimg

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if scale > 1:
        arr = np.repeat(np.repeat(arr, scale, axis=0), scale, axis=1)
    buf = io.BytesIO()
    if arr.ndim == 2:
        mpimg.imsave(buf, arr, format="png", cmap="gray", vmin=0, vmax=255)
    else:
        mpimg.imsave(buf, arr, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plot(
    alt: str,
    draw: Callable[[], Figure | None],
    cls: str = "",
    tight: bool = True,
    colors: int = 0,
    describe: Callable[[Figure], Mapping[str, object]] | None = None,
) -> str:
    """An <img> of the figure `draw()` makes (its pixel size in width/height), or a plot-error div naming why it could
    not be drawn; `cls` and the attributes `describe(fig)` returns go onto the <img>."""
    try:
        fig = draw()
        if fig is None:
            return ""
        src, width, height = _fig_png(fig, tight, colors)
        attrs = describe(fig) if describe is not None else {}
    except Exception as exc:  # a broken plot must not cost the report
        log.warning("report: cannot draw %s: %s", alt, exc)
        return f'<div class="plot-error">cannot draw {_e(alt)}: {_e(type(exc).__name__)}: {_e(exc)}</div>'
    extra = "".join(f' {k}="{_e(v)}"' for k, v in attrs.items())
    return (
        f'<img class="{_e(("plot " + cls).strip())}" alt="{_e(alt)}" width="{width}" height="{height}"{extra}'
        f' src="{src}">'
    )


def timeline_layout(span: float, per_s: float = 1.0) -> tuple[float, int, int]:
    """(row length in x units, rows, width in px) of the timeline of a video `span` x units long (`per_s` a second).

    The width grows with the video (TIMELINE_PX_PER_S) up to the page width (TIMELINE_MAX_PX), so the picture is shown
    1:1 and its text keeps its size; a video longer than ROW_S is split into stacked rows of ROW_S seconds (longer rows
    only past MAX_TIMELINE_ROWS), so a micro-expression stays several pixels wide whatever the video's length."""
    seconds = max(float(span) / per_s, 1e-6)
    row_s = ROW_S * max(1, math.ceil(seconds / (ROW_S * MAX_TIMELINE_ROWS)))
    rows = max(1, math.ceil(seconds / row_s - 1e-6))
    width = int(min(TIMELINE_MAX_PX, TIMELINE_MIN_PX + TIMELINE_PX_PER_S * min(seconds, row_s)))
    return (row_s * per_s if rows > 1 else float(span)), rows, width


def _signal_columns(signal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Frame index, micro signal and macro signal (None for an older (N, 2) array) of a result's `signal`."""
    sig = np.asarray(signal, dtype=np.float64)
    if sig.ndim != 2 or sig.shape[1] not in (2, 3, 4):
        raise ValueError("signal must be an (N, 2), (N, 3) or (N, 4) array of frame index, micro signal[, macro "
                         f"signal[, detection floor]]; got shape {sig.shape}")  # fmt: skip
    return sig[:, 0], sig[:, 1], (sig[:, 2] if sig.shape[1] >= 3 else None)


def _floor_strip(result: VideoResult) -> Figure | None:
    """The micro detector's detection floor over time (% of the eye distance; the signal's 4th column), a thin strip
    under the timeline with the line above which the video gets the "insensitive" warning: where the spotter was
    blind to small movements (talking, a moving camera, noise raise it)."""
    sig = result.signal
    if sig is None or np.asarray(sig).ndim != 2 or np.asarray(sig).shape[1] < 4:
        return None
    frames, floor = np.asarray(sig[:, 0], float), np.asarray(sig[:, 3], float)
    keep = np.isfinite(floor)
    if keep.sum() < 2:
        return None
    fps = result.info.fps if result.info is not None and result.info.fps > 0 else 30.0
    x, y = _trace(frames[keep] / fps, floor[keep], 2.0)
    span = float(result.info.duration_s) if result.info is not None and result.info.duration_s > 0 else float(
        np.nanmax(x))
    _row, _rows, width = timeline_layout(span, 1.0)
    fig = Figure(figsize=(width / PLOT_DPI, FLOOR_PX / PLOT_DPI), dpi=PLOT_DPI, layout="constrained")
    ax = fig.subplots()
    ax.set_label("detection floor")
    ax.fill_between(x, 0, y, color=FLOOR_COLOR, alpha=0.35, linewidth=0)
    ax.plot(x, y, color=FLOOR_COLOR, linewidth=1.0)
    ax.axhline(INSENSITIVE_PCT_IOD, color="#a00", linewidth=0.8, linestyle="dashed")
    ax.set_xlim(0, span)
    ax.set_ylim(0, max(INSENSITIVE_PCT_IOD * 1.2, float(np.nanmax(y)) * 1.1))
    ax.set_ylabel("floor %", fontsize=FONT_PT)
    ax.tick_params(labelsize=FONT_PT)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(f"detection floor (% of eye distance; above {INSENSITIVE_PCT_IOD:g} %: insensitive)", fontsize=FONT_PT,
                 loc="left")
    return fig


def _trace(x: np.ndarray, y: np.ndarray, min_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """The samples a detector took (finite values only), with a break (NaN) across gaps: a detector that samples at
    5 Hz is drawn as a line through its samples, but not across a stretch where it took none (no face)."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2:
        return x, y
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    steps = np.diff(x)
    cut = np.nonzero(steps > max(min_gap, 3 * float(np.median(steps))))[0] + 1
    return np.insert(x, cut, np.nan), np.insert(y, cut, np.nan)


def _top(values: np.ndarray | None) -> float:
    """Upper y limit for a signal (shared by all rows, so heights compare across rows)."""
    if values is None or not np.isfinite(values).any():
        return 1.0
    top = float(np.nanmax(np.where(np.isfinite(values), values, np.nan)))
    return top * 1.08 if top > 0 else 1.0


def _timeline(result: VideoResult) -> Figure | None:
    """The spotting signals over time with each window shaded (onset..offset) and its apex marked, in stacked rows.

    The micro signal (left axis) and the macro signal (right axis, NaNs skipped: that detector samples at ~5 Hz) are
    drawn in the colours of the windows they found; windows the outputs leave out (`result.unreported`, blinks) are
    grey hatched bands labelled "(not reported)", so the tallest peaks of an eye blink are not left unexplained."""
    segs, hidden, signal = result.segments, result.unreported, result.signal
    if signal is None and not segs and not hidden:
        return None
    fps = result.info.fps if result.info is not None and result.info.fps > 0 else None
    use_s = bool(fps) or (signal is None and not hidden)  # segments carry seconds; windows and the signal need fps
    per_s = 1.0 if use_s else (fps or 30.0)

    def at(frame: np.ndarray) -> np.ndarray:
        return np.asarray(frame, dtype=float) / fps if use_s and fps else np.asarray(frame, dtype=float)

    frames = micro = macro = None
    if signal is not None:
        frames, micro, macro = _signal_columns(signal)
    # (label, colour, hatch, onsets, offsets, apexes) per kind of window, in x units (the offset frame included)
    bands: list[tuple[str, str, str, np.ndarray, np.ndarray, np.ndarray]] = []
    for kind, color in {**KIND_COLORS, **{s.kind: OTHER_COLOR for s in segs if s.kind not in KIND_COLORS}}.items():
        mine = [s for s in segs if s.kind == kind]
        if mine:
            one = 1 / fps if use_s and fps else (0.0 if use_s else 1.0)
            bands.append((kind, color, "",
                          np.array([s.onset_s if use_s else s.onset_frame for s in mine], dtype=float),
                          np.array([(s.offset_s if use_s else s.offset_frame) + one for s in mine], dtype=float),
                          np.array([s.apex_s if use_s else s.apex_frame for s in mine], dtype=float)))  # fmt: skip
    for kind in dict.fromkeys(w.kind for w in hidden):
        mine_w = [w for w in hidden if w.kind == kind]
        bands.append((f"{kind} (not reported)", UNREPORTED_COLOR, "////", at(np.array([w.onset for w in mine_w])),
                      at(np.array([w.offset + 1 for w in mine_w])), at(np.array([w.apex for w in mine_w]))))  # fmt: skip

    if use_s and result.info is not None and result.info.duration_s > 0:
        span = float(result.info.duration_s)
    else:
        ends = [float(b[4].max()) for b in bands]
        if frames is not None and np.isfinite(frames).any():
            ends.append(float(at(np.nanmax(frames) + 1)))
        span = max(ends, default=1.0)
    row_len, rows, width = timeline_layout(span, per_s)
    height = TIMELINE_EXTRA_PX + rows * TIMELINE_ROW_PX
    fig = Figure(figsize=(width / PLOT_DPI, height / PLOT_DPI), dpi=PLOT_DPI, layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False, sharey=True)[:, 0]
    gap = 1.0 * per_s
    micro_xy = _trace(at(frames), micro, gap) if frames is not None else None
    macro_xy = _trace(at(frames), macro, gap) if frames is not None and macro is not None else None
    micro_top, macro_top = _top(micro), _top(macro)
    clock = use_s and span >= 60
    for r, ax in enumerate(axes):
        x0, x1 = r * row_len, ((r + 1) * row_len if rows > 1 else span)
        ax.set_label(f"timeline row {r + 1}")
        span_axes = ax.get_xaxis_transform()  # x in data units, y in axes units: windows span the full height
        for label, color, hatch, on, off, apex in bands:
            sel = (off >= x0) & (on <= x1)
            if not sel.any():
                continue
            ax.broken_barh(list(zip(on[sel], np.maximum(off[sel] - on[sel], 1e-3), strict=True)), (0, 1),
                           transform=span_axes, facecolors=color, alpha=0.35 if hatch else 0.25, hatch=hatch or None,
                           edgecolor=color if hatch else "none", linewidth=0, label=label)  # fmt: skip
            ax.vlines(apex[sel], 0, 1, transform=span_axes, colors=color, linewidth=0.9, alpha=0.9,
                      linestyles="dashed" if hatch else "solid")  # fmt: skip
        if micro_xy is not None:
            x, y = micro_xy
            sel = ((x >= x0 - gap) & (x <= x1 + gap)) | np.isnan(x)  # NaN: the breaks
            ax.plot(x[sel], y[sel], color=MICRO_SIGNAL_COLOR, linewidth=0.8, label="micro signal")
            ax.axhline(1.0, color=MICRO_SIGNAL_COLOR, linewidth=0.7, linestyle="dotted")  # the threshold: score 1.0
            ax.set_ylim(0, max(micro_top, 1.1))
            ax.set_ylabel("micro", color=MICRO_SIGNAL_COLOR, fontsize=FONT_PT)
        else:
            ax.set_yticks([])
        if macro_xy is not None:
            x, y = macro_xy
            sel = ((x >= x0 - gap) & (x <= x1 + gap)) | np.isnan(x)  # NaN: the breaks
            twin = ax.twinx()
            twin.set_label(f"macro axis of row {r + 1}")
            twin.plot(x[sel], y[sel], color=MACRO_SIGNAL_COLOR, linewidth=1.1, marker=".", markersize=2.5,
                      label="macro signal")  # fmt: skip
            twin.set_ylim(0, macro_top)
            twin.set_ylabel("macro", color=MACRO_SIGNAL_COLOR, fontsize=FONT_PT)
            twin.tick_params(labelsize=FONT_PT, colors=MACRO_SIGNAL_COLOR, axis="y")
            twin.spines[["top"]].set_visible(False)
        else:
            ax.spines[["right"]].set_visible(False)
        ax.set_xlim(x0, x1)
        ax.tick_params(labelsize=FONT_PT)
        ax.spines[["top"]].set_visible(False)
        if clock:
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{int(v // 60)}:{int(round(v % 60)):02d}"))
    axes[-1].set_xlabel(("time (m:ss)" if clock else "time (s)") if use_s else "frame", fontsize=FONT_PT)
    handles: list[Artist] = []
    if micro_xy is not None:
        handles.append(Line2D([], [], color=MICRO_SIGNAL_COLOR, linewidth=1.2, label="micro signal"))
        handles.append(Line2D([], [], color=MICRO_SIGNAL_COLOR, linewidth=0.7, linestyle="dotted",
                              label="threshold (score 1.0)"))
    if macro_xy is not None:
        handles.append(Line2D([], [], color=MACRO_SIGNAL_COLOR, linewidth=1.2, marker=".", label="macro signal"))
    for label, color, hatch, *_ in bands:
        handles.append(Patch(facecolor=color, alpha=0.35 if hatch else 0.25, hatch=hatch or None,
                             edgecolor=color if hatch else "none", label=label if hatch else f"{label} window"))  # fmt: skip
    ncol = max(1, min(len(handles), width // LEGEND_ENTRY_PX))
    fig.legend(handles=handles, loc="outside upper left", ncol=ncol, fontsize=FONT_PT, frameon=False)
    return fig


def _heatmap(segs: Sequence[Segment]) -> Figure | None:
    """Segments x AUs probability heatmap, present AUs outlined."""
    if not segs:
        return None
    segs = list(segs)[:MAX_HEATMAP_ROWS]
    names = au_names_of(segs)
    probs = np.array([np.asarray(s.probs, dtype=float) for s in segs])
    present = np.array([np.asarray(s.present, dtype=bool) for s in segs])
    fig = Figure(figsize=(min(11, 2.5 + 0.32 * len(names)), min(30, 1.2 + 0.2 * len(segs))))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ys, xs = np.nonzero(present)
    ax.scatter(xs, ys, marker="s", s=30, facecolors="none", edgecolors="#ff3b30", linewidths=1.0)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=FONT_PT)
    ax.set_yticks(range(len(segs)), [f"#{s.segment_id} {s.kind} {s.onset_s:.2f}s" for s in segs], fontsize=FONT_PT)
    bar = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    bar.set_label("probability", fontsize=FONT_PT)
    bar.ax.tick_params(labelsize=FONT_PT)
    return fig


def _au_counts(segments: Sequence[Segment]) -> Counter[str]:
    """How many segments have each AU present."""
    counts: Counter[str] = Counter()
    for s in segments:
        counts.update(n for n, p in zip(s.au_names, s.present, strict=True) if bool(p))
    return counts


def _au_bar_chart(counts: Counter[str]) -> Figure | None:
    """Bar chart of the number of segments per present AU (run overview)."""
    if not counts:
        return None
    items = counts.most_common()
    fig = Figure(figsize=(min(11, 1.5 + 0.45 * len(items)), 2.8))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar([n for n, _ in items], [c for _, c in items], color="#4c78a8")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("segments", fontsize=FONT_PT)
    ax.tick_params(labelsize=FONT_PT)
    ax.tick_params(axis="x", labelrotation=90)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _bars_html(s: Segment) -> str:
    """Probability bars (CSS only) for a segment's present AUs and its most likely others, highest first.

    At least BARS_SHOWN AUs are shown and every present one; the heatmap above and the CSV have them all."""
    probs = np.asarray(s.probs, dtype=float)
    present = np.asarray(s.present, dtype=bool)
    order = sorted(range(len(probs)), key=lambda j: (-probs[j], j))
    keep = [j for j in order if present[j]]
    keep += [j for j in order if not present[j]][: max(0, BARS_SHOWN - len(keep))]
    keep.sort(key=lambda j: (-probs[j], j))
    cells = []
    for j in keep:
        name, p, cls = s.au_names[j], probs[j], "on" if present[j] else ""
        cells.append(
            f'<span class="{cls}" title="{_e(au_description(name))}">{_e(name)}</span>'
            f'<span class="{"bar on" if cls else "bar"}"><i style="width:{100 * float(np.clip(p, 0, 1)):.1f}%"></i></span>'
            f'<span class="{cls}">{p:.2f}</span>'
        )
    more = len(probs) - len(keep)
    tail = f'<div class="muted">+{more} more AUs in the heatmap and CSV</div>' if more else ""
    return '<div class="bars">' + "".join(cells) + "</div>" + tail


STRIP_LABELS = ("onset", "", "apex", "", "offset")
SEGMENT_HEAD = ("#", "face", "kind", "onset s / frame", "apex s / frame", "offset s / frame", "duration s",
                "score (× threshold)", "quality / context", "AUs", "emotion (FACS rule; model)", "rule",
                "AU probabilities",
                "flow (onset→apex), apex")
DROPPED_HEAD = ("face", "kind", "onset s / frame", "apex s / frame", "offset s / frame", "score (× threshold)",
                "why not reported", "context", "regions")
REASONS = {  # why a window is not in the outputs, for the report's table of windows not reported
    "blink": "a blink (eyes closed and reopened, motion led by the eyes): --blinks label writes them",
    "head_motion": "head motion explains it (pose change from the landmarks, or the rigid fit): --gated label writes it",
    "occlusion": "something covers the face (the landmark model lost it inside the window): --gated label writes it",
    "tracking_lost": "the face tracker lost the face inside the window: --gated label writes it",
    "lighting": "the lighting changed inside the window: --gated label writes it",
    "below_threshold": "a peak that reached 0.6-1.0 of the threshold: --sensitivity above 1 reports such peaks",
    "below_min_score": "below the study's calibrated cut-off (min_score)",
}


def _strip_html(strip: WindowStrip | None, name: str) -> str:
    """The frame strip (5 tiles with their frame numbers, regions that fired outlined) and the slowed looping preview
    (a JPEG sprite animated in CSS steps: no script, loops forever, `slow` times slower than real time)."""
    if strip is None:
        return ""
    caps = "".join(f'<span style="width:{strip.tile}px">{_e(label)} {f}</span>'
                   for label, f in zip(STRIP_LABELS, strip.strip_frames, strict=False))
    src = "data:image/jpeg;base64," + base64.b64encode(strip.strip_jpeg).decode("ascii")
    pv = "data:image/jpeg;base64," + base64.b64encode(strip.preview_jpeg).decode("ascii")
    t = strip.tile
    dur = max(0.4, strip.preview_s * strip.slow)
    side = strip.preview_tile
    return (
        f'<div class="frames"><figure class="strip"><img class="strip" alt="frames of {_e(name)}" width="{t * 5}" '
        f'height="{t}" src="{src}"><figcaption class="caps">{caps}</figcaption></figure>'
        f'<figure class="preview"><div class="preview" role="img" aria-label="preview of {_e(name)}, {strip.slow:g}x '
        f'slower" data-frames="{strip.preview_n}" style="width:{side}px;height:{side}px;background-image:url({pv});'
        f"--end:-{side * strip.preview_n}px;animation-duration:{dur:.2f}s;"
        f'animation-timing-function:steps({strip.preview_n})"></div>'
        f"<figcaption>{strip.slow:g}x slower</figcaption></figure></div>"
    )


def _window_s(frame: int, fps: float | None) -> str:
    return f"{frame / fps:.3f}" if fps else "-"


def _dropped_row(w: Window, fps: float | None) -> str:
    """One <tr class="dropped"> of the table of windows not reported: times, kind, score, reason, pictures."""
    num = 'class="num"'
    why = w.reason or (w.kind if w.kind == "blink" else w.quality)
    name = f"{w.kind} window at frame {w.apex}"
    return (
        f'<tr class="dropped {_e(w.kind)}" data-reason="{_e(why)}" data-apex="{w.apex}">'
        f'<td>{_e(w.face_id)}</td><td>{_e(w.kind)}</td>'
        f'<td {num} data-v="{w.onset}">{_window_s(w.onset, fps)}<br><span class="muted">{w.onset}</span></td>'
        f'<td {num} data-v="{w.apex}">{_window_s(w.apex, fps)}<br><span class="muted">{w.apex}</span></td>'
        f'<td {num} data-v="{w.offset}">{_window_s(w.offset, fps)}<br><span class="muted">{w.offset}</span></td>'
        f'<td {num}>{w.score:.2f}</td><td title="{_e(REASONS.get(why, ""))}"><b>{_e(why)}</b><br>'
        f'<span class="muted">{_e(REASONS.get(why, ""))}</span></td><td>{_e(w.context)}</td>'
        f'<td class="mono">{_e(" ".join(w.regions))}</td></tr>'
        + (f'<tr class="pair"><td colspan="{len(DROPPED_HEAD)}">{_strip_html(w.strip, name)}</td></tr>'
           if w.strip is not None else "")
    )


def _segment_row(s: Segment) -> str:
    """One <tr class="segment"> of the segment table."""
    flow = ""
    if s.flow_image is not None:
        flow = f'<img class="flow" alt="flow #{s.segment_id}" width="{28 * FLOW_SCALE}" src="{_array_png(s.flow_image, FLOW_SCALE)}">'
    crop = getattr(s, "apex_crop", None) if s.strip is None else None  # the strip shows the apex already
    if crop is not None:
        crop = f'<img class="crop" alt="apex #{s.segment_id}" width="112" src="{_array_png(crop)}">'
    num = 'class="num"'
    return (
        f'<tr class="segment {_e(s.kind)}" data-segment-id="{s.segment_id}" data-face="{_e(s.face_id)}">'
        f"<td {num}>{s.segment_id}</td><td>{_e(s.face_id)}</td><td>{_e(s.kind)}</td>"
        f'<td {num} data-v="{s.onset_s}">{s.onset_s:.3f}<br><span class="muted">{s.onset_frame}</span></td>'
        f'<td {num} data-v="{s.apex_s}">{s.apex_s:.3f}<br><span class="muted">{s.apex_frame}</span></td>'
        f'<td {num} data-v="{s.offset_s}">{s.offset_s:.3f}<br><span class="muted">{s.offset_frame}</span></td>'
        f"<td {num}>{s.duration_s:.3f}</td><td {num}>{s.score:.2f}</td>"
        f'<td>{_e(s.quality)}<br><span class="muted">{_e(s.context)}</span></td>'
        f'<td class="mono">{_e(s.aus)}</td><td>{_e(s.emotion)}'
        + (f'<br><span class="muted" title="the model\'s own 3-class emotion">model: {_e(s.emotion_model)} '
           f'{s.emotion_model_p:.2f}</span>' if s.emotion_model else "")
        + f'</td><td class="muted">{_e(s.rule)}</td>'
        f"<td>{_bars_html(s)}</td><td>{flow}{crop or ''}</td></tr>"
        + (f'<tr class="pair" data-segment-id="{s.segment_id}"><td></td><td colspan="{len(SEGMENT_HEAD) - 1}">'
           f"{_strip_html(s.strip, f'segment {s.segment_id}')}</td></tr>" if s.strip is not None else "")
    )


def _timeline_attrs(fig: Figure) -> dict[str, object]:
    """The timeline <img>'s data-rows: how many rows it was drawn in (so a browser test can check the layout)."""
    return {"data-rows": sum(1 for a in fig.axes if a.get_label().startswith("timeline row"))}


def _video_section(i: int, result: VideoResult) -> str:
    """The per-video section: facts, timeline, heatmap, segment table."""
    job, info, segs = result.job, result.info, result.segments
    facts = [f"status <b>{_e(result.status)}</b>", f"{len(segs)} segments"]
    if info is not None:
        facts += [f"{info.width}x{info.height}", f"{info.fps:.3g} fps", f"{info.n_frames} frames",
                  f"{info.duration_s:.1f} s", f"decoder {_e(info.backend)} ({_e(info.pixels)})"]  # fmt: skip
    if result.frames:
        facts.append(f"face in {result.frames_with_face}/{result.frames} frames")
    floor = result.floors.get("face0")
    if floor is not None:  # how small a movement the spotter could see (records.DetectionFloor)
        facts.append(f'<span class="floor" title="micro threshold, median over the regions: smaller movements are not '
                     f'found">detection floor {floor.pct_iod:.2f} % of the eye distance</span>')
    facts.append(f"processed in {result.elapsed_s:.1f} s")
    parts = [
        f'<section class="video" id="video-{i}" data-video="{_e(job.rel.as_posix())}" data-segments="{len(segs)}">',
        f'<h2>{_e(job.rel.as_posix())}</h2><p class="muted">{" · ".join(facts)}</p>',
    ]
    if result.error:
        parts.append(f'<p class="failed-reason">{_e(result.error)}</p>')
    if result.warnings:
        parts.append('<ul class="warnings">' + "".join(f"<li>{_e(w)}</li>" for w in result.warnings) + "</ul>")
    parts.append(
        _plot(
            f"spotting timeline of {job.rel.as_posix()}",
            lambda: _timeline(result),
            cls="timeline",
            tight=False,
            colors=TIMELINE_COLORS,
            describe=_timeline_attrs,
        )
    )
    parts.append(_plot(f"detection floor of {job.rel.as_posix()}", lambda: _floor_strip(result), cls="floor",
                       tight=False))
    if result.unreported:
        reasons = Counter(w.reason or (w.kind if w.kind == "blink" else w.quality) for w in result.unreported)
        parts.append(
            '<p class="muted">not in the outputs (grey hatched on the timeline; table below): '
            + ", ".join(f"{n} {_e(k)}" for k, n in reasons.most_common())
            + "</p>"
        )
    if segs:
        parts.append(_plot(f"AU probabilities of {job.rel.as_posix()}", lambda: _heatmap(segs)))
        if len(segs) > MAX_HEATMAP_ROWS:
            parts.append(f'<p class="muted">heatmap shows the first {MAX_HEATMAP_ROWS} segments</p>')
        head = SEGMENT_HEAD
        rows = "".join(_segment_row(s) for s in segs[:MAX_ROWS_PER_VIDEO])
        parts.append(
            '<div class="scroll"><table class="segments sortable"><thead><tr>'
            + "".join(f"<th>{_e(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{rows}</tbody></table></div>"
        )
        if len(segs) > MAX_ROWS_PER_VIDEO:
            parts.append(f'<p class="muted">{len(segs) - MAX_ROWS_PER_VIDEO} more segments: see the CSV</p>')
    if result.unreported:
        fps = info.fps if info is not None and info.fps > 0 else None
        head = DROPPED_HEAD
        rows = "".join(_dropped_row(w, fps) for w in result.unreported[:MAX_ROWS_PER_VIDEO])
        parts.append(
            f'<h3>Windows not reported ({len(result.unreported)})</h3><div class="scroll"><table class="dropped '
            'sortable"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{rows}</tbody></table></div>"
        )
        if len(result.unreported) > MAX_ROWS_PER_VIDEO:
            parts.append(f'<p class="muted">{len(result.unreported) - MAX_ROWS_PER_VIDEO} more not shown</p>')
    parts.append("</section>")
    return "\n".join(parts)


def render_report(report: RunReport, ctx: WriteContext, agreement: object | None = None) -> str:
    """The whole HTML page as a string (with a coder review's agreement section when one is given)."""
    results = report.results
    segments = report.segments
    status = Counter(r.status for r in results)
    kinds = Counter(s.kind for s in segments)
    emotions = Counter(s.emotion for s in segments if s.emotion)
    au_counts = _au_counts(segments)
    video_s = sum(r.info.duration_s for r in results if r.info is not None)
    problems = [r for r in results if r.status in ("failed", "no_face")]

    cards = [
        ("videos", len(results)),
        ("done", status.get("done", 0)),
        ("no face", status.get("no_face", 0)),
        ("failed", status.get("failed", 0)),
        ("segments", len(segments)),
        ("micro", kinds.get("micro", 0)),
        ("macro", kinds.get("macro", 0)),
        ("video time", f"{video_s / 60:.1f} min"),
        ("run time", f"{report.elapsed_s:.1f} s"),
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(TOOL_NAME)} report: {len(results)} videos, {len(segments)} segments</title>",
        f"<style>{CSS}</style></head>",
        f'<body data-videos="{len(results)}" data-segments="{len(segments)}">',
        f"<h1>{_e(TOOL_NAME)} run report</h1>",
        f'<p class="muted">{_e(TOOL_NAME)} {_e(ctx.tool_version)} · model <span class="mono">{_e(ctx.model_name)}</span>'
        f' sha256 <span class="mono">{_e(ctx.model_sha256)}</span> · output <span class="mono">{_e(report.out_dir)}</span>'
        f" · generated {_e(utc_now())}</p>",
        '<section id="overview"><div class="cards">'
        + "".join(f'<div class="card"><b>{_e(v)}</b>{_e(k)}</div>' for k, v in cards)
        + "</div>",
    ]
    if au_counts:
        top = ", ".join(f"{_e(n)} ({c})" for n, c in au_counts.most_common(8))
        out.append(f"<p><b>Top AUs</b> (segments with the AU present): {top}</p>")
        out.append(_plot("segments per AU", lambda: _au_bar_chart(au_counts)))
    if emotions:
        out.append("<p><b>Emotions</b> (rules fired): "
                   + ", ".join(f"{_e(k)} ({v})" for k, v in emotions.most_common()) + "</p>")  # fmt: skip
    if problems:
        out.append('<h3>Videos without results</h3><table class="failures"><thead><tr><th>video</th><th>status</th>'
                   "<th>reason</th></tr></thead><tbody>")  # fmt: skip
        out += [f'<tr class="failed"><td>{_e(r.job.rel.as_posix())}</td><td>{_e(r.status)}</td><td>{_e(r.error or "")}</td></tr>'
                for r in problems]  # fmt: skip
        out.append("</tbody></table>")
    warnings = [w for r in results for w in r.warnings]
    if warnings:
        out.append(f'<h3>Warnings ({len(warnings)})</h3><ul class="warnings">'
                   + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>")
    out.append('<p class="muted">score: the spotting signal at the apex as a multiple of the threshold the window was '
               "held to (1.0 = just reported; --sensitivity divides the threshold)</p>")
    out.append(f'<p class="muted thresholds">AU thresholds: {_e(thresholds_text(ctx))}. {_e(DECISIONS)}.</p>')
    if report.skipped_files:
        out.append(f'<p class="muted">{len(report.skipped_files)} non-video files skipped</p>')
    shown = [i for i, r in enumerate(results) if r.segments or r.status not in ("failed", "no_face")]
    rows = "".join(
        "<tr><td>"
        + (f'<a href="#video-{i}">{_e(r.job.rel.as_posix())}</a>' if i in shown else _e(r.job.rel.as_posix()))
        + f'</td><td>{_e(r.status)}</td><td class="num">{len(r.segments)}</td>'
        f'<td class="num">{f"{r.info.duration_s:.1f}" if r.info else ""}</td><td class="num">{r.elapsed_s:.1f}</td></tr>'
        for i, r in enumerate(results)
    )
    out.append('<h3>Videos</h3><table class="videos sortable"><thead><tr><th>video</th><th>status</th>'
               f"<th>segments</th><th>duration s</th><th>time s</th></tr></thead><tbody>{rows}</tbody></table>")  # fmt: skip
    settings = json.dumps(jsonable(ctx.settings), indent=1, sort_keys=True, ensure_ascii=False)
    out.append(f"<details><summary>settings</summary><pre>{_e(settings)}</pre></details></section>")
    if agreement is not None:
        out.append(agreement_section(agreement))
    for i in shown:
        out.append(_video_section(i, results[i]))
    out.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(out)


def write_report(report: RunReport, path: Path, ctx: WriteContext, agreement: object | None = None) -> Path:
    """Write the self-contained HTML report of a run (atomically, UTF-8) and return its path."""
    page = render_report(report, ctx, agreement)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return Path(path)


# ------------------------------------------------------------------------------------------ coder review agreement


def _agreement_cell(value: object) -> str:
    """A table cell: numbers right-aligned with 3 decimals, NaN/None as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td class="num">-</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.3f}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    return f"<td>{_e(value)}</td>"


def _agreement_table(title: str, rows: Sequence[Mapping[str, object]], cols: Sequence[str], cls: str) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{_e(c.replace('_', ' '))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_agreement_cell(r.get(c)) for c in cols) + "</tr>" for r in rows)
    return f'<h3>{_e(title)}</h3><table class="{cls} sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def agreement_section(agreement: object) -> str:
    """The HTML section of a coder review's agreement (au_annotate.review.agreement.Agreement)."""
    spot = getattr(agreement, "spotting", [])
    aus = getattr(agreement, "aus", [])
    coders = getattr(agreement, "coders", [])
    parts = ['<section id="agreement"><h2>Agreement with the coder review</h2>',
             '<p class="muted">precision = (confirmed + corrected) / reviewed tool windows; recall counts coder-added '
             "windows as missed; errors are coder minus tool, in ms; AU F1 and Cohen's kappa over confirmed + "
             "corrected windows (the tool's decision against the coder's code)</p>"]
    parts.append(_agreement_table("Spotting", spot, ("kind", "tool_windows", "reviewed", "confirmed", "corrected",
                                                      "rejected", "unreviewed", "added", "precision", "recall",
                                                      "onset_mae_ms", "offset_mae_ms", "onset_bias_ms",
                                                      "offset_bias_ms"), "agreement-spotting"))
    parts.append(_agreement_table("AUs: tool vs coder", aus, ("au", "windows", "tp", "fp", "fn", "tn", "precision",
                                                              "recall", "f1", "kappa"), "agreement-aus"))
    parts.append(_agreement_table("Coder vs coder (beside tool vs each coder, same windows)", coders,
                                  ("subject", "coder_a", "coder_b", "windows", "kappa_coders", "kappa_tool_a",
                                   "kappa_tool_b"), "agreement-coders"))
    parts += [f'<p class="muted">note: {_e(n)}</p>' for n in getattr(agreement, "notes", [])]
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def write_agreement_page(agreement: object, path: Path, source: str = "") -> Path:
    """A self-contained HTML page with the agreement section (the `agreement` command's agreement.html)."""
    page = "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(TOOL_NAME)}: agreement with the coder review</title>", f"<style>{CSS}</style></head><body>",
        f"<h1>{_e(TOOL_NAME)} review agreement</h1>",
        f'<p class="muted">review <span class="mono">{_e(source)}</span> · generated {_e(utc_now())}</p>',
        agreement_section(agreement), f"<script>{SCRIPT}</script></body></html>"])
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return Path(path)
