"""experiments/transformer_observables.py: susceptibilities by token type and the BIF's top training windows."""

from types import SimpleNamespace

import numpy as np
import torch

from experiments import transformer_observables as tob
from lambdahat.susceptibility import susceptibility_from_runs


def _types(s: str) -> list[str]:
    return [tob.TYPES[k] for k in tob.token_types(torch.tensor(list(s.encode("utf-8"))))]


def test_token_types_of_a_known_string():
    # the type of each predicted byte (all but the first), by the rules of the module docstring
    assert _types("Xdef f_1(x):\n  a = “b”") == [
        "word interior", "word interior", "word interior", "space", "word start", "word interior", "digit", "bracket",
        "word start", "bracket", "prose punct", "newline", "indent", "indent", "word start", "space", "operator",
        "space", "non-ASCII", "non-ASCII", "non-ASCII", "word start", "non-ASCII", "non-ASCII", "non-ASCII"]
    # a space after a word is not an indent, even after an indent run on the same line
    assert _types("\n  x  y") == ["indent", "indent", "word start", "space", "space", "word start"]


def _fake_run(rows: np.ndarray):
    return SimpleNamespace(trace=SimpleNamespace(probe=rows, healthy_chains=list(range(rows.shape[0]))))


def test_by_type_is_the_chi_of_the_mean_loss_of_each_type():
    """χ by token type from synthetic probe rows: equal to the mean over the type's positions of the
    per-position χ, and its standard error positive; a type with no positions is NaN."""
    rng = np.random.default_rng(0)
    chains, draws, m, R, T = 3, 40, 4, 5, 6
    full = rng.normal(2.0, 0.1, (chains, draws, m + R, T))
    restricted = rng.normal(2.0, 0.1, (chains, draws, m + R, T))
    restricted += 0.05 * rng.normal(size=(chains, draws, 1, 1))  # a shared fluctuation: χ ≠ 0
    types = rng.integers(0, 3, (m, T))  # only the first three types occur
    per_token, _ = susceptibility_from_runs(restricted, full, m, 2.0)
    chi = SimpleNamespace(full=_fake_run(full), runs={"c": _fake_run(restricted)}, components=["c"],
                          reference_loss=2.0)
    values, stderr, counts = tob.by_type(chi, types, m)
    assert values.shape == stderr.shape == (1, len(tob.TYPES))
    assert counts.sum() == m * T and (counts[3:] == 0).all()
    expected = [per_token[types == k].mean() for k in range(3)]
    np.testing.assert_allclose(values[0, :3], expected, rtol=1e-10)
    assert (stderr[0, :3] > 0).all() and np.isnan(values[0, 3:]).all()


def test_bif_with_errors_matches_the_sample_covariance():
    rng = np.random.default_rng(1)
    chains, draws = 2, 60
    common = rng.normal(size=(chains, draws, 1))
    rows = 1.0 + 0.1 * rng.normal(size=(chains, draws, 7)) + 0.1 * common
    out = tob.bif_with_errors(_fake_run(rows), np.arange(2), np.arange(2, 7))
    flat = rows.reshape(-1, 7)
    cov = np.cov(flat.T)
    np.testing.assert_allclose(out["cov"], -cov[:2, 2:], rtol=1e-9)
    corr = np.corrcoef(flat.T)
    np.testing.assert_allclose(out["corr"], -corr[:2, 2:], rtol=1e-9)
    for form in tob.FORMS:
        assert out[form].shape == out["se_" + form].shape == (2, 5) and (out["se_" + form] > 0).all()
    # the common fluctuation makes every raw correlation strongly negative; centring takes most of it out
    assert out["corr"].max() < -0.2 and np.abs(out["ccorr"]).mean() < np.abs(out["corr"]).mean()


def test_quick_run(tmp_path):
    summary = tob.main(["--quick", "--out", str(tmp_path)])
    k, t = len(tob.QUICK.components), len(tob.TYPES)
    assert summary["components"] == list(tob.QUICK.components)
    assert summary["per_token_shape"] == [k, tob.QUICK.num_probe, 32]
    values, stderr, counts = np.array(summary["values"]), np.array(summary["stderr"]), np.array(summary["counts"])
    assert values.shape == stderr.shape == (k, t)
    assert counts.sum() == tob.QUICK.num_probe * 32
    present = counts > 0
    assert np.isfinite(values[:, present]).all() and (stderr[:, present] > 0).all()
    assert np.isnan(values[:, ~present]).all()
    # the components do respond to the probe: some token type is more than 2 standard errors from 0
    assert (np.abs(values[:, present] / stderr[:, present]) > 2).any(axis=1).all()
    pool = summary["pool_size"]
    assert pool == tob.QUICK.reference
    for form in tob.FORMS:
        top = np.array(summary["top"][form])
        assert top.shape == (tob.QUICK.num_probe, 3)
        assert ((0 <= top) & (top < pool)).all() and all(len(set(r)) == 3 for r in top)
        stats = summary["bif_stats"][form]
        assert 0 <= stats["frac_negative_significant"] <= stats["frac_significant"] <= 1
    for stem in (tob.FIGURE, tob.BIF_FIGURE):
        assert (tmp_path / f"{stem}.png").stat().st_size > 10_000
    assert summary["trained"]["step"] == 150 and not summary["trained"]["cached"]
