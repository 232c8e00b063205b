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

from ._common import Generators, forward_log_density, normal_, reverse_acceptance

if TYPE_CHECKING:
    from ..potential import LocalizedPotential

__all__ = ["SGHMCState", "SGHMCInfo", "SGHMCInfoWithAcceptance", "build"]


class SGHMCState(NamedTuple):
    params: Tensor  # w_t, flat: (d,) or (K, d)
    velocity: Tensor  # v_t = h p_t
    noise: Tensor  # reused buffer
    count: int = 0  # steps taken


class SGHMCInfo(NamedTuple):
    loss: Tensor  # L_B(w_t), before the step
    distance: Tensor  # ‖w_t − w*‖
    temperature: Tensor  # ‖v‖² / (d η) after the step: the kinetic temperature, 1 at equilibrium


class SGHMCInfoWithAcceptance(NamedTuple):
    loss: Tensor
    distance: Tensor
    temperature: Tensor
    mala_accept: Tensor  # MH acceptance of the SGLD proposal from w_t with this step's ξ_t; NaN when not computed


def build(potential: LocalizedPotential, *, step_size: float, friction: float = 0.1, acceptance_every: int = 0):
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

    Every ``acceptance_every`` steps (0: never) the step also reports ``mala_accept``: the MALA
    acceptance probability of the SGLD proposal w_t − (ε/2)∇U_B(w_t) + √ε ξ_t from the same point
    with the same ξ_t (one extra forward and backward pass), the step-size diagnostic of
    :func:`lambdahat.samplers.sgld.build`. It bounds SGHMC's own step-size bias too: on a quadratic
    U = a w²/2 the stationary variance of w is (1/a)(1 + εa/8 + O(ε²)) for small α, half of SGLD's
    excess (1/a)(εa/4 + O(ε²)) (the discrete Lyapunov equation of the linear update).

    Memory: w, v, one buffer (w − w*, then ξ, then v²) and the gradient, with w* the potential's;
    a check step holds two more (the proposal and w − w'; the proposal's gradient takes the memory
    of this step's, released first).

    nβ, γ and w* are the potential's; any object with :class:`LocalizedPotential`'s interface works.
    """
    from . import Sampler

    if not (0.0 <= friction <= 1.0):
        raise ValueError(f"friction must lie in [0, 1] (the fraction of velocity lost per step), got {friction!r}.")
    if not isinstance(acceptance_every, int) or acceptance_every < 0:
        raise ValueError(f"acceptance_every must be an integer ≥ 0 (0 turns it off), got {acceptance_every!r}.")
    half_step = step_size / 2
    noise_std = math.sqrt(friction * step_size)

    def init(params: Tensor, batch: Any) -> SGHMCState:
        params = params.detach().clone()
        return SGHMCState(params, torch.zeros_like(params), torch.empty_like(params), 0)

    @torch.no_grad()
    def step(state: SGHMCState, batch: Any, generator: Generators):
        w, v, noise, count = state
        check = acceptance_every and count % acceptance_every == 0
        here = potential(w, batch, noise, exact=bool(check))  # the noise buffer holds w − w* until ξ is drawn
        loss, dist, drift = here.loss, here.distance, here.grad_energy
        if check:
            energy_old = here.energy  # read before ξ overwrites the offset
        del here  # holds ∇U's buffer, released below on a check step
        v.mul_(1.0 - friction).add_(drift, alpha=-half_step)
        if noise_std > 0 or check:
            normal_(noise, generator)
        if noise_std > 0:
            v.add_(noise, alpha=noise_std)
        if check:  # the SGLD proposal from w with the same ξ: w − (ε/2)∇U + √ε ξ, in one new buffer
            proposal = torch.mul(drift, half_step)
            torch.sub(w, proposal, out=proposal).add_(noise, alpha=math.sqrt(step_size))
            back = torch.sub(w, proposal, out=noise)  # ξ is in v already: its buffer takes w − w'
            log_q_forward = forward_log_density(back, drift, step_size)
            del drift  # so that the proposal's gradient can take its memory
            accept = reverse_acceptance(potential, batch, back, energy_old, log_q_forward, proposal, step_size)
            del proposal, back
        w.add_(v)
        temperature = torch.square(v, out=noise).mean(dim=-1) / half_step  # ξ is spent: its buffer takes v²
        new_state = SGHMCState(w, v, noise, count + 1)
        if not acceptance_every:
            return new_state, SGHMCInfo(loss, dist, temperature.to(loss.dtype))
        if not check:
            accept = torch.full_like(loss, float("nan"))
        return new_state, SGHMCInfoWithAcceptance(loss, dist, temperature.to(loss.dtype), accept)

    return Sampler(init, step)
