"""Developmental stages from an LLC curve: its critical points along training.

Hoogland et al. ("Loss Landscape Degeneracy and Stagewise Development in Transformers", arXiv
2402.02364) estimate the LLC at checkpoints along training, smooth the curve, and divide training
into stages at its *critical points*: where the slope of the smoothed LLC vanishes, because the
LLC reaches a local maximum or minimum or pauses on a plateau. Between two boundaries the LLC rises,
falls, or stays flat. This module implements that idea as an explicit procedure with every knob an
argument. The paper's own smoother and thresholds could not be checked here, so this is not a
reproduction of their code: read the boundaries as candidates to inspect, as the paper does.

The procedure, :func:`detect_stages`:

1. **Axis.** x = training step, or log₁₀(step + 1) with ``log_steps=True`` (the paper spaces
   checkpoints logarithmically and reads its curves against log step).
2. **Smoothing.** Local-linear regression with a tricube kernel K(u) = (1 − |u|³)³ of half-width h
   (Cleveland 1979; Fan & Gijbels 1996): at each grid point x₀, minimise
   Σᵢ K((xᵢ − x₀)/h) (yᵢ − a − b (xᵢ − x₀))²; a is the smoothed LLC and b its slope at x₀. It has no
   bias at the ends of the curve, handles uneven checkpoint spacing, reproduces straight lines
   exactly, and (the kernel being zero beyond h) a kink blurs over ±h only. h = ``smoothing`` ×
   (range of x), at least twice the largest gap between neighbouring checkpoints.
3. **Flat, rising, falling.** A grid point is *rising* where b > θ, *falling* where b < −θ, *flat*
   otherwise, with θ = max(τ, z·SE(b)): τ = ``flat_tol`` × (range of the smoothed LLC) / (range of
   x), and SE(b) = σ̂ √(Σᵢ cᵢ²), the standard error of the slope for b = Σᵢ cᵢ yᵢ and independent
   noise of standard deviation σ̂ (``noise``, else :func:`noise_level`), z = ``significance``.
   Rising or falling runs shorter than ``min_stage`` × (range of x) count as flat.
4. **Critical points**, from the runs:
   - between a rise and a fall (directly, or through a flat run that is not a plateau): a local
     extremum at the zero crossing of the slope (``"peak"`` or ``"trough"``), Hoogland et al.'s
     critical point;
   - a *plateau stage*, bounded by ``"plateau_start"`` and ``"plateau_end"`` at its kinks, where
     the slope is half the median slope of the neighbouring run (a symmetric smoother turns a kink
     from slope s to 0 into slope s/2 exactly at the kink), when the kinks are at least
     ``min_stage`` apart and the run is flat over at least a third of that (a rounded extremum's
     slope sweeps through zero instead: it is a peak or trough). A flat run at least ``min_stage``
     long at the very start or end of training is a plateau with only its inner boundary;
   - a shorter flat run between two rises (or two falls) whose slope comes within max(SE, τ/2) of
     zero: a ``"pause"``, at the smallest |slope|; one that stays clear of zero is noise.
5. **Stages** are the intervals between consecutive boundaries, from the first checkpoint to the
   last: ``"plateau"`` between a plateau's boundaries (or where the mean slope is within θ),
   else ``"rising"`` or ``"falling"``.

A slope change that keeps its sign (a steep rise turning into a gentle one) is not a critical point:
the LLC neither peaks nor pauses there. A monotone curve whose slope stays above θ is one stage; a
curve whose slope sinks below the noise (e.g. a logarithm on a linear step axis, late in training)
is reported as reaching a plateau, which is all the data can say: use ``log_steps`` for such curves.
The boundaries' precision is about h/2 (measured on noisy piecewise-linear curves in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Stage", "StageResult", "detect_stages", "noise_level"]

#: Below this many checkpoints the printed result says its boundaries are rough: the kernel must
#: span at least two gaps, so it smooths over much of a short curve.
FEW_POINTS = 10


@dataclass(frozen=True)
class Stage:
    """One stage of training: steps ``start`` to ``end`` where the LLC is ``kind`` ("rising",
    "falling" or "plateau")."""

    start: float
    end: float
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "kind": self.kind}


@dataclass
class StageResult:
    """The critical points of an LLC curve and the stages between them.

    - ``boundaries``: training steps of the critical points, ascending.
    - ``kinds``: for each boundary, "peak", "trough", "pause", "plateau_start" or "plateau_end".
    - ``stages``: the :class:`Stage` intervals between consecutive boundaries.
    - ``grid_steps``, ``smoothed``, ``slope``: the smoothed curve and its slope (per unit of the
      x axis: per step, or per decade with ``log_steps``), for plotting.
    - ``settings``: the arguments that produced it, with the bandwidth h and threshold τ used.
    """

    boundaries: np.ndarray
    kinds: list[str]
    stages: list[Stage]
    grid_steps: np.ndarray = field(repr=False)
    smoothed: np.ndarray = field(repr=False)
    slope: np.ndarray = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: boundaries with their kinds, stages, and the settings."""
        return {
            "boundaries": [float(b) for b in self.boundaries],
            "kinds": list(self.kinds),
            "stages": [s.to_dict() for s in self.stages],
            "settings": dict(self.settings),
        }

    def __str__(self) -> str:
        points = self.settings.get("num_points", 0)
        caution = (f"\n  (only {points} checkpoints: the smoothing spans several of them and the boundaries are rough)"
                   if points < FEW_POINTS else "")
        if not len(self.boundaries):
            kind = self.stages[0].kind if self.stages else "?"
            return f"no stage boundaries: one {kind} stage" + caution
        points = ", ".join(f"{b:.4g} ({k})" for b, k in zip(self.boundaries, self.kinds))
        lines = [f"{len(self.boundaries)} stage boundar{'y' if len(self.boundaries) == 1 else 'ies'}: {points}"]
        lines += [f"  {s.kind:8} steps {s.start:.4g} – {s.end:.4g}" for s in self.stages]
        return "\n".join(lines) + caution


def _local_linear(
    x: np.ndarray, y: np.ndarray, grid: np.ndarray, h: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tricube-kernel local-linear fit at each grid point: the value a, the slope b, and the
    weights c with b = Σᵢ cᵢ yᵢ (so that var b = σ² Σᵢ cᵢ² for independent noise of variance σ²)."""
    d = x[None, :] - grid[:, None]  # (grid, points)
    w = np.clip(1.0 - np.abs(d / h) ** 3, 0.0, None) ** 3  # tricube: exactly zero beyond h
    s0, s1, s2 = w.sum(1), (w * d).sum(1), (w * d * d).sum(1)
    det = (s0 * s2 - s1 * s1)[:, None]
    value_weights = w * (s2[:, None] - s1[:, None] * d) / det
    slope_weights = w * (s0[:, None] * d - s1[:, None]) / det
    return value_weights @ y, slope_weights @ y, slope_weights


def noise_level(x: np.ndarray, y: np.ndarray) -> float:
    """Robust estimate of the standard deviation of the noise on y(x), from the curve alone.

    Pseudo-residuals of Gasser, Sroka & Jennen-Steinmetz (1986): each point minus the straight
    line through its two neighbours, scaled to unit variance under independent noise; their
    median absolute value / 0.6745. A piecewise-linear curve gives zero except at its kinks, which
    the median ignores.
    """
    if x.size < 3:
        return 0.0
    left, right = x[1:-1] - x[:-2], x[2:] - x[1:-1]
    a, b = right / (left + right), left / (left + right)
    e = (a * y[:-2] + b * y[2:] - y[1:-1]) / np.sqrt(a * a + b * b + 1.0)
    return float(np.median(np.abs(e)) / 0.6745)


def _runs(labels: np.ndarray) -> list[list[int]]:
    """[label, first index, last index] for each maximal run of equal labels."""
    runs: list[list[int]] = []
    for i, value in enumerate(labels.tolist()):
        if runs and runs[-1][0] == value:
            runs[-1][2] = i
        else:
            runs.append([value, i, i])
    return runs


def _merge(runs: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for run in runs:
        if out and out[-1][0] == run[0]:
            out[-1][2] = run[2]
        else:
            out.append(list(run))
    return out


def detect_stages(
    steps: Sequence[float] | np.ndarray,
    llc: Sequence[float] | np.ndarray,
    *,
    smoothing: float = 0.1,
    flat_tol: float = 0.1,
    min_stage: float = 0.1,
    significance: float = 2.0,
    noise: float | None = None,
    log_steps: bool = False,
    grid: int = 1000,
) -> StageResult:
    """The critical points of an LLC curve along training and the stages between them.

    Follows Hoogland et al., arXiv 2402.02364 (smooth the LLC curve, take the points where its
    slope vanishes as stage boundaries); the exact procedure is in the module docstring.

    Args:
        steps: training step of each checkpoint (any order; sorted here).
        llc: λ̂ at each checkpoint. Non-finite values (a checkpoint whose chains all diverged) are
            left out.
        smoothing: the kernel half-width h as a fraction of the x range (default 0.1). Larger
            values suppress more noise and merge nearby boundaries; the boundaries' precision is
            about h/2.
        flat_tol: the slope below which the curve counts as flat, as a fraction of its typical
            slope (range of the smoothed λ̂ / range of x); default 0.1.
        min_stage: the shortest rising/falling run that counts, and the shortest flat run that is
            a plateau stage rather than a single critical point, as a fraction of the x range
            (default 0.1).
        significance: a slope also counts as flat unless it is this many standard errors from 0
            (default 2), so that noise on a plateau does not read as a rise or a fall.
        noise: the standard deviation of the noise on each λ̂, if known (e.g. the spread of λ̂
            between seeds); default: estimated from the curve (:func:`noise_level`).
        log_steps: smooth and judge slopes against log₁₀(step + 1) instead of step, for
            logarithmically spaced checkpoints.
        grid: number of points of the evaluation grid.

    Returns:
        A :class:`StageResult`: ``boundaries`` (training steps), ``kinds``, ``stages``, and the
        smoothed curve.
    """
    for name, value in (("smoothing", smoothing), ("flat_tol", flat_tol), ("min_stage", min_stage),
                        ("significance", significance)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}; see detect_stages' docstring.")
    if noise is not None and (not math.isfinite(noise) or noise < 0):
        raise ValueError(f"noise must be a standard deviation ≥ 0 or None (estimate it), got {noise!r}.")
    if not isinstance(grid, int) or grid < 10:
        raise ValueError(f"grid must be an integer ≥ 10, got {grid!r}.")
    s = np.asarray(steps, dtype=float).ravel()
    y = np.asarray(llc, dtype=float).ravel()
    if s.shape != y.shape:
        raise ValueError(f"steps and llc must have the same length, got {s.size} and {y.size}.")
    keep = np.isfinite(s) & np.isfinite(y)
    s, y = s[keep], y[keep]
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    if np.any(np.diff(s) == 0):
        raise ValueError("steps has repeated values; give one LLC per training step (average repeats first).")
    if log_steps and s.size and s.min() < 0:
        raise ValueError("log_steps=True needs steps ≥ 0 (it uses log10(step + 1)).")
    settings = dict(smoothing=smoothing, flat_tol=flat_tol, min_stage=min_stage, significance=significance,
                    log_steps=log_steps, grid=grid)
    if s.size < 3:
        raise ValueError(
            f"stage detection needs at least 3 checkpoints with a finite LLC, got {s.size}; add checkpoints."
        )

    x = np.log10(s + 1.0) if log_steps else s
    to_step = (lambda v: 10.0**v - 1.0) if log_steps else (lambda v: v)
    span = float(x[-1] - x[0])
    gx = np.linspace(x[0], x[-1], grid)
    dx = gx[1] - gx[0]
    gap = float(np.max(np.diff(x)))
    sigma = noise_level(x, y) if noise is None else float(noise)

    h = max(smoothing * span, 2 * gap)
    smooth, slope, slope_weights = _local_linear(x, y, gx, h)
    # One standard error for the whole curve (the median over the grid): the pointwise one grows
    # at the ends, where the fit is one-sided, and would make the ends of every curve flat.
    slope_se = sigma * float(np.median(np.sqrt((slope_weights**2).sum(1))))
    typical = float(smooth.max() - smooth.min()) / span
    tau = flat_tol * typical
    threshold = max(tau, significance * slope_se)
    settings.update(num_points=int(s.size), bandwidth=float(h), flat_slope=tau, noise=sigma, slope_se=slope_se, threshold=threshold)
    grid_steps = to_step(gx)

    def result(bounds: list[tuple[float, str]]) -> StageResult:
        bounds.sort()
        xs = [float(gx[0])] + [b for b, _ in bounds] + [float(gx[-1])]
        kinds = [None] + [k for _, k in bounds] + [None]
        stages = []
        for i, (lo, hi) in enumerate(zip(xs[:-1], xs[1:])):
            rise = float(np.interp(hi, gx, smooth) - np.interp(lo, gx, smooth))
            if kinds[i] == "plateau_start" or kinds[i + 1] == "plateau_end" or abs(rise) <= threshold * (hi - lo):
                kind = "plateau"
            else:
                kind = "rising" if rise > 0 else "falling"
            stages.append(Stage(float(to_step(lo)), float(to_step(hi)), kind))
        return StageResult(
            boundaries=np.array([to_step(b) for b, _ in bounds], dtype=float), kinds=[k for _, k in bounds],
            stages=stages, grid_steps=grid_steps, smoothed=smooth, slope=slope, settings=settings,
        )

    if typical == 0.0:  # a constant curve: one flat stage
        return result([])

    labels = np.where(slope > threshold, 1, np.where(slope < -threshold, -1, 0))
    min_len = max(int(round(min_stage * span / dx)), 1)
    runs = _runs(labels)
    for run in runs:  # short rising/falling runs are noise: flat
        if run[0] != 0 and run[2] - run[1] + 1 < min_len:
            run[0] = 0
    runs = _merge(runs)

    def kink(run: list[int], flat: list[int]) -> float:
        """The edge of a plateau (grid run ``flat``) next to the rising/falling ``run``: where the
        slope is half the run's median slope. Smoothing a kink from slope s to 0 with a symmetric
        kernel gives slope s/2 exactly at the kink."""
        label, lo, hi = run
        half = 0.5 * float(np.median(slope[lo : hi + 1]))
        if hi < flat[1]:  # the run comes before the plateau: last point at or above half
            idx = np.nonzero(slope[lo : flat[1] + 1] * label >= half * label)[0]
            return float(gx[lo + idx[-1]]) if idx.size else float(gx[flat[1]])
        idx = np.nonzero(slope[flat[2] : hi + 1] * label >= half * label)[0]
        return float(gx[flat[2] + idx[0]]) if idx.size else float(gx[flat[2]])

    def zero_crossing(lo: int, hi: int, sign: int) -> float:
        """Where the slope crosses zero between grid indices lo and hi (going from ``sign``)."""
        seg = slope[lo : hi + 1] * sign
        below = np.nonzero(seg <= 0)[0]
        if below.size == 0 or below[0] == 0:
            return float(gx[lo + int(np.argmin(np.abs(seg)))])
        j = lo + int(below[0])
        s0, s1 = slope[j - 1], slope[j]
        return float(gx[j - 1] + dx * s0 / (s0 - s1)) if s0 != s1 else float(gx[j])

    bounds: list[tuple[float, str]] = []
    for k, run in enumerate(runs):
        label, lo, hi = run
        if label != 0:
            nxt = runs[k + 1] if k + 1 < len(runs) else None
            if nxt is not None and nxt[0] == -label:  # direct reversal without a flat run
                bounds.append((zero_crossing(lo, nxt[2], label), "peak" if label > 0 else "trough"))
            continue
        prev = runs[k - 1] if k > 0 else None
        nxt = runs[k + 1] if k + 1 < len(runs) else None
        if prev is None and nxt is None:
            continue  # flat everywhere (within the threshold)
        if prev is None or nxt is None:  # flat at the very start or end of training
            if hi - lo + 1 >= min_len:
                bounds.append((kink(prev, run), "plateau_start") if nxt is None else (kink(nxt, run), "plateau_end"))
            continue
        reversal = prev[0] != nxt[0]
        start, end = kink(prev, run), kink(nxt, run)
        # A plateau stage: long enough between its kinks, and flat (within θ) over at least a third
        # of that; a rounded extremum's slope sweeps linearly through zero instead.
        if end - start >= min_stage * span and (hi - lo) * dx >= (end - start) / 3:
            bounds += [(start, "plateau_start"), (end, "plateau_end")]
        elif reversal:  # Hoogland et al.'s critical point: the slope crosses zero
            bounds.append((zero_crossing(prev[1], nxt[2], prev[0]), "peak" if prev[0] > 0 else "trough"))
        elif np.min(np.abs(slope[lo : hi + 1])) <= max(slope_se, 0.5 * tau):
            # the LLC pauses briefly, then carries on in the same direction
            bounds.append((float(gx[lo + int(np.argmin(np.abs(slope[lo : hi + 1])))]), "pause"))
        # else: a dip in a steady rise (or fall) that stays clear of zero slope: noise, no boundary
    return result(bounds)
