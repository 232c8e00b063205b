"""Figures of an LLC estimate: the loss traces and the running λ̂.

Each function takes an :class:`~lambdahat.LLCResult` and returns a matplotlib ``Figure``; nothing is
shown or saved here. Figures are built with ``matplotlib.figure.Figure`` rather than ``pyplot``,
so no GUI backend is needed and no global figure state is touched; matplotlib is imported only
when a plot is made.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .estimate import LLCResult

__all__ = [
    "plot_loss_traces", "plot_running_llc", "plot_summary", "plot_calibration", "plot_trajectory",
    "plot_susceptibilities",
]


def _axes(ax: Axes | None, figsize: tuple[float, float] = (6.4, 4.5)) -> Axes:
    if ax is not None:
        return ax
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained").add_subplot()


def _colors(num: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(c % 10) for c in range(num)]


def _truth_text(truth: Any) -> str:
    """A truth given as a ``LearningCoefficient``, a ``Fraction`` or a number, as short text."""
    value = getattr(truth, "value", truth)
    return str(value) if not isinstance(value, float) else f"{value:.4g}"


def _padded_limits(values: np.ndarray, pad: float = 0.08) -> tuple[float, float] | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high = float(values.min()), float(values.max())
    span = high - low or max(abs(high), 1.0) * 0.1
    return low - pad * span, high + pad * span


def _finish(
    ax: Axes, y_limits: tuple[float, float] | None, x_max: float, xlabel: str, ylabel: str, title: str
) -> Figure:
    """Limits, labels, title and legend shared by both panels."""
    if y_limits is not None:
        ax.set_ylim(*y_limits)
    ax.set_xlim(0, x_max)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small", framealpha=0.9)
    return ax.figure


def plot_loss_traces(result: LLCResult, ax: Axes | None = None) -> Figure:
    """The minibatch loss L_B(w_t) of every chain against the step, burn-in included.

    The burn-in is shaded, L_n(w*) is a black horizontal line, and a chain that diverged is
    marked by a dotted vertical line at the step where its loss stopped being finite. The y-range
    follows the healthy chains, so one exploding chain does not flatten the others.
    A healthy run rises from L_n(w*), then plateaus above it.
    """
    ax = _axes(ax)
    trace = result.trace
    losses = np.asarray(trace.arrays["loss"], dtype=float)
    num_chains, num_steps = losses.shape
    steps = np.arange(num_steps)
    colors = _colors(num_chains)
    diverged = trace.diverged

    if trace.num_burnin_steps > 0:
        ax.axvspan(0, trace.num_burnin_steps, color="0.9", zorder=0, label="burn-in")
    for c in range(num_chains):
        label = f"chain {c}" + (f" (diverged at step {diverged[c]})" if c in diverged else "")
        # The first non-finite value is blanked too, so a diverged chain ends at its last real value.
        ax.plot(steps, np.where(np.isfinite(losses[c]), losses[c], np.nan), color=colors[c], lw=0.7, alpha=0.8,
                label=label)
        if c in diverged:
            ax.axvline(diverged[c], color=colors[c], ls=":", lw=1.5)
    ax.axhline(result.init_loss, color="black", lw=1.2, label=f"$L_n(w^*)$ = {result.init_loss:.4g}")

    healthy = [c for c in range(num_chains) if c not in diverged]
    shown = losses[healthy] if healthy else losses
    limits = _padded_limits(np.append(shown.ravel(), result.init_loss))
    return _finish(ax, limits, max(num_steps - 1, 1), "step", "minibatch loss $L_B(w_t)$", "Loss traces")


def plot_running_llc(result: LLCResult, truth: Any = None, ax: Axes | None = None) -> Figure:
    """λ̂ after each draw (nβ times the running mean of L − L_n(w*)), per chain and their mean.

    Chains that diverged are left out (and named in the legend), as they are from the estimate;
    the mean is over the others, and its end value is drawn with a ±MCSE band.
    ``truth`` (a ``LearningCoefficient`` or a number) is drawn as a dashed line. Running λ̂ still
    rising at the right edge means the chains are too short.
    """
    ax = _axes(ax)
    running = np.asarray(result.running_llc(), dtype=float)
    num_chains, num_draws = running.shape
    draws = np.arange(1, num_draws + 1)
    colors = _colors(num_chains)
    diverged = result.diverged

    # A diverged chain's running mean ends in the explosion before the NaN: not drawn, only named.
    healthy = [c for c in range(num_chains) if c not in diverged]
    for c in healthy:
        ax.plot(draws, running[c], color=colors[c], lw=0.9, alpha=0.6, label=f"chain {c}")
    if diverged:
        names = ", ".join(map(str, diverged))
        ax.plot([], [], " ", label=f"chain{'s' if len(diverged) > 1 else ''} {names} diverged: not shown")
    if not healthy:
        ax.text(0.5, 0.3, "every chain diverged: no estimate", transform=ax.transAxes, ha="center", va="center",
                bbox=dict(facecolor="white", edgecolor="0.7"))

    # The first draws average only a handful of noisy losses; leave them out of the y-range.
    in_view = [running[healthy, num_draws // 10 :].ravel()]
    if healthy and num_draws > 0:
        mean = running[healthy].mean(axis=0)
        ax.plot(draws, mean, color="black", lw=2, label="mean of chains")
        end, mcse = float(mean[-1]), result.llc_mcse
        if math.isfinite(mcse):
            ax.axhspan(end - mcse, end + mcse, color="black", alpha=0.12, lw=0,
                       label=f"end value {end:.4g} ± {mcse:.2g} (MCSE)")
            ax.errorbar([num_draws], [end], yerr=[mcse], color="black", capsize=4, lw=1.5)
            in_view.append(np.array([end - mcse, end + mcse]))
    if truth is not None:
        ax.axhline(float(truth), color="crimson", ls="--", lw=1.5, label=f"truth λ = {_truth_text(truth)}")
        in_view.append(np.array([float(truth)]))

    limits = _padded_limits(np.concatenate(in_view))
    return _finish(ax, limits, max(num_draws, 1) * 1.02, "draw (after burn-in)", "running λ̂", "Running LLC estimate")


def plot_summary(result: LLCResult, truth: Any = None, title: str | None = None) -> Figure:
    """Loss traces and running λ̂ side by side, titled with λ̂ ± MCSE (and the truth, if given).

    ``title`` (e.g. the task's name) is put in front of the numbers.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    plot_loss_traces(result, ax=left)
    plot_running_llc(result, truth=truth, ax=right)
    if math.isfinite(result.llc_mean):
        headline = f"λ̂ = {result.llc_mean:.4g}"
        if math.isfinite(result.llc_mcse):
            headline += f" ± {result.llc_mcse:.2g} (MCSE)"
    else:
        headline = "no estimate"
    if truth is not None:
        headline += f"   ·   truth λ = {_truth_text(truth)}"
        if math.isfinite(result.llc_mean) and float(truth) != 0:
            headline += f" (relative error {100 * (result.llc_mean - float(truth)) / float(truth):+.1f}%)"
    if result.diverged:
        headline += f"   ·   {len(result.diverged)} of {len(result.llc_per_chain)} chains diverged"
    fig.suptitle(f"{title}: {headline}" if title else headline)
    return fig


# --- calibration -----------------------------------------------------------------------------

_CERTIFIED, _NOT_CERTIFIED, _TRUTH = "#2ca02c", "#d62728", "crimson"
#: stage → (marker, x offset within a model's slot, legend label)
_STAGE_STYLE = {
    "adaptive": ("o", -0.15, "adaptive: the model's own warm-up"),
    "common": ("D", 0.15, "common: the recommended setting"),
}


def _short_failed(failed: list[str], limit: int = 3) -> str:
    return ", ".join(failed[:limit]) + (", …" if len(failed) > limit else "")


def plot_calibration(calibration: Any) -> Figure:
    """What :func:`lambdahat.calibrate` found: λ̂ per model at its own and at the common setting,
    and the step size each model's warm-up chose.

    Left: λ̂ ± MCSE of every model, at the setting its adaptive run chose (circle) and at the one
    recommended setting (diamond), green where the run is certified and red where it is not (the
    failed checks are written beside it); each model's truth, when the calibration was given one,
    is a dashed segment. The two λ̂ of a model need not agree: the common setting has the
    smallest ε and γ of all models, the longest draws and a burn-in long enough at that ε. Right: the ε each model's warm-up
    chose (log scale) with its γ and chain length, and the recommended ε (the smallest) as a
    dotted line.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    models = list(calibration.models)
    if not calibration.rows:
        raise ValueError("calibration has no runs to plot.")
    fig = Figure(figsize=(max(10.0, 5.0 + 1.6 * len(models)), 5.0), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    slot = {model: i for i, model in enumerate(models)}
    in_view = []
    for row in calibration.rows:
        marker, offset, _ = _STAGE_STYLE[row["stage"]]
        x = slot[row["model"]] + offset
        color = _CERTIFIED if row["certified"] else _NOT_CERTIFIED
        llc, mcse = row["llc"], row["mcse"]
        if llc is None or not math.isfinite(llc):
            left.annotate("no estimate", (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 4),
                          textcoords="offset points", ha="center", fontsize="x-small", color=color, rotation=90)
            continue
        error = mcse if mcse is not None and math.isfinite(mcse) else 0.0
        left.errorbar([x], [llc], yerr=[error], fmt=marker, color=color, markeredgecolor="black", markersize=8,
                      capsize=4, lw=1.4, zorder=3)
        in_view.append(np.array([llc - error, llc + error]))
        if not row["certified"]:
            left.annotate(_short_failed(row["failed"]), (x, llc), xytext=(6, -3), textcoords="offset points",
                          fontsize="x-small", color=color, rotation=90, va="top")
    for model in models:
        truth = next((r["truth"] for r in calibration.rows if r["model"] == model and r["truth"] is not None), None)
        if truth is not None:
            i = slot[model]
            left.plot([i - 0.35, i + 0.35], [truth, truth], ls="--", color=_TRUTH, lw=1.5)
            in_view.append(np.array([truth]))
    limits = _padded_limits(np.concatenate(in_view), pad=0.15) if in_view else None
    if limits is not None:
        left.set_ylim(*limits)
    left.set_xticks(range(len(models)), models, rotation=20 if len(models) > 3 else 0)
    left.set_xlim(-0.6, len(models) - 0.4)
    left.set_ylabel("λ̂ ± MCSE")
    left.set_title("λ̂ at each model's own setting and at the common one")
    handles = [Line2D([], [], ls="", marker=m, color="0.6", markeredgecolor="black", markersize=8, label=label)
               for m, _, label in _STAGE_STYLE.values()]
    handles += [Line2D([], [], ls="", marker="s", color=_CERTIFIED, markersize=8, label="certified"),
                Line2D([], [], ls="", marker="s", color=_NOT_CERTIFIED, markersize=8, label="NOT certified")]
    if any(r["truth"] is not None for r in calibration.rows):
        handles.append(Line2D([], [], ls="--", color=_TRUTH, lw=1.5, label="truth λ"))
    left.legend(handles=handles, loc="best", fontsize="small", framealpha=0.9)

    rec = calibration.recommended
    adaptive = {r["model"]: r for r in calibration.rows if r["stage"] == "adaptive"}
    for model, row in adaptive.items():
        color = _CERTIFIED if row["certified"] else _NOT_CERTIFIED
        right.scatter([slot[model]], [row["step_size"]], s=70, color=color, edgecolors="black", zorder=3)
        right.annotate(f"γ = {row['localization']:g}\n{row['num_burnin_steps']} + {row['num_draws']}",
                       (slot[model], row["step_size"]), xytext=(0, 8), textcoords="offset points", ha="center",
                       fontsize="x-small")
    right.axhline(float(rec.step_size), color="black", ls=":", lw=1.2,
                  label=f"recommended ε = {float(rec.step_size):.3g} (the smallest)")
    right.set_yscale("log")
    right.set_xticks(range(len(models)), models, rotation=20 if len(models) > 3 else 0)
    right.set_xlim(-0.6, len(models) - 0.4)
    right.margins(y=0.3)
    right.set_ylabel("step size ε chosen by the warm-up")
    right.set_title("Each warm-up's ε, γ, burn-in + draws")
    right.legend(loc="best", fontsize="small", framealpha=0.9)

    common = [r for r in calibration.rows if r["stage"] == "common"]
    if not common:
        verdict = "not verified at the common setting"
    elif calibration.certified:
        verdict = f"certified on every model ({len(common)})"
    else:
        verdict = f"NOT certified on {sum(not r['certified'] for r in common)} of {len(common)} models"
    fig.suptitle(f"Calibration of {len(models)} model{'s' if len(models) > 1 else ''}: {verdict}\n"
                 f"recommended ε = {float(rec.step_size):.3g}, nβ = {float(rec.nbeta):.4g}, γ = {float(rec.localization):g}, "
                 f"{rec.num_burnin_steps} burn-in + {rec.num_draws} draws")
    return fig


# --- LLC over training ------------------------------------------------------------------------

_STAGE_COLORS = {"rising": "#d62728", "falling": "#1f77b4", "plateau": "0.6"}


def plot_trajectory(trajectory: Any, stages: Any = None, title: str | None = None, log_steps: bool | None = None) -> Figure:
    """λ̂ and L_n(w*) against training step, one panel each, with the stage boundaries marked.

    Top: λ̂ per checkpoint of a :class:`~lambdahat.trajectory.TrajectoryResult`, with a dark band of
    ±MCSE (the error of λ̂) and a light band of ±the spread of one chain's estimate; checkpoints
    that failed a health check are ringed in red; the smoothed curve of the stage detection is
    dashed. Both panels: each stage boundary of ``stages`` (default: ``trajectory.stages``) is a
    dotted vertical line, labelled with its kind, and plateau stages are shaded. ``log_steps``
    (default: as the stage detection had it) draws the step axis on a log scale.
    """
    from matplotlib.figure import Figure

    stages = trajectory.stages if stages is None else stages
    steps = trajectory.steps
    llc, mcse, std = (trajectory.column(name) for name in ("llc_mean", "llc_mcse", "llc_std"))
    init_loss = trajectory.column("init_loss")
    if log_steps is None:
        log_steps = bool(stages is not None and stages.settings.get("log_steps"))
    fig = Figure(figsize=(8.0, 6.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))

    top.fill_between(steps, llc - np.nan_to_num(std), llc + np.nan_to_num(std), color="C0", alpha=0.12, lw=0,
                     label="± std of a chain's λ̂")
    top.fill_between(steps, llc - np.nan_to_num(mcse), llc + np.nan_to_num(mcse), color="C0", alpha=0.35, lw=0,
                     label="± MCSE")
    top.plot(steps, llc, "o-", color="C0", ms=4, lw=1.5, label="λ̂")
    bad = np.array([not row["healthy"] for row in trajectory.rows], dtype=bool)
    if bad.any():
        top.scatter(steps[bad], llc[bad], s=90, facecolors="none", edgecolors="red", linewidths=1.5, zorder=4,
                    label="failed a health check")
    if stages is not None and len(stages.grid_steps):
        top.plot(stages.grid_steps, stages.smoothed, "--", color="black", lw=1, alpha=0.7, label="smoothed")
    bottom.plot(steps, init_loss, "o-", color="C2", ms=4, lw=1.5)

    if stages is not None:
        for stage in stages.stages:
            if stage.kind == "plateau":
                for ax in (top, bottom):
                    ax.axvspan(stage.start, stage.end, color=_STAGE_COLORS["plateau"], alpha=0.12, lw=0)
        for i, (step, kind) in enumerate(zip(stages.boundaries, stages.kinds)):
            for ax in (top, bottom):
                ax.axvline(step, color="black", ls=":", lw=1.2, label="stage boundary" if (ax is top and i == 0) else None)
            top.annotate(f"{kind.replace('_', ' ')}\n{step:.4g}", (step, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(2, -2), textcoords="offset points", ha="left", va="top", fontsize="x-small")
    if log_steps:
        top.set_xscale("symlog", linthresh=max(1.0, float(np.nanmin(steps[steps > 0])) if (steps > 0).any() else 1.0))
    limits = _padded_limits(np.concatenate([llc - np.nan_to_num(std), llc + np.nan_to_num(std)]))
    if limits is not None:
        top.set_ylim(*limits)
    top.set_ylabel("λ̂")
    top.legend(loc="best", fontsize="small", framealpha=0.9)
    bottom.set_ylabel("$L_n(w^*)$")
    bottom.set_xlabel("training step")
    count = len(stages.boundaries) if stages is not None else 0
    headline = f"LLC over training: {len(steps)} checkpoints" + (f", {count} stage boundaries" if stages is not None else "")
    fig.suptitle(f"{title}: {headline}" if title else headline)
    return fig


# --- susceptibilities --------------------------------------------------------------------------


def plot_susceptibilities(result: Any, ax: Axes | None = None, title: str | None = None,
                          labels: Any = None) -> Figure:
    """Heatmap of χ_C (:func:`lambdahat.susceptibilities`): one row per component, one column per
    probe sample (per token: per (sample, position), samples separated by white lines), on a
    diverging colour scale symmetric about 0 (blue: χ < 0, red: χ > 0).
    ``labels``: one text per probe sample for the columns (default: its index)."""
    values = np.asarray(result.values, dtype=float)
    k = values.shape[0]
    flat = values.reshape(k, -1)
    ax = _axes(ax, figsize=(min(16.0, 3.0 + 0.35 * flat.shape[1]), 1.6 + 0.45 * k))
    finite = np.abs(flat[np.isfinite(flat)])
    scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    image = ax.imshow(flat, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto", interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, label="χ_C")
    ax.set_yticks(range(k), result.components)
    samples = values.shape[1]
    if values.ndim == 3:
        tokens = values.shape[2]
        for i in range(1, samples):
            ax.axvline(i * tokens - 0.5, color="white", lw=1.5)
        ax.set_xticks([i * tokens + (tokens - 1) / 2 for i in range(samples)],
                      labels if labels is not None else range(samples))
        ax.set_xlabel("probe sample (each: its positions)")
    else:
        step = max(1, samples // 40)
        ticks = list(range(0, samples, step))
        ax.set_xticks(ticks, [labels[i] for i in ticks] if labels is not None else ticks)
        ax.set_xlabel("probe sample")
    ax.set_ylabel("component")
    headline = f"susceptibilities: {k} components × {samples} probe samples (nβ = {result.nbeta:.4g})"
    ax.set_title(f"{title}: {headline}" if title else headline)
    return ax.figure
