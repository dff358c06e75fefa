"""``report.html``: the build report (``report.json``) as one page for people.

Self-contained: inline CSS, plots drawn here as inline SVG (no plotting library, no JavaScript),
and a Content-Security-Policy that forbids scripts and every fetch, so the page renders the same
offline and from any folder. Every string that comes from the model or the pipeline (node, op,
value and pass names) is escaped: ONNX names may contain ``<`` or ``&``.

Sections: summary (model, target, sizes before/after, latency against onnxruntime, accuracy),
the per-pass table (nodes, parameters, bytes by dtype, FLOPs, time, measured error), plots
(bytes by dtype per stage, FLOPs and parameters per stage, time per pass, per-layer quantization
error), fusion coverage, accuracy (error against the input model, per lossy pass, ROLLED BACK
marks, per layer), verification, files and timings.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["render_report"]

# Colors for the dtype series of stacked bars (stable order: by first appearance).
_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")
_MAX_LAYER_BARS = 40  # per-layer error plot: the largest errors only, on big models

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1100px;
       color: #1d2330; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px;
     border-bottom: 1px solid #d8dde6; padding-bottom: 4px; }
.sub { color: #5b6475; margin-top: 0; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d8dde6; padding: 3px 8px; text-align: right; vertical-align: top; }
th { background: #f1f3f7; } td.l, th.l { text-align: left; }
table.kv td:first-child { text-align: left; color: #5b6475; }
.bad { color: #b3261e; font-weight: 600; } .good { color: #2e7d32; }
.muted { color: #7a8394; }
figure { display: inline-block; margin: 8px 16px 8px 0; vertical-align: top; }
figcaption { color: #5b6475; font-size: 12px; }
svg text { font: 11px system-ui, sans-serif; fill: #1d2330; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _count(n: float | None) -> str:
    if n is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def _err(x: float | None) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.3g}"


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1, id_: str = ""
) -> str:
    """A table; the first ``left`` columns are left-aligned. Cells are HTML (escape first)."""
    attr = f' id="{_e(id_)}"' if id_ else ""
    head = "".join(
        f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv(rows: Sequence[tuple[str, str]], id_: str) -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td class='l'>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv" id="{_e(id_)}"><tbody>{body}</tbody></table>'


# ---------------------------------------------------------------------------------------- plots
def bar_chart(
    title: str,
    rows: Sequence[tuple[str, dict[str, float]]],
    fmt: Callable[[float], str],
    *,
    id_: str,
    caption: str = "",
    width: int = 520,
) -> str:
    """A horizontal bar chart as inline SVG: one bar per row, stacked by series.

    ``rows``: (label, {series: value}); several series get a legend. Every bar has a tooltip
    (``<title>``) with the exact value.
    """
    series: list[str] = []
    for _, values in rows:
        series.extend(s for s in values if s not in series)
    color = {s: _PALETTE[i % len(_PALETTE)] for i, s in enumerate(series)}
    label_w, value_w, row_h, top = 150, 80, 20, 24
    legend_h = 18 if len(series) > 1 else 0
    bar_w = width - label_w - value_w
    height = top + legend_h + row_h * max(len(rows), 1) + 6
    biggest = max((sum(max(v, 0.0) for v in values.values()) for _, values in rows), default=0.0)
    scale = bar_w / biggest if biggest > 0 else 0.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f'<text x="0" y="14" style="font-weight:600">{_e(title)}</text>',
    ]
    x = label_w
    for s in series if legend_h else ():
        parts.append(f'<rect x="{x}" y="{top - 4}" width="10" height="10" fill="{color[s]}"/>')
        parts.append(f'<text x="{x + 14}" y="{top + 5}">{_e(s)}</text>')
        x += 24 + 7 * len(s)
    for i, (label, values) in enumerate(rows):
        y = top + legend_h + i * row_h
        shown = label if len(label) <= 24 else label[:23] + "…"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{_e(shown)}'
            f"<title>{_e(label)}</title></text>"
        )
        x = float(label_w)
        total = 0.0
        for s, v in values.items():
            v = max(v, 0.0)
            total += v
            w = v * scale
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
                f'fill="{color[s]}"><title>{_e(label)} · {_e(s)}: {_e(fmt(v))}</title></rect>'
            )
            x += w
        parts.append(f'<text x="{x + 4:.1f}" y="{y + 13}">{_e(fmt(total))}</text>')
    parts.append("</svg>")
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f'<figure class="plot" id="{_e(id_)}">{"".join(parts)}{cap}</figure>'


def _stages(report: dict) -> list[tuple[str, dict]]:
    """(label, model stats) for the input model and after every pass."""
    stages = [("(input)", report.get("input_model") or {})]
    stages += [(f"{i + 1}. {p['name']}", p["after"]) for i, p in enumerate(report["passes"])]
    return stages


def _plots(report: dict) -> str:
    stages = _stages(report)
    figures = [
        bar_chart(
            "Parameter bytes by dtype",
            [(label, dict(stats.get("parameter_bytes") or {})) for label, stats in stages],
            _bytes,
            id_="plot-bytes",
            caption="initializer bytes of the model before the passes and after each",
        ),
        bar_chart(
            "Estimated FLOPs per run",
            [(label, {"FLOPs": float(stats.get("flops", 0))}) for label, stats in stages],
            _count,
            id_="plot-flops",
            caption="2 × multiply-adds of MatMul/Gemm/Conv (and quantized forms)",
        ),
        bar_chart(
            "Parameters",
            [(label, {"elements": float(stats.get("parameters", 0))}) for label, stats in stages],
            _count,
            id_="plot-params",
        ),
    ]
    if report["passes"]:
        figures.append(
            bar_chart(
                "Time per pass",
                [(p["name"], {"seconds": p["seconds"]}) for p in report["passes"]],
                _ms,
                id_="plot-time",
            )
        )
    layers = (report.get("accuracy") or {}).get("layers") or []
    if layers:
        key = "output_error" if layers[0].get("output_error") is not None else "weight_error"
        worst = sorted(layers, key=lambda r: r.get(key) or 0.0, reverse=True)[:_MAX_LAYER_BARS]
        shown = f"the {len(worst)} largest of {len(layers)}" if len(worst) < len(layers) else "all"
        figures.append(
            bar_chart(
                f"Quantization error per layer ({key.replace('_', ' ')})",
                [(r["node"], {key: float(r.get(key) or 0.0)}) for r in worst],
                _err,
                id_="plot-layers",
                caption=f"{shown} quantized layers, largest first",
            )
        )
    return "".join(figures)


# ------------------------------------------------------------------------------------- sections
def _summary(report: dict, files: dict[str, int]) -> str:
    before = report.get("input_model") or {}
    after = report.get("output_model") or {}
    target = report.get("target") or {}
    b0, b1 = before.get("total_parameter_bytes", 0), after.get("total_parameter_bytes", 0)
    ratio = f" ({b1 / b0:.3f}×)" if b0 else ""
    rows = [
        ("model", _e(report.get("model"))),
        ("target", _e(" ".join(str(target.get(k, "")) for k in ("kind", "mcpu", "arch")).strip())),
        ("pipeline", _e(report.get("pipeline") or "(none)")),
        ("parameter bytes", f"{_bytes(b0)} → {_bytes(b1)}{ratio}"),
        ("nodes", f"{before.get('nodes', '—')} → {after.get('nodes', '—')}"),
        ("estimated FLOPs", f"{_count(before.get('flops'))} → {_count(after.get('flops'))}"),
        ("artifact files", _e(_bytes(sum(files.values())))),
        ("latency", _latency_text(report.get("latency") or {})),
        ("accuracy", _accuracy_text(report.get("accuracy") or {})),
        ("verification", _verification_text(report.get("verification") or {})),
    ]
    return _kv(rows, "summary")


def _latency_text(latency: dict) -> str:
    if not latency.get("measured"):
        return f'<span class="muted">not measured: {_e(latency.get("reason", "—"))}</span>'
    medians = latency["medians_ms"]
    ratio = (latency.get("ratios_to_onnxruntime") or {}).get("compiler")
    parts = [f"compiler {medians['compiler']:.3f} ms"]
    if "onnxruntime" in medians:
        parts.append(f"onnxruntime {medians['onnxruntime']:.3f} ms")
    text = ", ".join(parts)
    if ratio is not None:
        text += f" — <b>{ratio:.2f}×</b> onnxruntime"
    return f"{text} <span class='muted'>(medians of {latency['runs']} runs)</span>"


def _accuracy_text(accuracy: dict) -> str:
    if "error_vs_input_model" in accuracy:
        return (
            f"normalized max error {_err(accuracy['error_vs_input_model'])}, relative RMS "
            f"{_err(accuracy['relative_rms_vs_input_model'])} against the input model "
            f"<span class='muted'>({_e(accuracy.get('inputs', ''))})</span>"
        )
    if accuracy.get("lossy_passes_applied"):
        return '<span class="muted">lossy passes ran; not measured (verification off)</span>'
    return "no lossy pass changed the model"


def _verification_text(ver: dict) -> str:
    if not ver.get("passed"):
        return f'<span class="muted">not verified: {_e(ver.get("reason", "disabled"))}</span>'
    value = ver.get("relative_rms", ver.get("max_error"))
    return (
        f'<span class="good">passed</span>: {_e(ver.get("metric", ""))} {_err(value)} '
        f"(tolerance {_err(ver.get('tolerance'))}) against {_e(ver.get('reference', ''))}"
    )


def _dtypes(parameter_bytes: dict[str, int]) -> str:
    return ", ".join(f"{_e(k)} {_bytes(v)}" for k, v in parameter_bytes.items()) or "—"


def _passes_table(report: dict) -> str:
    rows = []
    first = report.get("input_model") or {}
    rows.append(
        [
            "(input)",
            "",
            str(first.get("nodes", "—")),
            _count(first.get("parameters")),
            _dtypes(first.get("parameter_bytes") or {}),
            _bytes(first.get("total_parameter_bytes")),
            _count(first.get("flops")),
            "",
            "",
            "",
            "",
        ]
    )
    for p in report["passes"]:
        after = p["after"]
        status = ""
        if p.get("rolled_back"):
            status = '<span class="bad">ROLLED BACK</span>'
        elif p.get("kept_in_float"):
            status = f"{len(p['kept_in_float'])} layers kept in float"
        rows.append(
            [
                _e(p["name"]),
                "yes" if p["modified"] else "no",
                str(after["nodes"]),
                _count(after.get("parameters")),
                _dtypes(after.get("parameter_bytes") or {}),
                _bytes(after.get("total_parameter_bytes")),
                _count(after.get("flops")),
                _ms(p.get("seconds")),
                _err(p.get("error")),
                _err(p.get("error_vs_input_model")),
                status,
            ]
        )
    headers = (
        "pass",
        "changed",
        "nodes",
        "parameters",
        "bytes by dtype",
        "bytes",
        "FLOPs",
        "time",
        "error vs before",
        "error vs input",
        "",
    )
    note = (
        "<p class='muted'>Errors are normalized max errors in onnxruntime: <i>vs before</i> "
        "compares the pass's result with the model before it (measured for lossy passes), "
        "<i>vs input</i> with the input model (lossy passes, and every pass with "
        "--check-numerics); — where nothing was measured.</p>"
    )
    return _table(headers, rows, left=2, id_="passes") + note


def _fusion(report: dict) -> str:
    coverage = report.get("fusion")
    if coverage is None:
        return (
            "<p id='fusion' class='muted'>The fuse pass did not run on this model "
            "(pipeline O2 runs it).</p>"
        )
    fused = [[_e(rule), str(n)] for rule, n in (coverage.get("fused") or {}).items()]
    unfused = [[_e(what), str(n)] for what, n in (coverage.get("unfused") or {}).items()]
    return (
        "<div id='fusion'>"
        + _table(("rule", "fused"), fused or [["none", ""]])
        + _table(("left unfused (and why)", "nodes"), unfused or [["nothing", ""]])
        + "</div>"
    )


def _accuracy(report: dict) -> str:
    accuracy = report.get("accuracy") or {}
    parts = [f"<p>{_accuracy_text(accuracy)}</p>"]
    if accuracy.get("budget") is not None:
        parts.append(f"<p>budget per lossy pass: {_err(accuracy['budget'])}</p>")
    records = accuracy.get("passes")
    if records is None:  # no budget: the per-pass measurements from the pass table
        records = [
            {
                "pass_name": p["name"],
                "error": p["error"],
                "total_error": p.get("error_vs_input_model"),
                "rolled_back": p.get("rolled_back", False),
                "kept_in_float": p.get("kept_in_float", []),
            }
            for p in report["passes"]
            if p.get("error") is not None
        ]
    if records:
        rows = [
            [
                _e(r["pass_name"]),
                _err(r["error"]),
                _err(r.get("total_error")),
                str(len(r.get("kept_in_float") or [])),
                '<span class="bad">ROLLED BACK</span>' if r["rolled_back"] else "kept",
            ]
            for r in records
        ]
        parts.append(
            _table(
                ("lossy pass", "error vs before", "error vs input", "layers in float", ""),
                rows,
                id_="accuracy-passes",
            )
        )
    layers = accuracy.get("layers") or []
    if layers:
        rows = [
            [
                _e(r.get("node")),
                _e(r.get("op", "")),
                _e(r.get("weight", "")),
                _e("×".join(str(d) for d in r.get("shape") or [])),
                _e(r.get("bits", "")),
                _e(r.get("group", "")),
                _e(r.get("method", "")),
                _err(r.get("weight_error")),
                _err(r.get("output_error")),
            ]
            for r in layers
        ]
        headers = ("node", "op", "weight", "shape", "bits", "group", "method")
        parts.append(_table((*headers, "weight error", "output error"), rows, left=4, id_="layers"))
    for family in ("prune", "lowrank", "cast"):
        if accuracy.get(family):
            parts.append(f"<p>{_e(family)}: {len(accuracy[family])} weights recorded</p>")
    return "<div id='accuracy'>" + "".join(parts) + "</div>"


def _verification(report: dict) -> str:
    ver = report.get("verification") or {}
    parts = [f"<p>{_verification_text(ver)}</p>"]
    errors = ver.get("errors") or {}
    if errors:
        parts.append(_table(("output", "error"), [[_e(k), _err(v)] for k, v in errors.items()]))
    return "".join(parts)


def _files(report: dict, files: dict[str, int]) -> str:
    rows = [[_e(name), _bytes(size)] for name, size in sorted(files.items())]
    timings = [[_e(k), f"{v:.2f} s"] for k, v in (report.get("timings_seconds") or {}).items()]
    return _table(("file", "size"), rows) + _table(("build step", "time"), timings)


def render_report(report: dict[str, Any], files: dict[str, int] | None = None) -> str:
    """The HTML page for a build report (``report.json``'s content).

    ``files``: the artifact's file names and sizes, for the summary and the file table.
    """
    files = files or {}
    title = f"Build report: {report.get('model', '')}"
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{_e(title)}</h1>",
            f'<p class="sub">pipeline <code>{_e(report.get("pipeline") or "(none)")}</code></p>',
            "<h2>Summary</h2>",
            _summary(report, files),
            "<h2>Passes</h2>",
            _passes_table(report),
            "<h2>Plots</h2>",
            f'<div id="plots">{_plots(report)}</div>',
            "<h2>Fusion coverage</h2>",
            _fusion(report),
            "<h2>Accuracy</h2>",
            _accuracy(report),
            "<h2>Verification against onnxruntime</h2>",
            _verification(report),
            "<h2>Files and build steps</h2>",
            _files(report, files),
            "</body></html>",
            "",
        ]
    )
