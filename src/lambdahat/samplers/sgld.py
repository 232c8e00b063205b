"""Stochastic-gradient Langevin dynamics on the localised tempered posterior.

Welling & Teh (2011), in the convention of Lau et al., "The Local Learning Coefficient",
arXiv 2308.12108, and of devinterp's ``lr``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["SGLDState", "SGLDInfo", "build"]


class SGLDState(NamedTuple):
    params: Tensor  # w_t, flat
    noise: Tensor  # reused buffer for ξ_t


class SGLDInfo(NamedTuple):
    loss: Tensor  # L_B(w_t), the batch loss before the step (a 0-d tensor, not synced)
    distance: Tensor  # ‖w_t − w*‖


def build(
    loss_and_grad: Callable[[Tensor, Any], tuple[Tensor, Tensor]],
    w_star: Tensor,
    *,
    step_size: float,
    nbeta: float,
    localization: float,
):
    """SGLD targeting p(w) ∝ exp(−nβ L_n(w) − (γ/2)‖w − w*‖²).

    With a minibatch B_t and its mean loss L_B, one step is

        w_{t+1} = w_t − (ε/2) [ nβ ∇L_B(w_t) + γ (w_t − w*) ] + √ε ξ_t,   ξ_t ~ N(0, I),

    so ε (``step_size``) is both the step size and the noise variance: with the noise removed,
    γ = 0 and nβ = 1 the step is gradient descent with learning rate ε/2. (blackjax and
    posteriors write w + h ∇log p + N(0, 2h); their h is ε/2.)

    ``step`` updates ``state.params`` in place and returns the same state.
    """
    from . import Sampler

    half_step = step_size / 2
    noise_std = math.sqrt(step_size)

    def init(params: Tensor) -> SGLDState:
        params = params.detach().clone()
        return SGLDState(params, torch.empty_like(params))

    @torch.no_grad()
    def step(state: SGLDState, batch: Any, generator: torch.Generator) -> tuple[SGLDState, SGLDInfo]:
        w, noise = state
        loss, grad = loss_and_grad(w, batch)
        offset = w - w_star
        distance = torch.linalg.vector_norm(offset)
        # drift = nβ ∇L_B + γ (w − w*), built in the gradient's buffer
        drift = grad.mul_(nbeta).add_(offset, alpha=localization)
        w.add_(drift, alpha=-half_step)
        noise.normal_(generator=generator)
        w.add_(noise, alpha=noise_std)
        return state, SGLDInfo(loss, distance)

    return Sampler(init, step)
