"""Minibatch gradient noise and the bias it adds to λ̂.

SGLD's drift uses a minibatch gradient nβ ∇L_B(w) in place of nβ ∇L_n(w). The difference is
extra noise of covariance (ε²/4) nβ² Σ_B per step on top of the injected ε I, where
Σ_B = Cov(∇L_B(w)) over the draw of the minibatch. Near a minimum, with A the Hessian of the
potential U, the chain's stationary covariance S solves the Lyapunov equation
A S + S A = 2 (I + (ε/4) nβ² Σ_B) to first order in ε, and taking the trace gives
E[U] − U(w*) = ½ tr(A S) = d/2 + (ε/8) nβ² tr(Σ_B), whatever A is. So the minibatch noise adds

    Δλ̂ ≈ (ε/8) nβ² tr(Σ_B) = (ε/16) nβ² E‖∇L_B₁(w) − ∇L_B₂(w)‖²

to λ̂, where B₁ and B₂ are two independent minibatches at the same point (their difference has
covariance 2 Σ_B). The bias is linear in ε and, through Σ_B, inversely proportional to the batch
size (B independent uniform draws, :meth:`lambdahat.data.DataSource.random_indices`:
Σ_B = Σ₁ / B with Σ₁ the per-sample gradient covariance). It vanishes for a noise-free teacher
at w* (every per-sample gradient is zero there) and dominates for noisy targets at large nβ,
where the Metropolis acceptance of a step, computed on that step's own minibatch, cannot see it
(Welling & Teh 2011 and Vollmer, Zygalakis & Teh, JMLR 2016, analyse the same error of
stochastic-gradient Langevin dynamics).

Two remedies, chosen by the warm-up of :mod:`lambdahat.adapt` from the measured noise: a larger
batch, or the **control variate** of Baker, Fearnhead, Fox & Nemeth ("Control variates for
stochastic gradient MCMC", Statistics and Computing 2019): with the anchor w* (where the
localised posterior is centred),

    ∇L̃_B(w) = ∇L_B(w) − ∇L_B(w*) + ∇L_n(w*),
    L̃_B(w) = L_B(w) − [L_B(w*) + ⟨∇L_B(w*), w − w*⟩] + [L_n(w*) + ⟨∇L_n(w*), w − w*⟩],

unbiased for ∇L_n(w) and L_n(w) (the bracketed first-order expansions around w* have the same
mean over minibatches), and L̃_B is the function whose gradient is ∇L̃_B, so Metropolis ratios
computed from it stay consistent. The noise shrinks with ‖w − w*‖ instead of staying at the
per-sample spread: for noisy targets it removes nearly all of it, at the price of a second
gradient evaluation per step (at w*, on the same batch). Its loss, recorded by the samplers,
removes the minibatch noise of λ̂'s draws in the same way.

The draws' noise has a cheaper remedy of its own, whatever the gradient: the **paired loss**
L_B(w_t) − L_B(w*) + L_n(w*), with the same batch B at w*, has the mean of L_B(w_t) (every batch
is a uniform draw of the data, so E L_B(w*) = L_n(w*)) but loses the batch-to-batch spread of the
loss at w*, which the two points share. For noisy targets that spread dwarfs everything else in a
draw: on a 6-weight regression (n = 20,000, batch 256, exact posterior draws) the sd of nβ L_B(w)
is 88 and that of nβ (L_B(w) − L_B(w*)) is 7.1, against λ = 3. It costs one forward pass at w*
per step (no backward) and leaves the chain itself unchanged; :func:`loss_spread` measures
whether a run needs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import DataSource

__all__ = ["NoiseMonitor", "choose_friction", "MIN_FRICTION", "gradient_noise", "noise_bias", "noise_step_bound",
           "step_cap", "batch_for_step", "control_variate", "full_loss_and_grad", "loss_spread", "PAIR_SPREAD"]

#: The share of λ̂ that minibatch gradient noise may add: the warm-up caps ε so that
#: :func:`noise_bias` stays below it (an automatic batch size grows instead, where it pays).
NOISE_BIAS = 0.02
#: The share of λ̂ beyond which the ``noise`` health check fails, and beyond which noise measured in
#: the draws sends an adaptive run back to its warm-up.
NOISE_LIMIT = 0.05
#: λ̂ below this counts as this in the cap (early in the warm-up λ̂ may be near 0 or negative).
LLC_FLOOR = 0.1
#: Raise the batch size (or switch on the control variate) when the cap keeps ε this many times
#: below the step the acceptance allows.
REMEDY_RATIO = 2.0
#: An automatic batch size stays below this many (sample × weight) products per gradient evaluation.
MAX_BATCH_WORK = 2**26

#: ``paired_loss="auto"`` pairs the loss when :func:`loss_spread` is at least this, in units of λ: a draw's
#: minibatch noise of one unit or more (an ordinary chain's draws spread by about √λ around λ̂).
PAIR_SPREAD = 1.0
#: Minibatches :func:`loss_spread` evaluates at w* (forward passes only).
SPREAD_BATCHES = 16

LossAndGrad = Callable[[Tensor, Any], tuple[Tensor, Tensor]]


@torch.no_grad()
def loss_spread(loss: Callable[[Tensor, Any], Tensor], data: DataSource, w_star: Tensor, batch_size: int,
                nbeta: float, seed: int) -> float:
    """nβ · sd(L_B(w*)) over ``SPREAD_BATCHES`` minibatches, drawn as the sampler draws them, from a
    generator of its own (seeded by ``seed``): the noise the unpaired loss adds to every draw of
    λ̂ (module docstring); 0 when the batch is the whole data."""
    if batch_size >= data.n:
        return 0.0
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 2 << 32]).generate_state(1)[0]))
    values = [float(loss(w_star, data.batch(data.random_indices(batch_size, generator))))
              for _ in range(SPREAD_BATCHES)]
    return nbeta * float(np.std(values, ddof=1))


@torch.no_grad()
def gradient_noise(loss_and_grad: LossAndGrad, data: DataSource, points: Tensor, batch_size: int,
                   generator: torch.Generator, anchor: Tensor) -> tuple[float, float]:
    """E‖∇L_B₁(w) − ∇L_B₂(w)‖² for the plain and for the control-variate gradient (anchor w*),
    averaged over the rows of ``points`` (one point per chain, (K, d)), each from two independent
    minibatches of ``batch_size`` drawn as the sampler draws them."""
    plain = cv = 0.0
    for w in points:
        first, second = (data.batch(data.random_indices(batch_size, generator)) for _ in range(2))
        g1, g2 = loss_and_grad(w, first)[1], loss_and_grad(w, second)[1]
        a1, a2 = loss_and_grad(anchor, first)[1], loss_and_grad(anchor, second)[1]
        plain += float((g1 - g2).square().sum())
        cv += float((g1 - a1 - g2 + a2).square().sum())
    return plain / len(points), cv / len(points)


def control_variate(loss_and_grad: LossAndGrad, anchor: Tensor, anchor_loss: float, anchor_grad: Tensor) -> LossAndGrad:
    """``loss_and_grad`` with the control variate of the module docstring: L̃_B(w) and ∇L̃_B(w), for
    w shaped (d,) or (K, d) (the anchor is broadcast over the chains)."""

    def corrected(w: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        loss, grad = loss_and_grad(w, batch)
        loss0, grad0 = loss_and_grad(anchor if w.dim() == 1 else anchor.expand_as(w), batch)
        tilt = ((anchor_grad - grad0) * (w - anchor)).sum(dim=-1)
        return loss - loss0 + anchor_loss + tilt, grad.sub_(grad0).add_(anchor_grad)

    return corrected


def full_loss_and_grad(loss_and_grad: LossAndGrad, data: DataSource, w: Tensor, batch_size: int) -> tuple[float, Tensor]:
    """L_n(w) and ∇L_n(w) over the whole data, in chunks of ``batch_size``."""
    total, grad = 0.0, torch.zeros_like(w)
    for size, batch in data.in_order(batch_size):
        loss, g = loss_and_grad(w, batch)
        total += float(loss) * size
        grad.add_(g, alpha=size / data.n)
    return total / data.n, grad


def noise_bias(step_size: float, nbeta: float, noise: float, friction: float = 1.0) -> float:
    """Δλ̂ ≈ (ε/16α) nβ² E‖∇L_B₁ − ∇L_B₂‖²: the λ̂ that minibatch noise adds (module docstring) to
    SGLD (α = 1) or to SGHMC with friction α, whose velocity receives the gradient noise
    (ε²/4) nβ² Σ_B per step against the injected α ε, so its excess temperature is 1/α times SGLD's."""
    return step_size * nbeta**2 * noise / (16 * friction)


def noise_step_bound(allowed_bias: float, nbeta: float, noise: float) -> float:
    """The largest ε whose minibatch-noise bias :func:`noise_bias` is at most ``allowed_bias``."""
    if noise <= 0 or not math.isfinite(noise):
        return math.inf
    return 16 * allowed_bias / (nbeta**2 * noise)


def step_cap(llc: float, nbeta: float, noise: float, friction: float = 1.0) -> float:
    """The largest ε whose noise bias, at ``friction``, is at most ``NOISE_BIAS`` × ``llc`` (the
    running λ̂; NaN or anything below ``LLC_FLOOR`` counts as the floor); ∞ without noise."""
    llc = llc if math.isfinite(llc) else LLC_FLOOR
    return noise_step_bound(NOISE_BIAS * max(llc, LLC_FLOOR) * friction, nbeta, noise)


def batch_for_step(batch_size: int, n: int, ratio: float) -> int:
    """The batch size whose noise bias is ``ratio`` times smaller than at ``batch_size``: tr Σ_B ∝ 1/B
    for independent draws, so ``ratio`` × B, capped at n (the full data: no noise at all)."""
    if ratio <= 1:
        return batch_size
    return min(n, math.ceil(ratio * batch_size))


class NoiseMonitor:
    """The minibatch noise of a run's chains, measured now and then at their current points.

    ``chains`` is a :class:`~lambdahat.chains.ChainSet` (its ``job`` and ``positions()``). Each
    :meth:`measure` costs four gradient evaluations per chain (two minibatches, at w and at w*),
    from a generator of its own, so the chains' random streams are untouched.
    """

    def __init__(self, seed: int, nbeta: float, init_loss: float):
        state = np.random.SeedSequence([seed, 1 << 32]).generate_state(1)[0]
        self.generator = torch.Generator().manual_seed(int(state))
        self.nbeta, self.init_loss = nbeta, init_loss
        self.values: list[tuple[float, float]] = []  # (plain, control variate) per measurement
        self.evaluations = 0

    def measure(self, chains) -> float:
        """E‖∇L_B₁ − ∇L_B₂‖² at the chains' points now, of the gradient they use."""
        job = chains.job
        self.values.append(gradient_noise(job.potential.loss_and_grad, job.data, chains.positions(), job.batch_size,
                                          self.generator, job.potential.w_star))
        self.evaluations += 4
        return self.values[-1][1 if job.control_variate is not None else 0]

    def recent(self, which: int) -> float:
        return float(np.mean([v[which] for v in self.values[-3:]]))

    def level(self, chains) -> float:
        """E‖∇L_B₁ − ∇L_B₂‖² of the gradient in use, measured once more now and averaged over the
        last three measurements (one is a χ² of few samples); 0 for full-batch steps."""
        if chains.job.batch_size >= chains.job.data.n:
            return 0.0
        self.measure(chains)
        return self.recent(1 if chains.job.control_variate is not None else 0)

    def cap(self, chains, llc: float, friction: float = 1.0) -> float:
        """:func:`step_cap` at the noise measured now: the largest ε whose noise bias is at most
        ``NOISE_BIAS`` × ``llc`` for SGLD, or SGHMC at ``friction``; ∞ for full-batch steps."""
        return step_cap(llc, self.nbeta, self.level(chains), friction)

    def remedy(self, chains, wanted: float, cap: float, *, auto_batch: bool, auto_cv: bool) -> dict[str, Any] | None:
        """The change to the chains' job that lets ε reach ``wanted`` (the step the acceptance
        allows) when ``cap`` holds it far below: a larger batch, else the control variate; None if
        neither applies.

        A larger batch comes first: its noise is the per-sample spread, which stays put as the
        chains travel, while the control variate's grows with ‖w − w*‖. On a reduced-rank
        regression (λ = 20) whose chains travel far along flat directions, the control variate
        gave λ̂ = 29.6 where a raised batch gave 20.0, although the warm-up had measured its noise
        15× below the plain gradient's near w*."""
        job = chains.job
        ratio = wanted / cap
        if ratio <= REMEDY_RATIO:
            return None
        largest = max(job.batch_size, MAX_BATCH_WORK // max(job.potential.num_params, 1))
        new = min(batch_for_step(job.batch_size, job.data.n, ratio), largest)
        if auto_batch and new > job.batch_size:
            return {"batch_size": new}
        if auto_cv and job.control_variate is None and 2 * self.recent(1) < self.recent(0):  # twice the cost per step
            anchor = full_loss_and_grad(job.potential.loss_and_grad, job.data, job.potential.w_star, job.batch_size)[1]
            self.evaluations += math.ceil(job.data.n / job.batch_size)
            return {"control_variate": (self.init_loss, anchor)}
        return None


#: The smallest SGHMC friction the auto sampler uses: the velocity of a stiff direction is damped in ~2/α steps.
MIN_FRICTION = 0.02


def choose_friction(sgld_noise_bias: float, llc: float) -> float:
    """SGHMC's friction α for the draws: the smallest in [MIN_FRICTION, 1] whose minibatch-noise
    bias, SGLD's divided by α (:func:`noise_bias`), is at most NOISE_BIAS × λ̂.

    Along a direction the loss leaves flat, SGHMC's position diffuses ε/α per step against SGLD's
    ε (its velocity keeps its direction for about 1/α steps), so a small α crosses the flat
    valleys of singular models in 1/α times fewer steps; on a quadratic its step-size bias is at
    most SGLD's (see :func:`lambdahat.samplers.sghmc.build`). The gradient noise, though, enters
    the velocity at (ε/2)² nβ² Σ_B per step against the injected α ε, so it heats the chain 1/α
    times more than SGLD's: α is as small as that allows."""
    if not math.isfinite(llc) or sgld_noise_bias <= 0 or not math.isfinite(sgld_noise_bias):
        return MIN_FRICTION if sgld_noise_bias == 0 else 1.0
    wanted = sgld_noise_bias / (NOISE_BIAS * max(llc, LLC_FLOOR))
    return float(f"{min(1.0, max(MIN_FRICTION, wanted)):.2g}")
