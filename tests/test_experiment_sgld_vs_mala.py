"""Quick run of experiments/sgld_vs_mala.py: SGLD agrees with exact MALA on a ReLU MLP (n = 100, 1000).

The margin is 3 combined MCSE (a two-sided 0.3% false alarm for an honest Gaussian error) plus
SGLD's own first-order step-size bias, measured by SGLD alone from step doubling
(b̂ = λ̂(2ε) − λ̂(ε); an Euler-discretised Langevin chain is biased by O(ε), which MALA's
accept/reject removes). Equivalently, SGLD's Richardson value 2λ̂(ε) − λ̂(2ε) must sit within 3
of its combined MCSE of MALA. Neither margin looks at MALA's answer, and a broken SGLD (wrong noise
scale, wrong nβ, a biased estimator) misses both by many σ.
"""

from experiments import sgld_vs_mala


def test_sgld_agrees_with_mala_up_to_its_step_size_bias(tmp_path):
    summary = sgld_vs_mala.main(["--quick", "--out", str(tmp_path)])
    assert [r["n"] for r in summary["per_n"]] == [100, 1000]
    for r in summary["per_n"]:
        for sampler in ("mala", "sgld", "sgld_2eps"):
            # positive and below d/2, the most any minimum can have
            assert 0 < r[sampler]["llc"] < r["d"] / 2, (r["n"], sampler, r[sampler]["llc"])
            assert r[sampler]["mcse"] > 0
        assert abs(r["diff"]) <= 3 * r["sigma"] + abs(r["bias_2eps"]), r
        assert r["agree_with_allowance"] and r["agree_richardson"], r
        # the step-size allowance is a small correction, not a blanket: under 15% of MALA's λ̂
        assert abs(r["bias_2eps"]) < 0.15 * r["mala"]["llc"], r
    assert (tmp_path / "sgld_vs_mala.png").exists()
