"""Loss functions and the adaptor that turns a user's loss into ``loss(model, batch)``.

Two forms of ``loss_fn`` are accepted by :func:`lambdahat.estimate_llc`:

* a **criterion** called as ``loss_fn(model(inputs), targets)`` -- any ``nn.Module`` loss
  (``nn.MSELoss()``, ``nn.CrossEntropyLoss()``) or a plain function such as
  ``torch.nn.functional.mse_loss``; the batch must then be an ``(inputs, targets)`` pair;
* a **model loss** called as ``loss_fn(model, batch)`` -- a function whose first parameter is
  named ``model`` (language models, custom losses). Inside it, call ``model(...)``: the call is
  routed to the sampled parameters; other attributes of the model are read as usual.

Either way the loss must be the **mean** over the batch of a per-sample loss
l(w; x, y) = -log p(y | x, w), so that the estimator's nβ means what it says (Lau et al.,
arXiv 2308.12108, §2). The ready-made losses below follow that convention.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["gaussian_nll", "cross_entropy", "next_token", "is_model_loss"]


def gaussian_nll(output: Tensor, target: Tensor) -> Tensor:
    """Negative log-likelihood of unit-variance Gaussian noise, without the constant.

    l(w; x, y) = ½ ‖y − f(x; w)‖², summed over output dimensions, averaged over the batch.
    Unlike ``nn.MSELoss`` (which averages over output dimensions too and drops the ½), this is
    the loss for which the exact learning coefficients of ``lambdahat.truth`` hold at the stated nβ.
    """
    if output.shape != target.shape:
        raise ValueError(
            f"gaussian_nll: model output has shape {tuple(output.shape)} but targets have shape "
            f"{tuple(target.shape)}; make the model's output match the targets."
        )
    diff = (output - target).reshape(output.shape[0], -1)
    return 0.5 * diff.pow(2).sum(dim=1).mean()


def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Classification: l = −log softmax(f(x; w))_y, averaged over the batch."""
    return F.cross_entropy(output, target)


def next_token(model: Callable[..., Tensor], batch: Any) -> Tensor:
    """Next-token prediction for a language model that maps token ids (B, T) to logits (B, T, V).

    ``batch`` is a (B, T+1) tensor of token ids or a pair (inputs, targets) of (B, T) tensors;
    l = −log p(x_{t+1} | x_{≤t}), averaged over batch and positions.
    """
    if isinstance(batch, (tuple, list)) and len(batch) == 1:  # torch's collation of a one-tensor dataset
        batch = batch[0]
    if isinstance(batch, (tuple, list)):
        inputs, targets = batch
    else:
        inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = model(inputs)
    if hasattr(logits, "logits"):  # Hugging Face model outputs
        logits = logits.logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def is_model_loss(loss_fn: Callable[..., Tensor]) -> bool:
    """True when ``loss_fn`` takes ``(model, batch)``: its first parameter is named ``model``."""
    if isinstance(loss_fn, nn.Module):
        return False
    try:
        params = list(inspect.signature(loss_fn).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "model"


class FunctionalModel:
    """A stand-in for the user's module whose calls run on given parameters and buffers.

    Calling it is ``torch.func.functional_call(module, tensors, args, kwargs)``; the module
    itself is never modified. Attribute access falls through to the module.
    """

    def __init__(self, module: nn.Module, tensors: dict[str, Tensor]):
        self._module = module
        self._tensors = tensors

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self._module, self._tensors, args, kwargs, strict=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def make_batch_loss(
    model: nn.Module, loss_fn: Callable[..., Tensor]
) -> Callable[[dict[str, Tensor], Any], Tensor]:
    """Return ``batch_loss(tensors, batch)``: the user's loss at the given parameters/buffers."""
    if is_model_loss(loss_fn):

        def batch_loss(tensors: dict[str, Tensor], batch: Any) -> Tensor:
            return loss_fn(FunctionalModel(model, tensors), batch)

    else:

        def batch_loss(tensors: dict[str, Tensor], batch: Any) -> Tensor:
            inputs, targets = batch
            output = functional_call(model, tensors, (inputs,), strict=False)
            return loss_fn(output, targets)

    return batch_loss
