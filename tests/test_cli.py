"""Tier 4 (contract) tests of the command line and the plots.

The ``truth`` commands print exact learning coefficients (the worked examples of Aoyagi 2024 and
Aoyagi & Watanabe 2005) and reject bad input with argparse's exit status 2 and a message naming
the argument. ``demo --quick`` runs end to end on a shrunken task (the real one takes too long for
CI) and writes its PNG. The plot functions return Figures for real, tiny estimate_llc results,
including ones where chains diverged.
"""

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

import lambdahat as lh
from lambdahat import cli, plot, tasks
from lambdahat.estimate import LLCResult, llc_from_trace
from lambdahat.trace import Trace
from tests._harness import figure_text

pytestmark = pytest.mark.cli


# --- lambdahat truth ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["dln", "3,5,4,3", "--rank", "1"], "λ = 9/2 (= 4.5), multiplicity 2"),
        (["dln", "10,10,10", "--rank", "5"], "λ = 47 (= 47), multiplicity 2"),
        (["dln", "5,3,5"], "λ = 13/2 (= 6.5), multiplicity 2"),
        (["dln", "10,10,10,10,10", "--rank", "3"], "λ = 41 (= 41), multiplicity 4"),
        (["rrr", "10", "10", "10", "--rank", "5"], "λ = 47 (= 47), multiplicity 2"),
        (["rrr", "4", "3", "8"], "λ = 6 (= 6), multiplicity 1"),
        (["regular", "7"], "λ = 7/2 (= 3.5), multiplicity 1"),
        (["quasi-homogeneous", "4,2"], "λ = 3/4 (= 0.75), multiplicity 1"),
        (["normal-crossing", "1,2"], "λ = 1/4 (= 0.25), multiplicity 1"),
        (["normal-crossing", "2,2"], "λ = 1/4 (= 0.25), multiplicity 2"),
    ],
)
def test_truth_prints_exact_value(argv, expected, capsys):
    assert cli.main(["truth", *argv]) == 0
    assert capsys.readouterr().out.strip() == expected


@pytest.mark.parametrize(
    "argv, names",
    [
        (["dln", "3,x,3"], "widths"),  # not integers
        (["dln", "3,5", "--rank", "9"], "rank"),  # rank above the narrowest layer
        (["dln", "3", "--rank", "0"], "widths"),  # a network needs input and output widths
        (["dln", "3,-1,3"], "widths"),
        (["rrr", "3", "4"], "N"),  # missing output dimension
        (["rrr", "3", "four", "5"], "H"),
        (["regular", "0"], "num_params"),
        (["quasi-homogeneous", "4,0"], "powers"),
        (["normal-crossing", "0,0"], "exponents"),
        (["nonsense"], "FAMILY"),
    ],
)
def test_truth_bad_input_exits_2_naming_the_argument(argv, names, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["truth", *argv])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error:" in captured.err and names in captured.err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lambdahat {lh.__version__}"


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


# --- lambdahat demo -------------------------------------------------------------------------


def test_demo_settings_are_the_documented_ones():
    """The demo task is the one whose truth the README and the demo's output quote."""
    spec = cli.DEMO_SETTINGS["task"]
    assert tasks.deep_linear_network(spec["widths"], spec["rank"], n=10, seed=spec["seed"]).truth.value == 105
    assert cli.DEMO_SETTINGS["estimate"] == {}  # no settings: the demo shows what a user gets with none
    assert cli.DEMO_SETTINGS["quick"] == {"max_steps": 4000}


def test_demo_quick_writes_png(tmp_path, monkeypatch, capsys):
    """``demo --quick`` end to end: prints the estimate against the truth and writes the PNG.

    The task is shrunk (the real quick demo takes ~25 s on 2 shared cores); the code path is the same.
    """
    monkeypatch.setitem(cli.DEMO_SETTINGS, "task", {"widths": [6, 4, 3], "rank": 1, "n": 400, "seed": 0})
    monkeypatch.setitem(cli.DEMO_SETTINGS, "estimate", dict(cli.DEMO_SETTINGS["estimate"], num_chains=2, batch_size=100))
    monkeypatch.setitem(cli.DEMO_SETTINGS, "quick", {"num_draws": 40, "num_burnin_steps": 20})
    out = tmp_path / "figures"
    assert cli.main(["demo", "--quick", "--out", str(out), "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    true_value = tasks.deep_linear_network([6, 4, 3], 1, n=10).truth.value
    assert f"truth λ = {true_value} (Aoyagi 2024) — estimate" in printed
    assert "relative error" in printed and "LLC estimate λ̂" in printed
    assert "2 chains × 40 draws after 20 burn-in steps" in printed and "seed 3" in printed
    png = out / "demo_llc.png"
    assert f"wrote {png}" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


# --- flags and TOML keys derived from Settings -------------------------------------------------


def _subparser(name):
    import argparse

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


@pytest.mark.parametrize("command", ["estimate", "trajectory", "demo", "calibrate"])
def test_setting_flags_are_the_settings_fields(command):
    """One flag per field of lambdahat.settings.Settings, its help from the field, its default appended."""
    import dataclasses

    from lambdahat.settings import Settings

    actions = {a.dest: a for a in _subparser(command)._actions}
    for f in dataclasses.fields(Settings):
        action = actions[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")]
        assert action.help.replace("%%", "%").startswith(f.metadata["help"])
        if f.default is not None and not isinstance(f.default, bool):
            assert action.help.endswith(f"(default: {f.default})"), action.help
        if isinstance(f.default, bool):
            assert action.nargs == 0  # --train-mode is a switch
    if "preconditioner" in actions:
        assert actions["preconditioner"].choices == ("auto", "none")


def _sample_values():
    """A valid, non-default value of every Settings field: (TOML text, flags, expected settings)."""
    import dataclasses

    from lambdahat.settings import Settings

    strings = {"sampler": "sghmc", "chain_mode": "sequential", "preconditioner": "none", "precision": "bfloat16"}
    toml, flags, expected = [], [], {}
    for f in dataclasses.fields(Settings):
        kind = f.metadata["cli"].removesuffix("_or_auto")
        value = strings.get(f.name, {"float": 0.5, "int": 123, "bool": True}.get(kind))
        expected[f.name] = value
        toml.append(f"{f.name} = {'true' if value is True else repr(value)}".replace("'", '"'))
        switch = f.metadata["cli"] == "bool"  # a bool that may also be "auto" takes a value
        flags += ["--" + f.name.replace("_", "-")] + ([] if switch else ["true" if value is True else str(value)])
    return "\n".join(toml) + "\n", flags, expected


def test_toml_keys_and_flags_give_the_same_settings(tmp_path):
    from lambdahat.cli.config import read_config
    from lambdahat.cli.inputs import input_options

    text, flags, expected = _sample_values()
    (tmp_path / "top.toml").write_text(text)
    (tmp_path / "table.toml").write_text("[estimate]\n" + text)
    for argv in (["--config", str(tmp_path / "top.toml")], ["--config", str(tmp_path / "table.toml")], flags):
        args = cli.build_parser().parse_args(["estimate", *argv])
        assert read_config(args, input_options()).settings == expected


def test_an_unknown_toml_key_lists_every_setting(tmp_path):
    import dataclasses

    from lambdahat.settings import Settings

    (tmp_path / "run.toml").write_text('task = "dln:3,2,4:1"\nstep_sze = 1\n')
    with pytest.raises(SystemExit) as exc:
        cli.main(["estimate", "--config", str(tmp_path / "run.toml")])
    for f in dataclasses.fields(Settings):
        assert f.name in str(exc.value)


def test_only_the_given_settings_reach_estimate_llc(monkeypatch, capsys):
    from lambdahat import estimate

    seen = {}

    def fake(model, data, loss_fn, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(estimate, "estimate_llc", fake)
    assert cli.main(["estimate", "--task", "dln:3,2,4:1:20", "--num-chains", "3", "--no-progress"]) == 130
    assert seen == {"num_chains": 3, "progress": False}  # the rest keep estimate_llc's own defaults


def test_toml_is_read_only_for_a_config_and_by_tomli_on_python_3_10(tmp_path, monkeypatch):
    import subprocess
    import sys
    import types

    code = "import sys; from lambdahat.cli import main; main(['truth', 'regular', '2']); print('tomllib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-1] == "False", done.stderr

    import tomllib

    from lambdahat.cli import config

    calls = []
    fake = types.SimpleNamespace(loads=lambda text: calls.append(text) or tomllib.loads(text),
                                 TOMLDecodeError=tomllib.TOMLDecodeError)
    monkeypatch.setitem(sys.modules, "tomli", fake)
    monkeypatch.setattr(sys, "version_info", (3, 10, 14))
    (tmp_path / "run.toml").write_text("seed = 3\n")
    assert config._load_toml(tmp_path / "run.toml") == {"seed": 3} and calls


# --- calibrate and demo on the shared inputs ----------------------------------------------------


def test_calibrate_takes_the_model_checkpoint_and_data_flags(tmp_path, capsys):
    """Issue 16 item 5: `lambdahat calibrate` takes estimate's inputs; several checkpoints, one setting."""
    import torch
    from torch import nn

    (tmp_path / "factory.py").write_text(
        "from torch import nn\ndef make():\n    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))\n")
    torch.manual_seed(0)
    torch.save({"x": torch.randn(60, 3), "y": torch.randn(60, 1)}, tmp_path / "data.pt")
    for name in ("first", "last"):
        torch.save(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).state_dict(), tmp_path / f"{name}.pt")
    fixed = ["--step-size", "1e-3", "--localization", "1"]
    argv = ["calibrate", "--model", f"{tmp_path / 'factory.py'}:make", "--data", str(tmp_path / "data.pt"),
            "--checkpoint", str(tmp_path / "first.pt"), str(tmp_path / "last.pt"), "--quick", *fixed,
            "--num-chains", "2", "--num-draws", "20", "--num-burnin-steps", "5", "--no-progress",
            "--csv", str(tmp_path / "cal.csv")]
    status = cli.main(argv)
    printed = capsys.readouterr().out
    assert status in (0, 1)  # 1: no setting was sound on every model (the table says why)
    models = {row.split(",")[1] for row in (tmp_path / "cal.csv").read_text().splitlines()[1:]}
    assert models == {"first", "last"}
    assert "first" in printed and "last" in printed


def test_demo_takes_estimate_setting_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(cli.DEMO_SETTINGS, "task", {"widths": [3, 2, 3], "rank": 1, "n": 100, "seed": 0})
    monkeypatch.setitem(cli.DEMO_SETTINGS, "estimate", dict(cli.DEMO_SETTINGS["estimate"], num_chains=1, batch_size=50))
    monkeypatch.setitem(cli.DEMO_SETTINGS, "quick", {"num_draws": 40, "num_burnin_steps": 5})
    assert cli.main(["demo", "--quick", "--num-draws", "12", "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "1 chains × 12 draws after 5 burn-in steps" in printed
    assert "lambdahat estimate --task dln:3,2,3:1:100" in _subparser("demo").description  # the one way to name it


# --- plots ----------------------------------------------------------------------------------


def _tiny(step_size=1e-3, seed=0):
    task = tasks.deep_linear_network([4, 3, 2], rank=1, n=200, seed=0)
    result = lh.estimate_llc(
        task.model, task.data, task.loss_fn, step_size=step_size, localization=1.0, nbeta=20.0, num_chains=3,
        num_draws=60, num_burnin_steps=30, batch_size=50, seed=seed, progress=False,
    )
    return task, result


@pytest.fixture(scope="module")
def healthy():
    return _tiny()


def _with_diverged_chain(result: LLCResult, chain: int, step: int) -> LLCResult:
    """The same run, with ``chain`` blown up at ``step`` as run_chains records it (NaN from there on)."""
    arrays = {name: values.copy() for name, values in result.trace.arrays.items()}
    arrays["loss"][chain, step - 3 : step] = [1e3, 1e8, 1e30]  # an explosion before the NaN
    for values in arrays.values():
        values[chain, step:] = np.nan
    diverged_at = list(result.trace.diverged_at)
    diverged_at[chain] = step
    trace = Trace(arrays, result.trace.num_burnin_steps, diverged_at, result.trace.config)
    if hasattr(LLCResult, "from_trace"):  # the result computes its checks once, from the trace
        return LLCResult.from_trace(trace, result.init_loss, result.nbeta, result.settings, result.num_params)
    stats = llc_from_trace(trace, result.init_loss, result.nbeta)
    return LLCResult(init_loss=result.init_loss, nbeta=result.nbeta, trace=trace, **stats)


def test_plots_of_a_healthy_run(healthy, tmp_path):
    task, result = healthy
    assert not result.diverged
    loss_fig = plot.plot_loss_traces(result)
    running_fig = plot.plot_running_llc(result, truth=task.truth)
    summary = plot.plot_summary(result, truth=task.truth)
    for fig in (loss_fig, running_fig, summary):
        assert isinstance(fig, Figure)
    assert len(summary.axes) == 2
    loss_ax, running_ax = summary.axes
    # one line per chain plus L_n(w*) on the left; chains, their mean and the truth on the right
    assert len(loss_ax.get_lines()) == 3 + 1
    np.testing.assert_allclose(loss_ax.get_lines()[0].get_ydata(), result.trace.arrays["loss"][0])
    np.testing.assert_allclose(running_ax.get_lines()[3].get_ydata(), result.running_llc().mean(axis=0))
    text = figure_text(summary)
    assert f"{result.llc_mean:.4g} ± {result.llc_mcse:.2g}" in text
    assert f"truth λ = {task.truth.value}" in text
    summary.savefig(tmp_path / "summary.png")


def test_plots_draw_on_given_axes(healthy):
    _, result = healthy
    fig = Figure()
    left, right = fig.subplots(1, 2)
    assert plot.plot_loss_traces(result, ax=left) is fig
    assert plot.plot_running_llc(result, truth=2.5, ax=right) is fig
    assert "truth λ = 2.5" in figure_text(fig)


def test_plots_mark_a_chain_that_diverged_during_draws(healthy, tmp_path):
    task, result = healthy
    broken = _with_diverged_chain(result, chain=1, step=70)
    assert broken.diverged == {1: 70} and math.isfinite(broken.llc_mean)
    fig = plot.plot_summary(broken, truth=task.truth, title="tiny")
    text = figure_text(fig)
    assert "chain 1 (diverged at step 70)" in text and "1 of 3 chains diverged" in text
    low, high = fig.axes[0].get_ylim()
    assert high < 1e3  # the y-range follows the healthy chains, not the explosion
    fig.savefig(tmp_path / "diverged.png")


def test_plots_survive_a_huge_step_size(tmp_path):
    """A real run that blows up: every chain diverges, the estimate is NaN, the plots still draw."""
    task, result = _tiny(step_size=10.0)
    assert result.diverged
    fig = plot.plot_summary(result, truth=task.truth)
    assert isinstance(fig, Figure)
    assert f"{len(result.diverged)} of 3 chains diverged" in figure_text(fig)
    fig.savefig(tmp_path / "all_diverged.png")
