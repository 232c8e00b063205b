"""Pieces the samplers share: per-chain noise and the Langevin acceptance ratio. (The localised
potential itself is :class:`lambdahat.potential.LocalizedPotential`.)

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
    potential,
    batch,
    w: Tensor,
    energy: Tensor,
    grad_energy: Tensor,
    w_new: Tensor,
    step_size: float,
    precond: Tensor | float = 1.0,
) -> Tensor:
    """The MALA acceptance probability of an unadjusted Langevin move w → w' on ``batch``, given
    U(w) and ∇U(w): one extra evaluation of the potential at w', for the SGLD-type samplers'
    step-size diagnostic."""
    new = potential(w_new, batch)
    log_alpha = langevin_log_accept(w, energy, grad_energy, w_new, new.energy, new.grad_energy, step_size, precond)
    return acceptance_probability(log_alpha).to(energy.dtype)
