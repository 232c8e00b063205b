"""Stage detection on synthetic LLC curves with known stage boundaries.

Each curve is sampled at 60 evenly spaced checkpoints over steps 0–1000 with Gaussian noise of
standard deviation a stated fraction of the curve's range, over 20 seeds. With the default
smoothing (kernel half-width h = 10% of the range), the detected boundaries must be the true ones,
each within TOL = 50 steps (h/2; the largest error measured over 50 seeds at 3% noise was 36), and
a monotone curve whose slope stays resolvable must give no boundary at all.
"""

import numpy as np
import pytest

from lambdahat.stages import detect_stages, noise_level

STEPS = np.linspace(0, 1000, 60)
TOL = 50.0
SEEDS = range(20)


def _noisy(curve, rel, seed, steps=STEPS):
    y = curve(steps)
    return y + rel * (y.max() - y.min()) * np.random.default_rng(seed).standard_normal(steps.size)


def _piecewise(knots, values):
    return lambda s: np.interp(s, knots, values)


# (curve, noise as a fraction of its range, true boundaries, their kinds)
CASES = {
    "rise-plateau-rise-plateau": (
        _piecewise([0, 200, 450, 650, 1000], [10, 60, 60, 100, 100]), 0.02,
        [200, 450, 650], ["plateau_start", "plateau_end", "plateau_start"],
    ),
    "rise then fall": (_piecewise([0, 400, 1000], [10, 80, 30]), 0.03, [400], ["peak"]),
    "fall then rise": (_piecewise([0, 500, 1000], [80, 20, 70]), 0.03, [500], ["trough"]),
    "rise-plateau-fall": (
        _piecewise([0, 300, 600, 1000], [10, 80, 80, 20]), 0.03, [300, 600], ["plateau_start", "plateau_end"],
    ),
    "smooth bump": (lambda s: 50 + 40 * np.sin(np.pi * s / 1000), 0.01, [500], ["peak"]),
}


@pytest.mark.parametrize("name", CASES)
def test_known_boundaries_are_found_within_tolerance(name):
    curve, rel, truth, kinds = CASES[name]
    for seed in SEEDS:
        found = detect_stages(STEPS, _noisy(curve, rel, seed))
        assert found.kinds == kinds, f"seed {seed}: {found}"
        np.testing.assert_allclose(found.boundaries, truth, atol=TOL, err_msg=f"seed {seed}")


def test_noise_free_boundaries_are_close():
    found = detect_stages(STEPS, _piecewise([0, 400, 1000], [10, 80, 30])(STEPS))
    assert found.kinds == ["peak"] and abs(found.boundaries[0] - 400) < 25
    found = detect_stages(STEPS, _piecewise([0, 300, 600, 1000], [10, 80, 80, 20])(STEPS))
    np.testing.assert_allclose(found.boundaries, [300, 600], atol=5)  # half-slope kinks are exact here


@pytest.mark.parametrize(
    "curve",
    [lambda s: 0.1 * s, lambda s: 50 * np.tanh((s - 500) / 600), lambda s: 3 * np.sqrt(s + 100)],
    ids=["linear", "gentle tanh", "sqrt"],
)
def test_monotone_curve_has_no_spurious_stage(curve):
    for seed in SEEDS:
        found = detect_stages(STEPS, _noisy(curve, 0.01, seed))
        assert len(found.boundaries) == 0, f"seed {seed}: {found}"
        assert [s.kind for s in found.stages] == ["rising"]
    assert len(detect_stages(STEPS, curve(STEPS)).boundaries) == 0


def test_log_spaced_checkpoints_with_log_steps():
    steps = np.geomspace(10, 1e5, 50)
    for seed in SEEDS:  # a straight line in log step: one stage
        y = 20 * np.log10(steps) + np.random.default_rng(seed).normal(0, 0.5, steps.size)
        assert len(detect_stages(steps, y, log_steps=True).boundaries) == 0
    # a rise between two plateaus in log step: from 10^2 to 10^4
    y = np.interp(np.log10(steps), [1, 2, 4, 5], [10, 10, 90, 90])
    found = detect_stages(steps, y, log_steps=True)
    assert found.kinds == ["plateau_end", "plateau_start"]
    np.testing.assert_allclose(np.log10(found.boundaries + 1), [2, 4], atol=0.2)
    assert [s.kind for s in found.stages] == ["plateau", "rising", "plateau"]


def test_stages_cover_training_and_are_labelled():
    curve, rel, truth, _ = CASES["rise-plateau-rise-plateau"]
    found = detect_stages(STEPS[::-1], _noisy(curve, rel, 0)[::-1])  # order does not matter
    edges = [found.stages[0].start] + [s.end for s in found.stages]
    assert edges[0] == 0 and edges[-1] == 1000
    np.testing.assert_allclose(edges[1:-1], found.boundaries)
    assert [s.kind for s in found.stages] == ["rising", "plateau", "rising", "plateau"]
    assert found.to_dict()["kinds"] == found.kinds
    assert "plateau_start" in str(found)


def test_constant_curve_and_nonfinite_points():
    found = detect_stages([0, 1, 2, 3], [5.0, 5.0, 5.0, 5.0])
    assert len(found.boundaries) == 0 and found.stages[0].kind == "plateau"
    assert "only 4 checkpoints" in str(found)  # few points: the printout says the boundaries are rough
    y = _piecewise([0, 400, 1000], [10, 80, 30])(STEPS)
    y[7] = np.nan  # a checkpoint whose chains all diverged is left out
    assert detect_stages(STEPS, y).kinds == ["peak"]


def test_noise_level_estimates_the_noise():
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(0, 10, 400))
    y = np.interp(x, [0, 3, 6, 10], [0, 5, 5, 1]) + rng.normal(0, 0.2, x.size)
    assert noise_level(x, y) == pytest.approx(0.2, rel=0.15)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(steps=[0, 1], llc=[1, 2]), "3 checkpoints"),
        (dict(steps=[0, 1, 1], llc=[1, 2, 3]), "repeated"),
        (dict(steps=[0, 1, 2], llc=[1, 2]), "same length"),
        (dict(steps=[0, 1, 2], llc=[1, 2, 3], smoothing=0), "smoothing"),
        (dict(steps=[0, 1, 2], llc=[1, 2, 3], noise=-1.0), "noise"),
        (dict(steps=[-5, 1, 2], llc=[1, 2, 3], log_steps=True), "log_steps"),
    ],
)
def test_bad_input_names_the_problem(kwargs, name):
    with pytest.raises(ValueError, match=name):
        detect_stages(**kwargs)
