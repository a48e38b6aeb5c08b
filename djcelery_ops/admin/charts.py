"""Small server-side SVG charts for the job-run dashboard: no JavaScript, no CDN.

Every label is escaped; the functions return ``SafeString`` markup to put in a template.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH = 640
FONT = 'font-family="system-ui, sans-serif" font-size="12"'
OK_COLOUR = "#417690"  # the admin's own blue
FAIL_COLOUR = "#ba2121"  # the admin's error red
COLOURS = ("#79aec8", "#417690", "#264b5d")


@dataclass(frozen=True)
class Bucket:
    start: datetime.datetime
    total: int
    failed: int


def _svg(height: int, body: list[str], title: str) -> SafeString:
    label = escape(title)
    return mark_safe(  # noqa: S308 - every text piece below is escaped
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{label}">'
        f"<title>{label}</title>{''.join(body)}</svg>"
    )


def _text(x: float, y: float, text: str, anchor: str = "start", colour: str = "#333") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{colour}" {FONT}>'
        f"{escape(text)}</text>"
    )


def _rect(x: float, y: float, width: float, height: float, colour: str) -> str:
    return (
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(width, 0):.1f}" '
        f'height="{max(height, 0):.1f}" fill="{colour}"/>'
    )


def empty_chart(message: str) -> SafeString:
    return _svg(40, [_text(8, 24, message, colour="#666")], message)


def throughput_chart(buckets: Sequence[Bucket], title: str = "Runs per hour") -> SafeString:
    """Vertical bars of runs per bucket, the failed part of each bar in red."""
    if not buckets:
        return empty_chart("No runs in this window.")
    height, left, top, bottom = 220, 48, 24, 36
    plot_w, plot_h = WIDTH - left - 8, height - top - bottom
    peak = max(bucket.total for bucket in buckets) or 1
    step = plot_w / len(buckets)
    body = [_text(left, 14, f"{title} (peak {peak})")]
    for fraction in (0, 0.5, 1):
        y = top + plot_h * (1 - fraction)
        body.append(f'<line x1="{left}" x2="{WIDTH - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        body.append(_text(left - 6, y + 4, f"{round(peak * fraction)}", anchor="end"))
    label_every = max(1, len(buckets) // 8)
    for index, bucket in enumerate(buckets):
        x = left + index * step
        ok_h = plot_h * (bucket.total - bucket.failed) / peak
        fail_h = plot_h * bucket.failed / peak
        bar_w = max(step - 2, 1)
        body.append(_rect(x + 1, top + plot_h - ok_h - fail_h, bar_w, ok_h, OK_COLOUR))
        body.append(_rect(x + 1, top + plot_h - fail_h, bar_w, fail_h, FAIL_COLOUR))
        if index % label_every == 0:
            body.append(_text(x + step / 2, height - 18, bucket.start.strftime("%H:%M"), "middle"))
    body.append(_rect(left, height - 12, 10, 10, OK_COLOUR))
    body.append(_text(left + 14, height - 3, "succeeded / other"))
    body.append(_rect(left + 140, height - 12, 10, 10, FAIL_COLOUR))
    body.append(_text(left + 154, height - 3, "failed or dead-lettered"))
    return _svg(height, body, title)


def bar_chart(
    rows: Sequence[tuple[str, float]], title: str, unit: str = "", colour: str = OK_COLOUR
) -> SafeString:
    """Horizontal bars, one per (label, value), longest first as given."""
    if not rows:
        return empty_chart(f"{title}: nothing to show.")
    label_w, row_h, top = 260, 22, 24
    height = top + row_h * len(rows) + 8
    peak = max(value for _label, value in rows) or 1
    plot_w = WIDTH - label_w - 80
    body = [_text(0, 14, title)]
    for index, (label, value) in enumerate(rows):
        y = top + index * row_h
        body.append(_text(label_w - 6, y + 15, _shorten(label), anchor="end"))
        width = plot_w * value / peak
        body.append(_rect(label_w, y + 4, width, row_h - 8, colour))
        body.append(_text(label_w + width + 6, y + 15, f"{_number(value)}{unit}"))
    return _svg(height, body, title)


def runtime_chart(rows: Sequence[tuple[str, dict[str, float | None]]]) -> SafeString:
    """Per task: three bars, p50, p95 and max runtime in seconds."""
    title = "Runtime per task (s): p50, p95, max"
    rows = [(name, values) for name, values in rows if values.get("max") is not None]
    if not rows:
        return empty_chart("No finished runs with a runtime in this window.")
    label_w, bar_h, top = 260, 7, 34
    row_h = bar_h * 3 + 10
    height = top + row_h * len(rows) + 8
    peak = max(values["max"] or 0 for _name, values in rows) or 1
    plot_w = WIDTH - label_w - 80
    body = [_text(0, 14, title)]
    for index, key in enumerate(("p50", "p95", "max")):
        body.append(_rect(label_w + index * 70, 20, 10, 10, COLOURS[index]))
        body.append(_text(label_w + 14 + index * 70, 29, key))
    for index, (name, values) in enumerate(rows):
        y = top + index * row_h
        body.append(_text(label_w - 6, y + 15, _shorten(name), anchor="end"))
        for bar, key in enumerate(("p50", "p95", "max")):
            value = values.get(key) or 0
            width = plot_w * value / peak
            body.append(_rect(label_w, y + bar * bar_h, width, bar_h - 1, COLOURS[bar]))
        body.append(_text(label_w + plot_w * (values["max"] or 0) / peak + 6, y + 15,
                          _number(values["max"] or 0)))  # fmt: skip
    return _svg(height, body, title)


def _shorten(label: str, limit: int = 38) -> str:
    return label if len(label) <= limit else "…" + label[-(limit - 1) :]


def _number(value: float) -> str:
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"
