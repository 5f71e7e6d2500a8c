"""The report's drawing kit: HTML escaping, number formats, inline PNGs and SVG line / bar charts.

Knows nothing about runs or stages; ``affinitynet.report.sections`` uses it.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import io as _io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

COLOURS = ["#3b6fb6", "#e07b39", "#4a9d5b", "#c0504d", "#8064a2", "#4bacc6", "#9b8b3e", "#7f7f7f"]


# ----------------------------------------------------------------------------- small helpers

def esc(x) -> str:
    return html.escape(str(x), quote=True)


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pct(v) -> str:
    return f"{v:.1f}" if finite(v) else "–"


def num(v) -> str:
    """A number for a table cell: integers as such, small floats with 4 significant digits."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return esc(v)
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return "–"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"


def seconds(s: float) -> str:
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def png_data_uri(rgb: np.ndarray) -> str:
    """(H, W, 3) uint8 image -> ``data:image/png;base64,...`` string."""
    buf = _io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------- SVG charts

def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (steps 1, 2, 2.5, 5 x 10^k) covering [lo, hi] with about ``n`` intervals."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite, got [{lo}, {hi}]")
    if hi < lo:
        lo, hi = hi, lo
    if hi - lo < 1e-12:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if raw <= m * mag * (1 + 1e-9))
    start = math.floor(lo / step + 1e-9) * step
    end = math.ceil(hi / step - 1e-9) * step
    count = int(round((end - start) / step))
    return [round(start + i * step, 12) for i in range(count + 1)]


def _tick_label(v: float, ticks: list[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(step / 10 ** math.floor(math.log10(step) + 1e-9) - 2.5) < 1e-6:
        decimals += 1
    if max(abs(t) for t in ticks) >= 10000:
        return f"{v / 1000:g}k" if step >= 1000 else f"{v:.4g}"
    return f"{v:.{decimals}f}"


@dataclass
class Series:
    """One line of a chart: (x, y) points; dashed and/or with point markers."""

    name: str
    points: list[tuple[float, float]]
    colour: str = ""
    dashed: bool = False
    markers: bool = False


def svg_line_chart(series: list[Series], *, width: int = 520, height: int = 240, xlabel: str = "",
                   ylabel: str = "", y_range: tuple[float, float] | None = None,
                   vlines: tuple[tuple[float, str], ...] = ()) -> str:
    """Inline SVG line chart of ``series`` (non-finite points dropped); ``vlines`` are (x, label) markers."""
    series = [dataclasses.replace(s, points=[(float(x), float(y)) for x, y in s.points
                                             if finite(x) and finite(y)],
                                  colour=s.colour or COLOURS[i % len(COLOURS)]) for i, s in enumerate(series)]
    series = [s for s in series if s.points]
    if not series:
        return ""
    xs = [x for s in series for x, _ in s.points] + [x for x, _ in vlines]
    ys = [y for s in series for _, y in s.points]
    xt = nice_ticks(min(xs), max(xs), 5)
    yt = nice_ticks(*(y_range or (min(ys), max(ys))), 4)
    left, right, bottom = 52, 14, 38
    legend, lx, ly = [], left, 0  # legend above the plot, wrapped onto as many lines as it needs
    for s in series:
        item = 30 + 6.2 * len(s.name)
        if lx > left and lx + item > width - right:
            lx, ly = left, ly + 15
        legend.append((s, lx, ly))
        lx += item
    top = 30 + ly
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - xt[0]) / (xt[-1] - xt[0]) * pw

    def sy(y):
        return top + ph - (y - yt[0]) / (yt[-1] - yt[0]) * ph

    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" font-family="inherit" font-size="11">']
    for t in yt:
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e9ee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 3.5:.1f}" text-anchor="end" fill="#667">'
                   f'{_tick_label(t, yt)}</text>')
    for t in xt:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#99a"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" fill="#667">'
                   f'{_tick_label(t, xt)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#c9ced6"/>')
    for x, label in vlines:
        px = sx(x)
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{top}" y2="{top + ph}" stroke="#aab" '
                   f'stroke-dasharray="3,3"/>')
        out.append(f'<text x="{px + 3:.1f}" y="{top + 11}" fill="#778" font-size="10">{esc(label)}</text>')
    for s in series:
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        out.append(f'<polyline class="series" data-name="{esc(s.name)}" points="{pts}" fill="none" '
                   f'stroke="{s.colour}" stroke-width="1.6"{dash}/>')
        if s.markers or len(s.points) == 1:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" fill="{s.colour}"/>' for x, y in s.points]
    for s, lx, ly in legend:
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        out.append(f'<line x1="{lx:.1f}" x2="{lx + 16:.1f}" y1="{ly + 12}" y2="{ly + 12}" stroke="{s.colour}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 20:.1f}" y="{ly + 16}" fill="#334">{esc(s.name)}</text>')
    if xlabel:
        out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle" fill="#556">'
                   f'{esc(xlabel)}</text>')
    if ylabel:
        out.append(f'<text x="12" y="{top + ph / 2:.1f}" text-anchor="middle" fill="#556" '
                   f'transform="rotate(-90 12 {top + ph / 2:.1f})">{esc(ylabel)}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_bar_chart(items: list[tuple[str, float]], *, width: int = 460, vmax: float = 100.0, unit: str = "") -> str:
    """Inline SVG horizontal bar chart of (label, value) with values from 0 to ``vmax``."""
    items = [(label, float(v)) for label, v in items if finite(v)]
    if not items:
        return ""
    left, right, top, row = max(130, 12 + int(6.8 * max(len(label) for label, _ in items))), 56, 8, 28
    width = max(width, left + right + 200)
    pw = width - left - right
    height = top + row * len(items) + 22
    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" font-family="inherit" font-size="12">']
    for i in range(5):
        t = vmax * i / 4
        x = left + pw * i / 4
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + row * len(items)}" stroke="#e6e9ee"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" fill="#667" font-size="10">'
                   f'{t:g}</text>')
    for i, (label, v) in enumerate(items):
        y = top + i * row
        w = pw * min(max(v, 0.0), vmax) / vmax
        colour = COLOURS[i % len(COLOURS)]
        out.append(f'<text x="{left - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end" fill="#334">{esc(label)}</text>')
        out.append(f'<rect class="bar" data-name="{esc(label)}" x="{left}" y="{y + 5}" width="{w:.2f}" '
                   f'height="{row - 10}" rx="3" fill="{colour}"/>')
        out.append(f'<text x="{left + w + 6:.1f}" y="{y + row / 2 + 4:.1f}" fill="#223">{v:.1f}{esc(unit)}</text>')
    out.append("</svg>")
    return "".join(out)
