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
