"""The Metropolis-adjusted Langevin algorithm: the exact (full-batch) reference sampler.

Roberts & Tweedie, "Exponential convergence of Langevin distributions and their discrete
approximations", Bernoulli 1996; used as the exact reference for SGLD by Lau et al.,
arXiv 2308.12108. Proposal in the SGLD convention of :mod:`lambdahat.samplers.sgld`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._common import Generators, acceptance_probability, langevin_log_accept, normal_, potential, uniform, drift_

__all__ = ["MALAState", "MALAInfo", "build"]


class MALAState(NamedTuple):
    params: Tensor  # w_t, flat: (d,) or (K, d)
    loss: Tensor  # L_n(w_t), cached from the step that accepted w_t
    energy: Tensor  # U(w_t)
    grad_energy: Tensor  # ∇U(w_t)
    noise: Tensor  # reused buffer
    cached: bool  # whether loss, energy and grad_energy are those of params (False before the first step)


class MALAInfo(NamedTuple):
    loss: Tensor  # L_n(w_t), before the step (exact: the batch is the full data)
    distance: Tensor  # ‖w_t − w*‖
    mala_accept: Tensor  # the acceptance probability min(1, α) of this step's proposal
    accepted: Tensor  # 1.0 if the proposal was accepted, else 0.0


def build(
    loss_and_grad: Callable[[Tensor, Any], tuple[Tensor, Tensor]],
    w_star: Tensor,
    *,
    step_size: float,
    nbeta: float,
    localization: float,
):
    """MALA targeting p(w) ∝ exp(−U(w)), U(w) = nβ L_n(w) + (γ/2)‖w − w*‖², exactly.

    Propose w' = w − (ε/2) ∇U(w) + √ε ξ (the SGLD step), and accept it with probability
    min(1, α),

        log α = U(w) − U(w') + log q(w | w') − log q(w' | w),   q(a | b) = N(a; b − (ε/2)∇U(b), ε I),

    else stay at w. The batch passed to ``step`` must be the full data, so that U is the exact
    potential and the chain is exact for any ε; only the mixing speed depends on ε (aim for an
    acceptance rate of roughly 0.6–0.9). One forward and backward pass per step: U and ∇U of the
    current point are carried in the state. A proposal with a non-finite loss is rejected.
    """
    from . import Sampler

    half_step = step_size / 2
    noise_std = math.sqrt(step_size)

    def energy_and_grad(w: Tensor, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        loss, grad = loss_and_grad(w, batch)
        grad_energy = drift_(grad, w - w_star, nbeta, localization)
        return loss, potential(loss, w, w_star, nbeta, localization), grad_energy

    def init(params: Tensor) -> MALAState:
        params = params.detach().clone()
        per_chain = params.new_full(params.shape[:-1], float("nan"))
        return MALAState(params, per_chain, per_chain.clone(), torch.zeros_like(params), torch.empty_like(params), False)

    @torch.no_grad()
    def step(state: MALAState, batch: Any, generator: Generators):
        w, loss, energy, grad_energy, noise, cached = state
        if not cached:
            loss, energy, grad_energy = energy_and_grad(w, batch)
        dist = torch.linalg.vector_norm(w - w_star, dim=-1)
        proposal = w - half_step * grad_energy + noise_std * normal_(noise, generator)
        loss_new, energy_new, grad_energy_new = energy_and_grad(proposal, batch)
        log_alpha = langevin_log_accept(w, energy, grad_energy, proposal, energy_new, grad_energy_new, step_size)
        accept = torch.log(uniform(energy, generator)) < log_alpha  # False for a NaN ratio
        info = MALAInfo(loss, dist, acceptance_probability(log_alpha).nan_to_num(0.0).to(loss.dtype), accept.to(loss.dtype))
        keep = accept.unsqueeze(-1)
        new_state = MALAState(
            torch.where(keep, proposal, w),
            torch.where(accept, loss_new, loss),
            torch.where(accept, energy_new, energy),
            torch.where(keep, grad_energy_new, grad_energy),
            noise,
            True,
        )
        return new_state, info

    return Sampler(init, step)
