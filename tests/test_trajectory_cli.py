"""End to end: train a tiny transformer on offline text, save checkpoints, run `lambdahat trajectory`.

The model is lambdahat.models.tiny_transformer (one attention-only layer, d_model 16) trained
byte-level on CPython's pydoc topic texts (shipped with Python, no download) for 200 steps, saving
5 checkpoints. The command is interrupted on its third checkpoint (in process, by making the
estimate raise KeyboardInterrupt), then run again as a real subprocess, which must estimate only
the three unfinished checkpoints and write the table, the stages and the plot. A TOML file with the
same setting must then find every checkpoint in the cache (the same setting, so the same results).
The sampler setting is tiny (2 chains × 20 draws): this tests the plumbing, not the numbers.
A local Hugging Face folder (a tiny GPT-2 written by the test) also serves as the architecture.
"""

import csv
import json
import subprocess
import sys

import pytest
import torch

from lambdahat import cli, datafiles, losses, models

STEPS = [0, 25, 50, 100, 200]
MODEL_KWARGS = {"d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 32}
SETTINGS = {"step_size": 1e-3, "localization": 100.0, "nbeta": 30.0, "num_chains": 2, "num_draws": 20,
            "num_burnin_steps": 10, "batch_size": 32, "seed": 0}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "corpus.txt").write_text(datafiles.python_docs_text()[:20_000])
    data = datafiles.load_data(root / "corpus.txt", seq_len=32)
    torch.manual_seed(0)
    model = models.tiny_transformer(**MODEL_KWARGS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    (root / "ckpts").mkdir()
    for step in range(STEPS[-1] + 1):
        if step in STEPS:
            torch.save({"model": model.state_dict(), "step": step}, root / "ckpts" / f"step_{step:06d}.pt")
        loss = losses.next_token(model, data[torch.randint(0, len(data), (32,), generator=gen)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return root


def _flags(root, out):
    flags = ["trajectory", str(root / "ckpts"), "--model", "lambdahat.models:tiny_transformer",
             "--model-kwargs", json.dumps(MODEL_KWARGS), "--data", str(root / "corpus.txt"), "--seq-len", "32",
             "--out", str(out), "--no-progress"]
    for name, value in SETTINGS.items():
        flags += ["--" + name.replace("_", "-"), str(value)]
    return flags


def test_trajectory_command_end_to_end_with_resume(run_dir, monkeypatch, capsys):
    out = run_dir / "out"
    module = sys.modules["lambdahat.trajectory"]  # lambdahat.trajectory is the function
    real, calls = module.estimate_llc, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("stopped by the test")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "estimate_llc", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.main(_flags(run_dir, out))
    monkeypatch.undo()
    assert len(list((out / "cache").glob("*.json"))) == 2

    done = subprocess.run([sys.executable, "-m", "lambdahat", *_flags(run_dir, out), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["cached"] == STEPS[:2] and summary["computed"] == STEPS[2:]

    with (out / "trajectory.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in table] == STEPS
    init_loss = [float(row["init_loss"]) for row in table]
    assert init_loss[-1] < init_loss[0] - 1.0  # training worked: L_n(w*) fell from ~log 256 = 5.5
    assert all(row["llc_mean"] not in ("", "nan") for row in table)
    assert (out / "trajectory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stages = json.loads((out / "stages.json").read_text())
    assert stages["stages"][0]["start"] == 0 and stages["stages"][-1]["end"] == STEPS[-1]
    assert summary["settings"]["nbeta"] == 30.0 and summary["rows"][0]["path"].endswith("step_000000.pt")

    # the same setting from a TOML file: same cache key, so nothing is recomputed
    toml = run_dir / "trajectory.toml"
    toml.write_text(
        f'checkpoints = "{run_dir / "ckpts"}"\nmodel = "lambdahat.models:tiny_transformer"\n'
        f'model_kwargs = {{ d_model = 16, n_layers = 1, n_heads = 2, seq_len = 32 }}\n'
        f'data = "{run_dir / "corpus.txt"}"\nseq_len = 32\nout = "{out}"\n[estimate]\n'
        + "".join(f"{k} = {v!r}\n" for k, v in SETTINGS.items())
    )
    capsys.readouterr()
    assert cli.main(["trajectory", "--config", str(toml), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "(0 estimated, 5 from the cache)" in printed and "L_n(w*)" in printed and "nbeta 30.0" in printed


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["trajectory", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for phrase in ("step_000100.pt", "ONE sampler setting", "examples:", "--config", "[estimate]", "cache",
                   "Hoogland", "--log-steps", "--json"):
        assert phrase in text, phrase


def test_bad_invocations_say_what_to_do(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit, match="CHECKPOINTS folder"):
        cli.main(["trajectory", "--model", "lambdahat.models:tiny_transformer", "--data", str(run_dir / "corpus.txt")])
    bad = tmp_path / "bad.toml"
    bad.write_text('checkpoints = "x"\nstep_sze = 1e-3\n')
    with pytest.raises(SystemExit, match="step_sze"):
        cli.main(["trajectory", "--config", str(bad)])
    with pytest.raises(SystemExit, match="no checkpoint files"):
        cli.main(["trajectory", str(tmp_path), "--model", "lambdahat.models:tiny_transformer",
                  "--data", str(run_dir / "corpus.txt"), "--out", str(tmp_path / "o"), "--no-progress"])


def test_hugging_face_folder_as_the_architecture(run_dir, tmp_path):
    """--hf DIR: each checkpoint (a state dict) loads into a copy of the folder's model."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=256, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(config)
    gpt2.save_pretrained(tmp_path / "gpt2")
    (tmp_path / "ckpts").mkdir()
    for step in (0, 10, 20):
        with torch.no_grad():
            gpt2.lm_head.weight.mul_(1.1)  # three different checkpoints of the same architecture
        torch.save(gpt2.state_dict(), tmp_path / "ckpts" / f"step_{step}.pt")
    text = (run_dir / "corpus.txt").read_text()[:4000]
    (tmp_path / "small.txt").write_text(text)
    out = tmp_path / "out"
    argv = ["trajectory", str(tmp_path / "ckpts"), "--hf", str(tmp_path / "gpt2"), "--data", str(tmp_path / "small.txt"),
            "--seq-len", "16", "--out", str(out), "--no-progress", "--no-cache", "--json",
            *[f"--{k.replace('_', '-')}={v}" for k, v in {**SETTINGS, "num_draws": 5, "num_burnin_steps": 0}.items()]]
    assert cli.main(argv) == 0
    with (out / "trajectory.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [0, 10, 20]
    assert len({r["init_loss"] for r in rows}) == 3  # each row measured its own checkpoint
    assert not list(out.glob("cache"))
