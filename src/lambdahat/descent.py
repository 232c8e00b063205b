"""How far w* sits above a nearby minimum, measured by a short deterministic descent from w*.

At a point w* that is not a minimum of L_n (a teacher under noisy targets, an unconverged training
run) the localised tempered posterior p(w) ∝ exp(−nβ L_n(w) − (γ/2)‖w − w*‖²) (Lau et al., arXiv
2308.12108) sits around the minimiser m of its potential F(w) = nβ L_n(w) + (γ/2)‖w − w*‖², not
around w*. For a quadratic L_n with Hessian H the estimate is exactly

    λ̂(nβ) = ½ tr(nβH (nβH + γ)⁻¹) − nβ (L_n(w*) − L_n(m)),

the learning coefficient's term minus a *fall* nβ (L_n(w*) − L_n(m)) that grows with nβ (the
"falling" case of :mod:`lambdahat.nbeta_rung`). A descent of F measures that fall without
sampling: L-BFGS with a strong-Wolfe line search (Nocedal & Wright, *Numerical Optimization*,
2006, ch. 7) on the full-data loss, from w* and from each chain's last point (a chain has already
moved along directions where L_n falls only at second order, in which the gradient at w* is zero:
the unused units of a low-rank teacher fitting the noise). Every point evaluated is a real point
near w*, and at the lowest F found, F ≤ F(w*), so nβ (L_n(w*) − L_n) ≥ (γ/2)‖w − w*‖² ≥ 0 there:
a lower bound on the fall at the basin's minimiser, which it approaches as the descents converge.

:func:`lambdahat.estimate_llc` uses it to skip a run. Under the quadratic model the fall from nβ
to 4nβ is about 3 × the fall at nβ (the fall grows like nβ while the first term hardly changes);
when that is at least ``PREDICTION_MARGIN`` (2) times what the ``nbeta`` check needs to call λ̂
falling, the run at 4nβ would only confirm it, and the estimate moves to nβ / 4 at once. That run
is the most expensive of the three (its minibatch-noise bias grows like nβ², so its batch is the
largest). Otherwise it is made as before: a bound that falls short (too few iterations, a flat
basin) only means that run is made. On singular models the first term rises with nβ too, so
3 × the fall can exceed the change: on the ten reduced-rank regressions of the blind sets v13 and
v14 (noisy targets, all of them lowered by the run at 4nβ), 3 × the descent's fall was 0.87–1.92
times the change that run measured (median 1.15), inside the margin of 2 (docs/accuracy.md, set
v15). The descents cost at most ``DESCENT_SHARE`` (10%) of the run's samples; on a model at an
exact minimum (a noise-free teacher) they find no fall and cost 3–6% of the estimate (v15).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .nbeta_rung import BIAS_ALLOWANCE, NBETA_FACTOR
from .noise import full_loss_and_grad
from .tables import number

__all__ = ["Descent", "descend", "DESCENT_EVALUATIONS", "PREDICTION_MARGIN"]

#: Full-data loss-and-gradient evaluations the descent may use (L-BFGS iterations take one to a
#: few each), and at most ``DESCENT_SHARE`` of the samples the run at nβ itself evaluated.
DESCENT_EVALUATIONS = 60
DESCENT_SHARE = 0.1
#: The predicted fall from nβ to 4nβ must be this many times the change the ``nbeta`` check calls
#: falling (beyond 2 standard errors of the two runs and the 4% their biases may differ by).
PREDICTION_MARGIN = 2.0


@dataclass(frozen=True)
class Descent:
    """Descents of F = nβ L_n + (γ/2)‖w − w*‖² from w* and the chains' last points: ``fall`` =
    nβ (L_n(w*) − L_n) ≥ 0 at the lowest F found, at ``nbeta`` (a lower bound on the fall of λ̂
    there; module docstring), after ``iterations`` L-BFGS iterations and ``evaluations`` full-data
    gradients in all, ``gradient_evaluations`` of them in minibatch steps (n / batch each)."""

    nbeta: float
    fall: float
    iterations: int
    evaluations: int
    gradient_evaluations: int

    @property
    def found_nothing_lower(self) -> bool:
        """No point evaluated had F below F(w*) (the fall is exactly 0): ∇F(w*) = 0 and the descents
        from the chains' last points came back no lower, so w* sits above no minimum within reach
        and λ̂ carries no fall −nβ (L_n(w*) − L_min) (a noise-free teacher, every time)."""
        return self.fall == 0.0

    def predicts_fall(self, llc: float, mcse: float) -> bool:
        """Whether the fall from nβ to 4nβ the descent predicts, (4 − 1) × ``fall``, is at least
        ``PREDICTION_MARGIN`` × what the ``nbeta`` check calls falling for a run of λ̂ ± ``mcse``
        (its rung assumed as precise): 2 √2 mcse, or 4% of λ̂."""
        if not (math.isfinite(llc) and math.isfinite(mcse) and llc > 0):
            return False
        needed = max(2.0 * math.sqrt(2.0) * mcse, BIAS_ALLOWANCE * llc)
        return (NBETA_FACTOR - 1.0) * self.fall >= PREDICTION_MARGIN * needed

    def to_dict(self) -> dict[str, Any]:
        return dict(nbeta=self.nbeta, fall=number(self.fall), iterations=self.iterations,
                    evaluations=self.evaluations, gradient_evaluations=self.gradient_evaluations)


def descend(potential: Any, data: Any, nbeta: float, localization: float, init_loss: float, chunk: int,
            batch_size: int, starts: Sequence[Tensor] = (), max_evaluations: int = DESCENT_EVALUATIONS) -> Descent | None:
    """L-BFGS on F = nβ L_n(w) + (γ/2)‖w − w*‖² from w* and from each of ``starts`` (the chains'
    last points: a chain has already moved along directions in which L_n falls only at second
    order, where the gradient at w* is zero), at most ``max_evaluations`` full-data
    loss-and-gradient evaluations each (in chunks of ``chunk`` samples); the fall is read at the
    lowest F found, which is at most F(w*). None when fewer than two evaluations are allowed.
    Deterministic: the data in order, no randomness."""
    if max_evaluations < 2:
        return None
    w_star = potential.w_star
    lowest = [nbeta * init_loss, init_loss]  # F and L_n at the lowest F evaluated so far (w* itself first)
    evaluations, iterations = 0, 0
    for start in (w_star, *(s for s in starts if bool(torch.isfinite(s).all()))):
        w = start.detach().clone().to(w_star.dtype)

        def closure() -> Tensor:
            nonlocal evaluations
            loss, grad = full_loss_and_grad(potential.loss_and_grad, data, w.detach(), chunk)
            evaluations += 1
            offset = w.detach() - w_star
            value = nbeta * loss + 0.5 * localization * float(offset.square().sum())
            if not math.isfinite(value):
                value = math.inf
            elif value < lowest[0]:
                lowest[:] = [value, loss]
            w.grad = nbeta * grad + localization * offset
            return torch.tensor(value, dtype=torch.float64)

        w.requires_grad_(True)
        optimizer = torch.optim.LBFGS([w], max_iter=max_evaluations, max_eval=max_evaluations,
                                      line_search_fn="strong_wolfe")
        with torch.no_grad():
            optimizer.step(closure)
        iterations += int(optimizer.state[w].get("n_iter", 0))
    # F ≤ F(w*) at the lowest point, so nβ (L_n(w*) − L_n) ≥ (γ/2)‖w − w*‖² ≥ 0 there
    return Descent(nbeta=nbeta, fall=max(nbeta * (init_loss - lowest[1]), 0.0), iterations=iterations,
                   evaluations=evaluations, gradient_evaluations=math.ceil(evaluations * data.n / batch_size))
