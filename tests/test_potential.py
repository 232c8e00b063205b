"""The flat-vector potential: gradients accumulated in place into one flat tensor through
parameter-shaped views, on every parameter shape (0-dim scalars included), masks, one chain and
stacked chains, through every sampler with the acceptance check on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lambdahat as lh
from lambdahat.potential import Potential
from lambdahat.samplers import SAMPLERS, SamplerConfig


class Scaled(nn.Module):
    """A linear map times a learned 0-dim scalar, plus a 0-dim offset."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.scale = nn.Parameter(torch.tensor(0.7))
        self.shift = nn.Parameter(torch.tensor(-0.2))

    def forward(self, x):
        return self.scale * self.lin(x) + self.shift


def _problem(seed=0, n=48):
    torch.manual_seed(seed)
    model = Scaled().double()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = model(x) + 0.1 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return model, (x, y)


def _reference_grad(pot: Potential, w: torch.Tensor, batch) -> torch.Tensor:
    """∇L through autograd on one flat leaf (the textbook way), for comparison."""
    w = w.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(pot.loss(w, batch), w)
    return grad


MASKS = {
    "all": None,
    "scalar mask": {"scale": torch.tensor(True), "lin.weight": torch.tensor([[True, False, True], [False, True, False]])},
}


@pytest.mark.parametrize("masks", MASKS, ids=list(MASKS))
def test_flat_gradient_with_0dim_parameters_is_autograds(masks):
    model, batch = _problem()
    chosen = MASKS[masks]
    names = [n for n, _ in model.named_parameters()] if chosen is None else list(chosen)
    pot = Potential(model, nn.MSELoss(), names, chosen)
    assert pot.num_params == (10 if chosen is None else 4)
    w = pot.w_star + 0.05 * torch.randn(pot.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss, grad = pot.loss_and_grad(w, batch)
    assert grad.shape == w.shape and grad.is_contiguous()
    assert torch.equal(grad, _reference_grad(pot, w, batch))
    assert torch.equal(loss, pot.loss(w, batch).detach())
    # stacked: K chains in one (K, d) gradient, each row the chain's own
    ws = torch.stack([w, pot.w_star, 2 * w - pot.w_star])
    losses, grads = pot.stacked_loss_and_grad(shared_batch=True)(ws, batch)
    assert grads.shape == ws.shape and losses.shape == (3,)
    for k in range(3):
        torch.testing.assert_close(grads[k], _reference_grad(pot, ws[k], batch), rtol=1e-12, atol=1e-14)


def test_each_call_returns_a_fresh_gradient():
    model, batch = _problem()
    pot = Potential(model, nn.MSELoss(), [n for n, _ in model.named_parameters()])
    _, first = pot.loss_and_grad(pot.w_star, batch)
    kept = first.clone()
    _, second = pot.loss_and_grad(pot.w_star + 0.1, batch)
    assert second.data_ptr() != first.data_ptr() and torch.equal(first, kept)


CONFIGS = {
    "sgld": SamplerConfig("sgld", acceptance_every=1),
    "rmsprop_sgld": SamplerConfig("rmsprop_sgld", acceptance_every=1),
    "sghmc": SamplerConfig("sghmc", acceptance_every=1),
    "sgnht": SamplerConfig("sgnht"),
    "mala": SamplerConfig("mala"),
}


def test_every_sampler_is_covered():
    assert set(CONFIGS) == set(SAMPLERS)


@pytest.mark.parametrize("masked", [False, True], ids=["all", "scalar mask"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_sampler_runs_a_model_with_0dim_parameters_in_both_chain_modes(name, masked):
    """Sequential and vectorised chains of a model with scalar parameters: finite, the acceptance
    check reported on every step, and the two modes give the same chains."""
    config = CONFIGS[name]
    runs = {}
    for mode in ("sequential", "vectorized"):
        model, data = _problem()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        extra = {"sampled_params": MASKS["scalar mask"]} if masked else {}
        result = lh.estimate_llc(model, data, nn.MSELoss(), sampler=config, step_size=1e-4, localization=100.0,
                                 nbeta=20.0, num_chains=2, num_burnin_steps=2, num_draws=12,
                                 batch_size=None if name == "mala" else 16, seed=4, chain_mode=mode, progress=False,
                                 **extra)
        assert result.trace.config["chain_mode"] == mode
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        arrays = result.trace.arrays
        assert torch.isfinite(torch.as_tensor(arrays["loss"])).all()
        if "mala_accept" in arrays:
            accept = torch.as_tensor(arrays["mala_accept"])
            assert torch.isfinite(accept).all() and ((accept >= 0) & (accept <= 1)).all()
        runs[mode] = arrays
    seq, vec = runs["sequential"], runs["vectorized"]
    assert set(seq) == set(vec)
    for key in seq:
        torch.testing.assert_close(torch.as_tensor(vec[key]), torch.as_tensor(seq[key]), rtol=1e-9, atol=1e-12)


def test_module_call_equals_functional_call_and_leaves_the_module_alone():
    """ModuleCall (the cheap functional_call of lambdahat.losses) on tied weights, buffers and
    dropout: the same outputs as functional_call, the mode followed at every call, a missing name
    routed through functional_call, and the user's module untouched."""
    from torch.func import functional_call

    from lambdahat.losses import ModuleCall

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight  # tied
            self.norm = nn.BatchNorm1d(4)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.norm(self.b(torch.tanh(self.a(x)))))

    torch.manual_seed(0)
    net = Net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    call = ModuleCall(net)
    x = torch.randn(8, 4)
    tensors = {n: torch.randn_like(p) for n, p in net.named_parameters()}
    tensors.update({n: b.clone() for n, b in net.named_buffers()})
    for mode in (False, True, False):
        net.train(mode)
        torch.manual_seed(1)
        expected = functional_call(net, {k: v.clone() for k, v in tensors.items()}, (x,))
        torch.manual_seed(1)
        assert torch.equal(call({k: v.clone() for k, v in tensors.items()}, x), expected)
    partial = {n: t for n, t in tensors.items() if n != "a.weight"}
    net.eval()
    assert torch.equal(call(partial, x), functional_call(net, partial, (x,), strict=False))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
