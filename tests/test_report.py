"""The HTML report, the calibration figure and the CLI entry points that write them (smoke and contract).

Every file is written under tmp_path; the runs are tiny (4-3-2 deep linear networks, n = 1000,
2 chains; the calibration's adaptive runs have a budget of 2000 steps per chain), so the suite
stays fast.
"""

from __future__ import annotations

import base64
import html
import re

import numpy as np
import pytest
from matplotlib.figure import Figure

import lambdahat as lh
from lambdahat import cli, plot
from lambdahat.calibrate import ROW_KEYS, calibrate
from lambdahat.report import render_report, write_report
from tests._harness import figure_text, small_dln

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def task():
    return small_dln()


@pytest.fixture(scope="module")
def result(task):
    return lh.estimate_llc(task.model, task.data, task.loss_fn, step_size=3e-3, localization=1.0, nbeta=100.0,
                           num_chains=2, num_draws=80, num_burnin_steps=40, batch_size=100, progress=False)


@pytest.fixture(scope="module")
def calibration(task):
    """Two networks with their own data (the same widths and rank, teacher seeds 0 and 1)."""
    other = small_dln(seed=1)
    return calibrate({"seed 0": task.model, "seed 1": other.model}, [task.data, other.data], task.loss_fn,
                     truth=[task.truth, other.truth], num_chains=2, max_steps=2000, progress=False)


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
    # the calibration figure, then each model's run at the recommended setting
    assert len(images) == 1 + len(calibration.recommended_results()) == 3 and all(i.startswith(PNG) for i in images)
    assert not re.search(r'(src|href)="(?!data:)', text)
    rec = calibration.recommended
    assert f"Recommended for every model: step_size = {rec.step_size:.3g}" in text and "Rule." in text
    assert f"num_draws = {rec.num_draws}" in text and "**cal.recommended" in text
    common = [r for r in calibration.rows if r["stage"] == "common"]
    if calibration.certified:
        assert f"Certified on every model ({len(common)} of {len(common)})" in text
    else:
        failing = [r for r in common if not r["certified"]]
        assert f"NOT certified on {len(failing)} of {len(common)} models" in text
        for row in failing:  # each failing check named, with its verdict
            assert all(name in text for name in row["failed"]) and html.escape(row["verdict"]) in text
    # one table row per run (plus the header), the common runs highlighted
    table = text[text.index("<h2>Every run</h2>"):text.index("<h2>Each model at the recommended setting</h2>")]
    assert table.count("<tr") == len(calibration.rows) + 1 and table.count("class=recommended") == len(common)
    assert f"{100 * calibration.rows[0]['rel_error']:+.1f}%" in table
    with pytest.raises(TypeError, match="LLCResult or a CalibrationResult"):
        render_report(object())


def test_calibration_figure(calibration, tmp_path):
    """λ̂ ± MCSE per model at both stages, coloured by the verdict, truth dashed; the ε of each warm-up."""
    fig = plot.plot_calibration(calibration)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    left, right = fig.axes
    text = figure_text(fig)
    rec = calibration.recommended
    assert "seed 0" in text and "seed 1" in text and f"recommended ε = {rec.step_size:.3g}" in text
    assert ("certified on every model" in text) == calibration.certified
    # every run's λ̂ is drawn, at its model's slot (adaptive left of common), green exactly when certified
    points = [(line.get_xdata()[0], line.get_ydata()[0], line.get_color()) for line in left.get_lines()
              if line.get_marker() in ("o", "D")]
    assert len(points) == len(calibration.rows)
    slot = {m: i for i, m in enumerate(calibration.models)}
    for row in calibration.rows:
        x = slot[row["model"]] + (-0.15 if row["stage"] == "adaptive" else 0.15)
        (color,) = [c for px, py, c in points if np.isclose(px, x)]
        assert np.isclose([py for px, py, _ in points if np.isclose(px, x)][0], row["llc"])
        assert color == ("#2ca02c" if row["certified"] else "#d62728")
        if not row["certified"]:
            assert ", ".join(row["failed"][:3]) in text
    truths = [line for line in left.get_lines() if line.get_linestyle() == "--"]
    assert len(truths) == 2 and np.allclose(truths[0].get_ydata(), 3.5)
    assert right.get_yscale() == "log"
    eps = sorted(float(c.get_offsets()[0, 1]) for c in right.collections)  # one scatter point per model
    assert np.allclose(eps, sorted(r["step_size"] for r in calibration.rows if r["stage"] == "adaptive"))
    assert np.isclose(min(eps), rec.step_size)
    fig.savefig(tmp_path / "calibration.png")
    assert (tmp_path / "calibration.png").read_bytes().startswith(PNG)


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


def test_calibrate_command(tmp_path, capsys):
    """``lambdahat calibrate`` end to end on a small network: table, rule, CSV and report; exit
    status 0 exactly when the recommended setting certified every model."""
    argv = ["calibrate", "--task", "dln:6,4,3:1:400", "--num-chains", "2", "--max-steps", "1000", "--no-progress",
            "--csv", str(tmp_path / "cal.csv"), "--report", str(tmp_path / "cal.html")]
    status = cli.main(argv)
    printed = capsys.readouterr().out
    assert "Recommended for every model" in printed and "Rule:" in printed and "λ = 7" in printed
    assert status == (0 if "— certified on every model" in printed else 1), printed
    rows = (tmp_path / "cal.csv").read_text().splitlines()
    assert rows[0] == ",".join(ROW_KEYS) and len(rows) == 3  # the adaptive and the common run
    report = (tmp_path / "cal.html").read_text(encoding="utf-8")
    assert "Calibration of the DLN 6-4-3" in report and len(_images(report)) == 2
