"""Tiny inline-SVG charts for the HTML report (no JS, no network)."""

from __future__ import annotations

import html
import math

__all__ = ["bar_chart", "histogram"]

_OK, _BAD = "#3b6fd8", "#c0392b"


def bar_chart(labels: list[str], values: list[float], bad: list[bool], *, log: bool = False,
              width: int = 320, bar_h: int = 20) -> str:
    """Horizontal bars, one per label; failing artifacts in red."""
    if not values:
        return "<svg width='10' height='10'></svg>"
    vals = [math.log10(v) + 10 if log else v for v in values]  # log: shift 1e-10 -> 0
    top = max(max(vals), 1e-12)
    label_w, gap = 150, 6
    h = len(values) * (bar_h + gap) + gap
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{h}' role='img'>"]
    for i, (lab, v, raw, b) in enumerate(zip(labels, vals, values, bad, strict=False)):
        y = gap + i * (bar_h + gap)
        w = max(1.0, (width - label_w - 60) * max(v, 0) / top)
        out.append(f"<text x='0' y='{y + bar_h - 6}' font-size='11'>{html.escape(lab[-24:])}</text>")
        out.append(f"<rect x='{label_w}' y='{y}' width='{w:.1f}' height='{bar_h}' fill='{_BAD if b else _OK}'/>")
        out.append(f"<text x='{label_w + w + 4:.1f}' y='{y + bar_h - 6}' font-size='11'>{raw:.3g}</text>")
    out.append("</svg>")
    return "".join(out)


def histogram(hist: dict[str, list[float]], bad: bool, *, width: int = 320, height: int = 120) -> str:
    """Counts per log-spaced |error| bin, with decade labels."""
    counts, edges = hist["counts"], hist["edges"]
    top = max(max(counts), 1)
    n = len(counts)
    bw = (width - 20) / n
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 18}' role='img'>"]
    for i, c in enumerate(counts):
        h = (height - 4) * c / top
        out.append(f"<rect x='{10 + i * bw:.1f}' y='{height - h:.1f}' width='{bw - 1:.1f}' height='{h:.1f}' "
                   f"fill='{_BAD if bad else _OK}'><title>{edges[i]:.1e}–{edges[i + 1]:.1e}: {c}</title></rect>")
    for i in range(0, n + 1, 4):
        out.append(f"<text x='{10 + i * bw:.1f}' y='{height + 14}' font-size='9' text-anchor='middle'>"
                   f"1e{round(math.log10(edges[i]))}</text>")
    out.append("</svg>")
    return "".join(out)
