"""HTML run report: one self-contained page (no network, no CDN) to look at what a run found.

Top: run overview (videos by status, segments by kind, video time, top AUs, emotions, failures with reasons, the
model and settings). Per video: a timeline of the spotting signal with the windows marked (micro / macro / blink),
a heatmap of AU probabilities per segment, and a sortable segment table whose rows show times, score, code, emotion,
rule, per-AU probability bars (present AUs highlighted) and the 28x28 flow picture the model saw, enlarged 4x
(plus the apex face crop when the record carries one in an `apex_crop` field).

Plots are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend change) and embedded as
base64 PNG; text is HTML-escaped. A plot that fails is replaced by a `<div class="plot-error">` with the reason, so a
bad signal never costs the run its report. A tiny inline script makes the tables sortable and sets
`<body data-ready="1">` once it has run (the browser test checks it).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from au_annotate.fileio import atomic_open
from au_annotate.records import RunReport, Segment, VideoResult
from au_annotate.writers.base import TOOL_NAME, WriteContext, au_names_of, jsonable, utc_now
from au_annotate.writers.tiers import au_description

log = logging.getLogger(__name__)

KIND_COLORS = {"micro": "#d62728", "macro": "#1f77b4", "blink": "#7f7f7f"}
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
"""

SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (t) {
  t.querySelectorAll('th').forEach(function (th, i) {
    th.addEventListener('click', function () {
      var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
      rows.sort(function (a, b) {
        var x = a.cells[i].dataset.v || a.cells[i].textContent, y = b.cells[i].dataset.v || b.cells[i].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        return dir * ((!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y));
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
document.body.dataset.ready = '1';
"""


def _e(value: object) -> str:
    """HTML-escape any value."""
    return html.escape(str(value), quote=True)


def _fig_png(fig: Figure) -> str:
    """Render a matplotlib figure (Agg canvas) to a base64 PNG data URI."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


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


def _plot(alt: str, draw) -> str:  # noqa: ANN001 - draw: () -> Figure | None
    """An <img> of the figure `draw()` makes, or a plot-error div naming why it could not be drawn."""
    try:
        fig = draw()
        if fig is None:
            return ""
        return f'<img class="plot" alt="{_e(alt)}" src="{_fig_png(fig)}">'
    except Exception as exc:  # a broken plot must not cost the report
        log.warning("report: cannot draw %s: %s", alt, exc)
        return f'<div class="plot-error">cannot draw {_e(alt)}: {_e(type(exc).__name__)}: {_e(exc)}</div>'


def _timeline(result: VideoResult, signal: np.ndarray | None) -> Figure | None:
    """Spotting signal over time with each window shaded (onset..offset) and its apex marked."""
    segs = result.segments
    if signal is None and not segs:
        return None
    fps = result.info.fps if result.info is not None and result.info.fps > 0 else None
    fig = Figure(figsize=(11, 2.4))
    ax = fig.add_subplot(1, 1, 1)
    if signal is not None:
        sig = np.asarray(signal, dtype=np.float64)
        if sig.ndim != 2 or sig.shape[1] != 2:
            raise ValueError(f"signal must be an (N, 2) array of frame index, value; got shape {sig.shape}")
        x = sig[:, 0] / fps if fps else sig[:, 0]
        ax.plot(x, sig[:, 1], color="#333", linewidth=0.7, label="spotting signal")
    use_s = bool(fps) or signal is None
    span_axes = ax.get_xaxis_transform()  # x in data units, y in axes units: windows span the full height
    for kind, color in {**KIND_COLORS, **{s.kind: "#2ca02c" for s in segs if s.kind not in KIND_COLORS}}.items():
        mine = [s for s in segs if s.kind == kind]
        if not mine:
            continue
        x0 = np.array([s.onset_s if use_s else s.onset_frame for s in mine], dtype=float)
        x1 = np.array([s.offset_s if use_s else s.offset_frame for s in mine], dtype=float)
        xa = np.array([s.apex_s if use_s else s.apex_frame for s in mine], dtype=float)
        widths = np.maximum(x1 - x0, 1e-3)
        ax.broken_barh(list(zip(x0, widths, strict=True)), (0, 1), transform=span_axes, facecolors=color, alpha=0.25,
                       linewidth=0, label=kind)  # fmt: skip
        ax.vlines(xa, 0, 1, transform=span_axes, colors=color, linewidth=0.8, alpha=0.9)
    if segs or signal is not None:
        ax.legend(loc="lower right", bbox_to_anchor=(1, 1), fontsize=7, frameon=False, ncol=4)
    ax.set_xlabel("time (s)" if use_s else "frame")
    ax.set_ylabel("signal" if signal is not None else "")
    if result.info is not None and result.info.duration_s > 0 and use_s:
        ax.set_xlim(0, result.info.duration_s)
    ax.margins(x=0)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _heatmap(segs: Sequence[Segment]) -> Figure | None:
    """Segments x AUs probability heatmap, present AUs outlined."""
    if not segs:
        return None
    segs = list(segs)[:MAX_HEATMAP_ROWS]
    names = au_names_of(segs)
    probs = np.array([np.asarray(s.probs, dtype=float) for s in segs])
    present = np.array([np.asarray(s.present, dtype=bool) for s in segs])
    fig = Figure(figsize=(min(12, 1.5 + 0.38 * len(names)), min(14, 1.0 + 0.22 * len(segs))))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ys, xs = np.nonzero(present)
    ax.scatter(xs, ys, marker="s", s=30, facecolors="none", edgecolors="#ff3b30", linewidths=1.0)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(segs)), [f"#{s.segment_id} {s.onset_s:.2f}s" for s in segs], fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="probability")
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
    fig = Figure(figsize=(min(12, 1.5 + 0.45 * len(items)), 2.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar([n for n, _ in items], [c for _, c in items], color="#4c78a8")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("segments")
    ax.tick_params(axis="x", labelrotation=90, labelsize=8)
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


def _segment_row(s: Segment) -> str:
    """One <tr class="segment"> of the segment table."""
    flow = ""
    if s.flow_image is not None:
        flow = f'<img class="flow" alt="flow #{s.segment_id}" width="{28 * FLOW_SCALE}" src="{_array_png(s.flow_image, FLOW_SCALE)}">'
    crop = getattr(s, "apex_crop", None)
    if crop is not None:
        crop = f'<img class="crop" alt="apex #{s.segment_id}" width="112" src="{_array_png(crop)}">'
    num = 'class="num"'
    return (
        f'<tr class="segment {_e(s.kind)}" data-segment-id="{s.segment_id}" data-face="{_e(s.face_id)}">'
        f"<td {num}>{s.segment_id}</td><td>{_e(s.face_id)}</td><td>{_e(s.kind)}</td>"
        f'<td {num} data-v="{s.onset_s}">{s.onset_s:.3f}<br><span class="muted">{s.onset_frame}</span></td>'
        f'<td {num} data-v="{s.apex_s}">{s.apex_s:.3f}<br><span class="muted">{s.apex_frame}</span></td>'
        f'<td {num} data-v="{s.offset_s}">{s.offset_s:.3f}<br><span class="muted">{s.offset_frame}</span></td>'
        f"<td {num}>{s.duration_s:.3f}</td><td {num}>{s.score:.3f}</td>"
        f'<td class="mono">{_e(s.aus)}</td><td>{_e(s.emotion)}</td><td class="muted">{_e(s.rule)}</td>'
        f"<td>{_bars_html(s)}</td><td>{flow}{crop or ''}</td></tr>"
    )


def _video_section(i: int, result: VideoResult, signal: np.ndarray | None) -> str:
    """The per-video section: facts, timeline, heatmap, segment table."""
    job, info, segs = result.job, result.info, result.segments
    facts = [f"status <b>{_e(result.status)}</b>", f"{len(segs)} segments"]
    if info is not None:
        facts += [f"{info.width}x{info.height}", f"{info.fps:.3g} fps", f"{info.n_frames} frames",
                  f"{info.duration_s:.1f} s", f"decoder {_e(info.backend)} ({_e(info.pixels)})"]  # fmt: skip
    if result.frames:
        facts.append(f"face in {result.frames_with_face}/{result.frames} frames")
    facts.append(f"processed in {result.elapsed_s:.1f} s")
    parts = [
        f'<section class="video" id="video-{i}" data-video="{_e(job.rel.as_posix())}" data-segments="{len(segs)}">',
        f'<h2>{_e(job.rel.as_posix())}</h2><p class="muted">{" · ".join(facts)}</p>',
    ]
    if result.error:
        parts.append(f'<p class="failed-reason">{_e(result.error)}</p>')
    parts.append(_plot(f"spotting timeline of {job.rel.as_posix()}", lambda: _timeline(result, signal)))
    if segs:
        parts.append(_plot(f"AU probabilities of {job.rel.as_posix()}", lambda: _heatmap(segs)))
        if len(segs) > MAX_HEATMAP_ROWS:
            parts.append(f'<p class="muted">heatmap shows the first {MAX_HEATMAP_ROWS} segments</p>')
        head = ["#", "face", "kind", "onset s / frame", "apex s / frame", "offset s / frame", "duration s", "score",
                "AUs", "emotion", "rule", "AU probabilities", "flow (onset→apex)"]  # fmt: skip
        rows = "".join(_segment_row(s) for s in segs[:MAX_ROWS_PER_VIDEO])
        parts.append(
            '<table class="segments sortable"><thead><tr>'
            + "".join(f"<th>{_e(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{rows}</tbody></table>"
        )
        if len(segs) > MAX_ROWS_PER_VIDEO:
            parts.append(f'<p class="muted">{len(segs) - MAX_ROWS_PER_VIDEO} more segments: see the CSV</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _signal_for(result: VideoResult, signals: Mapping[str, np.ndarray] | None) -> np.ndarray | None:
    """The spotting signal of a video: from `signals` (keyed by relative path, path or stem) or the result."""
    if signals:
        for key in (result.job.rel.as_posix(), str(result.job.path), result.job.stem):
            if key in signals:
                return signals[key]
    return result.signal


def render_report(report: RunReport, ctx: WriteContext, signals: Mapping[str, np.ndarray] | None = None) -> str:
    """The whole HTML page as a string."""
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
    for i in shown:
        out.append(_video_section(i, results[i], _signal_for(results[i], signals)))
    out.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(out)


def write_report(
    report: RunReport, path: Path, ctx: WriteContext, signals: Mapping[str, np.ndarray] | None = None
) -> Path:
    """Write the self-contained HTML report of a run (atomically, UTF-8) and return its path."""
    page = render_report(report, ctx, signals)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return Path(path)
