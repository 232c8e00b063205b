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

**Per-sample form** (for the probe of :func:`lambdahat.estimate_llc`, the losses ℓ_i(w) of
single samples): a loss may carry a ``per_sample`` attribute, a function of the same form
(``(output, target)`` or ``(model, batch)``) that returns the B per-sample losses, shape (B,),
whose mean is the loss; the ready-made losses below have one. Without it, ℓ_i is the loss of the
one-sample batch i, computed for every sample at once with ``torch.func.vmap`` (for a criterion,
over the model's output and the targets; for a model loss, over the batch, model call included).
:func:`make_per_sample_loss` builds either; the probe checks, before any sampling, that the mean
of the per-sample losses is the loss.

**Per-token form** (``estimate_llc(..., probe=..., probe_per_token=True)``, language models): a
``per_token`` attribute of the same form returning the (B, T) losses of every position of every
sequence, whose mean over positions is the per-sample loss; :func:`next_token` has one.
:func:`make_per_token_loss` builds it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from copy import deepcopy
from typing import Any

import torch.nn.functional as F
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_map

__all__ = ["gaussian_nll", "cross_entropy", "next_token", "is_model_loss", "make_per_sample_loss", "make_per_token_loss"]


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
    return _gaussian_nll_per_sample(output, target).mean()


def _gaussian_nll_per_sample(output: Tensor, target: Tensor) -> Tensor:
    """½ ‖y_i − f(x_i; w)‖² for each sample i, shape (B,)."""
    if output.shape != target.shape:
        raise ValueError(
            f"gaussian_nll: model output has shape {tuple(output.shape)} but targets have shape "
            f"{tuple(target.shape)}; make the model's output match the targets."
        )
    diff = (output - target).reshape(output.shape[0], -1)
    return 0.5 * diff.pow(2).sum(dim=1)


def cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Classification: l = −log softmax(f(x; w))_y, averaged over the batch."""
    return F.cross_entropy(output, target)


def _cross_entropy_per_sample(output: Tensor, target: Tensor) -> Tensor:
    """−log softmax(f(x_i; w))_{y_i} for each sample i, shape (B,) (averaged over any further
    positions, as ``F.cross_entropy`` averages them)."""
    values = F.cross_entropy(output, target, reduction="none")
    return values.reshape(values.shape[0], -1).mean(dim=1)


def _gaussian_nll_per_chain(output: Tensor, target: Tensor) -> Tensor:
    """:func:`gaussian_nll` of K chains' batches at once: output and target (K, B, ...), shape (K,)."""
    chains, batch = output.shape[:2]
    return _gaussian_nll_per_sample(output.flatten(0, 1), target.flatten(0, 1)).view(chains, batch).mean(dim=1)


gaussian_nll.per_sample = _gaussian_nll_per_sample  # type: ignore[attr-defined]
gaussian_nll.per_chain = _gaussian_nll_per_chain  # type: ignore[attr-defined]
cross_entropy.per_sample = _cross_entropy_per_sample  # type: ignore[attr-defined]


def next_token(model: Callable[..., Tensor], batch: Any) -> Tensor:
    """Next-token prediction for a language model that maps token ids (B, T) to logits (B, T, V).

    ``batch`` is a (B, T+1) tensor of token ids or a pair (inputs, targets) of (B, T) tensors;
    l = −log p(x_{t+1} | x_{≤t}), averaged over batch and positions.
    """
    logits, targets = _next_token_logits(model, batch)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _next_token_logits(model: Callable[..., Tensor], batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) == 1:  # torch's collation of a one-tensor dataset
        batch = batch[0]
    if isinstance(batch, (tuple, list)):
        inputs, targets = batch
    else:
        inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = model(inputs)
    if hasattr(logits, "logits"):  # Hugging Face model outputs
        logits = logits.logits
    return logits, targets


def _next_token_per_token(model: Callable[..., Tensor], batch: Any) -> Tensor:
    """−log p(x_{t+1} | x_{≤t}) at every position t of every sequence, shape (B, T)."""
    logits, targets = _next_token_logits(model, batch)
    values = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return values.view(targets.shape[0], -1)


def _next_token_per_sample(model: Callable[..., Tensor], batch: Any) -> Tensor:
    """Each sequence's next-token loss, averaged over its positions, shape (B,): every sequence
    has the same length, so their mean is :func:`next_token`."""
    return _next_token_per_token(model, batch).mean(dim=1)


next_token.per_sample = _next_token_per_sample  # type: ignore[attr-defined]
next_token.per_token = _next_token_per_token  # type: ignore[attr-defined]


def is_model_loss(loss_fn: Callable[..., Tensor]) -> bool:
    """True when ``loss_fn`` takes ``(model, batch)``: its first parameter is named ``model``."""
    if isinstance(loss_fn, nn.Module):
        return False
    try:
        params = list(inspect.signature(loss_fn).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "model"


class ModuleCall:
    """``module`` called on given parameters and buffers: ``ModuleCall(module)(tensors, *args)``
    is ``torch.func.functional_call(module, tensors, args, strict=False)``, at less cost.

    It calls a private copy of the module's structure, made once, whose parameters and buffers
    (shared ones at every place they appear) are set to ``tensors`` by plain assignment before each
    call and never swapped back: nobody else uses the copy, and the user's module is never written
    to. The copy holds no weights of its own and takes each module's train/eval mode from the
    user's module at every call. Results are identical; in a microbenchmark of one
    loss-and-gradient call it took 1.04 → 0.90 ms on a 10k-weight MLP, 0.30 → 0.25 ms on a
    2-weight model (docs/speed.md).
    A call whose ``tensors`` miss a name, or a module that cannot be copied, goes through
    ``functional_call`` instead.
    """

    def __init__(self, module: nn.Module):
        self._module = module
        self._places: dict[str, list[tuple[dict, str]]] | None = None
        named = [("_parameters", name, t) for name, t in module.named_parameters(remove_duplicate=False)]
        named += [("_buffers", name, t) for name, t in module.named_buffers(remove_duplicate=False)]
        try:
            copy = deepcopy(module, memo={id(t): None for _, _, t in named})  # the structure, no weights
        except Exception:  # noqa: BLE001 - an uncopyable module still works, through functional_call
            return
        canonical: dict[int, str] = {}
        places: dict[str, list[tuple[dict, str]]] = {}
        for kind, name, tensor in named:
            owner, _, attr = name.rpartition(".")
            key = canonical.setdefault(id(tensor), name)  # tied tensors: the first name, as named_parameters() gives
            places.setdefault(key, []).append((getattr(copy.get_submodule(owner), kind), attr))
        self._copy, self._places, self._names = copy, places, frozenset(places)
        self._modes = list(zip(module.modules(), copy.modules()))

    def __call__(self, tensors: dict[str, Tensor], *args: Any, **kwargs: Any) -> Any:
        if self._places is None or not self._names <= tensors.keys():
            return functional_call(self._module, tensors, args, kwargs, strict=False)
        for name, tensor in tensors.items():
            for slots, attr in self._places.get(name, ()):
                slots[attr] = tensor
        for original, copied in self._modes:  # train/eval as the user's module is now (dropout, BatchNorm)
            copied.training = original.training
        return self._copy(*args, **kwargs)


class FunctionalModel:
    """A stand-in for the user's module whose calls run on given parameters and buffers through
    ``call`` (the :class:`ModuleCall` of that module, built once by the caller: building one copies
    the module's structure); the module itself is never modified. Attribute access falls through
    to the module."""

    def __init__(self, module: nn.Module, tensors: dict[str, Tensor], call: ModuleCall):
        self._module = module
        self._tensors = tensors
        self._call = call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self._tensors, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def make_batch_loss(
    model: nn.Module, loss_fn: Callable[..., Tensor]
) -> Callable[[dict[str, Tensor], Any], Tensor]:
    """Return ``batch_loss(tensors, batch)``: the user's loss at the given parameters/buffers."""
    call = ModuleCall(model)
    if is_model_loss(loss_fn):

        def batch_loss(tensors: dict[str, Tensor], batch: Any) -> Tensor:
            return loss_fn(FunctionalModel(model, tensors, call), batch)

    else:
        criterion = make_criterion(loss_fn)

        def batch_loss(tensors: dict[str, Tensor], batch: Any) -> Tensor:
            inputs, targets = batch
            return criterion(call(tensors, inputs), targets)

    return batch_loss


def make_stacked_criterion(loss_fn: Callable[..., Tensor]) -> Callable[[Tensor, Any], Tensor] | None:
    """``criterion(outputs, targets) -> (K,)``: ``loss_fn`` on K chains' outputs and targets, each
    (K, B, ...), in one call of its ``per_chain`` form (the library's :func:`gaussian_nll` has one),
    the values in float64 inside :func:`exact_values`; None for a loss without that form."""
    per_chain = getattr(loss_fn, "per_chain", None)
    if per_chain is None or is_model_loss(loss_fn):
        return None
    return _exact_criterion(per_chain, chains=True)


def make_criterion(loss_fn: Callable[..., Tensor]) -> Callable[[Tensor, Any], Tensor] | None:
    """``criterion(outputs, targets)``: an output-form ``loss_fn`` on given model outputs, its value
    in float64 inside :func:`exact_values` (:class:`_ExactValue`); None for a ``(model, batch)`` loss."""
    if is_model_loss(loss_fn):
        return None
    return _exact_criterion(loss_fn)


def _exact_criterion(loss_fn: Callable[[Tensor, Any], Tensor], chains: bool = False) -> Callable[[Tensor, Any], Tensor]:
    """``loss_fn(outputs, targets)`` with its value in float64 inside :func:`exact_values`
    (``chains``: one value per chain of (K, B, ...) outputs, as :class:`_ExactValue` takes it)."""
    exact = _ExactValue(loss_fn, chains=chains)

    def criterion(outputs: Tensor, targets: Any) -> Tensor:
        return exact(loss_fn(outputs, targets), outputs, targets)

    return criterion


#: The largest model output (elements per chain and batch) whose loss is evaluated a second time in
#: float64 (:class:`_ExactValue`): 2 MiB in float64, far below a model's own activations.
EXACT_VALUE_MAX_OUTPUT = 1 << 18


def wide_dtype(like: Tensor) -> torch.dtype:
    """float64, the dtype of the sums in a Metropolis–Hastings ratio: U = nβ L_B and ‖r‖²/(2ε) are
    large against their change over one step (d/2 ≈ 5·10⁴ at d = 10⁵ has a float32 resolution of
    0.004 in log α), except on MPS, which has no float64."""
    return torch.float32 if like.device.type == "mps" else torch.float64


#: True inside :func:`exact_values`: the batch losses evaluated then carry float64 values.
_EXACT = ContextVar("lambdahat_exact_values", default=False)


@contextmanager
def exact_values() -> Iterator[None]:
    """Within this block the criterion-form batch loss returns its value in float64
    (:class:`_ExactValue`): for the evaluations that form a Metropolis–Hastings ratio (a sampler's
    acceptance check, every MALA step), and only those, so an ordinary step costs nothing more."""
    token = _EXACT.set(True)
    try:
        yield
    finally:
        _EXACT.reset(token)


class _ExactValue:
    """The batch loss with its value in float64 and its gradient unchanged, inside :func:`exact_values`.

    A float32 loss is rounded to its last bit, 2⁻²⁴ L, and the sampler multiplies it by nβ: the
    Metropolis–Hastings ratio of a step compares U = nβ L_B at two points, so at L ≈ 4.5 and
    nβ ≈ 8,700 (unit-variance noise in nine outputs, n = 10⁵) the rounding alone moves log α by
    about 0.005, an acceptance ceiling near 0.999 that no step size lifts: the warm-up, aiming
    above it at a small λ̂, would shrink ε without end. So the loss is evaluated once more on the
    outputs cast to float64 (floating targets too), without gradients, and that value is
    returned, carrying the float32 loss's gradient exactly (``loss + (exact − loss)`` with the
    difference detached): the chains' steps are unchanged bit for bit. Only for outputs of at most
    :data:`EXACT_VALUE_MAX_OUTPUT` elements (a language model's logits would cost a float64 copy),
    where the device has float64 (not MPS), and while the loss accepts float64 inputs; otherwise
    the float32 value is returned as it is.
    """

    def __init__(self, loss_fn: Callable[..., Tensor], chains: bool = False):
        self.loss_fn = loss_fn
        self.chains = chains  # the loss of K chains at once: outputs (K, B, ...), one value per chain
        self.works = True  # False once the loss function rejected float64 inputs

    def __call__(self, loss: Tensor, outputs: Any, targets: Any) -> Tensor:
        if not (isinstance(outputs, Tensor) and isinstance(loss, Tensor)):
            return loss
        per = outputs.shape[0] if self.chains else 1
        if not (_EXACT.get() and self.works and outputs.is_floating_point()
                and outputs.dtype != torch.float64 and outputs.numel() <= EXACT_VALUE_MAX_OUTPUT * per
                and wide_dtype(outputs) == torch.float64 and loss.numel() == per):
            return loss
        try:
            with torch.no_grad():
                value = self.loss_fn(outputs.detach().double(), tree_map(_as_float64, targets))
        except (RuntimeError, TypeError, ValueError):  # e.g. a loss that mixes its own float32 tensors in
            self.works = False
            return loss
        if not isinstance(value, Tensor) or value.dtype != torch.float64 or value.shape != loss.shape:
            self.works = False
            return loss
        wide = loss.double()
        return wide + (value - wide.detach())


def _as_float64(leaf: Any) -> Any:
    return leaf.double() if isinstance(leaf, Tensor) and leaf.is_floating_point() else leaf


def make_per_sample_loss(
    model: nn.Module, loss_fn: Callable[..., Tensor]
) -> Callable[[dict[str, Tensor], Any], Tensor]:
    """Return ``per_sample(tensors, batch)``: the B losses ℓ_i of the batch's samples, shape (B,),
    at the given parameters/buffers (the rule is in the module docstring: ``loss_fn.per_sample``
    when there is one, else ``loss_fn`` on each one-sample batch by ``torch.func.vmap``). Whether
    the result really is per-sample (its mean the loss) is checked by the caller, on data."""
    given = getattr(loss_fn, "per_sample", None)
    call = ModuleCall(model)
    if is_model_loss(loss_fn):
        if given is not None:

            def per_sample(tensors: dict[str, Tensor], batch: Any) -> Tensor:
                return given(FunctionalModel(model, tensors, call), batch)

        else:

            def per_sample(tensors: dict[str, Tensor], batch: Any) -> Tensor:
                functional = FunctionalModel(model, tensors, call)

                def one(sample: Any) -> Tensor:
                    return loss_fn(functional, tree_map(lambda leaf: leaf.unsqueeze(0), sample))

                return torch.func.vmap(one)(batch)

    else:
        criterion = given if given is not None else torch.func.vmap(
            lambda output, target: loss_fn(output.unsqueeze(0), target.unsqueeze(0)))

        def per_sample(tensors: dict[str, Tensor], batch: Any) -> Tensor:
            inputs, targets = batch
            return criterion(call(tensors, inputs), targets)

    return per_sample


def make_per_token_loss(
    model: nn.Module, loss_fn: Callable[..., Tensor]
) -> Callable[[dict[str, Tensor], Any], Tensor]:
    """Return ``per_token(tensors, batch)``: the (B, T) losses of every position of every sample,
    from ``loss_fn.per_token`` (same form as ``loss_fn``). A loss without one raises ValueError:
    positions cannot be told apart from outside the loss."""
    given = getattr(loss_fn, "per_token", None)
    if given is None:
        raise ValueError(
            "probe_per_token=True: loss_fn has no per_token attribute, so the losses of single positions cannot be "
            "computed. Use lambdahat.losses.next_token, or give loss_fn a per_token function of the same arguments "
            "returning the (B, T) per-position losses (their mean over positions is the per-sample loss)."
        )
    call = ModuleCall(model)
    if is_model_loss(loss_fn):
        return lambda tensors, batch: given(FunctionalModel(model, tensors, call), batch)

    def per_token(tensors: dict[str, Tensor], batch: Any) -> Tensor:
        inputs, targets = batch
        return given(call(tensors, inputs), targets)

    return per_token
