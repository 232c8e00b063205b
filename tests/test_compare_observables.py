"""The pure helpers of benchmarks/compare_observables.py (no venv, no devinterp, no network)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import compare_observables as co  # noqa: E402

import lambdahat as lh  # noqa: E402
from lambdahat.susceptibility import susceptibility_from_runs  # noqa: E402


def test_devinterp_order_is_its_sampler_and_match_rows_inverts_it():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 16, size=(20, 9))
    order = co.devinterp_observable_order(20, 1337)
    assert order == random.Random(1337).sample(range(20), 20)
    assert sorted(order) == list(range(20)) and order != list(range(20))
    stored = original[order]
    index = co.match_rows(stored, original)
    assert np.array_equal(index, order)
    values = rng.normal(size=(20, 3))  # values in the stored order
    back = co.to_probe_order(values[:, None], index, axis=0)[:, 0]
    assert np.array_equal(back[order], values)
    assert np.array_equal(co.to_probe_order(stored, index), original)
    with pytest.raises(ValueError, match="not among"):
        co.match_rows(np.full((1, 9), 99), original)
    with pytest.raises(ValueError, match="not distinct"):
        co.match_rows(stored, np.concatenate([original, original[:1]]))


def test_bif_conversion_matches_lambdahat_on_the_same_draws():
    rng = np.random.default_rng(1)
    losses = rng.normal(size=(3, 50, 4, 5)) + rng.normal(size=(1, 50, 1, 1))  # (chain, draw, m, T)
    stacked = losses.reshape(-1, 4, 5)
    seq = stacked.mean(axis=2)
    corr = np.corrcoef(seq.T)  # devinterp's +Corr per sequence, computed independently here
    ours = lh.bif(co._Draws(losses), correlation=True, per_token=False)
    np.testing.assert_allclose(co.bif_from_devinterp(corr), ours, atol=1e-12)
    tok = stacked.reshape(len(stacked), -1)
    cov = np.cov(tok.T).reshape(4, 5, 4, 5).transpose(0, 2, 1, 3)  # devinterp's (batch_1, batch_2, s, t)
    np.testing.assert_allclose(co.bif_from_devinterp(cov, per_token=True), lh.bif(co._Draws(losses)), atol=1e-12)
    # the sign matters: without the conversion they differ
    assert np.abs(corr - ours).max() > 0.5


def test_shift_l0_is_exact_for_the_lambdahat_estimator():
    rng = np.random.default_rng(2)
    m = 3
    restricted = rng.normal(size=(2, 40, m + 6, 4)) + 1.0
    full = rng.normal(size=(2, 40, m + 6, 4)) + 1.2
    a, b = 0.9, 1.3
    chi_a = susceptibility_from_runs(restricted, full, m, a)[0]
    chi_b = susceptibility_from_runs(restricted, full, m, b)[0]
    shifted = co.shift_l0(chi_a, a, b, co.mean_delta(restricted, m), co.mean_delta(full, m))
    np.testing.assert_allclose(shifted, chi_b, atol=1e-12)
    assert np.abs(chi_a - chi_b).max() > 1e-3  # L0 does change χ, so the check has teeth


def test_groups_cover_the_draws():
    parts = co.groups(23, 5)
    assert np.array_equal(np.concatenate(parts), np.arange(23))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError):
        co.groups(3, 5)


def test_jackknife_of_a_mean_is_the_usual_standard_error():
    rng = np.random.default_rng(3)
    runs = [[rng.normal(size=(2, 30))] for _ in range(2)]
    est, se = co.jackknife(lambda x: x.mean(), runs, blocks=5)
    everything = np.concatenate([r[0].reshape(-1) for r in runs])
    assert est == pytest.approx(everything.mean())
    # the delete-one-group jackknife of a mean over equal groups is sd(group means) / sqrt(G)
    means = np.array([r[0][:, b].mean() for r in runs for b in co.groups(30, 5)])
    assert se == pytest.approx(means.std(ddof=1) / np.sqrt(len(means)), rel=1e-10)


def test_jackknife_keeps_a_seed_s_chains_together():
    # two chains of a seed that are the same noise: a per-chain error bar would be √2 too small;
    # the group holds both chains, so the jackknife sees their common noise
    rng = np.random.default_rng(4)
    runs = []
    for _ in range(3):
        base = rng.normal(size=(1, 60))
        runs.append([np.concatenate([base, base])])
    _, se = co.jackknife(lambda x: x.mean(), runs, blocks=6)
    means = np.array([r[0][0, b].mean() for r in runs for b in co.groups(60, 6)])
    assert se == pytest.approx(means.std(ddof=1) / np.sqrt(len(means)), rel=1e-10)


def test_compare_z_scores_and_expected_max():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([1.0, 2.0, 3.0, 0.0])
    c = co.compare(a, np.full(4, 0.6), b, np.full(4, 0.8))
    assert c["max_abs_z"] == pytest.approx(4.0)
    assert c["mean_z2"] == pytest.approx(4.0)
    assert c["frac_gt3"] == pytest.approx(0.25)
    mask = np.array([True, True, True, False])
    assert co.compare(a, np.ones(4), b, np.ones(4), mask)["max_abs_z"] == 0.0
    assert co.expected_max_abs_normal(1) == pytest.approx(0.6745, abs=1e-3)  # the median of |Z|
    assert 3.0 < co.expected_max_abs_normal(500) < 3.4
    assert co.off_diagonal(3).sum() == 3 and not co.off_diagonal(3)[1, 1]
    assert co.relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.5])) == pytest.approx(0.2)


def test_tinylm_is_causal_so_both_loss_conventions_agree():
    cfg = dict(co.SETTINGS, n_train=64, n_probe=8)
    train, probe = co.make_tokens(cfg)
    assert train.shape == (64, cfg["context"] + 1) and probe.shape == (8, cfg["context"] + 1)
    torch.manual_seed(0)
    model = co.TinyLM(vocab=cfg["vocab"], context=cfg["context"] + 1)
    with torch.no_grad():
        full = model(probe)[:, :-1]  # devinterp: all T + 1 tokens in, the last logit dropped
        short = model(probe[:, :-1])  # lambdahat's next_token: the first T tokens
    torch.testing.assert_close(full, short, atol=1e-5, rtol=1e-5)
    idx = co.reference_indices(1024, 128)
    assert len(idx) == 128 and idx[0] == 0 and idx[-1] == 1023
