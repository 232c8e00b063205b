"""trajectory(): the LLC of every checkpoint with one setting, cached per checkpoint.

Contracts: each row equals estimate_llc on that checkpoint with the same setting; a rerun loads
finished checkpoints from the cache instead of rebuilding them (counted through make_model); an
interrupted run resumes where it stopped; changing the setting or a checkpoint's contents
invalidates exactly what it should; an executor gives the same numbers as the sequential run.
"""

import csv
import json
import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import lambdahat as lh
from lambdahat.calibrate import CalibrationResult
from lambdahat.losses import gaussian_nll
from lambdahat.models import load_weights
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


class Counter:
    """make_model that counts its calls and can fail on the k-th (an interruption)."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = 0, fail_at

    def __call__(self):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("interrupted")
        return _make_model()


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


def _run(ckpts, make_model=_make_model, **kwargs):
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


def test_cache_resumes_without_recomputing(ckpt_dir, tmp_path):
    first = Counter()
    full = _run(ckpt_dir, make_model=first, cache_dir=tmp_path)
    assert first.calls == len(STEPS) and len(list(tmp_path.glob("*.json"))) == len(STEPS)

    again = Counter()
    cached = _run(ckpt_dir, make_model=again, cache_dir=tmp_path)
    assert again.calls == 0 and cached.cached == STEPS and cached.computed == []
    for a, b in zip(full.rows, cached.rows):
        assert a == b

    # an interrupted run: the third model build fails; two checkpoints were finished and cached
    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        _run(ckpt_dir, make_model=Counter(fail_at=3), cache_dir=fresh)
    assert len(list(fresh.glob("*.json"))) == 2 and not list(fresh.glob("*.tmp"))
    resumed_counter = Counter()
    resumed = _run(ckpt_dir, make_model=resumed_counter, cache_dir=fresh)
    assert resumed_counter.calls == 3 and resumed.cached == STEPS[:2] and resumed.computed == STEPS[2:]
    assert [r["llc_mean"] for r in resumed.rows] == [r["llc_mean"] for r in full.rows]


def test_cache_key_follows_settings_data_and_contents(ckpt_dir, tmp_path):
    _run(ckpt_dir, cache_dir=tmp_path)
    same_setting = Counter()  # estimate_llc's defaults, spelled out, are the same setting
    _run(ckpt_dir, make_model=same_setting, cache_dir=tmp_path, settings=dict(chain_mode="auto", sampler="sgld"))
    assert same_setting.calls == 0
    other_setting = Counter()
    _run(ckpt_dir, make_model=other_setting, cache_dir=tmp_path, settings=dict(seed=4))
    assert other_setting.calls == len(STEPS)  # another seed is another setting: all recomputed

    # in-memory state dicts: identity by contents, so one changed checkpoint is recomputed alone
    states = [(step, torch.load(ckpt_dir / f"step_{step:06d}.pt", weights_only=True)["model"]) for step in STEPS]
    _run(states, cache_dir=tmp_path / "mem")
    states[1][1]["0.bias"] = states[1][1]["0.bias"] + 0.01
    counter = Counter()
    result = _run(states, make_model=counter, cache_dir=tmp_path / "mem")
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
    calibration = CalibrationResult(
        rows=[], rule="", models=["m"],
        recommended=dict(step_size=2e-4, nbeta=30.0, nbeta_default=False, localization=1.0, num_draws=800),
        settings=dict(num_chains=4, num_burnin_steps=400, batch_size=64, seed=0, stability=0.05),
    )
    assert resolve_settings(calibration) == dict(num_chains=4, num_burnin_steps=400, batch_size=64, seed=0,
                                                 step_size=2e-4, nbeta=30.0, localization=1.0, num_draws=800)
    assert resolve_settings(calibration.recommended)["nbeta"] == 30.0
    with pytest.raises(ValueError, match="step_sze"):
        resolve_settings(dict(step_sze=1e-3))
    with pytest.raises(ValueError, match="trajectory"):
        resolve_settings(dict(executor=None))
    with pytest.raises(ValueError, match="no setting"):
        resolve_settings(CalibrationResult(rows=[], recommended=None, rule="", models=[]))


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
        _run(ckpt_dir, make_model=counter, stage_options=dict(smoothng=0.2))
    assert counter.calls == 0
    result = _run([(s, ckpt_dir / f"step_{s:06d}.pt") for s in STEPS[:3]], stage_options=dict(smoothing=0.3))
    assert result.stages.settings["smoothing"] == 0.3
