"""RMSProp-preconditioned SGLD (pSGLD) on the localised tempered posterior.

Li, Chen, Carlson, Carin, "Preconditioned Stochastic Gradient Langevin Dynamics for Deep Neural
Networks", AAAI 2016; found the most faithful local sampler up to ~100M parameters by Hitchcock &
Hoogland, arXiv 2507.21449. Step-size convention as in :mod:`lambdahat.samplers.sgld`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from ._common import Generators, forward_log_density, normal_, reverse_acceptance

if TYPE_CHECKING:
    from ..potential import LocalizedPotential

__all__ = ["RMSPropSGLDState", "RMSPropSGLDInfo", "RMSPropSGLDInfoWithAcceptance", "build", "ADAPT"]

#: When V follows the gradient (:func:`build`'s ``adapt``).
ADAPT = ("burnin", "always", "never")


class RMSPropSGLDState(NamedTuple):
    params: Tensor  # w_t, flat: (d,) or (K, d)
    square_avg: Tensor  # V_t, the running mean of the squared loss gradient
    noise: Tensor  # reused buffer for ξ_t
    count: int  # steps taken
    updates: int  # steps that updated V (fewer than count once V is frozen)


class RMSPropSGLDInfo(NamedTuple):
    loss: Tensor  # L_B(w_t), before the step
    distance: Tensor  # ‖w_t − w*‖
    clipped: Tensor  # fraction of coordinates whose P hit the stability cap this step


class RMSPropSGLDInfoWithAcceptance(NamedTuple):
    loss: Tensor
    distance: Tensor
    clipped: Tensor
    mala_accept: Tensor  # MH acceptance probability of the proposal (fixed P); NaN when not computed


def build(
    potential: LocalizedPotential,
    *,
    step_size: float,
    alpha: float = 0.99,
    eps: float = 0.1,
    adapt: str = "burnin",
    acceptance_every: int = 50,
):
    """RMSProp-SGLD targeting p(w) ∝ exp(−nβ L_n(w) − (γ/2)‖w − w*‖²). One step, with
    g = ∇L_B(w_t) the minibatch *loss* gradient (not scaled by nβ, no localisation term):

        V_t = α V_{t−1} + (1 − α) g²,    V̂_t = V_t / (1 − α^t)   (bias-corrected, as in Adam)
        P   = min( 1 / (√V̂_t + eps),  2 / (ε γ) )
        w_{t+1} = w_t − (ε/2) P ⊙ [ nβ g + γ (w_t − w*) ] + √(ε P) ⊙ ξ_t

    With P ≡ 1 this is exactly SGLD. The cap on P is the guard against a small ``eps`` in flat
    directions: the localisation alone contracts w − w* by (1 − ε P γ / 2) per step, which
    oscillates and diverges once ε P γ > 4; capping at ε P γ = 2 keeps a margin of 2. The
    fraction of capped coordinates is reported as ``info.clipped`` (a persistently large value
    means eps is too small or γ ε too large). Like devinterp, the divergence (Γ) term of the
    preconditioner is dropped. That is harmless while P changes slowly compared with the chain's
    mixing; when V follows the position instead (α too small for a slowly mixing chain), the
    stationary law tilts toward exp(−U)/P: +16% on a Gaussian's variance at α = 0.99 with no
    gradient noise, within error at α = 0.999 (tests/test_samplers.py, the Gaussian harness), and
    +41% on λ̂ of a quasi-homogeneous potential at nβ = 1 (tests/test_sampler_known_answers.py;
    benchmarks/investigations/rmsprop_freeze.py).

    ``adapt`` says when V follows the gradient:

    - ``"burnin"`` (the default): through the first half of the burn-in; then V, and so P, is
      frozen for the second half and the draws (an adaptive run: through its warm-up, frozen for
      the draws). A constant P has no Γ term, so the chain samples exp(−U) exactly up to the O(ε)
      of the discretisation, whatever α, and the second half of the burn-in lets it relax from
      where the adapting steps took it. Stan adapts its metric the same way, in the warm-up only,
      with a last window at a fixed metric. With fewer than two burn-in steps V follows the
      gradient throughout.
    - ``"always"``: through the draws too (devinterp's RMSProp-SGLD), with the tilt above, which
      grows with the length of the run.
    - ``"never"``: V stays as it is (at the start, 0: P = 1/eps, SGLD at step ε/eps). The runner
      builds the frozen steps with this option when ``adapt="burnin"``.

    On that quasi-homogeneous potential (ε = 2e-4, 4 chains, seed 0), λ̂ against λ = 375: 1,000
    burn-in steps and 4,000 draws give +41% with ``"always"`` and −5.7% with ``"burnin"``; 16,000
    draws +98% and −1.2%; 3,000 burn-in steps +78% and +15% (the adapting steps' tilt takes longer
    to relax than the frozen steps last).

    ``alpha = 1`` freezes V at its initial value (then no bias correction is applied).
    ``acceptance_every``: as for SGLD, the MH acceptance probability of the step's proposal
    with the step's P, every so many steps (0: never).

    nβ, γ and w* are the potential's; any object with :class:`LocalizedPotential`'s interface works.
    """
    from . import Sampler

    if not (0.0 < alpha <= 1.0):
        raise ValueError(f"alpha must lie in (0, 1], got {alpha!r}; 0.99 is the usual choice.")
    if not (eps > 0.0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}; 0.1 is devinterp's default.")
    if not isinstance(acceptance_every, int) or acceptance_every < 0:
        raise ValueError(f"acceptance_every must be an integer ≥ 0 (0 turns it off), got {acceptance_every!r}.")
    if adapt not in ADAPT:
        raise ValueError(f"adapt must be one of {ADAPT} (when V follows the gradient), got {adapt!r}.")
    updating = adapt != "never"
    localization = potential.localization
    max_precond = 2.0 / (step_size * localization) if localization > 0 else math.inf

    def init(params: Tensor, batch: Any) -> RMSPropSGLDState:
        params = params.detach().clone()
        return RMSPropSGLDState(params, torch.zeros_like(params), torch.empty_like(params), 0, 0)

    @torch.no_grad()
    def step(state: RMSPropSGLDState, batch: Any, generator: Generators):
        w, square_avg, noise, count, updates = state
        count += 1
        check = acceptance_every and (count - 1) % acceptance_every == 0
        here = potential(w, batch, noise, exact=bool(check))  # the noise buffer holds w − w* until ξ is drawn
        loss, distance = here.loss, here.distance
        grad = here.grad_loss  # V follows the loss gradient alone, so read it before ∇U overwrites it
        if updating:
            square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
            updates += 1
        correction = 1.0 - alpha**updates if alpha < 1.0 and updates else 1.0
        precond = (square_avg / correction).sqrt_().add_(eps).reciprocal_()
        capped = precond > max_precond
        precond.clamp_(max=max_precond)
        drift = here.grad_energy
        if check:
            energy_old, back = here.energy, w.clone()
        del here, grad  # hold ∇U's buffer, released below on a check step
        w.addcmul_(precond, drift, value=-step_size / 2)
        w.addcmul_(precond.mul_(step_size).sqrt_(), normal_(noise, generator))
        clipped = capped.to(loss.dtype).mean(dim=-1)
        new_state = RMSPropSGLDState(w, square_avg, noise, count, updates)
        if not acceptance_every:
            return new_state, RMSPropSGLDInfo(loss, distance, clipped)
        if check:
            precond = precond.square_().div_(step_size)  # back to P (the buffer held √(εP))
            log_q_forward = forward_log_density(back.sub_(w), drift, step_size, precond)
            del drift
            accept = reverse_acceptance(potential, batch, back, energy_old, log_q_forward, w, step_size, precond,
                                        offset=noise)
        else:
            accept = torch.full_like(loss, float("nan"))
        return new_state, RMSPropSGLDInfoWithAcceptance(loss, distance, clipped, accept)

    return Sampler(init, step)
