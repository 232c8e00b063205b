"""Tests for the exact learning coefficients and finite-nβ quadrature targets."""

import itertools
import math
from fractions import Fraction

import pytest

from lambdahat.truth import (
    LearningCoefficient,
    deep_linear_network,
    normal_crossing,
    quadratic_expectation,
    quasi_homogeneous,
    reduced_rank_regression,
    regular,
    tempered_expectation_1d,
    tempered_expectation_2d,
)

# ---------------------------------------------------------------- closed forms


def test_learning_coefficient_float_and_str():
    lc = LearningCoefficient(Fraction(9, 2), 2)
    assert float(lc) == 4.5
    assert str(lc) == "λ = 9/2 (= 4.5), multiplicity 2"
    assert LearningCoefficient(3, 1).value == Fraction(3)
    with pytest.raises(ValueError, match="multiplicity"):
        LearningCoefficient(Fraction(1, 2), 0)


def test_regular():
    assert regular(7) == LearningCoefficient(Fraction(7, 2), 1)
    with pytest.raises(ValueError, match="num_params"):
        regular(0)


@pytest.mark.parametrize(
    "powers, value",
    [([2], Fraction(1, 2)), ([2, 2, 2], Fraction(3, 2)), ([4], Fraction(1, 4)), ([4, 2], Fraction(3, 4))],
)
def test_quasi_homogeneous(powers, value):
    assert quasi_homogeneous(powers) == LearningCoefficient(value, 1)


@pytest.mark.parametrize("powers, name", [([], "powers"), ([2, 0], r"powers\[1\]"), ([-2], r"powers\[0\]")])
def test_quasi_homogeneous_rejects(powers, name):
    with pytest.raises(ValueError, match=name):
        quasi_homogeneous(powers)


@pytest.mark.parametrize(
    "exponents, value, m",
    [((0, 1), Fraction(1, 2), 1), ((1, 2), Fraction(1, 4), 1), ((2, 2), Fraction(1, 4), 2), ((1, 3), Fraction(1, 6), 1)],
)
def test_normal_crossing(exponents, value, m):
    assert normal_crossing(exponents) == LearningCoefficient(value, m)


@pytest.mark.parametrize("exponents", [(0, 0), (), (1, -1)])
def test_normal_crossing_rejects(exponents):
    with pytest.raises(ValueError, match="exponents"):
        normal_crossing(exponents)


@pytest.mark.parametrize(
    "M, H, N, r, value, m",
    [
        # case 1, odd: N+r=4<=5, M+r=4<=5, H+r=3<=6; [2*3*6 - 0 - 9]/8 = 27/8, M+H+N+r = 9 odd -> +1/8 = 7/2
        (3, 2, 3, 1, Fraction(7, 2), 2),
        # case 1, even: [2*2*4 - 0 - 4]/8 = 3/2, M+H+N+r = 6 even
        (2, 2, 2, 0, Fraction(3, 2), 1),
        # case 2: M+H = 4 < N+r = 7; (HM - Hr + Nr)/2 = (4 - 2 + 6)/2 = 4
        (2, 2, 6, 1, Fraction(4), 1),
        # case 3: N+H = 4 < M+r = 7; (HN - Hr + Mr)/2 = (4 - 2 + 6)/2 = 4
        (6, 2, 2, 1, Fraction(4), 1),
        # case 4: H+r = 7 > M+N = 4 and neither case 2 nor 3; MN/2 = 2
        (2, 6, 2, 1, Fraction(2), 1),
    ],
)
def test_reduced_rank_regression_cases(M, H, N, r, value, m):
    assert reduced_rank_regression(M, H, N, r) == LearningCoefficient(value, m)


@pytest.mark.parametrize(
    "args, name",
    [((0, 1, 1, 0), "input_dim"), ((1, -1, 1, 0), "hidden_dim"), ((1, 1, 0, 0), "output_dim"),
     ((2, 2, 2, -1), "rank"), ((3, 1, 3, 2), "rank"), ((2.5, 1, 1, 0), "input_dim")],
)
def test_reduced_rank_regression_rejects(args, name):
    with pytest.raises(ValueError, match=name):
        reduced_rank_regression(*args)


@pytest.mark.parametrize(
    "widths, r, value, theta",
    [
        ((1, 1, 1), 0, Fraction(1, 2), 2),
        ((5, 3, 5), 0, Fraction(13, 2), 2),
        ((4, 3, 8), 0, Fraction(6), 1),
        ((10, 10, 10), 0, Fraction(75, 2), 1),
        ((10, 10, 10), 5, Fraction(47), 2),
        ((2, 2, 2, 2), 1, Fraction(2), 3),
        ((3, 5, 4, 3), 1, Fraction(9, 2), 2),
        ((10, 10, 10, 10, 10), 3, Fraction(41), 4),
        ((100, 100, 100), 0, Fraction(3750), 1),
    ],
)
def test_deep_linear_network_worked_examples(widths, r, value, theta):
    assert deep_linear_network(widths, r) == LearningCoefficient(value, theta)


def test_deep_linear_network_matches_reduced_rank_regression():
    cases = 0
    for M, H, N in itertools.product(range(1, 9), repeat=3):
        for r in range(min(M, H, N) + 1):
            assert deep_linear_network([M, H, N], r) == reduced_rank_regression(M, H, N, r), (M, H, N, r)
            cases += 1
    assert cases == 1808


def test_deep_linear_network_single_layer_is_regular():
    for h1, h2 in itertools.product(range(1, 7), repeat=2):
        for r in range(min(h1, h2) + 1):
            assert deep_linear_network([h1, h2], r) == LearningCoefficient(Fraction(h1 * h2, 2), 1)


def test_deep_linear_network_always_finds_S_and_is_bounded():
    # Every depth 2..5 with widths 1..4: a set S exists (no RuntimeError) and 0 < λ <= d/2.
    for depth in range(2, 6):
        for widths in itertools.product(range(1, 5), repeat=depth):
            d = sum(a * b for a, b in zip(widths, widths[1:]))
            for r in range(min(widths) + 1):
                lc = deep_linear_network(widths, r)
                assert 0 < lc.value <= Fraction(d, 2), (widths, r)
                assert lc.multiplicity >= 1


@pytest.mark.parametrize(
    "widths, r, name",
    [((3,), 0, "widths"), ((3, 0, 2), 0, r"widths\[1\]"), ((3, 2, 4), 3, "rank"), ((3, 2), -1, "rank")],
)
def test_deep_linear_network_rejects(widths, r, name):
    with pytest.raises(ValueError, match=name):
        deep_linear_network(widths, r)


# ---------------------------------------------------------------- quadratic (Gaussian) targets


def test_quadratic_expectation_tends_to_half_dimension():
    assert quadratic_expectation([1.0, 2.0, 3.0], nbeta=1e3, localization=1e-9) == pytest.approx(1.5, rel=1e-9)
    # exact posterior, finite γ: Σ nβh / (2(nβh + γ)) = 10/(2*11) + 20/(2*21)
    assert quadratic_expectation([1.0, 2.0], nbeta=10.0, localization=1.0) == pytest.approx(5 / 11 + 10 / 21)


def test_quadratic_expectation_euler_chain():
    # h = 1, nβ = 1, γ = 0, ε = 1: w' = w/2 + ξ has stationary variance 1/(1 - 1/4) = 4/3,
    # so E[nβ h w²/2] = 2/3.
    assert quadratic_expectation([1.0], nbeta=1.0, localization=0.0, step_size=1.0) == pytest.approx(2 / 3)


def test_quadratic_expectation_rejects():
    with pytest.raises(ValueError, match="step_size"):
        quadratic_expectation([1.0, 10.0], nbeta=1.0, localization=0.0, step_size=0.4)
    with pytest.raises(ValueError, match="localization"):
        quadratic_expectation([0.0, 1.0], nbeta=1.0, localization=0.0)
    with pytest.raises(ValueError, match="hessian_eigenvalues"):
        quadratic_expectation([-1.0], nbeta=1.0, localization=1.0)
    with pytest.raises(ValueError, match="nbeta"):
        quadratic_expectation([1.0], nbeta=0.0, localization=1.0)


# ---------------------------------------------------------------- quadrature targets


def test_tempered_2d_gaussian_matches_closed_form():
    h1, h2, nbeta, gamma = 2.0, 0.5, 100.0, 1.0
    got = tempered_expectation_2d(lambda a, b: 0.5 * (h1 * a**2 + h2 * b**2), nbeta, gamma, num_points=501)
    assert got == pytest.approx(quadratic_expectation([h1, h2], nbeta, gamma), rel=1e-4)


def test_tempered_2d_off_centre():
    c = (0.3, -1.2)
    got = tempered_expectation_2d(lambda a, b: (a - c[0]) ** 2 + 2 * (b - c[1]) ** 2, 50.0, 2.0, center=c, num_points=501)
    assert got == pytest.approx(quadratic_expectation([2.0, 4.0], 50.0, 2.0), rel=1e-4)


def test_tempered_2d_flat_direction():
    # ΔL = w1², flat in w2: the w2 factor cancels; E[nβ w1²] = nβ / (2nβ + γ) -> 1/2.
    nbeta, gamma = 100.0, 1e-3
    got = tempered_expectation_2d(lambda a, b: a**2 + 0 * b, nbeta, gamma, num_points=501)
    assert got == pytest.approx(nbeta / (2 * nbeta + gamma), rel=1e-6)
    assert abs(got - 0.5) < 1e-4


def test_tempered_quasi_homogeneous_is_exact_at_zero_localization():
    # §3.2: with γ = 0, E[nβ K] = Σ 1/p_i for every nβ.
    assert tempered_expectation_1d(lambda w: w**4, 1e3, 0.0) == pytest.approx(0.25, rel=1e-6)
    got = tempered_expectation_2d(lambda a, b: a**2 + b**4, 1e3, 0.0, num_points=501)
    assert got == pytest.approx(float(quasi_homogeneous([2, 4])), rel=1e-6)


def test_tempered_normal_crossing_approaches_quarter_from_below():
    # ΔL = w1² w2⁴ (λ = 1/4, m = 1). Numerically E[nβΔL] sits just *below* 1/4 and rises towards it:
    # Z(nβ) = ∫ exp(−nβΔL) φ ≈ c1 nβ^{-1/4} + c2 nβ^{-1/2} (poles of ∫ΔL^z φ at −1/4 and −1/2), with
    # c2 < 0 (the regularised ∫|w2|^{-2} φ is negative), so E = −d log Z / d log nβ
    # ≈ 1/4 + (c2/(4 c1)) nβ^{-1/4}: the deficit shrinks by 100^{1/4} = √10 per factor 100 in nβ.
    gamma = 1e-2
    values = [tempered_expectation_2d(lambda a, b: a**2 * b**4, nb, gamma, num_points=401) for nb in (1e2, 1e4, 1e6)]
    assert all(0.2 < v < 0.25 for v in values)
    assert values[0] < values[1] < values[2]
    deficits = [0.25 - v for v in values]
    for big, small in zip(deficits, deficits[1:]):
        assert big / small == pytest.approx(math.sqrt(10), rel=0.05)


@pytest.mark.parametrize(
    "delta_loss, nbeta, gamma",
    [(lambda a, b: a**2 * b**4, 1e6, 1e-2), (lambda a, b: 0.5 * (a**2 + 3 * b**2), 30.0, 1.0), (lambda a, b: (a * b) ** 2, 1e3, 0.1)],
)
def test_tempered_2d_converged_under_doubling(delta_loss, nbeta, gamma):
    coarse = tempered_expectation_2d(delta_loss, nbeta, gamma, num_points=401)
    fine = tempered_expectation_2d(delta_loss, nbeta, gamma, num_points=802)
    assert fine == pytest.approx(coarse, rel=1e-4)


def test_tempered_1d_gaussian_and_doubling():
    exact = quadratic_expectation([3.0], 20.0, 0.5)
    coarse = tempered_expectation_1d(lambda w: 1.5 * (w - 2.0) ** 2, 20.0, 0.5, center=2.0, num_points=1001)
    fine = tempered_expectation_1d(lambda w: 1.5 * (w - 2.0) ** 2, 20.0, 0.5, center=2.0, num_points=2002)
    assert coarse == pytest.approx(exact, rel=1e-6)
    assert fine == pytest.approx(coarse, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"nbeta": -1.0}, "nbeta"), ({"localization": -1.0}, "localization"), ({"num_points": 2}, "num_points"),
     ({"half_width": 0.0}, "half_width"), ({"nbeta": 0.0, "localization": 0.0}, "localization"),
     ({"scale": -1.0}, "scale")],
)
def test_tempered_rejects(kwargs, name):
    args = {"nbeta": 1.0, "localization": 1.0} | kwargs
    with pytest.raises(ValueError, match=name):
        tempered_expectation_2d(lambda a, b: a**2 + b**2, **args)
    with pytest.raises(ValueError, match=name):
        tempered_expectation_1d(lambda w: w**2, **args)


# ---------------------------------------------------------------- a crossing task's own finite-nβ target


def _crossing_by_gaussian_w1(task, nbeta, gamma, half_width=8.0, num_points=400_001):
    """The same target another way: for a = 1 the loss is quadratic in w1 at fixed w2, so the w1
    integral is Gaussian in closed form and only w2 is integrated (uniform grid, at w* = 0)."""
    import numpy as np

    a, b = task.info["exponents"]
    assert a == 1 and task.info["point"] == (0.0, 0.0)
    x, y = (t.double().numpy() for t in task.data)
    w2 = np.linspace(-half_width, half_width, num_points)
    total = 0.0
    for s, q in zip((x * y).mean(axis=0), (x * x).mean(axis=0)):
        c = w2**b
        precision = nbeta * c**2 * q + gamma
        mean = nbeta * c * s / precision
        log_weight = -0.5 * np.log(precision) + precision * mean**2 / 2 - 0.5 * gamma * w2**2
        inner = -nbeta * c * s * mean + 0.5 * nbeta * c**2 * q * (mean**2 + 1 / precision)
        weight = np.exp(log_weight - log_weight.max())
        total += float((weight * inner).sum() / weight.sum())
    return total


@pytest.mark.parametrize("exponents, copies, nbeta, gamma", [((1, 2), 1, 8686.0, 1.0), ((1, 3), 3, 700.0, 0.1)])
def test_normal_crossing_expectation_matches_a_second_quadrature(exponents, copies, nbeta, gamma):
    """tasks.normal_crossing_expectation (2-D sinh-grid quadrature of noisy data) against the
    Gaussian-in-w1 closed form integrated over w2 alone: two routes, one number."""
    from lambdahat import tasks

    task = tasks.normal_crossing(exponents, n=5000, copies=copies, seed=3)
    got = tasks.normal_crossing_expectation(task, nbeta, gamma)
    assert got == pytest.approx(_crossing_by_gaussian_w1(task, nbeta, gamma, half_width=8 / math.sqrt(gamma)),
                                rel=1e-5)
    # the targets' noise lowers it below the noise-free value, which sits below λ (the estimand's own gap)
    assert got < copies * tempered_expectation_2d(lambda w1, w2: 0.5 * (w1 * w2 ** exponents[1]) ** 2, nbeta, gamma)


def test_normal_crossing_expectation_needs_a_crossing_task():
    from lambdahat import tasks

    with pytest.raises(ValueError, match="tasks.normal_crossing"):
        tasks.normal_crossing_expectation(tasks.linear_regression(dim=2, n=10), 100.0)
