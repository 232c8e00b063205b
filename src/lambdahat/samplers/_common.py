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

from ..losses import wide_dtype

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


def _log_density_of_residual(resid: Tensor, step_size: float, precond: Tensor | float) -> Tensor:
    """−‖r‖²_{P⁻¹} / (2ε) per chain for a residual r of the Langevin proposal N(w − (ε/2) P ∇U(w), ε P);
    overwrites ``resid``."""
    return -resid.square_().div_(precond).sum(dim=-1, dtype=wide_dtype(resid)) / (2 * step_size)


def log_proposal_density(
    to: Tensor,
    frm: Tensor,
    grad_u: Tensor,
    step_size: float,
    precond: Tensor | float = 1.0,
    buffers: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """log q(to | frm) up to a constant shared by both directions, for the Langevin proposal
    q(·|w) = N(w − (ε/2) P ∇U(w), ε P) with a diagonal preconditioner P (1 for plain SGLD).
    ``buffers``: two tensors of w's shape to overwrite instead of allocating temporaries (the
    same floating-point operations, so the same result bit for bit)."""
    if buffers is None:
        resid = to - frm + (0.5 * step_size) * precond * grad_u
    else:
        scratch, spare = buffers
        resid = torch.sub(to, frm, out=scratch).add_(torch.mul(grad_u, (0.5 * step_size) * precond, out=spare))
    return _log_density_of_residual(resid, step_size, precond)


def langevin_log_accept(
    w: Tensor,
    u: Tensor,
    grad_u: Tensor,
    w_new: Tensor,
    u_new: Tensor,
    grad_u_new: Tensor,
    step_size: float,
    precond: Tensor | float = 1.0,
    buffers: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The Metropolis–Hastings log ratio of a Langevin move w → w' (Roberts & Tweedie 1996):

        log α = U(w) − U(w') + log q(w | w') − log q(w' | w),

    per chain. The same P is used in both directions (for RMSProp-SGLD it is the step's P).
    ``buffers``: as for :func:`log_proposal_density` (two full-size tensors that may be overwritten)."""
    return (
        u
        - u_new
        + log_proposal_density(w, w_new, grad_u_new, step_size, precond, buffers)
        - log_proposal_density(w_new, w, grad_u, step_size, precond, buffers)
    )


def acceptance_probability(log_alpha: Tensor) -> Tensor:
    """min(1, exp(log α)), with NaN (a non-finite ratio) kept as NaN."""
    return torch.exp(torch.clamp(log_alpha, max=0.0))


def forward_log_density(back: Tensor, grad_energy: Tensor, step_size: float, precond: Tensor | float = 1.0) -> Tensor:
    """log q(w' | w) of :func:`log_proposal_density` without a full-size temporary, from
    ``back`` = w − w' and ∇U(w); overwrites ``grad_energy`` (``back`` is kept for
    :func:`reverse_acceptance`). The same floating-point operations in the same order: the
    residual (w' − w) + (ε/2) P ∇U(w) is formed as (ε/2) P ∇U(w) − (w − w'), which rounds
    identically because a − b = −(b − a) exactly."""
    resid = grad_energy.mul_((0.5 * step_size) * precond).sub_(back)
    return _log_density_of_residual(resid, step_size, precond)


def reverse_acceptance(
    potential,
    batch,
    back: Tensor,
    energy: Tensor,
    log_q_forward: Tensor,
    w_new: Tensor,
    step_size: float,
    precond: Tensor | float = 1.0,
    offset: Tensor | None = None,
) -> Tensor:
    """The MALA acceptance probability of the Langevin move w → w' on ``batch``, as
    :func:`langevin_log_accept` computes it (bit for bit), given ``back`` = w − w', U(w) and
    log q(w' | w) from :func:`forward_log_density`: one evaluation of the potential at w', its
    gradient reused as the residual's buffer. ``offset``: a buffer of w's shape that may be
    overwritten (w' − w*). With ∇U(w) already released by the caller, the check holds one
    full-size vector (``back``) beyond the sampler's own."""
    new = potential(w_new, batch, offset, exact=True)
    grad_new = new.grad_energy  # ∇U first, so that U squares the offset in place
    energy_new = new.energy
    resid = grad_new.mul_((0.5 * step_size) * precond).add_(back)  # (w − w') + (ε/2) P ∇U(w')
    log_q_reverse = _log_density_of_residual(resid, step_size, precond)
    log_alpha = energy - energy_new + log_q_reverse - log_q_forward
    return acceptance_probability(log_alpha).to(energy.dtype)
