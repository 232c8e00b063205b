"""trajectory(): the LLC of every checkpoint with one setting, cached per checkpoint.

Contracts: each row equals estimate_llc on that checkpoint with the same setting; a rerun loads
finished checkpoints from the cache instead of rebuilding them (counted through make_model); an
interrupted run resumes where it stopped; changing the setting or a checkpoint's contents
invalidates exactly what it should; an executor gives the same numbers as the sequential run.
"""

import copy
import csv
import functools
import json
import multiprocessing
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import lambdahat as lh
from lambdahat.losses import gaussian_nll
from lambdahat.models import load_weights
from lambdahat.settings import Settings
from lambdahat.trajectory import ROW_KEYS, TrajectoryResult, list_checkpoints, resolve_settings

SETTINGS = dict(step_size=1e-3, localization=10.0, nbeta=30.0, num_chains=2, num_draws=30, num_burnin_steps=10,
                batch_size=32, seed=3)
STEPS = [0, 20, 40, 60, 80]


def _make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))


def _data(n=64):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=gen)
    return x, torch.sin(x[:, :2]) + 0.1 * torch.randn(n, 2, generator=gen)


_BUILDS = {"calls": 0, "fail_at": None}


def _counted_model():
    """make_model that counts its calls in _BUILDS and can fail on the k-th (an interruption).

    The count lives outside the function: the cache key sees make_model's code and closure, so a
    factory that carried its own changing counter would (rightly) be another factory on each run."""
    _BUILDS["calls"] += 1
    if _BUILDS["calls"] == _BUILDS["fail_at"]:
        raise KeyboardInterrupt("interrupted")
    return _make_model()


class Counter:
    """Starts a new count of _counted_model's calls (and optionally an interruption at the k-th)."""

    def __init__(self, fail_at=None):
        _BUILDS.update(calls=0, fail_at=fail_at)

    @property
    def calls(self):
        return _BUILDS["calls"]


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    """Five checkpoints of a short training run, named step_000000.pt …, plus files to ignore."""
    folder = tmp_path_factory.mktemp("ckpts")
    model, (x, y) = _make_model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for step in range(STEPS[-1] + 1):
        if step in STEPS:
            torch.save({"model": model.state_dict(), "step": step}, folder / f"step_{step:06d}.pt")
        loss = gaussian_nll(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    (folder / "notes.txt").write_text("not a checkpoint")
    return folder


def _run(ckpts, make_model=_counted_model, **kwargs):
    return lh.trajectory(ckpts, make_model, _data(), gaussian_nll, {**SETTINGS, **kwargs.pop("settings", {})},
                         progress=False, **kwargs)


def test_rows_equal_estimate_llc_per_checkpoint(ckpt_dir):
    result = _run(ckpt_dir)
    assert isinstance(result, TrajectoryResult)
    assert [row["step"] for row in result.rows] == STEPS
    assert all(list(row) == list(ROW_KEYS) for row in result.rows)
    model = load_weights(_make_model(), ckpt_dir / "step_000040.pt")
    direct = lh.estimate_llc(model, _data(), gaussian_nll, progress=False, **SETTINGS)
    row = result.rows[2]
    assert row["llc_mean"] == direct.llc_mean and row["init_loss"] == direct.init_loss
    assert row["healthy"] == direct.healthy and row["failing"] == [c.name for c in direct.checks if not c.ok]
    assert row["path"].endswith("step_000040.pt")
    assert result.computed == STEPS and result.cached == []
    # training lowers the loss at w*: the table says so
    assert result.column("init_loss")[-1] < result.column("init_loss")[0]
    assert result.stages is not None and result.stages.stages[0].start == 0 and result.stages.stages[-1].end == 80


def test_probe_at_every_checkpoint_is_estimate_llcs(ckpt_dir, tmp_path):
    x, y = _data()
    probe = (x[:6], y[:6])
    result = _run(ckpt_dir, probe=probe, probe_every=2)
    model = load_weights(_make_model(), ckpt_dir / "step_000040.pt")
    direct = lh.estimate_llc(model, _data(), gaussian_nll, progress=False, probe=probe, probe_every=2, **SETTINGS)
    assert np.array_equal(result.results[40].trace.probe, direct.trace.probe, equal_nan=True)
    assert lh.bif(result.results[40]).shape == (6, 6)
    # streaming moments with two query samples: the (2, 6) block of the raw BIF
    streamed = _run(ckpt_dir, probe=probe, probe_every=2, probe_store="moments", probe_queries=[0, 3])
    np.testing.assert_allclose(lh.bif(streamed.results[40]), lh.bif(result.results[40])[[0, 3]], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="probe with cache_dir"):
        _run(ckpt_dir, probe=probe, cache_dir=tmp_path / "cache")


def test_cache_resumes_without_recomputing(ckpt_dir, tmp_path):
    first = Counter()
    full = _run(ckpt_dir, cache_dir=tmp_path)
    assert first.calls == len(STEPS) and len(list(tmp_path.glob("*.json"))) == len(STEPS)

    again = Counter()
    cached = _run(ckpt_dir, cache_dir=tmp_path)
    assert again.calls == 0 and cached.cached == STEPS and cached.computed == []
    for a, b in zip(full.rows, cached.rows):
        assert a == b

    # an interrupted run: the third model build fails; two checkpoints were finished and cached
    fresh = tmp_path / "fresh"
    Counter(fail_at=3)
    with pytest.raises(KeyboardInterrupt, match="interrupted: 2 of 5 checkpoints cached; rerun the same command to resume"):
        _run(ckpt_dir, cache_dir=fresh)
    assert len(list(fresh.glob("*.json"))) == 2 and not list(fresh.glob("*.tmp"))
    resumed_counter = Counter()
    resumed = _run(ckpt_dir, cache_dir=fresh)
    assert resumed_counter.calls == 3 and resumed.cached == STEPS[:2] and resumed.computed == STEPS[2:]
    assert [r["llc_mean"] for r in resumed.rows] == [r["llc_mean"] for r in full.rows]


def test_cache_key_follows_settings_data_and_contents(ckpt_dir, tmp_path):
    _run(ckpt_dir, cache_dir=tmp_path)
    same_setting = Counter()  # estimate_llc's defaults, spelled out, are the same setting
    _run(ckpt_dir, cache_dir=tmp_path, settings=dict(chain_mode="auto", sampler="auto"))
    assert same_setting.calls == 0
    other_setting = Counter()
    _run(ckpt_dir, cache_dir=tmp_path, settings=dict(seed=4))
    assert other_setting.calls == len(STEPS)  # another seed is another setting: all recomputed

    # in-memory state dicts: identity by contents, so one changed checkpoint is recomputed alone
    states = [(step, torch.load(ckpt_dir / f"step_{step:06d}.pt", weights_only=True)["model"]) for step in STEPS]
    _run(states, cache_dir=tmp_path / "mem")
    states[1][1]["0.bias"] = states[1][1]["0.bias"] + 0.01
    counter = Counter()
    result = _run(states, cache_dir=tmp_path / "mem")
    assert counter.calls == 1 and result.computed == [20]
    assert result.rows[1]["path"] is None


def test_executor_gives_the_sequential_numbers(ckpt_dir):
    # chain_mode="sequential" steps each chain alone, as an executor task does: bit for bit equal
    # (a vectorised run equals it to float rounding only)
    sequential = _run(ckpt_dir, settings=dict(chain_mode="sequential"))
    # spawn, not fork: a fork taken while another thread holds one of torch's locks (seen: the lazy-init
    # lock under torch.manual_seed) leaves the worker deadlocked; spawned workers start clean
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        parallel = _run(ckpt_dir, executor=pool, checkpoints_in_flight=3, settings=dict(chain_mode="sequential"))
    for a, b in zip(sequential.rows, parallel.rows):
        assert a["step"] == b["step"] and a["llc_mean"] == b["llc_mean"] and a["llc_mcse"] == b["llc_mcse"]


def test_outputs_csv_json_plot(ckpt_dir, tmp_path):
    result = _run(ckpt_dir)
    with result.to_csv(tmp_path / "t.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in table] == STEPS
    assert float(table[3]["llc_mean"]) == pytest.approx(result.rows[3]["llc_mean"])
    data = json.loads(result.to_json(tmp_path / "t.json").read_text())
    assert [r["step"] for r in data["rows"]] == STEPS and data["settings"]["nbeta"] == 30.0
    assert "stages" in data and "boundaries" in data["stages"]
    fig = result.plot(title="tiny MLP")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    text = str(result)
    assert "LLC trajectory over 5 checkpoints" in text and "step_size 0.001" in text
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pandas"):
            result.to_dataframe()
    else:
        assert list(result.to_dataframe()["step"]) == STEPS


def test_list_checkpoints_reads_steps_from_names(tmp_path):
    for name in ("ckpt-300.pth", "step_000020.pt", "model_7.bin", "final.pt", "readme.md"):
        (tmp_path / name).write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = list_checkpoints(tmp_path)
    assert [(s, p.name) for s, p in found] == [(7, "model_7.bin"), (20, "step_000020.pt"), (300, "ckpt-300.pth")]
    assert any("final.pt" in str(w.message) for w in caught)
    (tmp_path / "step_20.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="two checkpoints for step 20"):
        list_checkpoints(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        list_checkpoints(tmp_path / "nope")


def test_settings_from_a_calibration_and_bad_settings():
    # a calibration is anything with .recommended (and, where it records them, the .settings of its runs)
    calibration = SimpleNamespace(
        recommended=dict(step_size=2e-4, nbeta=30.0, nbeta_default=False, localization=1.0, num_draws=800),
        settings=dict(num_chains=4, num_burnin_steps=400, batch_size=64, seed=0, stability=0.05),
    )
    assert resolve_settings(calibration) == dict(num_chains=4, num_burnin_steps=400, batch_size=64, seed=0,
                                                 step_size=2e-4, nbeta=30.0, localization=1.0, num_draws=800)
    assert resolve_settings(calibration.recommended)["nbeta"] == 30.0
    # a recommended Settings (lambdahat.calibrate's result): every field, as chosen
    chosen = Settings(step_size=2e-4, nbeta=30.0, localization=1.0, num_draws=800, num_burnin_steps=400)
    assert resolve_settings(SimpleNamespace(recommended=chosen)) == dict(chosen.items())
    with pytest.raises(ValueError, match="step_sze"):
        resolve_settings(dict(step_sze=1e-3))
    with pytest.raises(ValueError, match="trajectory"):
        resolve_settings(dict(executor=None))
    with pytest.raises(ValueError, match="no setting"):
        resolve_settings(SimpleNamespace(recommended=None, rule=""))
    assert resolve_settings(dict(seed=np.int64(3)))["seed"] == 3 and type(resolve_settings(dict(seed=np.int64(3)))["seed"]) is int


def test_bad_checkpoints_are_clear(ckpt_dir):
    with pytest.raises(ValueError, match="repeated steps"):
        _run([(1, ckpt_dir / "step_000000.pt"), (1, ckpt_dir / "step_000020.pt")])
    with pytest.raises(TypeError, match="pair"):
        _run([ckpt_dir / "step_000000.pt"])
    with pytest.raises(ValueError, match="does not load"):
        _run([(0, ckpt_dir / "step_000000.pt")], make_model=lambda: nn.Linear(3, 2))


def test_stage_options_are_checked_before_any_estimate(ckpt_dir):
    counter = Counter()
    with pytest.raises(ValueError, match="smoothng"):
        _run(ckpt_dir, stage_options=dict(smoothng=0.2))
    assert counter.calls == 0
    result = _run([(s, ckpt_dir / f"step_{s:06d}.pt") for s in STEPS[:3]], stage_options=dict(smoothing=0.3))
    assert result.stages.settings["smoothing"] == 0.3


# --- issue 14, defect 1: the cache key must change whenever the result could, and only then ----------


def _activated(act="tanh"):
    """A factory with a keyword argument, as ``--model file.py:f --model-kwargs`` uses one."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh() if act == "tanh" else nn.ReLU(), nn.Linear(8, 2))


class ScaledLoss:
    """A callable-object loss: its repr holds a memory address, which must not enter the key."""

    def __init__(self, scale):
        self.scale = scale

    def __call__(self, output, target):
        return self.scale * gaussian_nll(output, target)


def _recomputed(ckpts, cache, first, second):
    """How many checkpoints a second run with other arguments estimates, after a first one filled the cache."""
    _run(ckpts, cache_dir=cache, **first)
    return len(_run(ckpts, cache_dir=cache, **second).computed)


def _run_loss(ckpts, loss_fn, **kwargs):
    return lh.trajectory(ckpts, _counted_model, _data(), loss_fn, SETTINGS, progress=False, **kwargs)


def test_cache_key_sees_the_model_factory_and_its_kwargs(ckpt_dir, tmp_path):
    ckpts = [(s, ckpt_dir / f"step_{s:06d}.pt") for s in STEPS[:2]]
    tanh, relu = functools.partial(_activated, act="tanh"), functools.partial(_activated, act="relu")
    assert _recomputed(ckpts, tmp_path / "a", dict(make_model=tanh), dict(make_model=relu)) == 2
    # the same factory and kwargs in a new partial object: the same key
    again = _run(ckpts, cache_dir=tmp_path / "a", make_model=functools.partial(_activated, act="relu"))
    assert again.computed == [] and again.cached == STEPS[:2]

    # a closure over a template model (the command line's make_model): the template's architecture counts
    def copying(template):
        return lambda: copy.deepcopy(template)

    assert _recomputed(ckpts, tmp_path / "b", dict(make_model=copying(_activated("tanh"))),
                       dict(make_model=copying(_activated("relu")))) == 2
    # ... but not its initial weights, which every checkpoint overwrites (strict loading)
    other_init = _activated("relu")
    with torch.no_grad():
        other_init[0].weight.add_(1.0)
    assert _run(ckpts, cache_dir=tmp_path / "b", make_model=copying(other_init)).computed == []


def test_cache_key_sees_the_loss(ckpt_dir, tmp_path):
    ckpts = [(s, ckpt_dir / f"step_{s:06d}.pt") for s in STEPS[:2]]
    Counter()
    _run_loss(ckpts, nn.MSELoss(), cache_dir=tmp_path / "mse")
    counter = Counter()
    summed = _run_loss(ckpts, nn.MSELoss(reduction="sum"), cache_dir=tmp_path / "mse")
    assert counter.calls == 2 and summed.cached == []

    Counter()
    _run_loss(ckpts, lambda out, y: ((out - y) ** 2).mean(), cache_dir=tmp_path / "lambdas")
    counter = Counter()
    _run_loss(ckpts, lambda out, y: ((out - y) ** 2).mean() * 2, cache_dir=tmp_path / "lambdas")
    assert counter.calls == 2

    scale = 1.0
    Counter()
    _run_loss(ckpts, lambda out, y: scale * gaussian_nll(out, y), cache_dir=tmp_path / "closure")
    scale = 2.0  # the same lambda, another value in its closure cell
    counter = Counter()
    _run_loss(ckpts, lambda out, y: scale * gaussian_nll(out, y), cache_dir=tmp_path / "closure")
    assert counter.calls == 2


def test_cache_key_sees_sampled_params(ckpt_dir, tmp_path):
    ckpts = [(s, ckpt_dir / f"step_{s:06d}.pt") for s in STEPS[:2]]
    first = dict(settings=dict(sampled_params=lambda name, p: name.startswith("0.")))
    second = dict(settings=dict(sampled_params=lambda name, p: name.startswith("2.")))
    assert _recomputed(ckpts, tmp_path, first, second) == 2


def test_partial_and_callable_object_losses_hit_the_cache(ckpt_dir, tmp_path):
    ckpts = [(s, ckpt_dir / f"step_{s:06d}.pt") for s in STEPS[:2]]
    for name, make in (("partial", lambda: functools.partial(gaussian_nll)), ("object", lambda: ScaledLoss(2.0))):
        Counter()
        _run_loss(ckpts, make(), cache_dir=tmp_path / name)
        counter = Counter()  # a new object of the same function and arguments: the same key
        again = _run_loss(ckpts, make(), cache_dir=tmp_path / name)
        assert counter.calls == 0 and again.cached == STEPS[:2], name
    counter = Counter()
    _run_loss(ckpts, ScaledLoss(3.0), cache_dir=tmp_path / "object")
    assert counter.calls == 2


def test_cache_file_of_the_wrong_shape_is_a_miss_with_a_warning(ckpt_dir, tmp_path):
    ckpts = [(s, ckpt_dir / f"step_{s:06d}.pt") for s in STEPS[:2]]
    _run(ckpts, cache_dir=tmp_path)
    files = sorted(tmp_path.glob("*.json"))
    files[0].write_text("[1, 2, 3]")
    record = json.loads(files[1].read_text())
    record["row"] = "not a row"
    files[1].write_text(json.dumps(record))
    counter = Counter()
    with pytest.warns(UserWarning) as caught:
        result = _run(ckpts, cache_dir=tmp_path)
    assert counter.calls == 2 and result.cached == []
    messages = " ".join(str(w.message) for w in caught)
    assert files[0].name in messages and files[1].name in messages
    Counter()
    assert _run(ckpts, cache_dir=tmp_path).cached == STEPS[:2]  # rewritten whole


# --- issue 14, defect 6: every option is checked before the first checkpoint is estimated ------------


@pytest.mark.parametrize("options", [dict(smoothing=-1.0), dict(grid=3), dict(noise=-1.0), dict(flat_tol="x")])
def test_stage_option_values_are_checked_before_any_estimate(ckpt_dir, tmp_path, options):
    counter = Counter()
    with pytest.raises(ValueError, match=next(iter(options))):
        _run(ckpt_dir, cache_dir=tmp_path, stage_options=options)
    assert counter.calls == 0 and not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("settings, match", [(dict(step_size=-1.0), "step_size"), (dict(num_chains=0), "num_chains"),
                                             (dict(seed=-5), "seed"), (dict(sampled_params=5), "sampled_params")])
def test_setting_values_are_checked_before_any_estimate(ckpt_dir, settings, match):
    counter = Counter()
    with pytest.raises((ValueError, TypeError), match=match):
        _run(ckpt_dir, settings=settings)
    assert counter.calls == 0


def test_a_failing_stage_detection_keeps_the_table(ckpt_dir, tmp_path, monkeypatch):
    module = sys.modules["lambdahat.trajectory"]  # lambdahat.trajectory is the function
    calls, real = [], module.detect_stages

    @functools.wraps(real)
    def broken(*args, **kwargs):  # the first call checks the options; the second is on the real curve
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("stage detection broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "detect_stages", broken)
    with pytest.warns(UserWarning, match="stage detection broke"):
        result = _run(ckpt_dir, cache_dir=tmp_path, stage_options=dict(smoothing=0.2))
    assert len(calls) == 2 and result.stages is None and [r["step"] for r in result.rows] == STEPS
    assert len(list(tmp_path.glob("*.json"))) == len(STEPS)


# --- settings="auto": calibrate on the first, middle and last checkpoint, then one setting for all ----


def test_auto_settings_calibrate_once_on_three_checkpoints(ckpt_dir, tmp_path, monkeypatch):
    seen = []

    class FakeCalibration:
        recommended = dict(SETTINGS, nbeta_default=False)

    def fake_calibrate(models, data, loss_fn, *, seed, progress, **kwargs):
        seen.append({name: model[0].bias.detach().clone() for name, model in models.items()})
        return FakeCalibration()

    monkeypatch.setattr(sys.modules["lambdahat.calibrate"], "calibrate", fake_calibrate)  # the module, not the function
    result = lh.trajectory(ckpt_dir, _counted_model, _data(), gaussian_nll, "auto", cache_dir=tmp_path, progress=False)
    assert len(seen) == 1 and list(seen[0]) == ["step 0", "step 40", "step 80"]
    state = torch.load(ckpt_dir / "step_000040.pt", weights_only=True)["model"]
    assert torch.equal(seen[0]["step 40"], state["0.bias"])  # each calibrated model holds its checkpoint
    fixed = _run(ckpt_dir)
    assert [r["llc_mean"] for r in result.rows] == [r["llc_mean"] for r in fixed.rows]
    assert result.settings["step_size"] == SETTINGS["step_size"] and "nbeta_default" not in result.settings

    counter = Counter()  # the rerun finds the calibration and every checkpoint in the cache
    again = lh.trajectory(ckpt_dir, _counted_model, _data(), gaussian_nll, "auto", cache_dir=tmp_path, progress=False)
    assert len(seen) == 1 and counter.calls == 0 and again.cached == STEPS


# --- issue 14, defect 7: no worker outlives its parent; an interrupted run says how to resume ---------

_FAULT_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from torch import nn
import lambdahat as lh
from lambdahat.losses import gaussian_nll


def make_model():
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's process has it, whatever we inherited
    ckpts, cache, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=gen)
    settings = dict(step_size=1e-3, localization=10.0, nbeta=30.0, num_chains=2, num_draws=2000, num_burnin_steps=10,
                    batch_size=32, seed=3, chain_mode="sequential")
    try:
        result = lh.trajectory(ckpts, make_model, (x, torch.sin(x[:, :2])), gaussian_nll, settings, cache_dir=cache,
                               workers=workers or None, checkpoints_in_flight=2, progress=False)
    except KeyboardInterrupt as err:
        print(err, flush=True)
        sys.exit(130)
    print(json.dumps({"cached": result.cached, "computed": result.computed}))
"""
FAULT_STEPS = list(range(0, 80, 10))


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory):
    """Eight checkpoints and the script that runs them with 2 worker processes."""
    root = tmp_path_factory.mktemp("fault")
    (root / "ckpts").mkdir()
    for step in FAULT_STEPS:
        torch.manual_seed(step)
        torch.save(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).state_dict(),
                   root / "ckpts" / f"step_{step}.pt")
    (root / "run.py").write_text(_FAULT_SCRIPT)
    return root


def _start_and_wait_for_a_cached_checkpoint(root, cache):
    proc = subprocess.Popen([sys.executable, str(root / "run.py"), str(root / "ckpts"), str(cache), "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(cache.glob("*.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint was cached within 120 s"
        time.sleep(0.05)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 2  # the two pool workers (and multiprocessing's resource tracker)
    return proc, children


def _assert_all_gone(children, timeout=20):
    gone, alive = psutil.wait_procs(children, timeout=timeout)
    for p in alive:  # clean up before failing: they are this test's own processes
        p.kill()
    assert not alive, f"{len(alive)} worker process(es) outlived their parent"


def _resume(root, cache):
    done = subprocess.run([sys.executable, str(root / "run.py"), str(root / "ckpts"), str(cache), "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


_IDLE_POOL_SCRIPT = """
import time
from lambdahat.trajectory import _worker_pool

if __name__ == "__main__":
    pool = _worker_pool(1)
    pool.submit(int, 1).result()  # the worker has started and now waits for work
    print(list(pool._processes)[0], flush=True)
    time.sleep(300)
"""


def test_stopping_a_pool_waits_for_its_manager_thread(monkeypatch):
    """After stop_pool no thread of the pool is left to race the interpreter's exit hook on the
    pool's wake-up pipe (that race failed the hook, and the process then aborted on a Ctrl-C): the
    manager thread is joined even when it is slow to close the pool, here by a second."""
    import concurrent.futures.process as futures_process

    from lambdahat.workers import stop_pool, worker_pool

    pool = worker_pool(1)
    pool.submit(int, 1).result()
    manager, wakeup = pool._executor_manager_thread, pool._executor_manager_thread_wakeup
    close = futures_process._ExecutorManagerThread.join_executor_internals

    def slower(self):
        time.sleep(1.0)
        close(self)

    monkeypatch.setattr(futures_process._ExecutorManagerThread, "join_executor_internals", slower)
    stop_pool(pool)
    assert not manager.is_alive()
    assert wakeup._closed  # the exit hook's wakeup() is now a no-op


def test_an_idle_worker_exits_when_its_parent_is_killed(tmp_path):
    """The case that orphaned workers (an idle worker waits for work forever): it must exit within
    seconds of a SIGKILL of its parent, through its watch on the parent."""
    (tmp_path / "idle.py").write_text(_IDLE_POOL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "idle.py")], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(proc.stdout.readline())
        children = psutil.Process(proc.pid).children(recursive=True)
        assert worker in [c.pid for c in children]
    finally:
        proc.kill()
        proc.wait()
    started = time.monotonic()
    _assert_all_gone(children, timeout=5)
    assert time.monotonic() - started < 5


def test_kill_9_leaves_no_worker_and_the_rerun_resumes(fault_run, tmp_path):
    proc, children = _start_and_wait_for_a_cached_checkpoint(fault_run, tmp_path)
    proc.kill()  # SIGKILL: the parent cannot clean up; its workers must notice and exit
    proc.communicate()
    _assert_all_gone(children)
    finished = sorted(int(p.name.split("_")[1]) for p in tmp_path.glob("*.json"))
    assert 1 <= len(finished) < len(FAULT_STEPS)
    summary = _resume(fault_run, tmp_path)
    assert summary["cached"] == finished and sorted(summary["computed"]) == sorted(set(FAULT_STEPS) - set(finished))


def test_interrupt_stops_the_workers_and_says_how_to_resume(fault_run, tmp_path):
    proc, children = _start_and_wait_for_a_cached_checkpoint(fault_run, tmp_path)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:  # a second Ctrl-C, as a user would press it
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, out, err)
    finished = len(list(tmp_path.glob("*.json")))
    assert f"interrupted: {finished} of {len(FAULT_STEPS)} checkpoints cached; rerun the same command to resume" in out
    assert "Traceback" not in err
    _assert_all_gone(children)
    assert not list(tmp_path.glob("*.tmp"))
