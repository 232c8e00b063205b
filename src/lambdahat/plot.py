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
    "plot_loss_traces", "plot_running_llc", "plot_summary", "plot_calibration_map", "plot_calibration_curves",
    "plot_trajectory",
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

_VERDICT_STYLE = {
    # verdict → (colour, marker, legend label)
    "healthy": ("#2ca02c", "o", "healthy: every check passed"),
    "sound": ("#bcbd22", "o", "sound setting, chains too short (R̂ / ESS)"),
    "failed": ("#d62728", "s", "a setting check failed"),
    "diverged": ("0.35", "X", "diverged"),
}


def _verdict_of(rows: list[dict]) -> str:
    """One verdict for a setting over its models: the worst of theirs."""
    if any("divergence" in row["failed"].split(";") for row in rows):
        return "diverged"
    if not all(row["sound"] for row in rows):
        return "failed"
    return "healthy" if all(row["healthy"] for row in rows) else "sound"


def _settings(calibration: Any, model: str | None) -> dict[tuple[float, float, float], list[dict]]:
    """Rows grouped by (ε, nβ, γ), the nβ → 0 control left out; one model's rows if ``model`` is given."""
    groups: dict[tuple[float, float, float], list[dict]] = {}
    for row in calibration.rows:
        if row["stage"] == "control" or (model is not None and row["model"] != model):
            continue
        groups.setdefault((row["step_size"], row["nbeta"], row["localization"]), []).append(row)
    return groups


def _mean_llc(rows: list[dict]) -> float:
    values = [row["llc"] for row in rows if math.isfinite(row["llc"])]
    return float(np.mean(values)) if values else math.nan


def plot_calibration_map(calibration: Any, model: str | None = None) -> Figure:
    """The calibration map: λ̂ and the verdict of every setting, over step size × nβ, one panel per γ.

    Each setting of a :class:`~lambdahat.calibrate.CalibrationResult` is a marker at (ε, nβ) on
    log axes, coloured by its verdict over all models (or over ``model`` alone): healthy, sound
    (the setting checks passed but the short chains failed R̂ or ESS), failed, or diverged;
    labelled with λ̂ (the mean over models). The recommended setting is ringed. The nβ → 0
    control run is left out.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    groups = _settings(calibration, model)
    gammas = sorted({key[2] for key in groups})
    if not gammas:
        raise ValueError("calibration has no runs to map.")
    fig = Figure(figsize=(5.2 * len(gammas) + 0.6, 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(gammas), sharey=True, squeeze=False)[0])
    rec = calibration.recommended
    for ax, gamma in zip(axes, gammas):
        for (step, nbeta, g), rows in sorted(groups.items()):
            if g != gamma:
                continue
            color, marker, _ = _VERDICT_STYLE[_verdict_of(rows)]
            ax.scatter([step], [nbeta], s=110, color=color, marker=marker, zorder=3, edgecolors="black", linewidths=0.5)
            llc = _mean_llc(rows)
            below = rows[0]["stage"] == "fine"  # fine steps sit close to coarse ones: label them underneath
            ax.annotate("—" if math.isnan(llc) else f"{llc:.3g}", (step, nbeta), textcoords="offset points",
                        xytext=(0, -17 if below else 9), ha="center", fontsize="small")
            if rec is not None and (step, nbeta, g) == (rec["step_size"], rec["nbeta"], rec["localization"]):
                ax.scatter([step], [nbeta], s=420, facecolors="none", edgecolors="black", linewidths=1.8, zorder=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.margins(x=0.15, y=0.35)
        ax.set_xlabel("step size ε")
        ax.set_title(f"γ = {gamma:g}")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("nβ")
    handles = [Line2D([], [], ls="", marker=m, color=c, markeredgecolor="black", markersize=9, label=label)
               for c, m, label in _VERDICT_STYLE.values()]
    if rec is not None:
        handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="black",
                              markersize=15, label="recommended"))
    axes[-1].legend(handles=handles, loc="best", fontsize="small", framealpha=0.9)
    who = f" ({model})" if model is not None else (f" (worst of {len(calibration.models)} models)" if len(calibration.models) > 1 else "")
    fig.suptitle(f"Calibration map: λ̂ and verdict per setting{who}")
    return fig


def plot_calibration_curves(calibration: Any, ax: Axes | None = None) -> Figure:
    """λ̂ ± MCSE against the step size, one line per (model, nβ, γ), markers coloured by verdict.

    Where the curve is flat the estimate no longer depends on ε; the recommended ε is marked by a
    vertical line, and each model's truth (when the calibration was given one) by a dashed line.
    """
    ax = _axes(ax, figsize=(7.0, 4.6))
    lines: dict[tuple[str, float, float], list[dict]] = {}
    for row in calibration.rows:
        if row["stage"] != "control":
            lines.setdefault((row["model"], row["nbeta"], row["localization"]), []).append(row)
    colors = _colors(len(lines))
    in_view = []
    for color, ((model, nbeta, gamma), rows) in zip(colors, sorted(lines.items())):
        rows = sorted(rows, key=lambda r: r["step_size"])
        steps = np.array([r["step_size"] for r in rows])
        llc = np.array([r["llc"] for r in rows])
        mcse = np.array([r["mcse"] for r in rows])
        name = (f"{model}, " if len(calibration.models) > 1 else "") + f"nβ = {nbeta:.4g}, γ = {gamma:g}"
        ax.errorbar(steps, llc, yerr=np.where(np.isfinite(mcse), mcse, 0), color=color, lw=1.2, capsize=3, label=name)
        for r in rows:
            c, m, _ = _VERDICT_STYLE[_verdict_of([r])]
            ax.scatter([r["step_size"]], [r["llc"]], color=c, marker=m, s=45, zorder=3, edgecolors="black", linewidths=0.4)
        in_view.append(llc)
        truths = {r["truth"] for r in rows if r["truth"] is not None}
        for value in truths:
            ax.axhline(value, color=color, ls="--", lw=1, alpha=0.8)
            in_view.append(np.array([value]))
    rec = calibration.recommended
    if rec is not None:
        ax.axvline(rec["step_size"], color="black", ls=":", lw=1.2, label=f"recommended ε = {rec['step_size']:.3g}")
    ax.set_xscale("log")
    limits = _padded_limits(np.concatenate(in_view)) if in_view else None
    if limits is not None:
        ax.set_ylim(*limits)
    ax.set_xlabel("step size ε")
    ax.set_ylabel("λ̂ (short calibration chains)")
    ax.set_title("λ̂ against step size (dashed: truth)")
    ax.legend(loc="best", fontsize="small", framealpha=0.9)
    return ax.figure


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
