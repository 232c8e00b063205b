"""Tier 4 (contract): every bad input of issue 14 (and the audit's others we could reconstruct)
gets a clear error naming the argument, or the correct result; never a traceback, never silence.

Three tables:

* ``CLI``: a command line (with a file from the ``files`` fixture where it needs one). Each must
  exit non-zero with ONE line that names the flag or file, no traceback, and nothing written.
* ``TOML``: a config file with a value of the wrong type or an unknown key; the line must name the
  key and the file, and be found before any model is built.
* ``API``: calls of the library. Rows in the lead's area (``estimate_llc`` validation) are marked
  ``xfail(strict=False)`` where today's ``estimate_llc`` fails them; the lead removes the marks.

Plus the faults: a full disk (``OSError(ENOSPC)`` injected into the writer) must leave no file and
no ``*.tmp``; Ctrl-C must end in one line and status 130; no config key but ``model`` may import.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset, WeightedRandomSampler

import lambdahat as lh
from lambdahat import cli, datafiles, models
from lambdahat.trace import Trace

TASK = ["--task", "dln:3,2,4:1:50"]
FAST = ["--step-size", "1e-4", "--localization", "1", "--num-chains", "1", "--num-draws", "5",
        "--num-burnin-steps", "0", "--no-progress"]
FACTORY = ["--model", "{factory}:make", "--data", "{data}"]


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A working folder with a model factory, data, checkpoints good and bad, and a plain file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "factory.py").write_text(textwrap.dedent("""\
        from torch import nn
        def make(hidden=4):
            return nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        def meta():
            return nn.Linear(3, 1, device="meta")
    """))
    torch.manual_seed(0)
    torch.save({"x": torch.randn(40, 3), "y": torch.randn(40, 1)}, tmp_path / "data.pt")
    torch.save(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).state_dict(), tmp_path / "wrong.pt")
    (tmp_path / "random.pt").write_bytes(os.urandom(300))
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04" + os.urandom(100))
    (tmp_path / "binary.txt").write_bytes(bytes(range(128, 256)) * 4)
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "ckpts").mkdir()
    torch.save(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).state_dict(), tmp_path / "ckpts" / "step_1.pt")
    (tmp_path / "folder").mkdir()
    names = dict(factory="factory.py", data="data.pt", tmp=str(tmp_path))
    return tmp_path, names


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, the error text) of the command line, run in process."""
    capsys.readouterr()
    try:
        status = cli.main(argv)
        message = capsys.readouterr().err
    except SystemExit as exit_:
        captured = capsys.readouterr()
        if isinstance(exit_.code, str):
            status, message = 1, exit_.code
        else:
            status, message = exit_.code or 0, captured.err
    return status, message


def _one_line(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    assert len(lines) == 1, message
    assert "Traceback" not in message and "weights_only=False" not in message
    return lines[0]


def _listing(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts}


# --- the command line -----------------------------------------------------------------------

CLI = [
    pytest.param(["estimate", *TASK, "--threads", "0"], ["--threads"], id="threads-0"),
    pytest.param(["estimate", *TASK, "--threads", "-3"], ["--threads"], id="threads-negative"),
    pytest.param(["estimate", *TASK, "--threads", "two"], ["--threads"], id="threads-text"),
    pytest.param(["trajectory", "ckpts", *FACTORY, "--workers", "-1"], ["--workers"], id="workers-negative"),
    pytest.param(["trajectory", "ckpts", *FACTORY, "--workers", "0"], ["--workers"], id="workers-0"),
    pytest.param(["demo", "--out", "afile"], ["--out", "afile"], id="demo-out-is-a-file"),
    pytest.param(["demo", "--out", "afile/sub"], ["--out", "afile"], id="demo-out-under-a-file"),
    pytest.param(["calibrate", "--out", "afile"], ["--out"], id="calibrate-out-is-a-file"),
    pytest.param(["trajectory", "ckpts", *FACTORY, "--out", "afile"], ["--out"], id="trajectory-out-is-a-file"),
    pytest.param(["estimate", *TASK, *FAST, "--save-trace", "missing/t.npz"], ["--save-trace", "missing"],
                 id="save-trace-missing-folder"),
    pytest.param(["estimate", *TASK, *FAST, "--plot", "missing/p.png"], ["--plot", "missing"], id="plot-missing-folder"),
    pytest.param(["estimate", *TASK, *FAST, "--report", "missing/r.html"], ["--report"], id="report-missing-folder"),
    pytest.param(["estimate", *TASK, *FAST, "--plot", "folder"], ["--plot", "folder"], id="plot-is-a-folder"),
    pytest.param(["calibrate", "--csv", "missing/c.csv"], ["--csv"], id="calibrate-csv-missing-folder"),
    pytest.param(["estimate", *FACTORY, *FAST, "--checkpoint", "wrong.pt"], ["--checkpoint", "wrong.pt", "fit"],
                 id="checkpoint-wrong-architecture"),
    pytest.param(["estimate", *FACTORY, *FAST, "--checkpoint", "random.pt"], ["--checkpoint", "random.pt"],
                 id="checkpoint-random-bytes"),
    pytest.param(["estimate", *FACTORY, *FAST, "--checkpoint", "nothere.pt"], ["--checkpoint", "nothere.pt"],
                 id="checkpoint-missing"),
    pytest.param(["demo", "--seed", "-1"], ["--seed"], id="demo-seed-negative"),
    pytest.param(["demo", "--seed", "1.5"], ["--seed"], id="demo-seed-float"),
    pytest.param(["calibrate", "--seed", "-1"], ["--seed"], id="calibrate-seed-negative"),
    pytest.param(["calibrate", "--step-sizes", "-1"], ["--step-sizes"], id="calibrate-step-sizes-negative"),
    pytest.param(["calibrate", "--step-sizes", "1e-3,0"], ["--step-sizes"], id="calibrate-step-sizes-zero"),
    pytest.param(["calibrate", "--localizations", "-1"], ["--localizations"], id="calibrate-localizations-negative"),
    pytest.param(["calibrate", "--nbetas", "auto,-5"], ["--nbetas"], id="calibrate-nbetas-negative"),
    pytest.param(["estimate", *FACTORY, *FAST, "--head", "1"], ["--head", "LAYER.HEAD"], id="head-without-dot"),
    pytest.param(["estimate", *FACTORY, *FAST, "--head", "a.b"], ["--head"], id="head-not-numbers"),
    pytest.param(["estimate", *FACTORY, *FAST, "--head", "0.0"], ["--head"], id="head-of-a-model-without-attention"),
    pytest.param(["estimate", *FACTORY, *FAST, "--head", "0.1", "--params", "0"], ["--head", "--params"],
                 id="head-and-params"),
    pytest.param(["estimate", *FACTORY, *FAST, "--seq-len", "0"], ["--seq-len"], id="seq-len-0"),
    pytest.param(["estimate", *TASK, *FAST, "--step-size", "abc"], ["--step-size"], id="step-size-text"),
    pytest.param(["estimate", *TASK, "--step-size", "-1"], ["step_size"], id="step-size-negative"),
    pytest.param(["estimate", *TASK, "--num-chains", "0"], ["num_chains"], id="num-chains-0"),
    pytest.param(["estimate", *TASK, "--num-draws", "2.5"], ["--num-draws"], id="num-draws-float"),
    pytest.param(["estimate", *TASK, "--batch-size", "0"], ["batch_size"], id="batch-size-0"),
    pytest.param(["estimate", *TASK, "--nbeta", "-3"], ["nbeta"], id="nbeta-negative"),
    pytest.param(["estimate", *TASK, "--localization", "inf"], ["localization"], id="localization-inf"),
    pytest.param(["estimate", *TASK, "--sampler", "bogus"], ["sampler", "sgld"], id="sampler-unknown"),
    pytest.param(["estimate", *TASK, "--chain-mode", "bogus"], ["chain_mode"], id="chain-mode-unknown"),
    pytest.param(["estimate", *TASK, "--preconditioner", "bogus"], ["--preconditioner"], id="preconditioner-unknown"),
    pytest.param(["estimate", *TASK, "--target-rel-mcse", "2"], ["target_rel_mcse"], id="target-rel-mcse-too-big"),
    pytest.param(["estimate", *FACTORY, "--model-kwargs", "[1, 2]"], ["--model-kwargs"], id="model-kwargs-not-object"),
    pytest.param(["estimate", *FACTORY, "--model-kwargs", "{hidden: 3}"], ["--model-kwargs"], id="model-kwargs-bad-json"),
    pytest.param(["estimate", *FACTORY, "--model-kwargs", '{"bogus": 1}'], ["--model", "bogus", "--model-kwargs"],
                 id="model-kwargs-unknown-keyword"),
    pytest.param(["estimate", *TASK, "--model-kwargs", '{"hidden": 1}'], ["--model-kwargs"], id="model-kwargs-without-model"),
    pytest.param(["estimate", "--model", "no_such_module_xyz:make", "--data", "{data}"], ["--model", "no_such_module_xyz"],
                 id="model-module-missing"),
    pytest.param(["estimate", "--model", "os.path", "--data", "{data}"], ["--model"], id="model-without-function"),
    pytest.param(["estimate", "--model", "{factory}:nothing", "--data", "{data}"], ["--model", "nothing"],
                 id="model-function-missing"),
    pytest.param(["estimate", "--model", "{factory}:meta", "--data", "{data}"], ["--model", "meta device"],
                 id="model-on-meta-device"),
    pytest.param(["estimate", *FACTORY, "--hf", "folder"], ["exactly one of"], id="two-model-sources"),
    pytest.param(["estimate", "--model", "{factory}:make"], ["--data"], id="data-missing"),
    pytest.param(["estimate", "--model", "{factory}:make", "--data", "nothere.pt"], ["--data", "nothere.pt"],
                 id="data-file-missing"),
    pytest.param(["estimate", "--model", "{factory}:make", "--data", "random.pt"], ["--data", "random.pt"],
                 id="data-random-bytes"),
    pytest.param(["estimate", "--model", "{factory}:make", "--data", "garbage.npz"], ["--data", "garbage.npz"],
                 id="data-garbage-npz"),
    pytest.param(["estimate", "--model", "{factory}:make", "--data", "binary.txt"], ["--data", "binary.txt"],
                 id="data-not-utf8-text"),
    pytest.param(["estimate", *TASK, "--data", "{data}"], ["--task", "--data"], id="task-with-data"),
    pytest.param(["estimate", "--task", "dln:3,x:1"], ["--task"], id="task-bad-widths"),
    pytest.param(["estimate", "--task", "dln:3,2,4:9"], ["--task", "rank"], id="task-rank-too-high"),
    pytest.param(["estimate", "--task", "rrr:3,2:1"], ["--task", "rrr"], id="task-rrr-two-dims"),
    pytest.param(["estimate", "--task", "dln:3,2,4:1:0"], ["--task"], id="task-zero-samples"),
    pytest.param(["estimate", "--config", "nothere.toml"], ["--config", "nothere.toml"], id="config-missing"),
    pytest.param(["estimate", "--hf", "folder", "--data", "{data}"], ["--hf", "folder"], id="hf-not-a-model-folder"),
    pytest.param(["trajectory", "afile", *FACTORY], ["CHECKPOINTS", "afile"], id="trajectory-checkpoints-is-a-file"),
    pytest.param(["trajectory", "folder", *FACTORY, "--out", "o"], ["no checkpoint files"], id="trajectory-no-checkpoints"),
    pytest.param(["trajectory", "ckpts", *FACTORY, "--smoothing", "-1"], ["--smoothing"], id="trajectory-smoothing-negative"),
    pytest.param(["trajectory", "ckpts", "--task", "dln:3,2:1"], ["--task"], id="trajectory-takes-no-task"),
    pytest.param(["estimate", *TASK, "--n", "3"], ["--n"], id="abbreviated-flag"),
]


@pytest.mark.parametrize("argv, names", CLI)
def test_cli_mistakes_end_in_one_line_naming_the_flag(argv, names, files, capsys):
    root, fill = files
    before = _listing(root)
    for key, value in fill.items():
        argv = [a.replace("{" + key + "}", value) for a in argv]
    status, message = _run(argv, capsys)
    assert status != 0
    line = _one_line(message)
    assert line.startswith("lambdahat"), line
    for name in names:
        assert name in line, (name, line)
    assert _listing(root) == before  # nothing written, no folder made


TOML = [
    pytest.param("estimate", 'model = 5\ndata = "data.pt"\n', ["model", "integer"], id="model-int"),
    pytest.param("estimate", 'model = "factory.py:make"\ndata = "data.pt"\nloss = "bogus"\n', ["loss", "gaussian_nll"],
                 id="loss-bogus"),
    pytest.param("trajectory", 'checkpoints = "ckpts"\nmodel = "factory.py:make"\ndata = "data.pt"\nworkers = "two"\n',
                 ["workers"], id="workers-string"),
    pytest.param("estimate", 'task = "dln:3,2,4:1"\nlocalization = true\n', ["localization", "boolean"],
                 id="localization-bool"),
    pytest.param("estimate", 'task = "dln:3,2,4:1"\n[estimate]\nnum_chains = 2.5\n', ["num_chains"], id="num-chains-float"),
    pytest.param("estimate", 'task = "dln:3,2,4:1"\nseed = -5\n', ["seed"], id="seed-negative"),
    pytest.param("estimate", 'task = "dln:3,2,4:1"\nsampler = 5\n', ["sampler"], id="sampler-int"),
    pytest.param("estimate", 'task = "dln:3,2,4:1"\ntrain_mode = "yes please"\n', ["train_mode"], id="train-mode-text"),
    pytest.param("estimate", 'task = "dln:3,2,4:1"\nstep_size = "fast"\n', ["step_size"], id="step-size-text"),
    pytest.param("estimate", 'model = "factory.py:make"\ndata = "data.pt"\nhead = 1.2\n', ["head", "LAYER.HEAD"],
                 id="head-number"),
    pytest.param("estimate", 'model = "factory.py:make"\ndata = "data.pt"\nparams = "0"\n', ["params"], id="params-string"),
    pytest.param("estimate", 'model = "factory.py:make"\ndata = 3\n', ["data"], id="data-int"),
    pytest.param("estimate", 'model = "factory.py:make"\ndata = "data.pt"\nseq_len = 0\n', ["seq_len"], id="seq-len-0"),
    pytest.param("estimate", 'model = "factory.py:make"\ndata = "data.pt"\nmodel_kwargs = "hidden=3"\n',
                 ["model_kwargs"], id="model-kwargs-string"),
    pytest.param("estimate", 'model = "factory.py:make"\ndata = "data.pt"\ncheckpoint = 3\n', ["checkpoint"],
                 id="checkpoint-int"),
    pytest.param("estimate", 'task = "dln:3,2,4:1"\nstep_sze = 1e-3\n', ["step_sze", "step_size"], id="unknown-key"),
    pytest.param("estimate", 'task = "dln:3,2,4:1"\nestimate = 5\n', ["estimate", "table"], id="estimate-not-a-table"),
    pytest.param("estimate", 'task = "dln:3,2,4:1"\nseed = 1\n[estimate]\nseed = 2\n', ["seed", "both"], id="given-twice"),
    pytest.param("estimate", 'task = "dln:3,2,4:1"\n[estimate]\ntask = "x"\n', ["task"], id="input-under-estimate"),
    pytest.param("estimate", 'task = "dln:3,2,4:1\n', ["not valid TOML"], id="invalid-toml"),
    pytest.param("calibrate", 'task = "dln:3,2,4:1"\nstep_sizes = [1e-3]\n', ["step_sizes"], id="calibrate-lists-are-flags"),
    pytest.param("trajectory", 'checkpoints = "ckpts"\nmodel = "factory.py:make"\ndata = "data.pt"\n'
                 '[stages]\nsmoothing = -1.0\n', ["smoothing"], id="stages-smoothing-negative"),
    pytest.param("trajectory", 'checkpoints = "ckpts"\nmodel = "factory.py:make"\ndata = "data.pt"\n'
                 '[stages]\nsmoothin = 0.1\n', ["smoothin"], id="stages-unknown-key"),
    pytest.param("trajectory", 'checkpoints = "ckpts"\nmodel = "factory.py:make"\ndata = "data.pt"\nlog_steps = 1\n',
                 ["log_steps"], id="stage-key-at-top-level"),
    pytest.param("trajectory", 'checkpoints = 5\nmodel = "factory.py:make"\ndata = "data.pt"\n', ["checkpoints"],
                 id="checkpoints-int"),
]


@pytest.mark.parametrize("command, text, names", TOML)
def test_toml_mistakes_name_the_key_and_the_file(command, text, names, files, capsys, monkeypatch):
    root, _ = files
    (root / "run.toml").write_text(text)
    built = []
    monkeypatch.setattr(models, "load_factory", lambda *a, **k: built.append(a) or nn.Linear(3, 1))
    status, message = _run([command, "--config", "run.toml", "--no-progress"], capsys)
    assert status != 0
    line = _one_line(message)
    assert "run.toml" in line
    for name in names:
        assert name in line, (name, line)
    assert not built  # found while reading the file, before any model is built


def test_a_config_file_is_code_only_through_its_model_key(files, capsys):
    """Trust boundary (issue 14, item 12): every other key, set to an importable name, imports nothing."""
    root, _ = files
    (root / "evil_mod.py").write_text("open('IMPORTED', 'w').write('x')\ndef f(**kw):\n    raise SystemExit('ran')\n")
    sys.path.insert(0, str(root))
    try:
        for key in ("hf", "task", "checkpoint", "data", "loss", "head", "sampler", "chain_mode", "preconditioner",
                    "step_size"):
            extra = "" if key in ("data",) else 'data = "data.pt"\n'
            source = "" if key in ("hf", "task") else 'model = "factory.py:make"\n'
            (root / "run.toml").write_text(f'{source}{extra}{key} = "evil_mod:f"\n')
            _run(["estimate", "--config", "run.toml", "--no-progress"], capsys)
            assert not (root / "IMPORTED").exists(), key
        (root / "run.toml").write_text('model = "evil_mod:f"\ndata = "data.pt"\n')  # the one key that runs code
        status, message = _run(["estimate", "--config", "run.toml"], capsys)
        assert (root / "IMPORTED").exists() and message == "ran"
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("evil_mod", None)


@pytest.mark.parametrize("command", ["estimate", "trajectory", "calibrate"])
def test_help_says_a_config_file_is_code(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "import and run Python code" in text and "treat a config file like a script" in text
    assert "No other flag or key imports anything" in text


# --- faults: a full disk, Ctrl-C --------------------------------------------------------------


def _disk_full_after(nbytes: int):
    """A writer that puts ``nbytes`` into its file and then fails as a full disk does."""

    def write(*args, **kwargs):
        target = next(a for a in args if isinstance(a, (str, os.PathLike)) or hasattr(a, "write"))
        if hasattr(target, "write"):
            target.write(b"\0" * nbytes)
        else:
            with open(target, "wb") as handle:
                handle.write(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


def _fill_disk(monkeypatch, flag: str) -> None:
    import matplotlib.figure

    from lambdahat import report

    if flag == "--plot":
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _disk_full_after(100))
    elif flag == "--save-trace":
        monkeypatch.setattr(np, "savez_compressed", _disk_full_after(100))
    else:
        monkeypatch.setattr(report, "write_report", _disk_full_after(100))


@pytest.mark.parametrize("flag, name", [("--plot", "p.png"), ("--save-trace", "t.npz"), ("--report", "r.html")])
def test_disk_full_leaves_nothing_behind(flag, name, files, capsys, monkeypatch):
    root, _ = files
    out = root / "results"
    out.mkdir()
    _fill_disk(monkeypatch, flag)
    status, message = _run(["estimate", *TASK, *FAST, flag, str(out / name)], capsys)
    assert status != 0
    line = [ln for ln in message.strip().splitlines() if "error" in ln][-1]
    assert flag in line and "No space left on device" in line and "Traceback" not in message
    assert list(out.iterdir()) == []  # no partial file, no 0-byte file, no *.tmp


def test_demo_disk_full_leaves_no_png(files, capsys, monkeypatch):
    root, _ = files
    monkeypatch.setitem(cli.DEMO_SETTINGS, "task", {"widths": [3, 2, 3], "rank": 1, "n": 50, "seed": 0})
    monkeypatch.setitem(cli.DEMO_SETTINGS, "estimate", dict(cli.DEMO_SETTINGS["estimate"], num_chains=1, batch_size=25))
    monkeypatch.setitem(cli.DEMO_SETTINGS, "quick", {"num_draws": 5, "num_burnin_steps": 0})
    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _disk_full_after(10))
    status, message = _run(["demo", "--quick", "--out", "figs", "--no-progress"], capsys)
    assert status != 0 and "No space left on device" in message and "--out" in message
    assert list((root / "figs").iterdir()) == []


def test_ctrl_c_during_estimate_is_one_line_and_status_130(files, capsys, monkeypatch):
    from lambdahat import estimate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(estimate, "estimate_llc", interrupted)
    status, message = _run(["estimate", *TASK, *FAST], capsys)
    assert status == 130
    assert _one_line(message) == "lambdahat estimate: interrupted; nothing was written."


# --- the library ------------------------------------------------------------------------------


def _tiny():
    torch.manual_seed(0)
    return nn.Linear(2, 1), (torch.randn(20, 2), torch.randn(20, 1))


def _estimate(model=None, data=None, loss=None, **settings):
    default_model, default_data = _tiny()
    kwargs = dict(step_size=1e-3, localization=1.0, num_chains=1, num_draws=5, num_burnin_steps=0, progress=False)
    kwargs.update(settings)
    return lh.estimate_llc(model if model is not None else default_model, data if data is not None else default_data,
                           loss or nn.MSELoss(), **kwargs)


class _Stream(IterableDataset):
    def __iter__(self):
        yield from ()


class _WritesItsWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, x):
        self.fc.weight.data.fill_(float("inf"))
        return self.fc(x)


class _NoisyEval(nn.Linear):
    """A stochastic forward even in eval mode (unseeded noise)."""

    def forward(self, x):
        return super().forward(x) + 0.1 * torch.randn(x.shape[0], 1)


def _numpy_settings(tmp_path):
    result = _estimate(seed=np.int64(1), num_chains=np.int64(1), batch_size=np.int64(10), step_size=np.float32(1e-3))
    json.dumps(result.to_dict())
    result.trace.save(tmp_path / "numpy")
    assert Trace.load(tmp_path / "numpy").config["seed"] == 1


def _same_seed_same_result():
    torch.manual_seed(5)
    model = _NoisyEval(2, 1)  # one model, estimated twice, with the global RNG in different states
    a = _estimate(model=model, seed=3).llc_mean
    torch.randn(7)
    b = _estimate(model=model, seed=3).llc_mean
    assert a == b, (a, b)


def _mixed_precision_model():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1).double())
    return _estimate(model=model)


def _constant_loss():
    return _estimate(loss=lambda output, target: torch.zeros((), requires_grad=True) * 0 + 1.0)


def _one_output_cross_entropy():
    model, (x, _) = _tiny()
    return _estimate(model=model, data=(x, torch.zeros(20, dtype=torch.long)), loss=nn.CrossEntropyLoss())


def _save_and_load_without_suffix(tmp_path):
    trace = Trace({"loss": np.zeros((1, 3))}, 0, [None], {"seed": np.int64(2), "step": np.float32(0.5)})
    written = trace.save(tmp_path / "x")
    assert written.name == "x.npz"
    assert Trace.load(tmp_path / "x").config == {"seed": 2, "step": 0.5}


def _thread_pool():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        return _estimate(executor=pool, num_chains=2)


def _bfloat16_model_warns():
    model, data = _tiny()
    with pytest.warns(UserWarning, match="bfloat16.*float32"):
        _estimate(model=model.to(torch.bfloat16), data=tuple(t.to(torch.bfloat16) for t in data))


# (id, call(tmp_path), expected exception types, names in the message) — or None for "the correct result"
API = [
    pytest.param(lambda t: _estimate(seed=None), (ValueError, TypeError), ["seed"], id="seed-None"),
    pytest.param(lambda t: _estimate(seed=-5), (ValueError,), ["seed"], id="seed-negative"),
    pytest.param(lambda t: _estimate(seed=True), (ValueError, TypeError), ["seed"], id="seed-True"),
    pytest.param(lambda t: _estimate(localization=True), (ValueError, TypeError), ["localization"],
                 id="localization-True"),
    pytest.param(lambda t: _estimate(localization=1e300), (ValueError,), ["localization"], id="localization-1e300"),
    pytest.param(lambda t: _estimate(sampled_params=5), (ValueError, TypeError), ["sampled_params"],
                 id="sampled-params-int"),
    pytest.param(lambda t: _estimate(step_size=-1.0), (ValueError,), ["step_size"], id="step-size-negative"),
    pytest.param(lambda t: _thread_pool(), (ValueError,), ["executor", "ThreadPoolExecutor"], id="thread-pool-executor"),
    pytest.param(lambda t: _bfloat16_model_warns(), None, [], id="bfloat16-model-warns"),
    pytest.param(lambda t: _estimate(num_chains=0), (ValueError,), ["num_chains"], id="num-chains-0"),
    pytest.param(lambda t: _estimate(sampler="bogus"), (ValueError,), ["sampler"], id="sampler-unknown"),
    pytest.param(lambda t: _numpy_settings(t), None, [], id="numpy-scalar-settings"),
    pytest.param(lambda t: _same_seed_same_result(), None, [], id="stochastic-forward-same-seed"),
    pytest.param(lambda t: _estimate(model=nn.Linear(2, 1, device="meta")), (ValueError,), ["meta"],
                 id="model-on-meta-device"),
    pytest.param(lambda t: _estimate(model=_WritesItsWeight()), (ValueError, RuntimeError), ["in place"],
                 id="forward-writes-its-weight"),
    pytest.param(lambda t: _mixed_precision_model(), (ValueError, TypeError), ["float64"], id="mixed-float32-float64"),
    pytest.param(lambda t: _constant_loss(), (ValueError,), ["loss_fn"], id="loss-independent-of-weights"),
    pytest.param(lambda t: _one_output_cross_entropy(), (ValueError,), ["loss"], id="cross-entropy-one-output"),
    pytest.param(lambda t: _estimate(data=(torch.empty(20, 2, device="meta"), torch.empty(20, 1, device="meta"))),
                 (ValueError,), ["data", "meta"], id="data-on-meta-device"),
    pytest.param(lambda t: _estimate(data=(torch.randn(20, 2), torch.randn(19, 1))), (ValueError,), ["data"],
                 id="data-sizes-differ"),
    pytest.param(lambda t: _estimate(data=DataLoader(TensorDataset(torch.randn(20, 2), torch.randn(20, 1)),
                                                     sampler=WeightedRandomSampler([1.0] * 20, 20), batch_size=5)),
                 (ValueError,), ["sampler", "WeightedRandomSampler"], id="dataloader-weighted-sampler"),
    pytest.param(lambda t: _estimate(data=DataLoader(_Stream(), batch_size=5)), (ValueError,), ["IterableDataset"],
                 id="dataloader-iterable-dataset"),
    pytest.param(lambda t: _estimate(data=np.zeros((20, 3))), (TypeError,), ["data"], id="data-numpy-array"),
    pytest.param(lambda t: _save_and_load_without_suffix(t), None, [], id="trace-save-x-load-x"),
    pytest.param(lambda t: datafiles.load_data(_text(t), seq_len=0), (ValueError,), ["seq_len"], id="seq-len-0"),
    pytest.param(lambda t: models.tiny_transformer(seq_len=0), (ValueError,), ["seq_len"], id="tiny-transformer-seq-len-0"),
    pytest.param(lambda t: models.load_weights(nn.Linear(2, 1), _random_file(t)), (ValueError,), ["checkpoint"],
                 id="load-weights-random-bytes"),
    pytest.param(lambda t: models.load_weights(nn.Linear(2, 1), nn.Linear(3, 1).state_dict()), (ValueError,),
                 ["weight", "size mismatch"], id="load-weights-wrong-architecture"),
    pytest.param(lambda t: models.load_weights(nn.Linear(2, 1), {"weight": [1.0], "bias": 0}), (ValueError,),
                 ["not tensors"], id="load-weights-not-tensors"),
]


def _text(tmp_path):
    (tmp_path / "t.txt").write_text("hello world " * 20)
    return tmp_path / "t.txt"


def _random_file(tmp_path):
    (tmp_path / "r.pt").write_bytes(os.urandom(200))
    return tmp_path / "r.pt"


@pytest.mark.parametrize("call, errors, names", API)
def test_library_bad_inputs(call, errors, names, tmp_path):
    if errors is None:
        call(tmp_path)  # the correct result: its checks are inside the call
        return
    with pytest.raises(errors) as info:
        call(tmp_path)
    message = str(info.value)
    assert "weights_only=False" not in message
    for name in names:
        assert name in message, (name, message)
