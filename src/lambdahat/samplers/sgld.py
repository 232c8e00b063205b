"""Stochastic-gradient Langevin dynamics on the localised tempered posterior.

Welling & Teh (2011), in the convention of Lau et al., "The Local Learning Coefficient",
arXiv 2308.12108, and of devinterp's ``lr``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from ._common import Generators, forward_log_density, normal_, reverse_acceptance

if TYPE_CHECKING:
    from ..potential import LocalizedPotential

__all__ = ["SGLDState", "SGLDInfo", "SGLDInfoWithAcceptance", "build"]


class SGLDState(NamedTuple):
    params: Tensor  # w_t, flat: (d,) or (K, d)
    buffer: Tensor  # reused for w_t − w*, then for ξ_t
    count: int  # steps taken


class SGLDInfo(NamedTuple):
    loss: Tensor  # L_B(w_t), the batch loss before the step (not synced to the host)
    distance: Tensor  # ‖w_t − w*‖


class SGLDInfoWithAcceptance(NamedTuple):
    loss: Tensor
    distance: Tensor
    mala_accept: Tensor  # MH acceptance probability of this step's proposal; NaN when not computed


def build(potential: LocalizedPotential, *, step_size: float, acceptance_every: int = 50):
    """SGLD targeting p(w) ∝ exp(−nβ L_n(w) − (γ/2)‖w − w*‖²).

    With a minibatch B_t and its mean loss L_B, one step is

        w_{t+1} = w_t − (ε/2) [ nβ ∇L_B(w_t) + γ (w_t − w*) ] + √ε ξ_t,   ξ_t ~ N(0, I),

    so ε (``step_size``) is both the step size and the noise variance: with the noise removed,
    γ = 0 and nβ = 1 the step is gradient descent with learning rate ε/2. (blackjax and
    posteriors write w + h ∇log p + N(0, 2h); their h is ε/2.)

    Every ``acceptance_every`` steps (0: never) the step also reports ``mala_accept``, the
    Metropolis–Hastings acceptance probability MALA would give this very proposal on the same
    minibatch, min(1, exp(log α)) with log α = U(w) − U(w') + log q(w|w') − log q(w'|w) and
    U = nβ L_B + (γ/2)‖w − w*‖². It costs one extra forward and backward pass on those steps and
    changes nothing else. Healthy step sizes give ≈ 0.9; near 0 the step is too large, near 1
    it may be needlessly small (Lau et al., arXiv 2308.12108, after Furman & Lau).

    Memory: w, one buffer (w − w*, then ξ) and the gradient (∇U is built in it), with w* the
    potential's: four copies of the parameters. A check step holds one more (w_t − w_{t+1}); the
    proposal's gradient takes the memory of this step's, which is released first.

    nβ, γ and w* are the potential's; any object with :class:`LocalizedPotential`'s interface works.
    """
    from . import Sampler

    if not isinstance(acceptance_every, int) or acceptance_every < 0:
        raise ValueError(f"acceptance_every must be an integer ≥ 0 (0 turns it off), got {acceptance_every!r}.")
    half_step = step_size / 2
    noise_std = math.sqrt(step_size)

    def init(params: Tensor, batch: Any) -> SGLDState:
        params = params.detach().clone()
        return SGLDState(params, torch.empty_like(params), 0)

    @torch.no_grad()
    def step(state: SGLDState, batch: Any, generator: Generators):
        w, buffer, count = state
        check = acceptance_every and count % acceptance_every == 0
        here = potential(w, batch, buffer, exact=bool(check))
        loss, distance, drift = here.loss, here.distance, here.grad_energy
        if check:
            energy_old, back = here.energy, w.clone()
        del here  # holds ∇U's buffer, released below on a check step
        w.add_(drift, alpha=-half_step)
        w.add_(normal_(buffer, generator), alpha=noise_std)  # the offset is spent: the buffer takes ξ
        new_state = SGLDState(w, buffer, count + 1)
        if not acceptance_every:
            return new_state, SGLDInfo(loss, distance)
        if check:
            log_q_forward = forward_log_density(back.sub_(w), drift, step_size)
            del drift  # so that the proposal's gradient can take its memory
            accept = reverse_acceptance(potential, batch, back, energy_old, log_q_forward, w, step_size, offset=buffer)
        else:
            accept = torch.full_like(loss, float("nan"))
        return new_state, SGLDInfoWithAcceptance(loss, distance, accept)

    return Sampler(init, step)
