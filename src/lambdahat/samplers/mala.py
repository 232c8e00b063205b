"""The Metropolis-adjusted Langevin algorithm: the exact (full-batch) reference sampler.

Roberts & Tweedie, "Exponential convergence of Langevin distributions and their discrete
approximations", Bernoulli 1996; used as the exact reference for SGLD by Lau et al.,
arXiv 2308.12108. Proposal in the SGLD convention of :mod:`lambdahat.samplers.sgld`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from ._common import Generators, acceptance_probability, langevin_log_accept, normal_, uniform

if TYPE_CHECKING:
    from ..potential import LocalizedPotential

__all__ = ["MALAState", "MALAInfo", "build"]


class MALAState(NamedTuple):
    params: Tensor  # w_t, flat: (d,) or (K, d)
    loss: Tensor  # L_n(w_t)
    energy: Tensor  # U(w_t)
    grad_energy: Tensor  # ∇U(w_t)
    distance: Tensor  # ‖w_t − w*‖
    noise: Tensor  # reused buffer


class MALAInfo(NamedTuple):
    loss: Tensor  # L_n(w_t), before the step (exact: the batch is the full data)
    distance: Tensor  # ‖w_t − w*‖
    mala_accept: Tensor  # the acceptance probability min(1, α) of this step's proposal
    accepted: Tensor  # 1.0 if the proposal was accepted, else 0.0


def build(potential: LocalizedPotential, *, step_size: float):
    """MALA targeting p(w) ∝ exp(−U(w)), U(w) = nβ L_n(w) + (γ/2)‖w − w*‖², exactly.

    Propose w' = w − (ε/2) ∇U(w) + √ε ξ (the SGLD step), and accept it with probability
    min(1, α),

        log α = U(w) − U(w') + log q(w | w') − log q(w' | w),   q(a | b) = N(a; b − (ε/2)∇U(b), ε I),

    else stay at w. The batch passed to ``init`` and ``step`` must be the full data, so that U is
    the exact potential and the chain is exact for any ε; only the mixing speed depends on ε (aim
    for an acceptance rate of roughly 0.6–0.9). One forward and backward pass per step: ``init``
    evaluates the start point, and U and ∇U of the current point are carried in the state. A
    proposal with a non-finite loss is rejected.

    nβ, γ and w* are the potential's; any object with :class:`LocalizedPotential`'s interface works.
    """
    from . import Sampler

    half_step = step_size / 2
    noise_std = math.sqrt(step_size)

    @torch.no_grad()
    def init(params: Tensor, batch: Any) -> MALAState:
        params = params.detach().clone()
        here = potential(params, batch, exact=True)
        return MALAState(params, here.loss, here.energy, here.grad_energy, here.distance, torch.empty_like(params))

    @torch.no_grad()
    def step(state: MALAState, batch: Any, generator: Generators):
        w, loss, energy, grad_energy, dist, noise = state
        proposal = torch.mul(grad_energy, half_step)  # w − (ε/2)∇U + √ε ξ in one new buffer, same rounding
        torch.sub(w, proposal, out=proposal).add_(normal_(noise, generator).mul_(noise_std))
        new = potential(proposal, batch, noise, exact=True)  # ξ is spent: its buffer takes w' − w*
        grad_new = new.grad_energy  # ∇U first, so that U squares the offset in place, freeing its buffer
        energy_new = new.energy
        buffers = (noise, torch.empty_like(noise))
        log_alpha = langevin_log_accept(w, energy, grad_energy, proposal, energy_new, grad_new, step_size, buffers=buffers)
        del buffers
        # drawn in w's dtype (U is float64): the same draws whatever precision the ratio is formed in
        accept = torch.log(uniform(dist, generator)) < log_alpha  # False for a NaN ratio
        info = MALAInfo(loss, dist, acceptance_probability(log_alpha).nan_to_num(0.0).to(loss.dtype), accept.to(loss.dtype))
        keep = accept.unsqueeze(-1)
        torch.where(keep, proposal, w, out=w)
        torch.where(keep, new.grad_energy, grad_energy, out=grad_energy)
        new_state = MALAState(
            w,
            torch.where(accept, new.loss, loss),
            torch.where(accept, new.energy, energy),
            grad_energy,
            torch.where(accept, new.distance, dist),
            noise,
        )
        return new_state, info

    return Sampler(init, step)
