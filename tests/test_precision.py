"""Mixed precision (lambdahat.precision): the forward and backward under torch.autocast, with
float32 weights, noise, update and losses; checked against float32 on a known answer."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn

import lambdahat as lh
from lambdahat import tasks
from lambdahat.losses import gaussian_nll, is_model_loss
from lambdahat.potential import Potential
from lambdahat.precision import AutocastLoss, with_precision
from lambdahat.settings import Settings
from tests._harness import Z


def test_the_setting_takes_names_and_dtypes_and_rejects_others():
    assert Settings().precision == "float32"
    for value in ("bfloat16", "bf16", torch.bfloat16, "BFloat16"):
        assert Settings(precision=value).precision == "bfloat16"
    assert Settings(precision=torch.float16).precision == "float16"
    for bad in ("int8", torch.float64, 16, None):
        with pytest.raises(ValueError, match="precision must be one of"):
            Settings(precision=bad)


def test_float32_leaves_the_loss_as_it_is():
    assert with_precision(gaussian_nll, "float32") is gaussian_nll
    wrapped = with_precision(gaussian_nll, "bfloat16")
    assert with_precision(wrapped, "float32") is gaussian_nll  # unwrapped again
    assert isinstance(wrapped, AutocastLoss) and wrapped.precision == "bfloat16"


def test_the_wrapper_keeps_the_loss_form_attributes_and_pickles():
    def model_loss(model, batch):
        x, y = batch
        return ((model(x) - y) ** 2).mean()

    assert is_model_loss(with_precision(model_loss, "bfloat16"))
    assert not is_model_loss(with_precision(nn.MSELoss(), "bfloat16"))
    wrapped = with_precision(lh.losses.next_token, "bfloat16")
    assert wrapped.per_token is lh.losses.next_token.per_token
    again = pickle.loads(pickle.dumps(with_precision(gaussian_nll, "bfloat16")))
    assert again.loss_fn is gaussian_nll and again.precision == "bfloat16"


@pytest.mark.parametrize("stacked", [False, True], ids=["one chain", "stacked"])
def test_the_forward_runs_in_bfloat16_and_everything_else_in_float32(stacked):
    task = tasks.deep_linear_network([6, 5, 4], 1, n=200, seed=0)
    names = [n for n, _ in task.model.named_parameters()]
    exact = Potential(task.model, gaussian_nll, names)
    low = Potential(task.model, with_precision(gaussian_nll, "bfloat16"), names)
    w = exact.w_star + 0.05 * torch.randn(exact.num_params, generator=torch.Generator().manual_seed(0))
    x, y = task.data
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the same evaluation by hand
        out = torch.func.functional_call(task.model, low.tensors(w), (x,))
    assert out.dtype == torch.bfloat16
    by_hand = gaussian_nll(out, y).float()
    if stacked:
        losses, grads = low.stacked_loss_and_grad(shared_batch=True)(torch.stack([w, w]), task.data)
        loss, grad = losses[0], grads[0]
    else:
        loss, grad = low.loss_and_grad(w, task.data)
    assert loss.dtype == grad.dtype == low.w_star.dtype == torch.float32
    torch.testing.assert_close(loss, by_hand, rtol=1e-6, atol=0)
    ref_loss, ref_grad = exact.loss_and_grad(w, task.data)
    assert not torch.equal(loss, ref_loss)  # it really ran in bfloat16 ...
    assert abs(float(loss / ref_loss) - 1) < 0.05  # ... to bfloat16's accuracy
    assert float((grad - ref_grad).norm() / ref_grad.norm()) < 0.05


def test_a_bfloat16_model_is_still_warned_about_and_pointed_to_the_option():
    task = tasks.deep_linear_network([4, 3, 2], 1, n=100, seed=0)
    model = task.model.to(torch.bfloat16)
    with pytest.warns(UserWarning, match=r"bfloat16.*float32.*precision='bfloat16'"):
        lh.estimate_llc(model, tuple(t.to(torch.bfloat16) for t in task.data), task.loss_fn, step_size=1e-4,
                        localization=1.0, num_chains=1, num_burnin_steps=0, num_draws=5, batch_size=50, seed=0,
                        sampler="sgld", progress=False)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
@pytest.mark.parametrize("mode", ["sequential", "vectorized"])
def test_every_chain_mode_runs_and_records_the_precision(precision, mode):
    task = tasks.deep_linear_network([4, 3, 2], 1, n=200, seed=0)
    result = lh.estimate_llc(task.model, task.data, task.loss_fn, precision=precision, step_size=1e-4,
                             localization=1.0, num_chains=2, num_burnin_steps=10, num_draws=20, batch_size=50,
                             seed=0, sampler="sgld", chain_mode=mode, progress=False)
    assert result.settings["precision"] == precision and result.trace.config["chain_mode"] == mode
    assert math.isfinite(result.llc_mean) and not result.diverged


def test_bfloat16_autocast_matches_float32_on_a_known_answer_and_bfloat16_weights_do_not():
    """DLN 3-2-4 r = 1 (λ = 4) at the known-answer suite's settings, shortened. With the same seed
    both runs see the same minibatches and the same ξ, so λ̂(bf16) − λ̂(float32) is the rounding
    effect, not Monte Carlo error: benchmarks/precision.py measured it at +0.13% to +0.14% of λ̂
    (z ≤ 0.025 in units of the combined MCSE) on four DLNs with 4 chains × 10,000 steps. The
    tolerance, 1% of λ̂ plus a quarter of float32's MCSE, is seven times that effect, and far
    below the weights-in-bfloat16 error (+560% on DLN 4-3-2), which it must reject."""
    task = tasks.deep_linear_network([3, 2, 4], 1, n=100_000, seed=1)
    settings = dict(step_size=1.5e-5, localization=1.0, nbeta=None, num_chains=2, num_burnin_steps=1500,
                    num_draws=1500, batch_size=500, seed=0, sampler="sgld", chain_mode="sequential", progress=False)
    ref = lh.estimate_llc(task.model, task.data, task.loss_fn, **settings)
    low = lh.estimate_llc(task.model, task.data, task.loss_fn, precision="bfloat16", **settings)
    tolerance = 0.01 * abs(ref.llc_mean) + 0.25 * ref.llc_mcse
    assert abs(ref.llc_mean - 4.0) <= 0.25 * 4.0 + Z * ref.llc_mcse  # the float32 run itself is sane
    assert abs(low.llc_mean - ref.llc_mean) <= tolerance, (low.llc_mean, ref.llc_mean, tolerance)
    assert low.llc_mean != ref.llc_mean  # the bfloat16 forward really ran
    with pytest.warns(UserWarning, match="bfloat16"):
        naive = lh.estimate_llc(task.model.to(torch.bfloat16), tuple(t.to(torch.bfloat16) for t in task.data),
                                task.loss_fn, **settings)
    assert not abs(naive.llc_mean - ref.llc_mean) <= tolerance, (naive.llc_mean, ref.llc_mean, tolerance)
