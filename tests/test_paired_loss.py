"""The paired loss (lambdahat.noise, ``paired_loss``): each draw records L_B(w) − L_B(w*) + L_n(w*)
with the same batch at w*. It must leave the chain alone, keep the recorded loss unbiased for
L_n at the chain's point (as the unpaired one is, with independent minibatches), shrink λ̂'s Monte
Carlo error on noisy targets, and be chosen by the auto rule only where the minibatch spread of the
loss at w* is large."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lambdahat as lh
from lambdahat import noise, tasks
from lambdahat.data import DataSource, as_data_source
from lambdahat.potential import Potential, default_nbeta
from tests._harness import small_dln

FIXED = dict(step_size=2e-5, localization=1.0, num_burnin_steps=200, num_draws=2000, batch_size=100, sampler="sgld",
             num_chains=2, seed=3)


def _noisy(dim: int = 3, n: int = 2000):
    return tasks.linear_regression(dim=dim, n=n, seed=5)


def test_pairing_changes_the_record_not_the_chain():
    task = _noisy()
    plain = lh.estimate_llc(task.model, task.data, task.loss_fn, paired_loss=False, progress=False, **FIXED)
    paired = lh.estimate_llc(task.model, task.data, task.loss_fn, paired_loss=True, progress=False, **FIXED)
    assert paired.settings.paired_loss is True and plain.settings.paired_loss is False
    assert np.array_equal(plain.trace.arrays["distance"], paired.trace.arrays["distance"])  # the same chain
    anchor = paired.trace.arrays["anchor_loss"]
    assert np.array_equal(paired.trace.arrays["loss"], plain.trace.arrays["loss"] - anchor + paired.init_loss)
    # the batches are independent uniform draws, so the anchor's mean is L_n(w*) up to its standard error
    draws = paired.trace.draws("anchor_loss")
    assert abs(draws.mean() - paired.init_loss) <= 4 * draws.std() / np.sqrt(draws.size)


def _isotropic_regression(n: int, dim: int = 4):
    """A noisy linear regression whose design has XᵀX / n = I exactly and whose model sits at the
    least-squares w*: under the mean squared error, L_n(w) − L_n(w*) = ‖w − w*‖² for every w, so the
    chain's recorded distance gives every draw's exact loss."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, dim, generator=gen, dtype=torch.float64))
    x = q * n**0.5
    y = x @ torch.ones(dim, 1, dtype=torch.float64) + torch.randn(n, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(dim, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return model, (x, y), nn.MSELoss()


def _epoch_indices(self, batch_size, generator):
    """Batches cut from a fresh permutation per epoch (a shuffled DataLoader's), for contrast."""
    while True:
        perm = torch.randperm(self.n, generator=generator)
        for start in range(0, self.n - batch_size + 1, batch_size):
            yield perm[start:start + batch_size]


def test_the_recorded_loss_is_unbiased_for_the_full_loss_at_the_chain_s_point(monkeypatch):
    """Exact: the loss recorded at step t (on that step's minibatch, paired or not) has L_n(w_t) as
    its mean. Batches cut from shuffled epochs fail this, because the chain has just fitted the
    epoch's earlier batches: with that scheme patched back in, this statistic measured
    +0.76 ± 0.24 on λ̂ ≈ 6 at 5,000 draws while writing the test (and
    benchmarks/investigations/epoch_batches.py +9% of λ on another regression); the test's last
    step shows that it still sees that."""
    model, data, loss = _isotropic_regression(4000)
    nbeta = default_nbeta(4000)
    settings = dict(step_size=0.04 / nbeta, localization=1.0, num_burnin_steps=1000, num_draws=12_000, batch_size=10,
                    sampler="sgld", num_chains=4, seed=1, progress=False)

    def gap(paired_loss: bool) -> tuple[float, float]:
        result = lh.estimate_llc(model, data, loss, paired_loss=paired_loss, **settings)
        values = nbeta * (result.trace.draws("loss") - result.init_loss) - nbeta * result.trace.draws("distance") ** 2
        return float(values.mean()), float(values.std() / np.sqrt(values.size))  # minibatch errors: ~independent

    for paired_loss in (True, False):
        mean, se = gap(paired_loss)
        assert abs(mean) <= 4 * se, (paired_loss, mean, se)
    monkeypatch.setattr(DataSource, "minibatch_indices", _epoch_indices)
    mean, se = gap(True)
    assert mean > 4 * se, (mean, se)


def test_pairing_shrinks_the_error_on_noisy_targets():
    """The 6-weight regression at n = 20,000, batch 256 (measured at seed 0 before this test was
    written: per-draw sd of the loss 0.043 → 0.0036 and MCSE 0.79 → 0.21); here at the FIXED seed,
    asked for factors of 5 and 2."""
    task = tasks.linear_regression(dim=6, n=20_000, seed=1)
    settings = {**FIXED, "step_size": 1e-5, "num_burnin_steps": 500, "num_draws": 3000, "batch_size": 256,
                "num_chains": 4}
    plain = lh.estimate_llc(task.model, task.data, task.loss_fn, paired_loss=False, progress=False, **settings)
    paired = lh.estimate_llc(task.model, task.data, task.loss_fn, paired_loss=True, progress=False, **settings)
    assert paired.trace.draws("loss").std() < plain.trace.draws("loss").std() / 5
    assert paired.llc_mcse < plain.llc_mcse / 2, (paired.llc_mcse, plain.llc_mcse)
    assert abs(paired.llc_mean - plain.llc_mean) < 4 * plain.llc_mcse


def test_vectorized_chains_pair_like_sequential_ones():
    task = _noisy()
    runs = {mode: lh.estimate_llc(task.model, task.data, task.loss_fn, paired_loss=True, chain_mode=mode,
                                  progress=False, **{**FIXED, "num_draws": 300})
            for mode in ("sequential", "vectorized")}
    for name in ("loss", "anchor_loss", "distance"):
        assert np.allclose(runs["sequential"].trace.arrays[name], runs["vectorized"].trace.arrays[name],
                           rtol=1e-5, atol=1e-7), name


class _DropoutRegression(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        return self.linear(self.drop(x))


def test_pairing_leaves_a_train_mode_chain_s_randomness_alone():
    torch.manual_seed(0)
    x = torch.randn(400, 3)
    y = x.sum(1, keepdim=True) + torch.randn(400, 1)
    model = _DropoutRegression()
    common = dict(train_mode=True, progress=False, **{**FIXED, "num_burnin_steps": 40, "num_draws": 200})
    plain = lh.estimate_llc(model, (x, y), nn.MSELoss(), paired_loss=False, **common)
    paired = lh.estimate_llc(model, (x, y), nn.MSELoss(), paired_loss=True, **common)
    assert np.array_equal(plain.trace.arrays["distance"], paired.trace.arrays["distance"])


def test_loss_spread_is_zero_without_noise_and_large_with_it():
    for task, big in ((small_dln(), False), (_noisy(n=20_000), True)):
        data = as_data_source(task.data)
        potential = Potential(task.model, task.loss_fn, [name for name, _ in task.model.named_parameters()])
        spread = noise.loss_spread(potential.loss, data, potential.w_star, 256, default_nbeta(data.n), seed=0)
        assert (spread >= 10 * noise.PAIR_SPREAD) if big else (spread < noise.PAIR_SPREAD / 10), spread
        assert noise.loss_spread(potential.loss, data, potential.w_star, data.n, 100.0, seed=0) == 0.0


def test_the_auto_rule_pairs_noisy_runs_only_and_says_why():
    noisy = _noisy(n=20_000)
    result = lh.estimate_llc(noisy.model, noisy.data, noisy.loss_fn, max_steps=3000, nbeta_check=False, progress=False)
    assert result.settings.paired_loss is True
    assert any(note.startswith("paired_loss = True") for note in result.adaptation.notes)
    clean = small_dln()
    result = lh.estimate_llc(clean.model, clean.data, clean.loss_fn, batch_size=100, max_steps=3000, nbeta_check=False,
                             progress=False)
    assert result.settings.paired_loss is False
    # a fixed run keeps the unpaired record (as before) unless asked
    fixed = lh.estimate_llc(noisy.model, noisy.data, noisy.loss_fn, progress=False, **{**FIXED, "num_draws": 100})
    assert fixed.settings.paired_loss is False and "anchor_loss" not in fixed.trace.arrays


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_paired_loss_setting_is_validated(value):
    task = _noisy()
    with pytest.raises(ValueError, match="paired_loss"):
        lh.estimate_llc(task.model, task.data, task.loss_fn, paired_loss=value, progress=False)
