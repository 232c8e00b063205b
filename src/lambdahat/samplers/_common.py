"""Pieces every sampler shares: per-chain noise, the localised potential and the Langevin
acceptance ratio.

Samplers work on a flat parameter vector ``w`` of shape (d,) for one chain, or (K, d) for K
chains stepped together. Every reduction runs over the last dimension, so per-chain quantities
(distance, kinetic energy, acceptance) have shape () or (K,). ``generator`` is one
``torch.Generator`` (all of ``w`` draws from it) or a sequence of K generators, one per row:
with one generator per chain, a chain's noise is the same whether it runs alone or stacked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator]


def normal_(buffer: Tensor, generator: Generators) -> Tensor:
    """Fill ``buffer`` with N(0, 1) draws in place: row k from ``generator[k]`` when a sequence is
    given, else all from the one generator."""
    if isinstance(generator, torch.Generator):
        return buffer.normal_(generator=generator)
    for row, gen in zip(buffer, generator, strict=True):
        row.normal_(generator=gen)
    return buffer


def uniform(like: Tensor, generator: Generators) -> Tensor:
    """U(0, 1) draws shaped like ``like`` (one per chain), from the chain's own generator."""
    out = torch.empty_like(like)
    if isinstance(generator, torch.Generator) or out.dim() == 0:
        gen = generator if isinstance(generator, torch.Generator) else generator[0]
        return out.uniform_(generator=gen)
    for row, gen in zip(out, generator, strict=True):
        row.uniform_(generator=gen)
    return out


def drift_(grad: Tensor, offset: Tensor, nbeta: float, localization: float) -> Tensor:
    """∇U = nβ ∇L_B(w) + γ (w − w*), built in ``grad``'s buffer (which it overwrites and returns):
    the one place the localised potential's gradient is formed. ``offset`` is w − w*."""
    return grad.mul_(nbeta).add_(offset, alpha=localization)


def potential(loss: Tensor, w: Tensor, w_star: Tensor, nbeta: float, localization: float) -> Tensor:
    """U(w) = nβ L(w) + (γ/2)‖w − w*‖², per chain."""
    return nbeta * loss + 0.5 * localization * (w - w_star).square().sum(dim=-1)


def log_proposal_density(to: Tensor, frm: Tensor, grad_u: Tensor, step_size: float, precond: Tensor | float = 1.0) -> Tensor:
    """log q(to | frm) up to a constant shared by both directions, for the Langevin proposal
    q(·|w) = N(w − (ε/2) P ∇U(w), ε P) with a diagonal preconditioner P (1 for plain SGLD)."""
    resid = to - frm + (0.5 * step_size) * precond * grad_u
    return -(resid.square() / precond).sum(dim=-1) / (2 * step_size)


def langevin_log_accept(
    w: Tensor,
    u: Tensor,
    grad_u: Tensor,
    w_new: Tensor,
    u_new: Tensor,
    grad_u_new: Tensor,
    step_size: float,
    precond: Tensor | float = 1.0,
) -> Tensor:
    """The Metropolis–Hastings log ratio of a Langevin move w → w' (Roberts & Tweedie 1996):

        log α = U(w) − U(w') + log q(w | w') − log q(w' | w),

    per chain. The same P is used in both directions (for RMSProp-SGLD it is the step's P)."""
    return (
        u
        - u_new
        + log_proposal_density(w, w_new, grad_u_new, step_size, precond)
        - log_proposal_density(w_new, w, grad_u, step_size, precond)
    )


def acceptance_probability(log_alpha: Tensor) -> Tensor:
    """min(1, exp(log α)), with NaN (a non-finite ratio) kept as NaN."""
    return torch.exp(torch.clamp(log_alpha, max=0.0))


def proposal_acceptance(
    loss_and_grad,
    batch,
    w_star: Tensor,
    nbeta: float,
    localization: float,
    step_size: float,
    w: Tensor,
    loss: Tensor,
    grad_u: Tensor,
    w_new: Tensor,
    precond: Tensor | float = 1.0,
) -> Tensor:
    """The MALA acceptance probability of an unadjusted Langevin move w → w' on ``batch``: one
    extra loss-and-gradient evaluation at w', for the SGLD-type samplers' step-size diagnostic."""
    loss_new, grad_new = loss_and_grad(w_new, batch)
    grad_u_new = drift_(grad_new, w_new - w_star, nbeta, localization)
    log_alpha = langevin_log_accept(
        w,
        potential(loss, w, w_star, nbeta, localization),
        grad_u,
        w_new,
        potential(loss_new, w_new, w_star, nbeta, localization),
        grad_u_new,
        step_size,
        precond,
    )
    return acceptance_probability(log_alpha).to(loss.dtype)
