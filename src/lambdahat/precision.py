"""Mixed precision: the model's forward and backward in bfloat16 or float16 under
``torch.autocast``, with everything the sampler does in float32.

With ``precision="bfloat16"`` (or ``"float16"``) the loss L_B(w) and its gradient are computed
by running the user's model under ``torch.autocast(device_type, dtype)`` (Micikevicius et al.,
"Mixed Precision Training", ICLR 2018): matrix products and convolutions run in the low
precision, reductions and losses in float32 (autocast's own op lists), and the backward pass
follows the forward's dtypes. The sampled weights w stay float32 ("master weights"), and so do
w − w*, the gradient ∇L_B (accumulated into float32 leaves), the noise √ε ξ, the update
w ← w − (ε/2)∇U(w) + √ε ξ and every loss recorded for λ̂ = nβ (E[L_n(w)] − L_n(w*)). This is
what keeps SGLD correct: its steps (ε/2)∇U and √ε ξ are far below bfloat16's resolution at the
weights' scale (8 significant bits), so a model whose *weights* are bfloat16 rounds them away
and λ̂ is biased, while under autocast only the forward's arithmetic is rounded. L_n(w*) is
computed the same way as the draws' losses, so a rounding offset common to both cancels in λ̂.

float16 has a narrower exponent range than bfloat16; its backward runs with a fixed loss scale
(the gradient of ``FLOAT16_LOSS_SCALE`` × L, divided back in float32), enough for losses of
order one; an overflow gives a non-finite gradient, which the run reports as a divergence.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["PRECISIONS", "AutocastLoss", "precision_name", "with_precision", "FLOAT16_LOSS_SCALE"]

#: The accepted values of the ``precision`` setting; "float32" runs the model as it is.
PRECISIONS = ("float32", "bfloat16", "float16")

#: float16's static loss scale (a power of two: the division back is exact).
FLOAT16_LOSS_SCALE = 2.0**10


def precision_name(value: Any) -> str:
    """The setting's canonical name for ``value``: one of :data:`PRECISIONS`, or the torch dtype."""
    if isinstance(value, torch.dtype):
        value = str(value).removeprefix("torch.")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    if isinstance(value, str):
        value = aliases.get(value.lower(), value.lower())
    if value not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {PRECISIONS} (or the torch dtype), got {value!r}; 'bfloat16' runs the "
            "model's forward and backward under torch.autocast with float32 weights, noise and losses."
        )
    return value


class AutocastLoss:
    """``loss_fn`` marked to run the model under ``torch.autocast(dtype)`` when lambdahat
    evaluates L_B(w) and ∇L_B(w) (:class:`lambdahat.potential.Potential` applies it). Called
    directly it is ``loss_fn``; its signature and attributes (``per_sample``, ``per_token``) are
    ``loss_fn``'s, so the loss form is recognised as before. Picklable when ``loss_fn`` is."""

    def __init__(self, loss_fn: Callable[..., Tensor], precision: str):
        self.loss_fn = loss_fn
        self.precision = precision_name(precision)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.loss_fn(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.loss_fn)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("loss_fn", "precision"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.loss_fn, name)

    def __repr__(self) -> str:
        return f"AutocastLoss({self.loss_fn!r}, {self.precision!r})"


def with_precision(loss_fn: Callable[..., Tensor], precision: Any) -> Callable[..., Tensor]:
    """``loss_fn`` itself for float32 (nothing changes), else wrapped in :class:`AutocastLoss`."""
    precision = precision_name(precision)
    if isinstance(loss_fn, AutocastLoss):
        loss_fn = loss_fn.loss_fn
    return loss_fn if precision == "float32" else AutocastLoss(loss_fn, precision)


def autocast_batch_loss(batch_loss: Callable[[dict[str, Tensor], Any], Tensor], precision: str,
                        device_type: str) -> Callable[[dict[str, Tensor], Any], Tensor]:
    """``batch_loss`` with its forward under ``torch.autocast(device_type, precision)``, the loss
    returned in float32 (float16's loss scale is applied by the backward pass: :func:`loss_scale`)."""
    dtype = getattr(torch, precision)

    def low_precision_loss(tensors: dict[str, Tensor], batch: Any) -> Tensor:
        with torch.autocast(device_type=device_type, dtype=dtype):
            loss = batch_loss(tensors, batch)
        return loss.float()

    return low_precision_loss


def loss_scale(precision: str | None) -> float:
    """The factor the backward pass's loss is multiplied by (and the gradient divided by)."""
    return FLOAT16_LOSS_SCALE if precision == "float16" else 1.0
