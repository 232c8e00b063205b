"""The HTML report, the calibration figures and the CLI entry points that write them (smoke and contract).

Every file is written under tmp_path; the runs are tiny (a 4-3-2 deep linear network, 2 chains of
~100 steps), so the suite stays fast.
"""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

import lambdahat as lh
from lambdahat import cli, plot, tasks
from lambdahat.calibrate import calibrate
from lambdahat.report import render_report, write_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def task():
    return tasks.deep_linear_network([4, 3, 2], rank=1, n=1000, seed=0)


@pytest.fixture(scope="module")
def result(task):
    return lh.estimate_llc(task.model, task.data, task.loss_fn, step_size=3e-3, localization=1.0, nbeta=100.0,
                           num_chains=2, num_draws=80, num_burnin_steps=40, batch_size=100, progress=False)


@pytest.fixture(scope="module")
def calibration(task):
    return calibrate(task.model, task.data, task.loss_fn, step_sizes=(3e-2, 3e-3), nbetas=(100.0,),
                     localizations=(1.0, 1e3), num_chains=2, num_draws=150, num_burnin_steps=50, batch_size=100,
                     truth=task.truth, progress=False)


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_report_of_a_run_is_self_contained(result, task, tmp_path):
    path = write_report(result, tmp_path / "sub" / "run.html", truth=task.truth)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    images = _images(text)
    assert len(images) == 1 and images[0].startswith(PNG)
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r'(src|href)="(?!data:)', text)
    assert f"{result.llc_mean:.4g}" in text and "relative error" in text
    for check in result.checks:
        assert check.name in text
    assert "step_size" in text and "localization" in text  # the configuration


def test_report_shows_failing_verdicts(task, tmp_path):
    bad = lh.estimate_llc(task.model, task.data, task.loss_fn, step_size=1.0, nbeta=100.0, num_chains=2,
                          num_draws=20, num_burnin_steps=5, batch_size=100, progress=False)
    text = render_report(bad)
    assert "health checks failed" in text and "diverged" in text and "every chain diverged" in text


def test_report_of_a_calibration(calibration, tmp_path):
    text = write_report(calibration, tmp_path / "cal.html").read_text(encoding="utf-8")
    images = _images(text)
    # the map, the λ̂-vs-ε curves, and the recommended setting's run
    assert len(images) == 3 and all(i.startswith(PNG) for i in images)
    assert "Recommended: step_size" in text and "Rule." in text
    assert text.count("<tr") >= len(calibration.rows) + 1
    assert 'class=recommended' in text
    with pytest.raises(TypeError, match="LLCResult or a CalibrationResult"):
        render_report(object())


def _texts(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def test_calibration_map_has_a_panel_per_gamma(calibration, tmp_path):
    fig = plot.plot_calibration_map(calibration)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    text = _texts(fig)
    assert "γ = 1" in text and "γ = 1000" in text and "recommended" in text and "diverged" in text
    rec = calibration.recommended
    row = next(r for r in calibration.rows if r["stage"] != "control" and r["step_size"] == rec["step_size"]
               and r["nbeta"] == rec["nbeta"] and r["localization"] == rec["localization"])
    assert f"{row['llc']:.3g}" in text
    fig.savefig(tmp_path / "map.png")
    assert (tmp_path / "map.png").read_bytes().startswith(PNG)
    one = plot.plot_calibration_map(calibration, model="model")
    assert "(model)" in _texts(one)


def test_calibration_curves(calibration, tmp_path):
    fig = plot.plot_calibration_curves(calibration)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    truth_lines = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert truth_lines and np.allclose(truth_lines[0].get_ydata(), float(calibration.rows[0]["truth"]))
    fig.savefig(tmp_path / "curves.png")


def test_demo_writes_a_report(tmp_path, monkeypatch, capsys):
    """``demo --quick --report``, on the shrunken task of tests/test_cli.py."""
    monkeypatch.setitem(cli.DEMO_SETTINGS, "task", {"widths": [6, 4, 3], "rank": 1, "n": 400, "seed": 0})
    monkeypatch.setitem(cli.DEMO_SETTINGS, "estimate", dict(cli.DEMO_SETTINGS["estimate"], num_chains=2, batch_size=100))
    monkeypatch.setitem(cli.DEMO_SETTINGS, "quick", {"num_draws": 40, "num_burnin_steps": 20})
    report = tmp_path / "demo.html"
    assert cli.main(["demo", "--quick", "--out", str(tmp_path), "--report", str(report)]) == 0
    assert f"wrote {report}" in capsys.readouterr().out
    text = report.read_text(encoding="utf-8")
    assert "LLC of the DLN 6-4-3 demo" in text and len(_images(text)) == 1


def test_calibrate_command(tmp_path, monkeypatch, capsys):
    """``lambdahat calibrate`` end to end on a small network: table, rule, map, CSV and report."""
    monkeypatch.setitem(cli.CALIBRATE_SETTINGS, "quick", dict(cli.CALIBRATE_SETTINGS["quick"], num_chains=2,
                                                              num_draws=150, num_burnin_steps=50))
    out = tmp_path / "figs"
    argv = ["calibrate", "--widths", "6,4,3", "--rank", "1", "--n", "400", "--quick", "--step-sizes", "1e-2,1e-3",
            "--csv", str(tmp_path / "cal.csv"), "--report", str(tmp_path / "cal.html"), "--out", str(out)]
    status = cli.main(argv)
    printed = capsys.readouterr().out
    assert "Rule:" in printed and "true λ = 7" in printed
    assert status == 0 and "At the recommended setting the calibration run gave" in printed
    assert (out / "calibration_map.png").read_bytes().startswith(PNG)
    assert (tmp_path / "cal.csv").read_text().startswith("stage,model,step_size")
    assert "Calibration of the DLN 6-4-3" in (tmp_path / "cal.html").read_text(encoding="utf-8")


def test_calibrate_command_rejects_bad_lists(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["calibrate", "--nbetas", "auto,x"])
    assert exit_info.value.code == 2 and "nbetas" in capsys.readouterr().err
