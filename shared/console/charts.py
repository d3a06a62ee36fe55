"""Server-rendered inline SVG charts for the web console: a line chart of a time series and a bar chart of
daily spend against a budget line.

CSP-friendly: no script, no ``style`` attribute; only SVG presentation attributes and CSS classes that
console.css styles: ``chart`` with ``chart-kind-line`` or ``chart-kind-bar`` on the root, then
``chart-line``, ``chart-axis``, ``chart-grid``, ``chart-threshold``, ``chart-bar``, ``chart-bar-over``,
``chart-budget``, ``chart-label`` (``chart-title``, ``chart-summary``) and ``chart-empty``. Every label
is escaped (markupsafe); the result is a :class:`markupsafe.Markup` that a Jinja2 template embeds as is.
Output is deterministic (coordinates rounded to one decimal) and small: a series longer than
``MAX_POINTS`` is downsampled by min/max buckets, so a chart stays a few KB whatever the history's length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

#: Points drawn at most (a bucket keeps its minimum and its maximum: spikes survive downsampling).
MAX_POINTS = 300
#: Labelled times on a line chart's x axis (both ends included).
X_TICKS = 5
WIDTH = 600
HEIGHT = 160
#: Plot margins: left (y labels), right, top (title), bottom (x labels).
_LEFT, _RIGHT, _TOP, _BOTTOM = 48, 8, 18, 20

Point = tuple[datetime, float]


def downsample(points: Sequence[Point], max_points: int = MAX_POINTS) -> list[Point]:
    """At most ``max_points`` points, in time order: the series is split into ``max_points // 2``
    buckets of consecutive points, each keeping its minimum and maximum (first in time first)."""
    if len(points) <= max_points:
        return list(points)
    buckets = max(1, max_points // 2)
    out: list[Point] = []
    n = len(points)
    for b in range(buckets):
        chunk = points[b * n // buckets : (b + 1) * n // buckets]
        if not chunk:
            continue
        lo = min(range(len(chunk)), key=lambda i: (chunk[i][1], i))
        hi = max(range(len(chunk)), key=lambda i: (chunk[i][1], -i))
        out.extend(chunk[i] for i in sorted({lo, hi}))
    return out


def nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering ``lo``..``hi``, about ``count``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks: list[float] = []
    value = first
    while value < hi + step * 0.5 and len(ticks) < 12:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 10))
    return ticks


def fmt(value: float) -> str:
    """A compact label: 1.2k, 3.4M, 0.05, 12."""
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.3g}M"
    if size >= 1e3:
        return f"{value / 1e3:.3g}k"
    if size == 0:
        return "0"
    return f"{value:.3g}"


def _n(value: float) -> str:
    """A coordinate: one decimal, no trailing .0 (deterministic and short)."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _dashed(parts: list[str], cls: str, y: float, width: int) -> None:
    """A dashed horizontal line across the plot (a threshold, a budget)."""
    parts.append(
        f'<line class="{cls}" x1="{_LEFT}" y1="{_n(y)}" x2="{width - _RIGHT}" y2="{_n(y)}" stroke-dasharray="4 3"/>'
    )


def _time_label(at: datetime, span_s: float) -> str:
    at = at.astimezone(UTC)
    if span_s <= 86400:
        return at.strftime("%H:%M")
    return at.strftime("%m-%d") if span_s > 4 * 86400 else at.strftime("%m-%d %H:%M")


def _x_ticks(first: datetime, last: datetime) -> list[tuple[datetime, str]]:
    """Times to label on the x axis and their anchors: the ends and ``X_TICKS - 2`` evenly between."""
    if last <= first:
        return [(first, "middle")]
    step = (last - first) / (X_TICKS - 1)
    inner = [(first + step * i, "middle") for i in range(1, X_TICKS - 1)]
    return [(first, "start"), *inner, (last, "end")]


def _open(title: str, width: int, height: int, kind: str) -> list[str]:
    label = escape(title)
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-kind-{kind}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{label}">',
        f"<title>{label}</title>",
        f'<text class="chart-label chart-title" x="{_LEFT}" y="12">{label}</text>',
    ]


def _empty(parts: list[str], width: int, height: int) -> Markup:
    parts.append(
        f'<text class="chart-empty" x="{width // 2}" y="{height // 2}" text-anchor="middle">no data</text></svg>'
    )
    return Markup("".join(parts))


def _y_axis(parts: list[str], ticks: list[float], y_of: Callable[[float], float], width: int, label: str) -> None:
    """Grid lines and labels at ``ticks``; ``label`` is a format with ``{}`` for the value."""
    for tick in ticks:
        y = _n(y_of(tick))
        parts.append(f'<line class="chart-grid" x1="{_LEFT}" y1="{y}" x2="{width - _RIGHT}" y2="{y}"/>')
        parts.append(
            f'<text class="chart-label" x="{_LEFT - 4}" y="{y}" text-anchor="end" dominant-baseline="middle">'
            f"{escape(label.replace('{}', fmt(tick)))}</text>"
        )


def line_chart(
    points: Sequence[Point],
    *,
    title: str,
    unit: str = "",
    threshold: float | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
    max_points: int = MAX_POINTS,
) -> Markup:
    """A time series as a polyline with labelled y ticks, min/max, first/last times and an optional
    dashed threshold line. Non-finite values are dropped; times may be in any time zone (shown in UTC)."""
    parts = _open(title, width, height, "line")
    clean = sorted(((at, float(v)) for at, v in points if math.isfinite(v)), key=lambda p: p[0])
    if not clean:
        return _empty(parts, width, height)
    low = min(v for _, v in clean)
    high = max(v for _, v in clean)
    drawn = downsample(clean, max_points)
    bounds = [low, high] + ([threshold] if threshold is not None and math.isfinite(threshold) else [])
    ticks = nice_ticks(min(0.0, *bounds) if low >= 0 else min(bounds), max(bounds))
    y_lo, y_hi = ticks[0], ticks[-1]
    t0, t1 = drawn[0][0].timestamp(), drawn[-1][0].timestamp()
    span = t1 - t0
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM

    def x_of(at: datetime) -> float:
        return _LEFT + (plot_w * (at.timestamp() - t0) / span if span > 0 else plot_w / 2)

    def y_of(value: float) -> float:
        return _TOP + plot_h * (1 - (value - y_lo) / (y_hi - y_lo))

    _y_axis(parts, ticks, y_of, width, "{}" + unit)
    base = _n(height - _BOTTOM)
    parts.append(f'<line class="chart-axis" x1="{_LEFT}" y1="{base}" x2="{width - _RIGHT}" y2="{base}"/>')
    for at, anchor in _x_ticks(drawn[0][0], drawn[-1][0]):
        parts.append(
            f'<text class="chart-label" x="{_n(x_of(at))}" y="{height - 6}" text-anchor="{anchor}">'
            f"{escape(_time_label(at, span))}</text>"
        )
    if threshold is not None and math.isfinite(threshold):
        _dashed(parts, "chart-threshold", y_of(threshold), width)
    coords = " ".join(f"{_n(x_of(at))},{_n(y_of(v))}" for at, v in drawn)
    parts.append(f'<polyline class="chart-line" fill="none" points="{coords}"/>')
    summary = f"min {fmt(low)}{unit} · max {fmt(high)}{unit} · last {fmt(clean[-1][1])}{unit}"
    parts.append(
        f'<text class="chart-label chart-summary" x="{width - _RIGHT}" y="12" text-anchor="end">'
        f"{escape(summary)}</text></svg>"
    )
    return Markup("".join(parts))


def bar_chart(
    bars: Sequence[tuple[str, float]],
    *,
    title: str,
    budget: float | None = None,
    unit: str = "$",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Markup:
    """Labelled bars (e.g. spend per day) against an optional budget line; a bar above the budget gets
    the class ``chart-bar-over``. ``unit`` prefixes the values ("$"). At most every n-th label is shown
    so that labels never overlap; each bar's ``<title>`` carries its exact label and value."""
    parts = _open(title, width, height, "bar")
    clean = [(label, float(v)) for label, v in bars if math.isfinite(v)]
    if not clean:
        return _empty(parts, width, height)
    top = max([v for _, v in clean] + ([budget] if budget is not None and math.isfinite(budget) else []))
    ticks = nice_ticks(min(0.0, *(v for _, v in clean)), top)
    y_lo, y_hi = ticks[0], ticks[-1]
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM

    def y_of(value: float) -> float:
        return _TOP + plot_h * (1 - (value - y_lo) / (y_hi - y_lo))

    _y_axis(parts, ticks, y_of, width, unit + "{}")
    slot = plot_w / len(clean)
    every = max(1, math.ceil(len(clean) * 40 / plot_w))
    zero = y_of(max(y_lo, 0.0))
    for i, (label, value) in enumerate(clean):
        y = y_of(value)
        over = budget is not None and math.isfinite(budget) and value > budget
        cls = "chart-bar chart-bar-over" if over else "chart-bar"
        x = _LEFT + i * slot + slot * 0.1
        parts.append(
            f'<rect class="{cls}" x="{_n(x)}" y="{_n(min(y, zero))}" width="{_n(slot * 0.8)}" '
            f'height="{_n(abs(zero - y))}"><title>{escape(f"{label}: {unit}{value:.2f}")}</title></rect>'
        )
        if i % every == 0 or i == len(clean) - 1:
            parts.append(
                f'<text class="chart-label" x="{_n(x + slot * 0.4)}" y="{height - 6}" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    if budget is not None and math.isfinite(budget):
        _dashed(parts, "chart-budget", y_of(budget), width)
        parts.append(
            f'<text class="chart-label chart-summary" x="{width - _RIGHT}" y="12" text-anchor="end">'
            f"{escape(f'budget {unit}{fmt(budget)}')}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
