"""Stochastic-gradient Nosé–Hoover thermostat on the localised tempered posterior.

Ding, Fang, Babbush, Chen, Skeel, Neven, "Bayesian Sampling Using Stochastic Gradient
Thermostats", NeurIPS 2014 (their Algorithm 2, SGD form), with the learning rate η = ε/2 so that
the step size ε means what it means for SGLD.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from ._common import Generators, normal_

if TYPE_CHECKING:
    from ..potential import LocalizedPotential

__all__ = ["SGNHTState", "SGNHTInfo", "build"]


class SGNHTState(NamedTuple):
    params: Tensor  # w_t, flat: (d,) or (K, d)
    velocity: Tensor  # v_t = h p_t
    thermostat: Tensor  # ξ_t, one per chain, shaped (1,) or (K, 1)
    noise: Tensor  # reused buffer


class SGNHTInfo(NamedTuple):
    loss: Tensor  # L_B(w_t), before the step
    distance: Tensor  # ‖w_t − w*‖
    thermostat: Tensor  # ξ after the step
    temperature: Tensor  # ‖v‖² / (d η) after the step: the kinetic temperature, 1 at equilibrium


def build(potential: LocalizedPotential, *, step_size: float, diffusion: float = 0.01):
    """SGNHT targeting p(w) ∝ exp(−U(w)), U(w) = nβ L_n(w) + (γ/2)‖w − w*‖². One step, with
    η = ε/2, the diffusion A (``diffusion``) and d sampled weights:

        v_{t+1} = v_t − ξ_t v_t − (ε/2) ∇U_B(w_t) + √(A ε) ξ'_t,    ξ'_t ~ N(0, I)
        w_{t+1} = w_t + v_{t+1}
        ξ_{t+1} = ξ_t + ( ‖v_{t+1}‖² / d − η )

    ξ is a friction that adapts: it rises while the kinetic temperature ‖v‖²/(d η) is above 1
    (the chain is too hot, e.g. from unmodelled minibatch-gradient noise) and falls while it is
    below, so the sampler absorbs an unknown amount of gradient noise (Ding et al.). ξ starts at
    A. (devinterp's ``sgnht`` never applies ξ to the velocity; here it does.)

    Keep A small (the default 0.01). This discretisation's stationary kinetic temperature at
    friction ξ is 2/(2 − ξ), not 1 (as SGHMC's is at friction α); by pinning it to 1 the
    thermostat cools the weights by about ξ/2 relative: −11% on a Gaussian's variance at
    A = 0.2, −0.5% at A = 0.01 (tests/test_samplers.py, the Gaussian harness).

    nβ, γ and w* are the potential's; any object with :class:`LocalizedPotential`'s interface works.
    """
    from . import Sampler

    if not (diffusion >= 0.0 and math.isfinite(diffusion)):
        raise ValueError(f"diffusion must be a finite number ≥ 0, got {diffusion!r}; 0.01 is a usual start.")
    half_step = step_size / 2
    noise_std = math.sqrt(diffusion * step_size)

    def init(params: Tensor, batch: Any) -> SGNHTState:
        params = params.detach().clone()
        thermostat = params.new_full(params.shape[:-1] + (1,), diffusion)
        return SGNHTState(params, torch.zeros_like(params), thermostat, torch.empty_like(params))

    @torch.no_grad()
    def step(state: SGNHTState, batch: Any, generator: Generators):
        w, v, xi, noise = state
        here = potential(w, batch, noise)  # the noise buffer holds w − w*, then ξ v, then ξ', then v²
        loss, dist, drift = here.loss, here.distance, here.grad_energy
        del here
        v.sub_(torch.mul(v, xi, out=noise)).add_(drift, alpha=-half_step)
        del drift
        if noise_std > 0:
            v.add_(normal_(noise, generator), alpha=noise_std)
        w.add_(v)
        kinetic = torch.square(v, out=noise).mean(dim=-1, keepdim=True)
        xi.add_(kinetic - half_step)
        info = SGNHTInfo(loss, dist, xi.squeeze(-1).to(loss.dtype, copy=True), (kinetic.squeeze(-1) / half_step).to(loss.dtype))
        return SGNHTState(w, v, xi, noise), info

    return Sampler(init, step)
