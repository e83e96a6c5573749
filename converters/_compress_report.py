"""The compression part of the build report: what each pass cost, and the
search's Pareto front as a table and an inline SVG scatter (no JS, no network),
ready to be embedded in ``report.html``."""

from __future__ import annotations

import html

from edgepack._term import table

from ._compress_pipeline import attribution_table
from ._passreport import PassReport
from ._search import SearchResult

__all__ = ["build_section_html", "html_section", "pareto_svg", "passes_text", "search_text"]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def passes_text(reports: list[PassReport]) -> str:
    rows = [(r["pass"], _pct(r["accuracy_before"]), _pct(r["accuracy_after"]),
             "-" if r["accuracy_drop_points"] is None else f"{r['accuracy_drop_points']:+.2f}",
             r["size_before"], r["size_after"], r["xz_before"], r["xz_after"],
             f"{r['latency_ms_before']:.3f}", f"{r['latency_ms_after']:.3f}") for r in attribution_table(reports)]
    return table(("pass", "acc before", "acc after", "points lost", "bytes before", "bytes after", "xz before",
                  "xz after", "ms before", "ms after"), rows)


def search_text(res: SearchResult) -> str:
    front = {c.label for c in res.front}
    rows = [(c.target, c.label, _pct(c.accuracy), "-" if c.accuracy_drop is None else f"{100 * c.accuracy_drop:+.2f}",
             c.size, c.size_xz, f"{c.latency_ms:.3f}", "*" if c.label in front else "",
             c.error or "; ".join(c.failed) or "ok") for c in res.candidates]
    head = f"search: {res.status}; pick: {res.best.label if res.best else 'none'}"
    if res.best and res.best.failed:
        head += f" (fails {'; '.join(res.best.failed)})"
    return head + "\n" + table(("target", "candidate", "accuracy", "points lost", "bytes", "xz bytes", "p50 ms",
                                "front", "budget"), rows)


#: how each target's candidates are drawn in the plot (circle / square), so the reader sees the runtime
_MARKERS = {"onnx": "circle", "tflite": "square"}


def _marker(target: str, cx: float, cy: float, colour: str, title: str) -> str:
    if _MARKERS.get(target) == "square":
        return (f"<rect x='{cx - 4:.1f}' y='{cy - 4:.1f}' width='8' height='8' fill='{colour}' "
                f"data-target='{html.escape(target)}'><title>{title}</title></rect>")
    return (f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='4' fill='{colour}' data-target='{html.escape(target)}'>"
            f"<title>{title}</title></circle>")


def pareto_svg(res: SearchResult, width: int = 420, height: int = 260) -> str:
    """Size (x, log-free) against accuracy drop (y); front in blue, pick ringed, others grey;
    ONNX candidates are circles and TFLite candidates squares (legend in the corner)."""
    pts = [c for c in res.candidates if c.error is None and c.accuracy_drop is not None]
    if not pts:
        return "<svg width='10' height='10'></svg>"
    xs = [c.size for c in pts]
    ys = [100 * (c.accuracy_drop or 0.0) for c in pts]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(min(ys), 0.0), max(max(ys), 0.5)
    pad = 40
    front = {c.label for c in res.front}

    def px(x: float, y: float) -> tuple[float, float]:
        return (pad + (width - 2 * pad) * (x - x0) / (x1 - x0), height - pad - (height - 2 * pad) * (y - y0) / (y1 - y0))

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img'>",
           f"<text x='{width / 2}' y='{height - 8}' font-size='11' text-anchor='middle'>artifact bytes</text>",
           "<text x='10' y='14' font-size='11'>accuracy points lost</text>",
           f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' stroke='#888'/>",
           f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{height - pad}' stroke='#888'/>"]
    legend = ", ".join(f"{t}: {_MARKERS.get(t, 'circle')}" for t in sorted({c.target for c in pts}))
    out.append(f"<text x='{width - pad}' y='14' font-size='11' text-anchor='end'>{html.escape(legend)}</text>")
    for c, x, y in zip(pts, xs, ys, strict=False):
        cx, cy = px(x, y)
        colour = "#3b6fd8" if c.label in front else "#aaa"
        out.append(_marker(c.target, cx, cy, colour, f"{html.escape(c.label)}: {x} B, {y:+.2f} pts, "
                                                     f"{c.latency_ms:.3f} ms"))
        if res.best is not None and c.label == res.best.label:
            out.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='8' fill='none' stroke='#c0392b' stroke-width='2'/>")
    out.append("</svg>")
    return "".join(out)


def _attribution_html(rows: list[dict]) -> str:
    parts = ["<table><tr><th>pass</th><th>accuracy before</th><th>after</th>"
             "<th>points lost</th><th>bytes before</th><th>after</th><th>xz after</th><th>ms before</th>"
             "<th>ms after</th></tr>"]
    for r in rows:
        drop = "-" if r["accuracy_drop_points"] is None else f"{r['accuracy_drop_points']:+.2f}"
        parts.append(f"<tr><td>{html.escape(r['pass'])}</td><td>{_pct(r['accuracy_before'])}</td>"
                     f"<td>{_pct(r['accuracy_after'])}</td><td>{drop}</td><td>{r['size_before']}</td>"
                     f"<td>{r['size_after']}</td><td>{r['xz_after']}</td><td>{r['latency_ms_before']:.3f}</td>"
                     f"<td>{r['latency_ms_after']:.3f}</td></tr>")
    parts.append("</table>")
    return "".join(parts)


def html_section(reports: list[PassReport], res: SearchResult | None = None) -> str:
    """An HTML fragment: the per-pass attribution table, then the search table and plot."""
    parts = ["<h2>Compression passes</h2>", _attribution_html(attribution_table(reports))]
    if res is not None:
        parts.append(f"<h2>Search ({html.escape(res.status)})</h2>{pareto_svg(res)}"
                     f"<pre>{html.escape(search_text(res))}</pre>")
    return "".join(parts)


def build_section_html(section: dict) -> str:
    """The compression part of ``report.html`` from ``report.json["compression"]``: what each pass
    cost (eager torch, before export), then each exported artifact against the ORIGINAL model."""
    parts = ["<h2>Compression passes</h2><div class='muted'>accuracy, state_dict size and eager latency "
             "before and after each pass; the original model scored "
             f"{_pct(section.get('original_accuracy'))}</div>", _attribution_html(section["attribution"]),
             "<h3>Artifacts vs the original model</h3><table><tr><th>artifact</th><th>accuracy</th>"
             "<th>agreement with original</th><th>points lost vs original</th><th>budget</th><th>bytes</th>"
             "<th>p50 ms</th><th></th></tr>"]
    for a in section.get("artifacts", []):
        lat = a.get("latency_ms_p50")
        parts.append(f"<tr><td>{html.escape(a['artifact'])}</td><td>{_pct(a['accuracy'])}</td>"
                     f"<td>{_pct(a['agreement_with_original'])}</td><td>{100 * a['accuracy_drop_vs_original']:+.2f}"
                     f"</td><td>{100 * a['max_accuracy_drop']:.2f}</td><td>{a['size']}</td>"
                     f"<td>{'-' if lat is None else f'{lat:.3f}'}</td><td>{'ok' if a['passed'] else 'OVER'}</td></tr>")
    parts.append("</table>")
    if section.get("runtimes"):
        parts.append(_runtimes_html(section["runtimes"]))
    if section.get("search"):
        res = _result_from_dict(section["search"])
        parts.append(f"<h2>Search ({html.escape(res.status)})</h2>{pareto_svg(res)}"
                     f"<pre>{html.escape(search_text(res))}</pre>")
    return "".join(parts)


def _runtimes_html(rows: list[dict]) -> str:
    """fp32 original vs compressed on each target runtime (``_compress_build.runtime_figures``)."""
    parts = ["<h3>Each runtime, fp32: original vs compressed</h3><div class='muted'>the same exporter for both; "
             "batch-1 p50, interleaved</div><table><tr><th>target</th><th>bytes before</th><th>bytes after</th>"
             "<th>smaller</th><th>p50 ms before</th><th>p50 ms after</th><th>faster</th></tr>"]
    for r in rows:
        if r.get("error"):
            parts.append(f"<tr><td>{html.escape(r['target'])}</td><td colspan='6'>not measured: "
                         f"{html.escape(r['error'])}</td></tr>")
            continue
        parts.append(f"<tr><td>{html.escape(r['target'])}</td><td>{r['bytes_before']}</td><td>{r['bytes_after']}"
                     f"</td><td>{r['bytes_before'] / max(r['bytes_after'], 1):.2f}x</td>"
                     f"<td>{r['p50_ms_before']:.3f}</td><td>{r['p50_ms_after']:.3f}</td>"
                     f"<td>{r['speedup']:.2f}x</td></tr>")
    parts.append("</table>")
    return "".join(parts)


def _result_from_dict(d: dict) -> SearchResult:
    """Rebuild a SearchResult from ``SearchResult.to_dict()`` (the report keeps JSON, not objects)."""
    from dataclasses import fields

    from ._search import Candidate

    names = [f.name for f in fields(Candidate)]
    cands = [Candidate(**{k: c[k] for k in names if k in c}) for c in d["candidates"]]
    by_label = {c.label: c for c in cands}
    best = by_label.get(d["best"]["label"]) if d.get("best") else None
    return SearchResult(cands, None, best, d["status"], d["met_budget"], [by_label[x] for x in d["front"]
                                                                          if x in by_label])
