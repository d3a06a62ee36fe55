"""The console's inline SVG charts (shared/console/charts.py): escaping, determinism, size, downsampling."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone

from markupsafe import Markup

from shared.console import charts

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
HOSTILE = "<script>window.__xss=1</script>\"&'"
SVG = "{http://www.w3.org/2000/svg}"


def series(n: int, step_s: int = 30) -> list[tuple[datetime, float]]:
    return [(T0 + timedelta(seconds=step_s * i), 100 + 40 * math.sin(i / 7) + (i % 13)) for i in range(n)]


def parsed(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def test_line_chart_is_markup_and_valid_svg() -> None:
    svg = charts.line_chart(series(50), title="Latency", unit="ms", threshold=130)
    assert isinstance(svg, Markup)
    root = parsed(svg)
    assert root.tag == f"{SVG}svg"
    assert root.find(f"{SVG}polyline") is not None
    assert root.find(f"{SVG}line[@class='chart-threshold']") is not None
    assert "min " in svg and "max " in svg


def test_hostile_labels_are_escaped() -> None:
    line = charts.line_chart(series(10), title=HOSTILE, unit=HOSTILE)
    bars = charts.bar_chart([(HOSTILE, 1.0), ("b", 2.0)], title=HOSTILE, unit=HOSTILE, budget=1.5)
    for svg in (line, bars):
        assert "<script" not in svg
        assert "&lt;script&gt;" in svg
        root = parsed(svg)  # still well-formed: nothing broke out of an attribute or text
        assert root.attrib["aria-label"] == HOSTILE
        assert root.find(f"{SVG}title").text == HOSTILE  # type: ignore[union-attr]


def test_csp_friendly_no_script_no_style() -> None:
    for svg in (charts.line_chart(series(20), title="x"), charts.bar_chart([("a", 1.0)], title="y", budget=2)):
        assert "style=" not in svg and "<style" not in svg
        assert "<script" not in svg and "javascript:" not in svg
        assert not re.search(r"\son[a-z]+=", svg)  # no event handlers


def test_deterministic() -> None:
    points = series(500)
    assert charts.line_chart(points, title="t", threshold=1) == charts.line_chart(list(points), title="t", threshold=1)
    bars = [(f"12-{d:02d}", d * 0.37) for d in range(1, 15)]
    assert charts.bar_chart(bars, title="s", budget=3) == charts.bar_chart(bars, title="s", budget=3)


def test_time_zones_do_not_change_the_chart() -> None:
    points = series(40)
    shifted = [(at.astimezone(timezone(timedelta(hours=5))), v) for at, v in points]
    assert charts.line_chart(points, title="t") == charts.line_chart(shifted, title="t")


def test_size_bounds() -> None:
    assert len(charts.line_chart(series(300), title="Latency p95", unit="ms", threshold=120)) < 6000
    long = charts.line_chart(series(100_000, step_s=1), title="Latency p95", unit="ms", threshold=120)
    assert len(long) < 6000
    bars = charts.bar_chart([(f"12-{d:02d}", d * 1.5) for d in range(1, 32)], title="Spend", budget=20)
    assert len(bars) < 7000


def test_downsample_keeps_extremes_in_order() -> None:
    points = series(10_000, step_s=1)
    points[4321] = (points[4321][0], 1e6)
    points[777] = (points[777][0], -1e6)
    out = charts.downsample(points, 300)
    assert len(out) <= 300
    assert [at for at, _ in out] == sorted(at for at, _ in out)
    values = [v for _, v in out]
    assert max(values) == 1e6 and min(values) == -1e6
    assert charts.downsample(points[:200], 300) == points[:200]


def test_polyline_points_bounded() -> None:
    svg = charts.line_chart(series(5000), title="t")
    polyline = parsed(svg).find(f"{SVG}polyline")
    assert polyline is not None
    assert len(polyline.attrib["points"].split()) <= charts.MAX_POINTS


def test_empty_and_non_finite() -> None:
    assert "no data" in charts.line_chart([], title="t")
    assert "no data" in charts.line_chart([(T0, float("nan")), (T0, float("inf"))], title="t")
    assert "no data" in charts.bar_chart([], title="t")
    one = charts.line_chart([(T0, 5.0)], title="t")
    assert parsed(one).find(f"{SVG}polyline") is not None
    flat = charts.line_chart([(T0, 0.0), (T0 + timedelta(minutes=1), 0.0)], title="t")
    assert parsed(flat).find(f"{SVG}polyline") is not None


def test_bars_over_budget_are_marked() -> None:
    svg = charts.bar_chart([("a", 1.0), ("b", 3.0), ("c", 2.0)], title="s", budget=2.0)
    classes = [r.attrib["class"] for r in parsed(svg).iter(f"{SVG}rect")]
    assert classes == ["chart-bar", "chart-bar chart-bar-over", "chart-bar"]
    assert parsed(svg).find(f"{SVG}line[@class='chart-budget']") is not None


def test_nice_ticks_cover_the_range() -> None:
    for lo, hi in ((0, 1), (0, 0.07), (3, 987), (-5, 5), (7, 7), (0, 1e9)):
        ticks = charts.nice_ticks(lo, hi)
        assert ticks[0] <= lo and ticks[-1] >= hi
        assert 2 <= len(ticks) <= 12
