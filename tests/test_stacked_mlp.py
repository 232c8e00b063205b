"""The vmap-free forward of vectorised chains on MLPs (lambdahat.stacked_mlp): which models take
it, and that it changes no chain by a single bit against the general (vmap) path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lambdahat as lh
from lambdahat import stacked_mlp
from lambdahat.losses import make_criterion
from lambdahat.potential import Potential


def _mlp(seed: int = 0, activation: type[nn.Module] = nn.ReLU, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12, bias=bias), activation(), nn.Linear(12, 8, bias=bias), activation(),
                         nn.Linear(8, 2, bias=bias))


def _names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def _builds(model: nn.Module) -> bool:
    return stacked_mlp.build(model, _names(model), make_criterion(lh.losses.gaussian_nll)) is not None


def test_plain_mlps_and_deep_linear_networks_take_the_direct_path():
    assert _builds(_mlp())
    assert _builds(_mlp(activation=nn.Tanh))
    assert _builds(_mlp(bias=False))


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)

    def forward(self, x):
        return x + self.a(x)


class _SequentialSubclass(nn.Sequential):
    def forward(self, x):
        return super().forward(x) * 2


@pytest.mark.parametrize("make", [
    lambda: _Residual(),                                                   # not a Sequential
    lambda: _SequentialSubclass(nn.Linear(6, 2)),                          # its own forward
    lambda: nn.Sequential(nn.Linear(6, 4), nn.Softmax(dim=1)),             # acts along a dimension
    lambda: nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4)),             # buffers and batch statistics
    lambda: nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5)),               # randomness per chain
    lambda: nn.Sequential(nn.ReLU(), nn.Linear(6, 4)),                     # a shared input met by a non-product
    lambda: nn.Sequential(nn.Linear(6, 4), nn.Sequential(nn.Linear(4, 2))),  # nested
])
def test_other_models_take_the_general_path(make):
    assert not _builds(make())


def test_hooks_and_tied_weights_take_the_general_path():
    model = _mlp()
    handle = model[0].register_forward_hook(lambda module, args, out: out * 2)
    assert not _builds(model)
    handle.remove()
    assert _builds(model)
    tied = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    tied[1].weight = tied[0].weight
    assert not _builds(tied)


def test_partial_sampling_masks_and_model_losses_take_the_general_path():
    model = _mlp()
    names = _names(model)
    assert stacked_mlp.build(model, names[:2], make_criterion(lh.losses.gaussian_nll)) is None
    assert Potential(model, lh.losses.gaussian_nll, names[:2])._stacked_mlp() is None  # the rest is frozen
    masks = {names[0]: torch.rand(12, 6) > 0.5}
    assert Potential(model, lh.losses.gaussian_nll, names, masks)._stacked_mlp() is None
    assert Potential(model, lambda model, batch: lh.losses.gaussian_nll(model(batch[0]), batch[1]), names)._stacked_mlp() is None
    assert Potential(model, lh.losses.gaussian_nll, names)._stacked_mlp() is not None


def test_inputs_of_another_form_fall_back():
    model = _mlp()
    forward = stacked_mlp.build(model, _names(model), make_criterion(lh.losses.gaussian_nll))
    pieces = [p.detach().expand(3, *p.shape) for p in model.parameters()]
    assert forward(pieces, (torch.randn(5, 4, 6), torch.randn(5, 4, 2)), True) is None  # (B, T, in) shared
    assert forward(pieces, (torch.randn(3, 5, 6), torch.randn(3, 5, 2)), False) is not None
    assert forward(pieces, {"x": torch.randn(5, 6)}, True) is None


def _estimate(direct: bool, monkeypatch, model, x, y, loss, **settings):
    """The estimate through the direct path (and how many of its calls it served) or through vmap alone."""
    served = []
    original = stacked_mlp.build

    def counted(*args, **kwargs):
        forward = original(*args, **kwargs)

        def counting(*call_args):
            out = forward(*call_args)
            served.append(out is not None)
            return out

        return counting if forward is not None else None

    with monkeypatch.context() as patch:
        patch.setattr(stacked_mlp, "build", counted if direct else (lambda *args, **kwargs: None))
        result = lh.estimate_llc(model, (x, y), loss, progress=False, chain_mode="vectorized", **settings)
    return result, sum(served)


def _own_gaussian_loss(output, target):
    return 0.5 * ((output - target) ** 2).sum(dim=1).mean()


@pytest.mark.parametrize("case", ["minibatch", "full batch", "own loss", "own loss, full batch", "cross-entropy"])
def test_chains_are_bit_identical_to_the_general_path(case, monkeypatch):
    """Per-chain minibatches and one shared full batch, with the library's Gaussian loss (its
    per-chain form) and with a user's own (vmapped over the chains), and a cross-entropy
    classifier (whose loss rounds differently when looped over the chains instead of vmapped),
    each with MALA checks (whose losses are re-evaluated in float64); with minibatches, the paired
    loss L_B(w) − L_B(w*) too, whose L_B(w*) of each chain's batch takes the direct path as well."""
    model = _mlp(seed=1)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(400, 6, generator=gen)
    y = model(x).detach() + 0.1 * torch.randn(400, 2, generator=gen)
    loss = _own_gaussian_loss if case.startswith("own loss") else lh.losses.gaussian_nll
    if case == "cross-entropy":
        y, loss = y.argmax(dim=1), nn.functional.cross_entropy
    settings = dict(step_size=2e-4, localization=1.0, num_chains=3, num_draws=120, num_burnin_steps=0, seed=5,
                    batch_size=400 if "full batch" in case else 64, paired_loss="full batch" not in case)
    general, _ = _estimate(False, monkeypatch, model, x, y, loss, **settings)
    direct, served = _estimate(True, monkeypatch, model, x, y, loss, **settings)
    assert served >= (240 if settings["paired_loss"] else 120)  # every step (its anchor, each check's proposal) went direct
    for name in ("loss", "distance", "mala_accept"):
        np.testing.assert_array_equal(direct.trace.draws(name), general.trace.draws(name))
    assert np.isfinite(direct.trace.draws("mala_accept")).any()  # the check steps ran through the direct path
    assert direct.llc_mean == general.llc_mean


def test_the_per_chain_gaussian_loss_is_the_loss_of_each_chain_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    outputs, targets = torch.randn(5, 33, 3, generator=gen), torch.randn(5, 33, 3, generator=gen)
    each = torch.stack([lh.losses.gaussian_nll(o, t) for o, t in zip(outputs, targets)])
    assert torch.equal(lh.losses.gaussian_nll.per_chain(outputs, targets), each)
    with pytest.raises(ValueError, match="make the model's output match the targets"):
        lh.losses.gaussian_nll.per_chain(outputs, targets[:, :, :2])


def test_the_per_chain_loss_is_exact_in_float64_for_acceptance_ratios():
    from lambdahat.losses import exact_values, make_stacked_criterion

    criterion = make_stacked_criterion(lh.losses.gaussian_nll)
    outputs = torch.randn(3, 10, 2, requires_grad=True)
    targets = torch.randn(3, 10, 2)
    assert criterion(outputs, targets).dtype == torch.float32
    with exact_values():
        value = criterion(outputs, targets)
    assert value.dtype == torch.float64 and value.shape == (3,)
    assert torch.equal(value.detach(), lh.losses.gaussian_nll.per_chain(outputs.detach().double(), targets.double()))
    assert make_stacked_criterion(nn.functional.cross_entropy) is None
