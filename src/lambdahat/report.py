"""A one-page report of a run or a calibration: one self-contained HTML file.

:func:`write_report` takes an :class:`~lambdahat.LLCResult` or a
:class:`~lambdahat.calibrate.CalibrationResult` and writes the numbers, the health verdicts, the
configuration and the figures (embedded as base64 PNG, so the file can be mailed or archived
alone: it links to nothing). Like :mod:`lambdahat.plot`, it sits at the edge: it computes nothing
that the result does not already hold.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from . import tables

__all__ = ["write_report", "render_report"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.headline { font-size: 1.25em; margin: 0.4em 0 1em; }
.ok { color: #1a7f37; } .fail { color: #b42318; font-weight: 600; } .skip { color: #777; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.recommended td { background: #eef7ee; font-weight: 600; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
.rule { background: #f7f7f2; border-left: 4px solid #bcbd22; padding: 0.6em 1em; }
footer { margin-top: 2em; color: #777; font-size: 0.85em; }
"""


def _figure_html(fig: Any, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value: Any, spec: str = ".4g") -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or isinstance(value, float):
        return tables.fmt(value, spec, missing="–")
    return html.escape(str(value))


def _checks_html(checks: list[Any]) -> str:
    rows = []
    for check in checks:
        css, mark = ("skip", "skipped") if check.skipped else (("ok", "passed") if check.ok else ("fail", "FAILED"))
        rows.append(
            f'<tr><td>{html.escape(check.name)}</td><td class="{css}">{mark}</td>'
            f'<td class="num">{_fmt(check.value, ".3g")}</td><td>{html.escape(check.verdict)}</td></tr>'
        )
    return "<table><tr><th>check</th><th>result</th><th>value</th><th>verdict</th></tr>" + "".join(rows) + "</table>"


def _config_html(config: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v, default=str) if isinstance(v, (list, dict)) else str(v))}</td></tr>"
        for k, v in config.items()
    )
    return f"<table>{rows}</table>"


def _truth_float(truth: Any) -> float | None:
    return None if truth is None else float(getattr(truth, "value", truth))


def _result_section(result: Any, truth: Any = None, title: str | None = None, level: int = 2) -> str:
    from .plot import plot_summary

    checks = result.checks
    failing = [c for c in checks if not c.ok]
    if math.isfinite(result.llc_mean):
        headline = f"λ̂ = {result.llc_mean:.4g} ± {result.llc_mcse:.2g} (MCSE)"
    else:
        headline = "no estimate: every chain diverged"
    value = _truth_float(truth)
    if value is not None:
        headline += f" · truth λ = {html.escape(str(getattr(truth, 'value', truth)))}"
        if math.isfinite(result.llc_mean) and value != 0:
            headline += f" · relative error {100 * (result.llc_mean - value) / value:+.1f}%"
    verdict = (
        '<p class="ok">All health checks passed.</p>'
        if not failing
        else f'<p class="fail">{len(failing)} of {len(checks)} health checks failed:</p><ul>'
        + "".join(f"<li><b>{html.escape(c.name)}</b>: {html.escape(c.verdict)}</li>" for c in failing)
        + "</ul>"
    )
    numbers = [
        ("λ̂ (mean over healthy chains)", result.llc_mean),
        ("MCSE", result.llc_mcse),
        ("std of one chain's estimate", result.llc_std),
        ("per-chain λ̂", ", ".join("diverged" if math.isnan(v) else f"{v:.4g}" for v in result.llc_per_chain)),
        ("L_n(w*)", result.init_loss),
        ("nβ", result.nbeta),
        ("effective sample size", result.ess),
        ("diverged chains", ", ".join(f"chain {c} at step {s}" for c, s in result.diverged.items()) or "none"),
        ("wall time (s)", result.wall_time),
    ]
    numbers_html = "<table>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td class='num'>{_fmt(v)}</td></tr>" for k, v in numbers
    ) + "</table>"
    figure = plot_summary(result, truth=truth, title=title)
    h = f"h{level}"
    return (
        f'<p class="headline">{headline}</p>{verdict}'
        f"<{h}>Loss traces and running λ̂</{h}>{_figure_html(figure, 'loss traces and running LLC')}"
        f"<{h}>Numbers</{h}>{numbers_html}"
        f"<{h}>Health checks</{h}>{_checks_html(checks)}"
        f"<{h}>Configuration</{h}>{_config_html(result.config)}"
    )


_CALIBRATION_COLUMNS = ("stage", "model", "step_size", "nbeta", "localization", "num_burnin_steps", "num_draws", "llc",
                        "mcse", "rel_error", "ess", "mala_accept", "certified", "failed", "seconds")


def _calibration_section(calibration: Any) -> str:
    from .plot import plot_calibration

    rec = calibration.recommended
    common = [row for row in calibration.rows if row["stage"] == "common"]
    if not common:
        verdict = '<p class="skip">Not verified: no model was run again at this setting (verify=False).</p>'
    elif calibration.certified:
        verdict = f'<p class="ok">Certified on every model ({len(common)} of {len(common)}).</p>'
    else:
        failing = [row for row in common if not row["certified"]]
        verdict = (
            f'<p class="fail">NOT certified on {len(failing)} of {len(common)} models:</p><ul>'
            + "".join(f"<li><b>{html.escape(row['model'])}</b> ({html.escape(', '.join(row['failed']))}): "
                      f"{html.escape(row['verdict'])}</li>" for row in failing)
            + "</ul>"
        )
    head = (
        f'<p class="headline">Recommended for every model: step_size = {rec.step_size:.3g}, nbeta = {rec.nbeta:.6g}, '
        f"localization = {rec.localization:g}, num_burnin_steps = {rec.num_burnin_steps}, "
        f"num_draws = {rec.num_draws}</p>{verdict}"
        f'<p class="rule"><b>Rule.</b> {html.escape(calibration.rule)}</p>'
    )
    columns = list(_CALIBRATION_COLUMNS)
    if all(row["rel_error"] is None for row in calibration.rows):
        columns.remove("rel_error")
    body = []
    for row in calibration.rows:
        cells = []
        for col in columns:
            v = row[col]
            if col == "rel_error" and v is not None:
                text = f"{100 * v:+.1f}%"
            elif col == "failed":
                text = "–" if not v else html.escape(", ".join(v))
            elif col == "certified":
                text = '<span class="ok">yes</span>' if v else '<span class="fail">no</span>'
            else:
                text = _fmt(v, ".3g" if col in ("step_size", "mcse") else ".4g")
            numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
            cells.append(f"<td{' class=num' if numeric else ''}>{text}</td>")
        css = " class=recommended" if row["stage"] == "common" else ""
        body.append(f"<tr{css}>" + "".join(cells) + "</tr>")
    table = "<table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>" + "".join(body) + "</table>"
    figure = _figure_html(plot_calibration(calibration), "LLC per model at its own and at the common setting")
    runs = ""
    for model, result in calibration.recommended_results().items():
        truth = next((r["truth"] for r in calibration.rows if r["model"] == model and r["truth"] is not None), None)
        runs += f"<h3>{html.escape(model)}</h3>" + _result_section(result, truth=truth, title=model, level=4)
    return (
        f"{head}<h2>Each model at its own and at the common setting</h2>{figure}"
        f"<h2>Every run</h2><p>stage <i>adaptive</i>: the model's own warm-up; <i>common</i>: the recommended "
        f"setting (highlighted).</p>{table}"
        + (f"<h2>Each model at the recommended setting</h2>{runs}" if runs else "")
        + "<h2>The recommended setting</h2><p>Pass it as "
        f"<code>estimate_llc(model, data, loss, **cal.recommended)</code>.</p>{_config_html(rec.to_dict())}"
    )


def render_report(obj: Any, *, truth: Any = None, title: str | None = None) -> str:
    """The report of an ``LLCResult`` or a ``CalibrationResult`` as an HTML string."""
    from .calibrate import CalibrationResult
    from .estimate import LLCResult

    if isinstance(obj, CalibrationResult):
        title = title or "LLC calibration"
        body = _calibration_section(obj)
    elif isinstance(obj, LLCResult):
        title = title or "LLC estimate"
        body = _result_section(obj, truth=truth, title=None)
    else:
        raise TypeError(f"write_report takes an LLCResult or a CalibrationResult, got {type(obj).__name__}.")
    from . import __version__

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}"
        f"<footer>lambdahat {__version__} · {stamp} · λ̂ = nβ (E[L_n(w)] − L_n(w*)), Lau et al., arXiv 2308.12108</footer>"
        "</body></html>\n"
    )


def write_report(obj: Any, path: str | Path, *, truth: Any = None, title: str | None = None) -> Path:
    """Write the HTML report of ``obj`` (an ``LLCResult`` or a ``CalibrationResult``) to ``path``.

    ``truth`` (a number or ``LearningCoefficient``) adds the error against it for an LLCResult;
    a calibration carries its own. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(obj, truth=truth, title=title), encoding="utf-8")
    return path
