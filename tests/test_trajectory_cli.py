"""End to end: train a tiny transformer on offline text, save checkpoints, run `lambdahat trajectory`.

The model is lambdahat.models.tiny_transformer (one attention-only layer, d_model 16) trained
byte-level on CPython's pydoc topic texts (shipped with Python, no download) for 200 steps, saving
5 checkpoints. The command is interrupted on its third checkpoint (in process, by making the
estimate raise KeyboardInterrupt: one line and exit status 130), then run again as a real subprocess, which must estimate only
the three unfinished checkpoints and write the table, the stages and the plot. A TOML file with the
same setting must then find every checkpoint in the cache (the same setting, so the same results).
The sampler setting is tiny (2 chains × 20 draws): this tests the plumbing, not the numbers.
A local Hugging Face folder (a tiny GPT-2 written by the test) also serves as the architecture.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lambdahat import cli, datafiles, losses, models

pytestmark = pytest.mark.cli

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
    capsys.readouterr()
    # Ctrl-C: one line (the interrupt's own message), exit status 130, no traceback (issue 14, item 7)
    assert cli.main(_flags(run_dir, out)) == 130
    stderr = capsys.readouterr().err.strip().splitlines()
    assert stderr[-1].startswith("lambdahat trajectory: ")
    # the interrupt's message: the test's own, or the library's count of what is cached
    assert "stopped by the test" in stderr[-1] or "2 of 5 checkpoints cached" in stderr[-1]
    assert not any("Traceback" in line for line in stderr)
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


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds no memory; its parent, or init, reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", [
    "ctrl-c",
    "kill-9",
])
def test_stopping_a_run_with_workers_leaves_no_worker(run_dir, tmp_path, how):
    """Issue 14 item 7: Ctrl-C (SIGINT to the whole process group, as a terminal sends it) ends in
    one line and status 130; kill -9 of the command cannot stop its pool, so the workers notice and
    exit by themselves. Either way no worker is left running."""
    flags = [*_flags(run_dir, tmp_path / "out"), "--num-draws", "50000", "--workers", "2"]
    # a terminal's process has Ctrl-C at its default; a test runner may have left it ignored, which
    # a child would inherit (and then rightly keep: a background job must not die of Ctrl-C)
    proc = subprocess.Popen([sys.executable, "-m", "lambdahat", *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            workers = [p for p in _children(proc.pid) if _running(p)]
        assert len(workers) >= 2, proc.communicate(timeout=30)
        time.sleep(2.0)  # the workers are sampling now
        os.killpg(proc.pid, signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        _, stderr = proc.communicate(timeout=30)
        if how == "ctrl-c":
            assert proc.returncode == 130, stderr
            lines = [line for line in stderr.strip().splitlines() if line.strip()]
            assert lines[-1].startswith("lambdahat trajectory: ") and "interrupted" in lines[-1], stderr
            assert "Traceback" not in stderr, stderr
        else:
            assert proc.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 15
        while any(_running(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_running(p) for p in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
