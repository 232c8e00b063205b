"""Quick run of experiments/training_heuristics: does λ̂ fall with stronger implicit regularisation?

Only the direction the full run shows clearly is asserted (docs/results/training_heuristics.md).
"""

from experiments import training_heuristics as th


def test_training_heuristics_quick(tmp_path):
    summary = th.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "training_heuristics.md").exists()
    assert (tmp_path / "training_heuristics.png").exists()
    for record in summary["records"]:
        # every quick model fits its training set, and its estimate is finite, non-negative and not
        # biased by too large a step; the chain-length checks (convergence, R-hat, ESS, the precision of
        # λ̂, and the ladder: λ̂ still moving over the whole run) fail on the full run's estimates too (its
        # section; precision is newer than it), and a
        # MALA acceptance above the band only marks a slow step
        assert record["train_acc"] == 1.0, record
        assert set(record["failed"]) <= {"convergence", "rhat", "ess", "precision", "ladder", "mala_accept"}, record
        if "mala_accept" in record["failed"]:
            assert record["mala_accept"] > 0.99, record

    momentum = summary["directions"]["momentum"]
    # Paired by seed (same initial weights and batch order): on every seed, momentum 0.9 ends at a
    # λ̂ lower than plain SGD's by more than 3 combined sampler MCSEs, so the sign is not noise.
    for delta, mcse in zip(momentum["llc_delta_per_seed"], momentum["llc_delta_mcse_per_seed"]):
        assert delta < -3 * mcse, (delta, mcse)
    # test accuracy rises alongside (full run: +1.56 ± 0.28 points, higher on each of 3 seeds)
    assert momentum["test_acc_delta"] > 0, momentum


def test_the_full_run_takes_its_setting_from_lh_calibrate(monkeypatch):
    """The full run's choose_setting, on a small budget: the setting is lh.calibrate's recommendation
    (ε and γ the smallest the two warm-ups chose, their longest draws, a burn-in that travels as far) and the section's table
    lists every calibration run. Short trainings (300 steps): only the plumbing is under test."""
    monkeypatch.setattr(th, "CALIBRATION_MAX_STEPS", 300)
    monkeypatch.setattr(th, "CALIBRATION_CHAINS", 1)
    train_data, _ = th.digits()
    models = {"baseline": th.train(0.05, 32, 0.0, 300, 0, train_data),
              "momentum 0.9": th.train(0.05, 32, 0.9, 300, 0, train_data)}
    setting, rule, rows = th.choose_setting(models, train_data)
    assert [(r["stage"], r["model"]) for r in rows] == [
        ("adaptive", "baseline"), ("adaptive", "momentum 0.9"), ("common", "baseline"), ("common", "momentum 0.9")]
    adaptive = [r for r in rows if r["stage"] == "adaptive"]
    common = [r for r in rows if r["stage"] == "common"]
    assert setting == {"step_size": min(r["step_size"] for r in adaptive),
                       "localization": min(r["localization"] for r in adaptive),
                       "num_burnin_steps": common[0]["num_burnin_steps"],
                       "num_draws": max(r["num_draws"] for r in adaptive)}
    # calibrate's burn-in: the travel-equivalent one at the smallest ε, capped at the step budget
    assert max(r["num_burnin_steps"] for r in adaptive) <= setting["num_burnin_steps"] <= th.CALIBRATION_MAX_STEPS
    assert all(r["step_size"] == setting["step_size"] for r in rows if r["stage"] == "common")
    assert "smallest" in rule and ("certified on both models" in rule) == all(r["certified"] for r in rows[2:])
    table = th.calibration_table(rows)
    assert table.count("\n| ") == len(rows) + 1  # the header and one line per run
