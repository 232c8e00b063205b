"""K chains of a multilayer perceptron in one forward pass, by batched matrix products.

The vectorised chains (``chain_mode="vectorized"``) evaluate the model once for K parameter
vectors. In general that is ``torch.func.vmap`` over the model call, whose batching of every
operator and of its inputs costs a fixed time per call: on a 10,497-weight ReLU MLP (4 chains,
batch 256, one thread) the loss and gradient took 1.6 ms through vmap and 1.15 ms through the
batched products below, with the same bits (vmap lowers a linear layer with a batched weight to
the same ``baddbmm``). Where the model is an ``nn.Sequential`` of ``nn.Linear`` layers and
elementwise activations, which covers the multilayer perceptrons and deep linear networks of
singular learning theory's experiments, :func:`build` gives that direct path; any other model
(or input it does not expect) goes through vmap as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ELEMENTWISE", "build"]

#: Modules that act on each element alone, with no parameters, buffers or randomness: they give
#: the same values on a (K, B, F) stack of K chains' activations as on each chain's (B, F).
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Tanhshrink,
    nn.Softsign,
)


def build(model: nn.Module, names: Sequence[str], criterion: Callable[[Tensor, Any], Tensor],
          stacked_criterion: Callable[[Tensor, Any], Tensor] | None = None,
          ) -> Callable[[Sequence[Tensor], Any, bool], Tensor | None] | None:
    """``forward(pieces, batch, shared_batch) -> losses (K,)`` for ``model``, or None where it is
    not an MLP of the form above whose every parameter is sampled (``names``, in the order of
    ``model.named_parameters()``) with no hooks anywhere.

    ``pieces`` are the sampled parameters with a leading chain dimension, (K, *shape) each, or
    without one (one point for all K per-chain batches, as ``F.linear`` on (K, B, in) inputs);
    ``batch`` is ``(inputs, targets)``, inputs (B, in) shared by every chain or (K, B, in) one
    batch per chain. Each chain's loss is ``criterion(outputs_k, targets_k)``, the user's loss on
    that chain's outputs (vmapped), or ``stacked_criterion(outputs, targets)`` of all chains'
    (K, B, ...) outputs and targets at once where the loss has such a form (vmap's fixed cost per
    call was a third of an adaptive run on a 116-weight network). ``forward`` returns None for
    inputs of another form (the caller then takes the general path)."""
    layers = _layers(model, names)
    if layers is None:
        return None
    # the loss per chain through vmap: its batching rules are the general path's, so are the bits
    # (a loop over the chains gives a cross-entropy rounded differently)
    losses = {shared: torch.func.vmap(criterion, in_dims=(0, None if shared else 0)) for shared in (True, False)}

    def forward(pieces: Sequence[Tensor], batch: Any, shared_batch: bool) -> Tensor | None:
        if not (isinstance(batch, tuple | list) and len(batch) == 2 and isinstance(batch[0], Tensor)):
            return None
        inputs, targets = batch
        shared_weights = pieces[0].dim() == 2  # one point for every chain's batch (L_B(w*) of each)
        if inputs.dim() != (2 if shared_batch else 3) or not inputs.is_floating_point() or (shared_weights and shared_batch):
            return None
        k = inputs.shape[0] if shared_weights else pieces[0].shape[0]
        h = inputs.expand(k, *inputs.shape) if shared_batch else inputs
        it = iter(pieces)
        for layer in layers:
            if isinstance(layer, nn.Linear):
                weight, bias = next(it), (next(it) if layer.bias is not None else None)
                if shared_weights:
                    h = nn.functional.linear(h, weight, bias)
                elif bias is None:
                    h = torch.bmm(h, weight.transpose(1, 2))
                else:
                    h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            else:
                h = layer(h)
        if stacked_criterion is not None and isinstance(targets, Tensor):
            return stacked_criterion(h, targets.expand(k, *targets.shape) if shared_batch else targets)
        return losses[shared_batch](h, targets)

    return forward


def _layers(model: nn.Module, names: Sequence[str]) -> list[nn.Module] | None:
    """The model's layers when it is a plain ``nn.Sequential`` of ``nn.Linear`` layers and
    :data:`ELEMENTWISE` modules, every parameter sampled, no buffers, no tied weights and no
    hooks; else None."""
    if type(model) is not nn.Sequential or _hooked(model):
        return None
    layers = list(model)
    if not layers or type(layers[0]) is not nn.Linear:  # the shared inputs are only read by a product
        return None
    expected: list[str] = []
    for index, layer in enumerate(layers):
        if _hooked(layer):
            return None
        if type(layer) is nn.Linear:
            expected.append(f"{index}.weight")
            if layer.bias is not None:
                expected.append(f"{index}.bias")
        elif type(layer) not in ELEMENTWISE:
            return None
    all_params = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    if list(names) != expected or all_params != expected or any(True for _ in model.buffers()):
        return None
    if len({id(p) for p in model.parameters()}) != len(expected):
        return None
    return layers


def _hooked(module: nn.Module) -> bool:
    """Any forward hook on ``module``, or any global one: they may do what a stack would not."""
    from torch.nn.modules import module as torch_module

    return bool(module._forward_hooks or module._forward_pre_hooks or torch_module._global_forward_hooks
                or torch_module._global_forward_pre_hooks)
