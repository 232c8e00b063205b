"""The model as a pure function of a flat parameter vector, the loss at w*, and the localised
potential the samplers target.

The sampled parameters (all trainable ones, or the subset chosen for a weight-refined LLC) are
packed into one flat vector w; the rest stay frozen at w*. ``loss(w, batch)`` runs the user's
model on views of w through :class:`lambdahat.losses.ModuleCall` (``torch.func.functional_call``'s
effect on a private weightless copy of the module), so the user's module is never written to.
Buffers are cloned once, so even a model sampled in train mode (BatchNorm updating its running
statistics) leaves the user's buffers as they were.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import stacked_mlp
from .data import DataSource
from .losses import exact_values, make_batch_loss, make_criterion, make_stacked_criterion, wide_dtype
from .precision import AutocastLoss, autocast_batch_loss, loss_scale, with_precision

__all__ = ["Potential", "LocalizedPotential", "LocalizedValue", "select_params", "default_nbeta", "LOW_PRECISION",
           "with_precision"]

#: Parameter dtypes too coarse for SGLD's small steps (see the warning in :class:`Potential`).
LOW_PRECISION = ("bfloat16", "float16")

ParamSelector = Sequence[str] | Callable[[str, Tensor], bool] | Mapping[str, Tensor] | None


def default_nbeta(n: int) -> float:
    """nβ = n / log n, the paper's β* = 1 / log n (Lau et al., arXiv 2308.12108; Watanabe 2013)."""
    if n < 2:
        raise ValueError("nbeta=None means n / log n, which needs n ≥ 2 samples; pass nbeta explicitly.")
    return n / math.log(n)


def select_params(model: nn.Module, sampled_params: ParamSelector) -> list[str]:
    """Names of the parameters to sample: all trainable ones, or those chosen by name/predicate.

    A name selects that parameter, or every parameter under it when it names a submodule
    (``"blocks.0.attn"``). A mapping ``{parameter name: boolean mask of its shape}`` selects
    single entries (e.g. the rows of one attention head); see :func:`check_masks`.
    """
    if isinstance(sampled_params, Mapping):
        return list(check_masks(model, sampled_params))
    if sampled_params is None:
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError(
                "model has no trainable parameters (none with requires_grad=True); "
                "make the parameters to measure trainable, or choose them with sampled_params."
            )
        return trainable
    if not (callable(sampled_params) or isinstance(sampled_params, (str, Sequence))):
        raise TypeError(
            f"sampled_params must be parameter names or submodule prefixes, a predicate (name, param) -> bool, or "
            f"{{name: boolean mask}}; got {type(sampled_params).__name__} {sampled_params!r}."
        )
    if callable(sampled_params):
        chosen = [name for name, p in model.named_parameters() if sampled_params(name, p)]
    else:
        if isinstance(sampled_params, str):
            sampled_params = [sampled_params]
        all_names = [name for name, _ in model.named_parameters()]
        chosen = []
        for prefix in sampled_params:
            hits = [n for n in all_names if n == prefix or n.startswith(prefix + ".")]
            if not hits:
                raise ValueError(
                    f"sampled_params: {prefix!r} names no parameter or submodule of the model; "
                    f"parameter names look like {all_names[:5]}."
                )
            chosen += [n for n in hits if n not in chosen]
    if not chosen:
        raise ValueError("sampled_params selected no parameters; check the names or the predicate.")
    return chosen


def check_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Validate ``{parameter name: boolean mask}``; return the masks that select anything."""
    named = dict(model.named_parameters())
    kept = {}
    for name, mask in masks.items():
        if name not in named:
            raise ValueError(
                f"sampled_params: mask key {name!r} is not a parameter name (masks need exact names, "
                f"not submodule prefixes); parameter names look like {list(named)[:5]}."
            )
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != named[name].shape:
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(
                f"sampled_params[{name!r}] must be a torch.bool tensor of the parameter's shape "
                f"{tuple(named[name].shape)}, got {got}."
            )
        if bool(mask.any()):
            kept[name] = mask
    if not kept:
        raise ValueError("sampled_params: the masks select no weights; set at least one entry to True.")
    return kept


class Potential:
    """The model's loss as a function of the flat vector w of sampled parameters.

    Attributes: ``w_star`` (the flat point measured, a detached copy), ``names``, ``shapes``,
    ``num_params`` (d, the number of sampled weights).

    With ``masks`` (``{name: boolean mask}``), only the masked entries of those parameters are in
    w; the others stay at their values in w*, so drift and noise never touch them.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., Tensor],
        sampled_names: Sequence[str],
        masks: Mapping[str, Tensor] | None = None,
    ):
        self.model = model
        #: "float32", or the autocast dtype of the forward and backward (:mod:`lambdahat.precision`)
        self.precision = loss_fn.precision if isinstance(loss_fn, AutocastLoss) else "float32"
        self._loss_fn = loss_fn.loss_fn if isinstance(loss_fn, AutocastLoss) else loss_fn
        self._batch_loss = make_batch_loss(model, self._loss_fn)
        self._loss_scale = loss_scale(self.precision)
        named = dict(model.named_parameters())
        self.names = list(sampled_names)
        dtypes = sorted({str(named[n].dtype).removeprefix("torch.") for n in self.names})
        if len(dtypes) > 1:
            raise ValueError(
                f"model: the sampled parameters mix dtypes ({', '.join(dtypes)}); cast the model to one dtype first "
                "(e.g. model.float() or model.double())."
            )
        if dtypes[0] in LOW_PRECISION:
            warnings.warn(
                f"model: the sampled parameters are {dtypes[0]}. SGLD's steps (ε/2)∇U and noise √ε ξ are far below "
                f"{dtypes[0]}'s resolution at the weights' scale, so updates round away and λ̂ is biased (measured on a "
                "4-3-2 deep linear network: 4.92 in bfloat16 against 3.29 in float32, truth 3.5), and the checks cannot "
                "see it. Estimate a float32 copy instead: copy.deepcopy(model).float(), with precision='bfloat16' for a "
                "bfloat16 forward and backward under torch.autocast (float32 weights, noise and losses).",
                UserWarning,
                stacklevel=3,
            )
        if self.precision != "float32":
            self._batch_loss = autocast_batch_loss(self._batch_loss, self.precision, named[self.names[0]].device.type)
        self.shapes = [named[n].shape for n in self.names]
        masks = masks or {}
        # for a masked parameter: the flat indices sampled, and the frozen values around them
        self._masked = {
            n: (masks[n].to(named[n].device).reshape(-1).nonzero().squeeze(1), named[n].detach().reshape(-1).clone())
            for n in self.names
            if n in masks
        }
        self.numels = [len(self._masked[n][0]) if n in self._masked else named[n].numel() for n in self.names]
        self.num_params = sum(self.numels)
        sampled = set(self.names)
        # everything the model call needs besides w: the frozen parameters and cloned buffers
        self._fixed = {n: p.detach() for n, p in named.items() if n not in sampled}
        self._fixed.update({n: b.detach().clone() for n, b in model.named_buffers()})
        with torch.no_grad():
            pieces = [
                self._masked[n][1][self._masked[n][0]] if n in self._masked else named[n].detach().reshape(-1)
                for n in self.names
            ]
            self.w_star = torch.cat(pieces)  # a copy already: cat never returns a view
        self._binding: tuple[Tensor, list[Tensor], dict[str, Tensor]] | None = None

    def tensors(self, w: Tensor) -> dict[str, Tensor]:
        """Parameters and buffers for the model call: views of w for the sampled ones."""
        return self._tensors_of(self._pieces(w))

    def _pieces(self, w: Tensor) -> list[Tensor]:
        """Views of w, one per sampled parameter, over w's last dimension: shaped like the
        parameter (after any leading chain dimension), or flat for a masked one."""
        pieces = torch.split(w, self.numels, dim=-1)
        lead = w.shape[:-1]
        return [piece if name in self._masked else piece.view((*lead, *shape))
                for name, piece, shape in zip(self.names, pieces, self.shapes)]

    def _tensors_of(self, pieces: Sequence[Tensor]) -> dict[str, Tensor]:
        """``tensors`` from the pieces of :meth:`_pieces` (of one chain)."""
        tensors = dict(self._fixed)
        for name, piece, shape in zip(self.names, pieces, self.shapes):
            if name in self._masked:
                index, frozen = self._masked[name]
                piece = frozen.index_put((index,), piece).view(shape)  # out of place: differentiable in piece
            tensors[name] = piece
        return tensors

    def loss(self, w: Tensor, batch: Any) -> Tensor:
        """The user's (batch-mean) loss at w."""
        return self._batch_loss(self.tensors(w), batch)

    def _new_leaves(self, w: Tensor) -> list[Tensor]:
        """The pieces of w (views, no copy) as autograd leaves, shaped like the parameters so that
        no view node of the forward's start delays the gradient accumulation to the end of the
        backward pass."""
        return [piece.detach().requires_grad_(True) for piece in self._pieces(w)]

    def _gradient_slots(self, leaves: list[Tensor], w: Tensor) -> Tensor:
        """One zeroed flat gradient shaped like w, each leaf's ``.grad`` preset to its slice.

        Autograd adds each parameter's gradient into that slice in place as soon as it is
        computed, so the flat gradient is built without ever holding a second copy: a single
        flat leaf would hold every parameter's gradient and then their concatenation (twice the
        parameter bytes)."""
        grad = torch.zeros_like(w)
        for leaf, slot in zip(leaves, self._pieces(grad)):
            leaf.grad = slot
        return grad

    def _bound(self, w: Tensor) -> tuple[list[Tensor], dict[str, Tensor]]:
        """The leaves of :meth:`_new_leaves` and the tensors of the model call built from them,
        made once per w and reused: the samplers update w in place, and the leaves are views of
        it. Not for masked parameters, whose tensors are rebuilt from the leaves at every call."""
        if self._binding is None or self._binding[0] is not w:
            leaves = self._new_leaves(w)
            self._binding = (w, leaves, self._tensors_of(leaves))
        return self._binding[1], self._binding[2]

    def loss_and_grad(self, w: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        """Loss at w (detached) and its gradient with respect to w, flat (a fresh tensor)."""
        with torch.enable_grad():
            if self._masked:
                leaves = self._new_leaves(w)
                tensors = self._tensors_of(leaves)
            else:
                leaves, tensors = self._bound(w)
            grad = self._gradient_slots(leaves, w)
            loss = self._batch_loss(tensors, batch)
            self._backward(loss, leaves, grad)
            for leaf in leaves:  # the gradient belongs to the caller alone (a sampler may reuse its memory)
                leaf.grad = None
        return loss.detach(), grad

    def _backward(self, loss: Tensor, leaves: list[Tensor], grad: Tensor) -> None:
        """∇ of ``loss`` into the leaves' slots of ``grad`` (through a loss scale for float16)."""
        if self._loss_scale == 1.0:
            torch.autograd.backward(loss, inputs=leaves)
        else:
            torch.autograd.backward(loss * self._loss_scale, inputs=leaves)
            grad.div_(self._loss_scale)

    def stacked_loss_and_grad(self, shared_batch: bool) -> Callable[[Tensor, Any], tuple[Tensor, Tensor]]:
        """``(w, batch) -> (loss, grad)`` for K chains at once: w is (K, d); the batch is shared
        by every chain (``shared_batch``) or has a leading chain dimension. The forward pass is
        one ``torch.func.vmap`` over the chains, built once here (for an MLP, the batched products
        of :mod:`lambdahat.stacked_mlp`, with the same bits); the chains' losses are independent,
        so one ordinary backward pass of their sum gives every chain's own gradient, accumulated
        into one (K, d) tensor as in :meth:`loss_and_grad`, whose leaves it reuses in the same way."""
        per_chain = torch.func.vmap(
            lambda pieces, batch: self._batch_loss(self._tensors_of(pieces), batch),
            in_dims=(0, None if shared_batch else 0),
        )
        direct = self._stacked_mlp()

        def loss_and_grad(w: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
            with torch.enable_grad():
                leaves = self._new_leaves(w) if self._masked else self._bound(w)[0]
                grad = self._gradient_slots(leaves, w)
                loss = direct(leaves, batch, shared_batch) if direct is not None else None
                if loss is None:
                    loss = per_chain(leaves, batch)
                with warnings.catch_warnings():
                    # a (K, numel) slot of the (K, d) gradient is strided; in-place accumulation is what is wanted
                    warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
                    self._backward(loss.sum(), leaves, grad)
                for leaf in leaves:  # the gradient belongs to the caller alone
                    leaf.grad = None
            return loss.detach(), grad

        return loss_and_grad

    def _stacked_mlp(self) -> Callable[[Sequence[Tensor], Any, bool], Tensor | None] | None:
        """The vmap-free forward of :mod:`lambdahat.stacked_mlp` where it applies: an output-form
        loss in float32 on an MLP whose every parameter is sampled, unmasked, with no buffers."""
        criterion = make_criterion(self._loss_fn)
        if criterion is None or self.precision != "float32" or self._masked or self._fixed:
            return None
        return stacked_mlp.build(self.model, self.names, criterion, make_stacked_criterion(self._loss_fn))

    def anchor_loss(self, per_chain_batches: bool) -> Callable[[Any], Tensor]:
        """``batch -> L_B(w*)`` without gradients: shaped () for one batch, (K,) for a batch with a
        leading chain dimension (``per_chain_batches``: K chains, each on its own minibatch)."""
        w_star = self.w_star
        if not per_chain_batches:
            return torch.no_grad()(lambda batch: self.loss(w_star, batch))
        per_batch = torch.func.vmap(lambda batch: self._batch_loss(self.tensors(w_star), batch))
        direct, pieces = self._stacked_mlp(), self._pieces(w_star)

        def anchor(batch: Any) -> Tensor:
            loss = direct(pieces, batch, False) if direct is not None else None
            return per_batch(batch) if loss is None else loss

        return torch.no_grad()(anchor)

    @torch.no_grad()
    def full_loss(self, w: Tensor, data: DataSource, batch_size: int) -> float:
        """L_n(w): the loss averaged over the whole data, evaluated in batches, without gradients."""
        total, count = 0.0, 0
        for size, batch in data.in_order(batch_size):
            total += float(self.loss(w, batch)) * size
            count += size
        return total / count

    def check_loss(self, batch: Any) -> Tensor:
        """Evaluate the loss once at w*, turning the usual mistakes into clear errors."""
        w = self.w_star.clone()  # a copy: a forward that writes its own weights must not touch w*
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            try:
                loss = self.loss(w, batch)
            except UserWarning as warning:  # e.g. MSELoss broadcasting mismatched shapes
                raise ValueError(f"loss_fn warned at w*: {warning}. Fix the shapes of outputs and targets.") from None
            except (RuntimeError, ValueError) as err:
                raise ValueError(
                    f"loss_fn failed at w* on a batch: {err}. Check that data matches the model's "
                    "input and that loss_fn matches its output (criterion form: loss_fn(output, target); "
                    "model form: loss_fn(model, batch))."
                ) from err
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(
                f"loss_fn must return a scalar tensor (the batch-mean loss); got "
                f"{type(loss).__name__} {tuple(loss.shape) if isinstance(loss, Tensor) else ''}."
            )
        if not torch.equal(w, self.w_star):
            raise ValueError(
                "model: its forward changed its own parameters in place (e.g. weight.data.fill_ inside forward); "
                "sampling evaluates the model at many weights and cannot allow a forward that writes them."
            )
        if not math.isfinite(float(loss.detach())):
            raise ValueError(f"loss_fn is not finite at w* (got {float(loss.detach())}); check the model and data.")
        gen = torch.Generator(device=w.device).manual_seed(0)
        # a large move (of the order of the weights themselves): a loss that depends on w changes under it
        # even at a degenerate w* (w1·w2² at the origin moves by far less than float resolution under 1%)
        moved = torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype)  # in place: two copies of w at most
        moved.mul_(self.w_star.abs().add_(1)).add_(self.w_star)
        with torch.no_grad():
            other = self.loss(moved, batch)
        if torch.equal(other.detach(), loss.detach()):
            raise ValueError(
                "loss_fn does not depend on the sampled weights: it returned exactly the same value at w* and at "
                "weights moved by their own size (a cross-entropy over a single output is always 0, for instance); check loss_fn, "
                "the model's output and sampled_params."
            )
        return loss


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value to compare by
class LocalizedPotential:
    """The localised tempered potential of Lau, Furman, Wang, Murfet & Wei, "The Local Learning
    Coefficient: A Singularity-Aware Complexity Measure", arXiv 2308.12108:

        U(w) = nβ L_B(w) + (γ/2) ‖w − w*‖²,    ∇U(w) = nβ ∇L_B(w) + γ (w − w*),

    the negative log density, up to a constant, of p(w) ∝ exp(−nβ L_n(w) − (γ/2)‖w − w*‖²) when
    the batch B is the full data, and an unbiased minibatch estimate of it otherwise. This is the
    one place U and ∇U are formed; every sampler of :mod:`lambdahat.samplers` targets exp(−U).

    ``loss_and_grad(w, batch) -> (loss, grad)`` is the batch-mean loss L_B and its gradient, for
    w of shape (d,) (one chain) or (K, d) (K chains, a loss per chain), e.g.
    :meth:`Potential.loss_and_grad` or :meth:`Potential.stacked_loss_and_grad`. It must return a
    fresh gradient tensor on every call: ∇U is built in that buffer. ``localization`` is γ.
    """

    loss_and_grad: Callable[[Tensor, Any], tuple[Tensor, Tensor]]
    w_star: Tensor
    nbeta: float
    localization: float

    def __call__(self, w: Tensor, batch: Any, offset: Tensor | None = None, exact: bool = False) -> LocalizedValue:
        """U, ∇U, L_B and ‖w − w*‖ at w on ``batch``: one forward and one backward pass.
        ``offset``, if given, is a buffer of w's shape to hold w − w* (a sampler's reused one).
        ``exact``: the value enters a Metropolis–Hastings ratio, so L_B is formed in float64
        (:func:`lambdahat.losses.exact_values`); the gradient is the same either way."""
        if exact:
            with exact_values():
                loss, grad = self.loss_and_grad(w, batch)
        else:
            loss, grad = self.loss_and_grad(w, batch)
        offset = w - self.w_star if offset is None else torch.sub(w, self.w_star, out=offset)
        return LocalizedValue(self, loss, grad, offset)


class LocalizedValue:
    """The localised potential at one point, per chain (reductions over the last dimension):

    - ``loss``: L_B(w), shaped () or (K,);
    - ``distance``: ‖w − w*‖; ``offset``: w − w*;
    - ``grad_energy``: ∇U(w) = nβ ∇L_B(w) + γ (w − w*), formed on first read in the loss
      gradient's own buffer (no extra full-size tensor);
    - ``grad_loss``: ∇L_B(w), readable only before ``grad_energy`` overwrote it (RMSProp's
      preconditioner needs it);
    - ``energy``: U(w) = nβ L_B(w) + (γ/2)‖w − w*‖², formed on first read from ``offset``
      (SGLD needs it only on its acceptance-check steps), so read it before ``offset``'s buffer
      is reused. Read after ``grad_energy``, it squares ``offset`` in place (no full-size
      temporary) and sets ``offset`` to None.

    The tensors are the caller's: a sampler may overwrite them.
    """

    __slots__ = ("loss", "offset", "distance", "_potential", "_grad", "_grad_is_energy", "_energy")

    def __init__(self, potential: LocalizedPotential, loss: Tensor, grad: Tensor, offset: Tensor):
        self.loss, self.offset, self._potential, self._grad = loss, offset, potential, grad
        self.distance = torch.linalg.vector_norm(offset, dim=-1)
        self._grad_is_energy = False
        self._energy: Tensor | None = None

    @property
    def grad_loss(self) -> Tensor:
        if self._grad_is_energy:
            raise RuntimeError("grad_loss was overwritten by grad_energy; read it first.")
        return self._grad

    @property
    def grad_energy(self) -> Tensor:
        if not self._grad_is_energy:
            self._grad.mul_(self._potential.nbeta).add_(self.offset, alpha=self._potential.localization)
            self._grad_is_energy = True
        return self._grad

    @property
    def energy(self) -> Tensor:
        if self._energy is None:
            pot = self._potential
            if self._grad_is_energy:  # ∇U has used the offset already: square it in place, no temporary
                squared, self.offset = self.offset.square_(), None
            else:
                squared = self.offset.square()
            # in float64: nβ L_B is far larger than its change over one step (see wide_dtype)
            wide = wide_dtype(squared)
            self._energy = pot.nbeta * self.loss.to(wide) + 0.5 * pot.localization * squared.sum(dim=-1, dtype=wide)
        return self._energy
