"""The build report: ``report.json`` (for scripts), ``report.html`` (one
self-contained page for people: tables and inline SVG plots, no network) and
the one-screen terminal summary."""

from __future__ import annotations

import datetime as dt
import html as _html
import json
import math
from typing import Any

from edgepack._term import table

from ._recipe import Recipe
from ._spec import IOSpec
from ._svg import bar_chart, histogram

__all__ = ["html", "make", "summary_text", "to_json"]


def make(rec: Recipe, spec: IOSpec, rows: list[dict[str, Any]], failures: list[dict[str, Any]],
         slow: list[dict[str, Any]], lineage: dict[str, Any], notes: list[str], outputs: list[str]) -> dict[str, Any]:
    warnings = list(notes)
    for s in slow:
        warnings.append(f"SLOWER THAN FP32: {s['artifact']} p50 {s['p50_ms']:.3f} ms is {s['ratio']:.2f}x "
                        f"{s['baseline']} ({s['baseline_p50_ms']:.3f} ms)")
    return {
        "schema": "edgepack.build-report/v1",
        "name": rec.model.name, "version": rec.model.version,
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "passed": not failures, "io": spec.to_manifest(), "outputs": outputs,
        "artifacts": rows, "failures": failures, "slower_than_fp32": slow,
        "warnings": warnings, "lineage": lineage,
    }


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no inf/nan; a string keeps the fact visible
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def to_json(report: dict[str, Any]) -> bytes:
    return json.dumps(_clean(report), indent=2, sort_keys=True, default=str).encode()


def _f(v: Any, fmt: str = ".4g") -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, (int, float)):
        return format(v, fmt)
    return str(v)


def _rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for r in report["artifacts"]:
        m = r["metrics"][0]
        lat = r.get("latency") or {}
        out.append([r["name"], r["precision"], f"{r['size'] / 1024:.1f} KiB", _f(lat.get("p50_ms"), ".3f"),
                    _f(m.get("max_abs")), _f(m.get("cosine"), ".6f"), _f(m.get("sqnr_db"), ".1f"),
                    _f(m.get("top1_agreement"), ".3f"), _f(m.get("accuracy"), ".3f"),
                    "PASS" if not r["failures"] else "FAIL"])
    return out


_HEAD = ["artifact", "precision", "size", "p50 ms", "max|Δ|", "cosine", "SQNR dB", "top1", "acc", "parity"]


def summary_text(report: dict[str, Any], bundle: str | None, report_html: str, signed: bool) -> str:
    """The one-screen terminal summary."""
    lines = [table(_HEAD, _rows(report)), ""]
    for w in report["warnings"]:
        lines.append(f"! {w}")
    for f in report["failures"]:
        lines.append(f"✗ {f['artifact']} [{f['output']}] {f['metric']} = {_f(f['value'])} (budget {_f(f['limit'])})")
    for r in report["artifacts"]:
        loc = r.get("localization") or {}
        if loc.get("first_diverging"):
            d = loc["first_diverging"]
            lines.append(f"  {r['name']}: first diverging node {d['node']} ({d['op_type']}), "
                         f"SQNR {_f(d['sqnr_vs_float_db'], '.1f')} dB vs float")
    comp = report.get("compression")
    if comp:
        lines.append("compression (what each pass cost; accuracy points, state_dict bytes, eager ms):")
        for r in comp["attribution"]:
            drop = "-" if r["accuracy_drop_points"] is None else f"lost {r['accuracy_drop_points']:+.2f} pts"
            lines.append(f"  {r['pass']:<18} {drop:>15}  {r['size_before']} -> {r['size_after']} B  "
                         f"{r['latency_ms_before']:.3f} -> {r['latency_ms_after']:.3f} ms")
        for a in comp["artifacts"]:
            lines.append(f"  {a['artifact']:<18} lost {100 * a['accuracy_drop_vs_original']:+.2f} pts vs original "
                         f"(budget {100 * a['max_accuracy_drop']:.2f})  {a['size']} B")
    if report["passed"]:
        state = "signed" if signed else "UNSIGNED"
        what = ("match the compressed model and are within the accuracy budget vs the original" if comp
                else "match the original model")
        lines.append(f"BUILD PASSED: {len(report['artifacts'])} artifact(s) {what}; "
                     f"{state} bundle {bundle}")
    else:
        lines.append(f"BUILD FAILED: {len({f['artifact'] for f in report['failures']})} artifact(s) over budget; "
                     "no bundle written")
    lines.append(f"report: {report_html}")
    return "\n".join(lines)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#1d2330}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde}
.badge{display:inline-block;padding:3px 10px;border-radius:12px;color:#fff;font-weight:600}
.pass{background:#1f8a4c} .fail{background:#c0392b} .warn{background:#fff4d6;border:1px solid #e8c15a;padding:8px 12px;border-radius:6px;margin:6px 0}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums} td,th{padding:5px 8px;border-bottom:1px solid #eef;text-align:right}
th{background:#f4f6fb} td:first-child,th:first-child{text-align:left} tr.bad td{background:#fdecea}
.grid{display:grid;grid-template-columns:repeat(3,1fr);gap:14px} .card{border:1px solid #e3e6ef;border-radius:8px;padding:8px}
.card h3{font-size:13px;margin:0 0 4px;color:#445} code{background:#f4f6fb;padding:1px 4px;border-radius:3px}
.muted{color:#667;font-size:12px}
"""


def _e(v: Any) -> str:
    return _html.escape(str(v))


def _table_html(head: list[str], rows: list[list[str]], bad: list[bool] | None = None) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(
        f"<tr class='{'bad' if bad and bad[i] else ''}'>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>"
        for i, r in enumerate(rows))
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def html(report: dict[str, Any]) -> str:
    """A self-contained page: no scripts, no external resources."""
    arts = report["artifacts"]
    names = [a["name"] for a in arts]
    bad = [bool(a["failures"]) for a in arts]
    ok = report["passed"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>edgepack build report: {_e(report['name'])} v{_e(report['version'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(report['name'])} v{_e(report['version'])} "
        f"<span class='badge {'pass' if ok else 'fail'}'>{'PASSED' if ok else 'FAILED'}</span></h1>",
        f"<div class='muted'>built {_e(report['created_at'])} · source sha256 "
        f"<code>{_e(str(report['lineage'].get('source_sha256'))[:16])}…</code> · "
        "every artifact was run in its device runtime and compared with the original model</div>",
    ]
    parts += [f"<div class='warn'>⚠ {_e(w)}</div>" for w in report["warnings"]]
    parts.append("<h2>Artifacts</h2>" + _table_html(_HEAD, _rows(report), bad))
    if report["failures"]:
        rows = [[f["artifact"], f["output"], f["metric"], _f(f["value"]), _f(f["limit"])] for f in report["failures"]]
        parts.append("<h2>Parity failures</h2>" + _table_html(["artifact", "output", "metric", "measured", "budget"],
                                                             rows, [True] * len(rows)))
    sizes = [a["size"] / 1024 for a in arts]
    lats = [(a.get("latency") or {}).get("p50_ms", 0.0) for a in arts]
    errs = [max(1e-9, 1.0 - a["metrics"][0]["cosine"]) for a in arts]
    parts.append("<h2>Size, latency and error per artifact</h2><div class='grid'>")
    parts.append(f"<div class='card'><h3>size (KiB)</h3>{bar_chart(names, sizes, bad)}</div>")
    parts.append(f"<div class='card'><h3>latency p50 at batch 1 (ms)</h3>{bar_chart(names, lats, bad)}</div>")
    parts.append(f"<div class='card'><h3>1 − cosine vs original (log)</h3>{bar_chart(names, errs, bad, log=True)}</div>")
    parts.append("</div><h2>Error histograms (|artifact − original|, first output)</h2><div class='grid'>")
    for a, b in zip(arts, bad, strict=False):
        parts.append(f"<div class='card'><h3>{_e(a['name'])}</h3>{histogram(a['abs_errors'], b)}</div>")
    parts.append("</div>")
    parts += _localization_html(arts)
    if report.get("compression"):
        # imported here: the compression modules pull in the pass configs, which plain builds never need
        from ._compress_report import build_section_html

        parts.append(build_section_html(report["compression"]))
    lin = report["lineage"]
    parts.append("<h2>Lineage</h2>" + _table_html(["field", "value"], [
        ["source", lin.get("source")], ["source sha256", lin.get("source_sha256")], ["seed", lin.get("seed")],
        ["calibration fingerprint", lin.get("calibration_fingerprint")],
        *[[f"tool: {k}", v] for k, v in sorted(lin.get("tools", {}).items())]]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _localization_html(arts: list[dict[str, Any]]) -> list[str]:
    out = []
    for a in arts:
        loc = a.get("localization")
        if not loc:
            continue
        d = loc.get("first_diverging")
        out.append(f"<h2>Where {_e(a['name'])} diverges</h2>")
        if d:
            out.append(f"<p>First diverging node: <code>{_e(d['node'])}</code> ({_e(d['op_type'])}), "
                       f"SQNR {_f(d['sqnr_vs_float_db'], '.1f')} dB vs the float model.</p>")
        rows = [[w["node"], w["op_type"], _f(w.get("gain_db"), "+.2f"), w.get("tensor") or "-",
                 _f(w.get("local_sqnr_db"), ".1f"), _f(w.get("sqnr_vs_float_db"), ".1f")]
                for w in loc.get("worst", [])]
        out.append(_table_html(["worst node (measured)", "op", "output SQNR gain in float, dB", "tensor",
                                "local SQNR dB", "SQNR vs float dB"], rows))
        fix = a.get("auto_fix")
        if fix:
            out.append(f"<p>auto-fix: {'PASSED' if fix['passed'] else 'did not reach the budget'}; kept in float: "
                       f"<code>{_e(', '.join(fix['kept_in_float']) or '-')}</code> after {len(fix['tries'])} tries.</p>")
    return out
