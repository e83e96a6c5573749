"""Tiny inline-SVG charts for the dashboard (no JavaScript, no external assets).

Only presentation attributes are used (no ``style=``), so the page's strict
Content-Security-Policy (``style-src 'self'``) holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

__all__ = ["bar_chart", "line_chart"]

W, H, PAD = 420, 140, 30


def _frame(title: str, body: str, label: str) -> Markup:
    return Markup(
        f'<svg class="chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {W} {H}" '
        f'width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg">'
        f'<title>{escape(title)}</title>'
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 8}" y2="{H - PAD}" stroke="#889" stroke-width="1"/>'
        f'<line x1="{PAD}" y1="8" x2="{PAD}" y2="{H - PAD}" stroke="#889" stroke-width="1"/>'
        f"{body}</svg>")


def line_chart(values: Sequence[float], title: str, unit: str = "") -> Markup:
    """A polyline of ``values`` in arrival order, with min and max labelled."""
    if not values:
        return Markup(f'<p class="muted">no {escape(title.lower())} data yet</p>')
    lo, hi = min(values), max(values)
    span = (hi - lo) or (abs(hi) or 1.0)
    n = len(values)
    pts = " ".join(
        f"{PAD + (W - PAD - 10) * (i / max(1, n - 1)):.1f},{(H - PAD) - (H - PAD - 12) * ((v - lo) / span):.1f}"
        for i, v in enumerate(values))
    body = (f'<polyline fill="none" stroke="#2a6fdb" stroke-width="2" points="{pts}"/>'
            f'<text x="2" y="16" font-size="10" fill="#445">{hi:.3g}{escape(unit)}</text>'
            f'<text x="2" y="{H - PAD}" font-size="10" fill="#445">{lo:.3g}{escape(unit)}</text>'
            f'<text x="{PAD}" y="{H - 8}" font-size="10" fill="#445">{n} samples</text>')
    return _frame(title, body, f"{title}: {n} samples from {lo:.3g} to {hi:.3g}{unit}")


def bar_chart(counts: dict[str, float], title: str) -> Markup:
    """Bars for a label -> count mapping (for example the prediction distribution)."""
    if not counts:
        return Markup(f'<p class="muted">no {escape(title.lower())} data yet</p>')
    items = sorted(counts.items(), key=lambda kv: kv[0])[:24]
    top = max(v for _, v in items) or 1.0
    bw = (W - PAD - 10) / len(items)
    bars = []
    for i, (label, v) in enumerate(items):
        h = (H - PAD - 12) * (v / top)
        x = PAD + i * bw
        bars.append(f'<rect x="{x + 1:.1f}" y="{H - PAD - h:.1f}" width="{max(1.0, bw - 2):.1f}" height="{h:.1f}" '
                    f'fill="#3b9c6d"><title>{escape(str(label))}: {v:g}</title></rect>'
                    f'<text x="{x + bw / 2:.1f}" y="{H - PAD + 12}" font-size="9" text-anchor="middle" '
                    f'fill="#445">{escape(str(label))[:6]}</text>')
    return _frame(title, "".join(bars), f"{title}: {len(items)} classes")
