"""Probe observables recorded while sampling, and the Bayesian influence function from them.

The exact test: for a linear-Gaussian model the localised tempered posterior is Gaussian, and so is
full-batch SGLD's own stationary law at a finite step ε; the covariance of two per-sample losses
under a Gaussian has a closed form, which the BIF must match entry by entry within Monte Carlo error.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch

import lambdahat as lh
from lambdahat.losses import gaussian_nll
from tests._harness import Pairs, linear_gaussian_probe_problem
from lambdahat.trace import Trace

N, D, NBETA, GAMMA = 40, 3, 40.0, 10.0


def _linear_problem():
    return linear_gaussian_probe_problem(N, D)


def _loss_covariance(xp, yp, mu, sigma):
    """Cov(ℓ_i, ℓ_j) for ℓ_i(w) = ½ (y_i − x_iᵀ w)² and w ~ N(μ, Σ).

    With δ = w − μ ~ N(0, Σ), u_i = x_iᵀ δ and r_i = y_i − x_iᵀ μ: ℓ_i = ½ r_i² − r_i u_i + ½ u_i².
    Odd Gaussian moments vanish, Cov(u_i, u_j) = s_ij = x_iᵀ Σ x_j and Cov(u_i², u_j²) = 2 s_ij²,
    so Cov(ℓ_i, ℓ_j) = r_i r_j s_ij + ½ s_ij²."""
    r = yp - xp @ mu
    s = xp @ sigma @ xp.T
    return np.outer(r, r) * s + 0.5 * s**2


def _batch_means_se(probe: np.ndarray, batches: int = 10) -> np.ndarray:
    """Standard error of each entry of the pooled sample covariance of ``probe`` (chain, draw, m):
    the covariance is the mean of z_t = (ℓ_i,t − ℓ̄_i)(ℓ_j,t − ℓ̄_j), and its standard error is
    that of the mean of z over ``batches`` consecutive blocks per chain (blocks far longer than the
    chain's autocorrelation time, so their means are nearly independent)."""
    chains, draws, m = probe.shape
    centred = probe.reshape(-1, m) - probe.reshape(-1, m).mean(axis=0)
    z = centred[:, :, None] * centred[:, None, :]
    usable = draws // batches * batches
    z = z.reshape(chains, draws, m, m)[:, :usable]
    means = z.reshape(chains, batches, usable // batches, m, m).mean(axis=2).reshape(-1, m, m)
    return means.std(axis=0, ddof=1) / np.sqrt(len(means))


def test_bif_matches_the_exact_covariance_of_full_batch_sgld():
    """BIF = −Cov(ℓ_i, ℓ_j) under full-batch SGLD's stationary law, entry by entry.

    U(w) = nβ L_n(w) + (γ/2)‖w − w*‖² with L_n(w) = ½ (w − w_ls)ᵀ H (w − w_ls) + const, H = XᵀX / n,
    so ∇U = A w − (nβ H w_ls + γ w*), A = nβ H + γ I: the posterior is N(μ, A⁻¹) with
    μ = A⁻¹ (nβ H w_ls + γ w*). The SGLD step w' = w − (ε/2) ∇U(w) + √ε ξ is the linear recursion
    δ' = (I − εA/2) δ + √ε ξ around μ, with the same mean and stationary covariance Σ_ε solving
    Σ = (I − εA/2) Σ (I − εA/2) + ε I: Σ_ε = A⁻¹ (I − εA/4)⁻¹. At ε a_max = 0.5 that is up to 14%
    above A⁻¹, and the test also checks that it can tell the two apart.

    Tolerance: |estimate − exact| ≤ 4 standard errors (batch means over 4 chains × 10 blocks of
    1200 steps, ≫ the slowest mode's relaxation time 2 / (ε a_min) ≈ 6 steps); measured max |z|
    over the 15 distinct entries 2.3, 0.9 and 0.9 (seeds 3, 11, 5), against 8.2, 8.4 and 9.0 under
    the ε → 0 covariance A⁻¹.
    """
    model, data, (xp, yp), w_ls, w_star = _linear_problem()
    x = data[0].numpy()
    h = x.T @ x / N
    a = NBETA * h + GAMMA * np.eye(D)
    eps = 0.5 / np.linalg.eigvalsh(a).max()
    mu = np.linalg.solve(a, NBETA * h @ w_ls + GAMMA * w_star)
    sigma_eps = np.linalg.solve(a, np.linalg.inv(np.eye(D) - eps * a / 4))
    result = lh.estimate_llc(model, data, gaussian_nll, probe=(xp, yp), probe_every=3, step_size=eps,
                             localization=GAMMA, nbeta=NBETA, num_chains=4, num_burnin_steps=500, num_draws=12000,
                             batch_size=N, seed=3, progress=False)
    trace = result.trace
    assert trace.probe.shape == (4, 4000, 5)
    np.testing.assert_array_equal(trace.probe_steps, 500 + np.arange(2, 12000, 3))
    estimate = -lh.bif(result)
    se = _batch_means_se(trace.probe)
    xp, yp = xp.numpy(), yp.numpy()[:, 0]
    z = (estimate - _loss_covariance(xp, yp, mu, sigma_eps)) / se
    assert np.abs(z).max() < 4, np.round(z, 2)
    z_limit = (estimate - _loss_covariance(xp, yp, mu, np.linalg.inv(a))) / se
    assert np.abs(z_limit).max() > 4, np.round(z_limit, 2)  # the finite-ε law is what is being matched
    # the correlation form is the covariance normalised by its own diagonal
    corr = lh.bif(result, correlation=True)
    sd = np.sqrt(np.diag(estimate))
    np.testing.assert_allclose(corr, -estimate / np.outer(sd, sd), rtol=1e-12)
    np.testing.assert_allclose(np.diag(corr), -1.0)


SMALL = dict(step_size=1e-3, localization=GAMMA, nbeta=NBETA, num_chains=2, num_burnin_steps=10, num_draws=30,
             batch_size=N, progress=False)


def test_probe_every_thins_the_draws_and_burn_in_is_never_probed():
    model, data, probe, _, _ = _linear_problem()
    result = lh.estimate_llc(model, data, gaussian_nll, probe=probe, probe_every=7, **SMALL)
    assert result.trace.probe.shape == (2, 4, 5)
    np.testing.assert_array_equal(result.trace.probe_steps, [16, 23, 30, 37])
    assert result.config["probe"] == dict(size=5, every=7, batch_size=5)


def test_chunked_probe_and_sequential_chains_give_the_same_losses():
    model, data, probe, _, _ = _linear_problem()
    whole = lh.estimate_llc(model, data, gaussian_nll, probe=probe, **SMALL)
    chunked = lh.estimate_llc(model, data, gaussian_nll, probe=probe, probe_batch_size=2, chain_mode="sequential",
                              **SMALL)
    np.testing.assert_allclose(chunked.trace.probe, whole.trace.probe, rtol=1e-12)
    assert np.isfinite(whole.trace.probe).all()


def test_probe_leaves_the_chains_bit_identical_and_repeats_bit_for_bit():
    model, data, probe, _, _ = _linear_problem()
    plain = lh.estimate_llc(model, data, gaussian_nll, **{**SMALL, "batch_size": 8})
    probed = lh.estimate_llc(model, data, gaussian_nll, probe=probe, **{**SMALL, "batch_size": 8})
    again = lh.estimate_llc(model, data, gaussian_nll, probe=probe, **{**SMALL, "batch_size": 8})
    assert plain.trace.probe is None
    for name in plain.trace.arrays:
        np.testing.assert_array_equal(probed.trace[name], plain.trace[name])
    np.testing.assert_array_equal(again.trace.probe, probed.trace.probe)
    np.testing.assert_array_equal(again.trace.probe_steps, probed.trace.probe_steps)


def test_probe_travels_with_chains_on_an_executor():
    """One chain per worker process: the probe goes with the pickled job, the rows come back the same."""
    model, data, probe, _, _ = _linear_problem()
    here = lh.estimate_llc(model, data, gaussian_nll, probe=probe, probe_every=3, chain_mode="sequential", **SMALL)
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = lh.estimate_llc(model, data, gaussian_nll, probe=probe, probe_every=3, executor=pool, **SMALL)
    np.testing.assert_array_equal(there.trace.probe, here.trace.probe)
    np.testing.assert_array_equal(there.trace.probe_steps, here.trace.probe_steps)


def test_saved_trace_keeps_the_probe(tmp_path):
    model, data, probe, _, _ = _linear_problem()
    trace = lh.estimate_llc(model, data, gaussian_nll, probe=probe, probe_every=3, **SMALL).trace
    loaded = Trace.load(trace.save(tmp_path / "run"))
    np.testing.assert_array_equal(loaded.probe, trace.probe)
    np.testing.assert_array_equal(loaded.probe_steps, trace.probe_steps)
    assert set(loaded.arrays) == set(trace.arrays)  # the probe is not one of the (chain, step) records
    np.testing.assert_array_equal(lh.bif(loaded), lh.bif(trace))


def test_model_form_loss_is_probed_per_sample_by_vmap():
    def squared(model, batch):  # a model loss without a per_sample attribute
        inputs, targets = batch
        return 0.5 * (model(inputs) - targets).pow(2).sum(dim=1).mean()

    model, data, probe, _, _ = _linear_problem()
    by_vmap = lh.estimate_llc(model, data, squared, probe=probe, **SMALL)
    ready = lh.estimate_llc(model, data, gaussian_nll, probe=probe, **SMALL)
    np.testing.assert_allclose(by_vmap.trace.probe, ready.trace.probe, rtol=1e-10)


def test_adaptive_run_probes_only_its_draws():
    model, data, probe, _, _ = _linear_problem()
    result = lh.estimate_llc(model, data, gaussian_nll, probe=probe, probe_every=50, num_chains=2, nbeta=NBETA,
                             max_steps=2000, progress=False)
    trace = result.trace
    assert trace.probe_steps.min() >= trace.num_burnin_steps
    assert trace.probe.shape == (2, len(trace.probe_steps), 5)
    assert len(trace.probe_steps) >= result.settings.num_draws // 50 - 1
    assert np.isfinite(lh.bif(result)).all()


def test_bif_pools_only_the_healthy_chains():
    rng = np.random.default_rng(0)
    probe = rng.normal(size=(3, 50, 4))
    probe[1, 20:] = np.nan  # chain 1 diverged at step 20
    trace = Trace({"loss": np.zeros((3, 50))}, 0, [None, 20, None], probe=probe, probe_steps=np.arange(50))
    expected = np.cov(probe[[0, 2]].reshape(-1, 4), rowvar=False)
    np.testing.assert_allclose(lh.bif(trace), -expected)
    with pytest.raises(ValueError, match="no probe losses"):
        lh.bif(Trace({"loss": np.zeros((1, 5))}, 0, [None]))


def _no_sampling(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("sampling started before the probe was validated")

    monkeypatch.setattr(lh.chains, "step_chains", fail)


def test_probe_that_does_not_fit_the_model_fails_before_sampling(monkeypatch):
    model, data, (xp, yp), _, _ = _linear_problem()
    _no_sampling(monkeypatch)
    with pytest.raises(ValueError, match=r"probe: tensor 0 has samples of shape \(4,\).*\(3,\)"):
        lh.estimate_llc(model, data, gaussian_nll, probe=(torch.randn(5, 4, dtype=torch.float64), yp), **SMALL)
    with pytest.raises(ValueError, match="probe: 1 tensor"):
        lh.estimate_llc(model, data, gaussian_nll, probe=xp, **SMALL)
    dataset = Pairs(torch.randn(5, 4, dtype=torch.float64), yp)  # read item by item: no shapes to compare first
    with pytest.raises(ValueError, match="probe: the model cannot be evaluated on the probe data"):
        lh.estimate_llc(model, data, gaussian_nll, probe=dataset, **SMALL)
    with pytest.raises(ValueError, match="probe_every must be a positive integer"):
        lh.estimate_llc(model, data, gaussian_nll, probe=(xp, yp), probe_every=0, **SMALL)
    with pytest.raises(ValueError, match="pass probe=probe_data too"):
        lh.estimate_llc(model, data, gaussian_nll, probe_every=5, **SMALL)


def test_loss_without_per_sample_form_fails_before_sampling(monkeypatch):
    def not_a_mean(output, target):  # the squared mean error is not the mean of per-sample losses
        return (output - target).pow(2).mean() + (output - target).mean().pow(2)

    def not_vmappable(output, target):  # .item() has no vmap rule
        return (output - target).pow(2).mean() * (1.0 + 0.0 * target.sum().item())

    model, data, probe, _, _ = _linear_problem()
    _no_sampling(monkeypatch)
    with pytest.raises(ValueError, match="probe: loss_fn has no per-sample form: the mean of its per-sample"):
        lh.estimate_llc(model, data, not_a_mean, probe=probe, **SMALL)
    with pytest.raises(ValueError, match="probe: loss_fn has no per-sample form.*per_sample attribute"):
        lh.estimate_llc(model, data, not_vmappable, probe=probe, **SMALL)
    # the fix the message names: a per_sample attribute
    not_vmappable.per_sample = lambda output, target: (output - target).pow(2).mean(dim=1)
    monkeypatch.undo()
    result = lh.estimate_llc(model, data, not_vmappable, probe=probe, **SMALL)
    assert result.trace.probe.shape == (2, 30, 5)


def test_chain_set_probes_only_active_kept_segments():
    """The hook adapt.py may use: probe_active=False (a warm-up) and keep=False (a side measurement)
    segments record no rows; the steps of the rows count only kept segments."""
    from lambdahat.chains import ChainJob, ChainSet
    from lambdahat.data import as_data_source
    from lambdahat.observables import Probe
    from lambdahat.potential import Potential
    from lambdahat.samplers import as_sampler_config

    model, data, probe, _, _ = _linear_problem()
    source = as_data_source(data)
    potential = Potential(model, gaussian_nll, ["weight"])
    job = ChainJob(model=model, loss_fn=gaussian_nll, sampled_names=["weight"], masks=None, data=source,
                   sampler=as_sampler_config("sgld"), step_size=1e-3, nbeta=NBETA, localization=GAMMA, num_steps=0,
                   batch_size=N, seed=0, probe=Probe(as_data_source(probe), every=2), _potential=potential)
    chains = ChainSet(job, [0, 1], "sequential")
    chains.probe_active = False
    chains.advance(5, 1e-3)
    chains.probe_active = True
    chains.keep = False
    chains.advance(7, 1e-3)
    chains.keep = True
    chains.advance(6, 1e-3)
    records, _ = chains.records()
    np.testing.assert_array_equal(records["probe_step"], [[5, 7, 9], [5, 7, 9]])
    assert records["probe"].shape == (2, 3, 5) and np.isfinite(records["probe"]).all()
    trace = Trace(records, 6, [None, None])
    np.testing.assert_array_equal(trace.probe_steps, [7, 9])
    assert "probe" not in trace.arrays and trace.num_steps == 11


def _language_model():
    """A tiny transformer, token sequences of length T + 1 = 9 and a probe of 3 of them."""
    torch.manual_seed(0)
    from lambdahat.models import tiny_transformer

    model = tiny_transformer(vocab_size=11, d_model=8, n_layers=1, n_heads=2, seq_len=8)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 11, (64, 9), generator=gen)
    return model, tokens, tokens[:3]


LM_SMALL = dict(step_size=1e-4, num_burnin_steps=5, num_draws=12, num_chains=2, batch_size=16, seed=0, progress=False)


def test_per_token_probe_records_every_position_and_averages_to_the_per_sample_probe(tmp_path):
    model, tokens, probe = _language_model()
    per_sample = lh.estimate_llc(model, tokens, lh.losses.next_token, probe=probe, probe_every=2, **LM_SMALL)
    per_token = lh.estimate_llc(model, tokens, lh.losses.next_token, probe=probe, probe_every=2,
                                probe_per_token=True, **LM_SMALL)
    assert per_token.trace.probe.shape == (2, 6, 3, 8)  # (chain, draw, sample, token)
    assert per_token.config["probe"]["shape"] == [3, 8] and per_token.config["probe"]["size"] == 24
    np.testing.assert_array_equal(per_token.trace["loss"], per_sample.trace["loss"])  # the chains are the same
    np.testing.assert_allclose(per_token.trace.probe.mean(axis=3), per_sample.trace.probe, rtol=1e-5)
    loaded = Trace.load(per_token.trace.save(tmp_path / "t"))
    np.testing.assert_array_equal(loaded.probe, per_token.trace.probe)

    full = lh.bif(per_token)
    assert full.shape == (3, 8, 3, 8)
    flat = per_token.trace.probe.reshape(-1, 24).astype(np.float64)
    np.testing.assert_allclose(full.reshape(24, 24), -np.cov(flat, rowvar=False), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(lh.bif(per_token, samples=[2, 0]), full[[2, 0]][:, :, [2, 0]], rtol=1e-9, atol=1e-15)
    # float32 losses (~2.4, rounding ~3e-7) averaged in two orders: covariances ~1e-3 agree to ~1e-8
    np.testing.assert_allclose(lh.bif(per_token, per_token=False), lh.bif(per_sample), rtol=1e-3, atol=1e-8)
    with pytest.raises(ValueError, match="per_token=True needs a probe recorded per token"):
        lh.bif(per_sample, per_token=True)
    with pytest.raises(ValueError, match="bif: samples must be indices"):
        lh.bif(per_token, samples=[5])


def test_per_token_probe_needs_a_per_token_loss(monkeypatch):
    model, tokens, probe = _language_model()
    _no_sampling(monkeypatch)

    def mean_next_token(model, batch):
        return lh.losses.next_token(model, batch)

    with pytest.raises(ValueError, match="probe_per_token=True: loss_fn has no per_token attribute"):
        lh.estimate_llc(model, tokens, mean_next_token, probe=probe, probe_per_token=True, **LM_SMALL)
    with pytest.raises(ValueError, match="pass probe=probe_data too"):
        lh.estimate_llc(model, tokens, lh.losses.next_token, probe_per_token=True, **LM_SMALL)
    with pytest.raises(ValueError, match="probe_per_token must be True or False"):
        lh.estimate_llc(model, tokens, lh.losses.next_token, probe=probe, probe_per_token="yes", **LM_SMALL)
