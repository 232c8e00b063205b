"""``lambdahat estimate``: flags and a TOML file give the same run; JSON output; clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from lambdahat import cli, models

pytestmark = pytest.mark.cli

SETTINGS = ["--step-size", "1e-4", "--localization", "1", "--num-chains", "2", "--num-draws", "30",
            "--num-burnin-steps", "5", "--batch-size", "100", "--seed", "3", "--no-progress"]


def _json_run(argv, capsys):
    assert cli.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_flags_and_toml_give_identical_results(tmp_path, capsys):
    by_flags = _json_run(["estimate", "--task", "dln:4,3,5:1", *SETTINGS, "--json"], capsys)
    (tmp_path / "run.toml").write_text(
        'task = "dln:4,3,5:1"\n[estimate]\nstep_size = 1e-4\nlocalization = 1.0\nnum_chains = 2\n'
        "num_draws = 30\nnum_burnin_steps = 5\nbatch_size = 100\nseed = 3\n"
    )
    by_file = _json_run(["estimate", "--config", str(tmp_path / "run.toml"), "--no-progress", "--json"], capsys)
    assert by_flags["llc_per_chain"] == by_file["llc_per_chain"]
    assert by_flags["config"] == by_file["config"]
    assert by_flags["truth"] == 6.5 or by_flags["truth"] > 0
    overridden = _json_run(["estimate", "--config", str(tmp_path / "run.toml"), "--seed", "4", "--no-progress", "--json"], capsys)
    assert overridden["config"]["seed"] == 4 and overridden["llc_per_chain"] != by_file["llc_per_chain"]


def test_factory_checkpoint_text_data_and_head(tmp_path, capsys):
    torch.manual_seed(0)
    model = models.tiny_transformer(d_model=16, n_heads=2, seq_len=16)
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pt")
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = _json_run(["estimate", "--model", "lambdahat.models:tiny_transformer", "--model-kwargs",
                     '{"d_model": 16, "n_heads": 2, "seq_len": 16}', "--checkpoint", str(tmp_path / "ckpt.pt"),
                     "--data", str(tmp_path / "corpus.txt"), "--seq-len", "16", "--head", "0.1", "--nbeta", "30",
                     "--step-size", "1e-5", "--num-chains", "1", "--num-draws", "5", "--num-burnin-steps", "0",
                     "--batch-size", "8", "--no-progress", "--json", "--report", str(tmp_path / "r.html"),
                     "--plot", str(tmp_path / "p.png")], capsys)
    assert out["config"]["num_params"] == 16 * 8 * 3 + 8 * 16 + 3 * 8
    assert out["config"]["masked_params"]["blocks.0.attn.W_Q"] == 16 * 8
    assert (tmp_path / "r.html").stat().st_size > 1000 and (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["estimate"], "exactly one of --model"),
        (["estimate", "--task", "dln:3,2:1", "--model", "x:y"], "exactly one of"),
        (["estimate", "--model", "lambdahat.models:tiny_transformer"], "--data FILE is needed"),
        (["estimate", "--task", "mlp:3:1"], "--task must look like"),
        (["estimate", "--task", "dln:3,2,4:1", "--step-size", "-1"], "step_size must be a positive"),
    ],
)
def test_errors_name_the_problem(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--no-progress"])
    assert message in str(exc.value)
