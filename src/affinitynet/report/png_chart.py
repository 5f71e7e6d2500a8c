"""A line chart as a PNG (Pillow only): ``affinitynet sweep`` writes one beside its JSON.

Knows nothing about runs; the report draws the same numbers as SVG (``charts.svg_line_chart``).
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .charts import _tick_label, finite, nice_ticks

INK, GRID, LINE, MARK = (51, 62, 72), (225, 229, 235), (59, 111, 182), (224, 123, 57)


def line_chart_png(points: list[tuple[float, float]], *, title: str = "", xlabel: str = "", ylabel: str = "",
                   mark: float | None = None, width: int = 640, height: int = 400) -> np.ndarray:
    """(x, y) points -> (height, width, 3) uint8 chart: line, point markers, value labels; ``mark`` draws a dashed x."""
    pts = sorted((float(x), float(y)) for x, y in points if finite(x) and finite(y))
    if not pts:
        raise ValueError("line_chart_png needs at least one finite point")
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    xs = [x for x, _ in pts] + ([mark] if finite(mark) else [])
    ys = [y for _, y in pts]
    pad = 0.08 * (max(ys) - min(ys)) or 0.5  # room for the value labels above and below the line
    xt, yt = nice_ticks(min(xs), max(xs), 6), nice_ticks(min(ys) - pad, max(ys) + pad, 5)
    left, right, top, bottom = 64, 24, 40 if title else 20, 52
    pw, ph = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - xt[0]) / (xt[-1] - xt[0]) * pw

    def sy(y):
        return top + ph - (y - yt[0]) / (yt[-1] - yt[0]) * ph

    for t in yt:
        y = sy(t)
        d.line([(left, y), (left + pw, y)], fill=GRID)
        label = _tick_label(t, yt)
        d.text((left - 6 - d.textlength(label, font=font), y - 5), label, fill=INK, font=font)
    for t in xt:
        x = sx(t)
        d.line([(x, top + ph), (x, top + ph + 4)], fill=INK)
        label = _tick_label(t, xt)
        d.text((x - d.textlength(label, font=font) / 2, top + ph + 7), label, fill=INK, font=font)
    d.rectangle([left, top, left + pw, top + ph], outline=(201, 206, 214))
    if finite(mark):
        x = sx(mark)
        for y0 in range(top, top + ph, 8):
            d.line([(x, y0), (x, min(y0 + 4, top + ph))], fill=(150, 150, 170))
        d.text((x + 4, top + 3), "config", fill=(120, 120, 140), font=font)
    d.line([(sx(x), sy(y)) for x, y in pts], fill=LINE, width=2)
    best = max(pts, key=lambda p: p[1])
    for x, y in pts:
        r = 4 if (x, y) == best else 3
        d.ellipse([sx(x) - r, sy(y) - r, sx(x) + r, sy(y) + r], fill=MARK if (x, y) == best else LINE)
        label = f"{y:.2f}" if max(ys) - min(ys) < 2 else f"{y:.1f}"
        d.text((sx(x) - d.textlength(label, font=font) / 2, sy(y) - 16), label, fill=INK, font=font)
    if title:
        d.text((left, 12), title, fill=INK, font=font)
    if xlabel:
        d.text((left + pw / 2 - d.textlength(xlabel, font=font) / 2, height - 18), xlabel, fill=INK, font=font)
    if ylabel:
        side = Image.new("RGB", (int(d.textlength(ylabel, font=font)) + 4, 14), "white")
        ImageDraw.Draw(side).text((2, 1), ylabel, fill=INK, font=font)
        side = side.rotate(90, expand=True)
        img.paste(side, (6, int(top + ph / 2 - side.height / 2)))
    return np.asarray(img)
