"""Small line charts as inline SVG, written by hand so a report needs no plotting library.

    line_chart([Series("step 0", [(0, 1e-3), (1, 2e-3)])], title="rel_l2", hlines=[(1e-2, "allowed")])

returns markup safe to drop into a template (every label is escaped here). Series colours come
from CSS classes `s0`..`s5` in report.css; NaN and Inf points break a line instead of drawing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from markupsafe import Markup, escape

W, H = 600, 190
LEFT, RIGHT, TOP, BOTTOM = 58, 10, 22, 28


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]] = field(default_factory=list)


def line_chart(series: list[Series], title: str, *, log: bool | None = None, hlines: list[tuple[float, str]] = (),
               vlines: list[tuple[float, str]] = (), x_label: str = "frame") -> Markup:
    """`log=None` picks a log y axis when the positive values span more than two decades."""
    ys = [y for s in series for _, y in s.points if math.isfinite(y)] + [y for y, _ in hlines if math.isfinite(y)]
    xs = [x for s in series for x, _ in s.points]
    if not xs or not ys:
        return Markup(f'<p class="muted">{escape(title)}: no values to plot</p>')
    positive = [y for y in ys if y > 0]
    if log is None:
        log = bool(positive) and min(ys) >= 0 and max(positive) / min(positive) > 100
    if log and not positive:
        log = False
    if log:
        lo, hi = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
        hi = hi if hi > lo else lo + 1
        floor = 10.0 ** lo

        def fy(y: float) -> float:
            return (math.log10(max(y, floor)) - lo) / (hi - lo)

        step = max(1, (hi - lo) // 4)
        ticks = [(fy(10.0 ** e), f"1e{e}") for e in range(lo, hi + 1, step)]
    else:
        lo, hi = min(ys), max(ys)
        if hi == lo:
            lo, hi = lo - (abs(lo) * 0.1 or 1.0), hi + (abs(hi) * 0.1 or 1.0)

        def fy(y: float) -> float:
            return (y - lo) / (hi - lo)

        ticks = [(fy(v), f"{v:.4g}") for v in (lo, (lo + hi) / 2, hi)]
    x0, x1 = min(xs), max(xs)
    xspan = (x1 - x0) or 1

    def px(x: float) -> float:
        return LEFT + (x - x0) / xspan * (W - LEFT - RIGHT)

    def py(y: float) -> float:
        return TOP + (1 - fy(y)) * (H - TOP - BOTTOM)

    out = [f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{escape(title)}">',
           f'<text x="{LEFT}" y="14" class="ct">{escape(title)}{" (log scale)" if log else ""}</text>',
           f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" class="frame"/>']
    for f, label in ticks:
        y = TOP + (1 - f) * (H - TOP - BOTTOM)
        out.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" class="yt">{escape(label)}</text>')
    for x in _x_ticks(x0, x1):
        out.append(f'<text x="{px(x):.1f}" y="{H - 12}" class="xt">{x:g}</text>')
    out.append(f'<text x="{W - RIGHT}" y="{H - 1}" class="xl">{escape(x_label)}</text>')
    for y, label in hlines:
        if math.isfinite(y) and (not log or y > 0):
            out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}" class="hl"><title>{escape(label)} {y:.3g}</title></line>')
            out.append(f'<text x="{W - RIGHT - 2}" y="{py(y) - 3:.1f}" class="hlt">{escape(label)} {y:.3g}</text>')
    for x, label in vlines:
        out.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{TOP}" y2="{H - BOTTOM}" class="vl"><title>{escape(label)}</title></line>')
    for i, s in enumerate(series):
        for segment in _segments(s.points):
            pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in segment)
            if len(segment) == 1:
                out.append(f'<circle cx="{px(segment[0][0]):.1f}" cy="{py(segment[0][1]):.1f}" r="2.5" class="s{i % 6} dot"/>')
            else:
                out.append(f'<polyline points="{pts}" class="s{i % 6}"/>')
        lx = LEFT + 8 + i * 110
        out.append(f'<text x="{lx}" y="{TOP + 14}" class="lg s{i % 6}t">{escape(s.label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _segments(points: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    segments, current = [], []
    for x, y in points:
        if math.isfinite(y):
            current.append((x, y))
        elif current:
            segments.append(current)
            current = []
    if current:
        segments.append(current)
    return segments


def _x_ticks(x0: float, x1: float) -> list[float]:
    span = x1 - x0
    if span <= 0:
        return [x0]
    raw = span / 6
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    step = max(step, 1)
    first = math.ceil(x0 / step) * step
    return [first + i * step for i in range(int((x1 - first) // step) + 1)]


BAR_ROW, BAR_LABEL = 22, 170


def bar_chart(rows: list[tuple[str, list[float]]], title: str, *, series: list[str] = ("value",), unit: str = "",
              reference: float | None = 0.0) -> Markup:
    """Horizontal bars, one row per label and one bar per series value (NaN: no bar); negative
    values extend left of zero. `reference` draws a dashed line at that value (None: none).

        bar_chart([("sigmas_3step", [0.82, 0.82]), ("decode_fp32", [0.01, 0.83])], "blur", series=["alone", "cumulative"])
    """
    values = [v for _, vs in rows for v in vs if v is not None and math.isfinite(v)]
    if not rows or not values:
        return Markup(f'<p class="muted">{escape(title)}: no values to plot</p>')
    lo, hi = min(0.0, *values), max(0.0, *values)
    if hi == lo:
        hi = lo + 1.0
    n = max(1, len(series))
    height = TOP + 16 + len(rows) * BAR_ROW + BOTTOM
    width = W
    left, right = BAR_LABEL, width - RIGHT - 50

    def px(v: float) -> float:
        return left + (v - lo) / (hi - lo) * (right - left)

    out = [f'<svg class="chart bars" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
           f'<text x="4" y="14" class="ct">{escape(title)}</text>']
    for i, name in enumerate(series if n > 1 else ()):
        out.append(f'<rect x="{left + i * 110}" y="{TOP - 4}" width="10" height="8" class="b{i % 6}"/>'
                   f'<text x="{left + 14 + i * 110}" y="{TOP + 4}" class="lg">{escape(name)}</text>')
    top = TOP + 14
    bar_h = (BAR_ROW - 6) / n
    for r, (label, vs) in enumerate(rows):
        y = top + r * BAR_ROW
        out.append(f'<text x="{left - 6}" y="{y + BAR_ROW / 2 + 3:.1f}" class="yt">{escape(label)}</text>')
        for i, v in enumerate(vs):
            if v is None or not math.isfinite(v):
                continue
            x0, x1 = sorted((px(0.0), px(v)))
            by = y + 3 + i * bar_h
            name = series[i] if i < len(series) else ""
            out.append(f'<rect x="{x0:.1f}" y="{by:.1f}" width="{max(x1 - x0, 0.5):.1f}" height="{bar_h - 1:.1f}" class="b{i % 6}">'
                       f'<title>{escape(label)} {escape(name)}: {v:.3g}{escape(unit)}</title></rect>')
            out.append(f'<text x="{max(px(v), px(0.0)) + 3:.1f}" y="{by + bar_h - 2:.1f}" class="bv">{v:+.3f}</text>')
    axis_y = top + len(rows) * BAR_ROW
    if reference is not None and lo <= reference <= hi:
        out.append(f'<line x1="{px(reference):.1f}" x2="{px(reference):.1f}" y1="{top}" y2="{axis_y}" class="vl"/>')
    for v in (lo, (lo + hi) / 2, hi):
        out.append(f'<text x="{px(v):.1f}" y="{axis_y + 14}" class="xt">{v:.3g}</text>')
    out.append("</svg>")
    return Markup("".join(out))
