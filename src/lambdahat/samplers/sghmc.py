"""Stochastic-gradient Hamiltonian Monte Carlo on the localised tempered posterior.

Chen, Fox, Guestrin, "Stochastic Gradient Hamiltonian Monte Carlo", ICML 2014, in the
SGD-with-momentum form of their eq. (15), with the learning rate η = ε/2 so that the step size ε
means what it means for SGLD.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from ._common import Generators, normal_

if TYPE_CHECKING:
    from ..potential import LocalizedPotential

__all__ = ["SGHMCState", "SGHMCInfo", "build"]


class SGHMCState(NamedTuple):
    params: Tensor  # w_t, flat: (d,) or (K, d)
    velocity: Tensor  # v_t = h p_t
    noise: Tensor  # reused buffer


class SGHMCInfo(NamedTuple):
    loss: Tensor  # L_B(w_t), before the step
    distance: Tensor  # ‖w_t − w*‖
    temperature: Tensor  # ‖v‖² / (d η) after the step: the kinetic temperature, 1 at equilibrium


def build(potential: LocalizedPotential, *, step_size: float, friction: float = 0.1):
    """SGHMC targeting p(w) ∝ exp(−U(w)), U(w) = nβ L_n(w) + (γ/2)‖w − w*‖². One step, with
    η = ε/2 and friction α ∈ [0, 1]:

        v_{t+1} = (1 − α) v_t − (ε/2) ∇U_B(w_t) + √(α ε) ξ_t,    ξ_t ~ N(0, I)
        w_{t+1} = w_t + v_{t+1}

    This is underdamped Langevin dynamics with time step h = √η, momentum p = v/h and
    friction C = α/h, discretised by symplectic Euler; (w, p) is stationary under
    exp(−U(w) − ‖p‖²/2) up to O(h) discretisation error and the minibatch gradient noise, which,
    as in most practice, is not subtracted (Chen et al.'s β̂ = 0).

    α = 1 forgets the velocity every step and is exactly SGLD with the same ε. α = 0 removes
    friction *and* noise: Hamiltonian dynamics, which conserves H = U(w) + ‖v‖²/ε up to the
    integrator's O(h) oscillation. Smaller α means longer, less random moves: fewer steps to
    cross a flat valley, but more risk of overshooting.

    nβ, γ and w* are the potential's; any object with :class:`LocalizedPotential`'s interface works.
    """
    from . import Sampler

    if not (0.0 <= friction <= 1.0):
        raise ValueError(f"friction must lie in [0, 1] (the fraction of velocity lost per step), got {friction!r}.")
    half_step = step_size / 2
    noise_std = math.sqrt(friction * step_size)

    def init(params: Tensor, batch: Any) -> SGHMCState:
        params = params.detach().clone()
        return SGHMCState(params, torch.zeros_like(params), torch.empty_like(params))

    @torch.no_grad()
    def step(state: SGHMCState, batch: Any, generator: Generators):
        w, v, noise = state
        here = potential(w, batch)
        loss, dist, drift = here.loss, here.distance, here.grad_energy
        v.mul_(1.0 - friction).add_(drift, alpha=-half_step)
        if noise_std > 0:
            v.add_(normal_(noise, generator), alpha=noise_std)
        w.add_(v)
        temperature = v.square().mean(dim=-1) / half_step
        return SGHMCState(w, v, noise), SGHMCInfo(loss, dist, temperature.to(loss.dtype))

    return Sampler(init, step)
