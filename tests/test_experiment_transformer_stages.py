"""Quick run of experiments/transformer_stages.py: λ̂ of a tiny transformer LM grows over training."""

import math

from experiments import transformer_stages


def test_llc_rises_over_training(tmp_path):
    summary = transformer_stages.main(["--quick", "--out", str(tmp_path)])
    steps, llc, mcse = summary["steps"], summary["llc"], summary["mcse"]
    assert steps == list(transformer_stages.QUICK.checkpoints)
    assert all(math.isfinite(v) for v in llc + mcse)
    # Training makes the model learn structure: the held-out loss falls from the first checkpoint.
    assert summary["held_out_loss"][-1] < summary["held_out_loss"][0] - 0.1
    # The direction of Hoogland et al.: λ̂ at the end of training is above λ̂ early in training,
    # by more than twice the combined Monte Carlo standard error of the two estimates.
    margin = 2 * math.hypot(mcse[0], mcse[-1])
    assert llc[-1] - llc[0] > margin, (llc, mcse)
    assert (tmp_path / "transformer_stages.png").is_file()


def test_the_full_run_takes_its_setting_from_lh_calibrate(tmp_path):
    """The full run's choose_setting on two short-trained checkpoints and a small budget: lh.calibrate's
    recommendation with its chain length, the verdict in the source line, and a cache hit the second
    time. Only the plumbing is under test (150 training steps, 300 sampling steps per chain)."""
    size = transformer_stages.Size(
        train_steps=150, checkpoints=(100, 150), train_batch=32, lr=3e-3, calibrate=True, num_chains=2,
        num_burnin_steps=0, num_draws=0, sgld_batch=16, calibration_steps=300)
    train_windows, _ = transformer_stages.corpus()
    paths, _ = transformer_stages.train(size, train_windows, tmp_path)
    train_windows = train_windows[:1024]  # a smaller L_n(w*) pass: the data's size is not under test
    setting = transformer_stages.choose_setting(size, paths, train_windows, tmp_path)
    assert setting["calibrated_on"] == [100, 150] and setting["nbeta"] == transformer_stages.NBETA
    assert setting["step_size"] > 0 and 0 < setting["num_burnin_steps"] + setting["num_draws"] <= 300
    assert setting["source"].startswith("lh.calibrate's recommendation, ")
    assert ("certified on both checkpoints" in setting["source"]) == setting["certified"]
    assert "common" in setting["table"] and "smallest" in setting["rule"]
    assert transformer_stages.choose_setting(size, paths, train_windows, tmp_path) == setting  # from the cache
