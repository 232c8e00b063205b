"""Exact learning coefficients, for testing estimators against known answers.

The closed forms are exact rationals (:class:`fractions.Fraction`). Two kinds of target live here:

* asymptotic ones -- the learning coefficient λ and its multiplicity m of a model at a point
  (:func:`regular`, :func:`quasi_homogeneous`, :func:`normal_crossing`,
  :func:`reduced_rank_regression`, :func:`deep_linear_network`);
* finite-nβ ones -- what a perfect sampler returns for the estimator of Lau et al.
  (arXiv 2308.12108), ``E_p[nβ (L_n(w) − L_n(w*))]`` under the localised tempered posterior
  ``p(w) ∝ exp(−nβ L_n(w) − γ/2 ‖w − w*‖²)`` (:func:`quadratic_expectation`,
  :func:`tempered_expectation_1d`, :func:`tempered_expectation_2d`).

A sampler should be checked against the finite-nβ targets (no asymptotic excuse); the method as a
whole against λ.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "LearningCoefficient",
    "regular",
    "quasi_homogeneous",
    "normal_crossing",
    "reduced_rank_regression",
    "deep_linear_network",
    "quadratic_expectation",
    "tempered_expectation_1d",
    "tempered_expectation_2d",
]


@dataclass(frozen=True)
class LearningCoefficient:
    """A learning coefficient λ (a positive rational) and its multiplicity m ≥ 1.

    Near the point, the volume of {w : K(w) < ε} scales as c ε^λ (−log ε)^(m−1), and the Bayes free
    energy as F_n = nL_n(w*) + λ log n − (m − 1) log log n + O_p(1) (Watanabe 2013, JMLR 14).
    Aoyagi writes the multiplicity as θ.
    """

    value: Fraction
    multiplicity: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", Fraction(self.value))
        if self.value < 0:
            raise ValueError(f"value must be non-negative, got {self.value}")
        if not isinstance(self.multiplicity, numbers.Integral) or self.multiplicity < 1:
            raise ValueError(f"multiplicity must be an integer >= 1, got {self.multiplicity!r}")

    def __float__(self) -> float:
        return float(self.value)

    def __str__(self) -> str:
        return f"λ = {self.value} (= {float(self.value):.6g}), multiplicity {self.multiplicity}"


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def regular(num_params: int) -> LearningCoefficient:
    """Regular model with ``d = num_params`` parameters: λ = d/2, m = 1.

    At a non-degenerate minimum (positive definite Fisher information) the learning coefficient
    equals half the dimension, recovering BIC (Watanabe 2013, JMLR 14; Lau et al., arXiv 2308.12108).
    """
    d = _check_int("num_params", num_params, 1)
    return LearningCoefficient(Fraction(d, 2), 1)


def quasi_homogeneous(powers: Sequence[int]) -> LearningCoefficient:
    """K(w) = Σ_i c_i |w_i|^{p_i} (c_i > 0): λ = Σ_i 1/p_i, m = 1.

    With γ = 0 the tempered density exp(−nβ K(w)) factorises over coordinates, and each factor gives
    E[nβ c_i |w_i|^{p_i}] = 1/p_i (a Gamma(1/p_i) moment), so E[nβ K] = Σ 1/p_i **exactly** for every
    nβ, not only asymptotically (Lau et al., arXiv 2308.12108, the quasi-homogeneous examples).
    """
    powers = list(powers)
    if not powers:
        raise ValueError("powers must be a non-empty sequence of positive integers, got []")
    for i, p in enumerate(powers):
        _check_int(f"powers[{i}]", p, 1)
    return LearningCoefficient(sum((Fraction(1, int(p)) for p in powers), Fraction(0)), 1)


def normal_crossing(exponents: Sequence[int]) -> LearningCoefficient:
    """K(w) = Π_i w_i^{2 k_i} near 0: λ = min_{k_i > 0} 1/(2 k_i), m = #{i attaining the min}.

    Coordinates with k_i = 0 do not enter K; they are free directions and ignored
    (Watanabe 2009, *Algebraic Geometry and Statistical Learning Theory*, the normal crossing case;
    the toy models of Lau et al., arXiv 2308.12108).
    """
    exponents = [_check_int(f"exponents[{i}]", k, 0) for i, k in enumerate(exponents)]
    positive = [k for k in exponents if k > 0]
    if not positive:
        raise ValueError(
            f"exponents must contain at least one positive integer (K would be constant), got {exponents}"
        )
    k_max = max(positive)
    return LearningCoefficient(Fraction(1, 2 * k_max), positive.count(k_max))


def reduced_rank_regression(input_dim: int, hidden_dim: int, output_dim: int, rank: int) -> LearningCoefficient:
    """Reduced rank regression f(x) = B A x, A: H×M, B: N×H, true map of rank r.

    Aoyagi & Watanabe (2005), Neural Networks 18, main theorem, with M = input_dim, H = hidden_dim,
    N = output_dim, r = rank:

    * if N + r ≤ M + H, M + r ≤ N + H and H + r ≤ M + N:
      λ = [2(H + r)(M + N) − (M − N)² − (H + r)²] / 8, m = 1 when M + H + N + r is even;
      λ = that + 1/8, m = 2 when it is odd;
    * else if M + H < N + r: λ = (HM − Hr + Nr)/2, m = 1;
    * else if N + H < M + r: λ = (HN − Hr + Mr)/2, m = 1;
    * else (M + N < H + r): λ = MN/2, m = 1.

    These multiplicities coincide with θ of Aoyagi (2024, Neural Networks 172, Theorem 1) for a
    two-layer linear network (checked over every case with widths up to 8 in the tests).
    """
    M = _check_int("input_dim", input_dim, 1)
    H = _check_int("hidden_dim", hidden_dim, 1)
    N = _check_int("output_dim", output_dim, 1)
    r = _check_int("rank", rank, 0)
    if r > min(M, H, N):
        raise ValueError(
            f"rank must be <= min(input_dim, hidden_dim, output_dim) = {min(M, H, N)}, got {r}"
        )
    if N + r <= M + H and M + r <= N + H and H + r <= M + N:
        value = Fraction(2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2, 8)
        if (M + H + N + r) % 2:
            return LearningCoefficient(value + Fraction(1, 8), 2)
        return LearningCoefficient(value, 1)
    if M + H < N + r:
        return LearningCoefficient(Fraction(H * M - H * r + N * r, 2), 1)
    if N + H < M + r:
        return LearningCoefficient(Fraction(H * N - H * r + M * r, 2), 1)
    return LearningCoefficient(Fraction(M * N, 2), 1)


def deep_linear_network(widths: Sequence[int], rank: int) -> LearningCoefficient:
    """Deep linear network f(x) = W_L ··· W_1 x with widths H_1 (input), …, H_{L+1} (output).

    Aoyagi (2024), Neural Networks 172, Theorem 1; r = rank of the true product map.

    1. M_s = H_s − r for s = 1..L+1.
    2. S is the shortest prefix (ℓ = |S| − 1 ≥ 1) of the widths sorted by M_s with
       (i) max_{s∈S} M_s < min_{k∉S} M_k, (ii) Σ_{s∈S} M_s ≥ ℓ M_k for all k ∈ S,
       (iii) Σ_{s∈S} M_s < ℓ M_k for all k ∉ S.
    3. Σ = Σ_{s∈S} M_s, M̄ = ⌈Σ/ℓ⌉, a = Σ − (M̄ − 1)ℓ.
    4. λ = [−r² + r(H_1 + H_{L+1})]/2 + a(ℓ − a)/(4ℓ) − [ℓ(ℓ − 1)/4](Σ/ℓ)² + ½ Σ_{i<j∈S} M_i M_j,
       θ = a(ℓ − a) + 1.

    A single layer (two widths) gives λ = H_1 H_2 / 2, θ = 1: the model is regular. Three widths
    reproduce :func:`reduced_rank_regression` (Aoyagi & Watanabe 2005), multiplicity included.
    This is the *global* coefficient for rank r, i.e. the LLC at a point where every layer has rank r.
    """
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(
            f"widths must list at least two layer widths (input and output), got {widths}"
        )
    widths = [_check_int(f"widths[{i}]", h, 1) for i, h in enumerate(widths)]
    r = _check_int("rank", rank, 0)
    if r > min(widths):
        raise ValueError(f"rank must be <= min(widths) = {min(widths)}, got {r}")

    ms = sorted(h - r for h in widths)
    for size in range(2, len(ms) + 1):
        inside, outside = ms[:size], ms[size:]
        ell, total = size - 1, sum(inside)
        if outside and inside[-1] >= outside[0]:  # (i): would split tied M values
            continue
        if total < ell * inside[-1]:  # (ii)
            continue
        if outside and total >= ell * outside[0]:  # (iii)
            continue
        break
    else:  # pragma: no cover - Aoyagi's theorem guarantees a set S exists
        raise RuntimeError(f"no admissible set S found for widths={widths}, rank={r}")

    m_bar = -(-total // ell)
    a = total - (m_bar - 1) * ell
    pair_sum = Fraction(total * total - sum(m * m for m in inside), 2)
    value = (
        Fraction(-r * r + r * (widths[0] + widths[-1]), 2)
        + Fraction(a * (ell - a), 4 * ell)
        - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
        + pair_sum / 2
    )
    return LearningCoefficient(value, a * (ell - a) + 1)


def quadratic_expectation(
    hessian_eigenvalues, nbeta: float, localization: float, step_size: float | None = None, offset=None
) -> float:
    """E[λ̂] for a quadratic loss L_n(w) − L_n(w*) = ½ Σ_i h_i (w_i − w*_i)².

    With a_i = nβ h_i + γ (γ = ``localization``), the localised tempered posterior is Gaussian with
    variance 1/a_i per coordinate, so (Lau et al., arXiv 2308.12108, §3.1 of the project reference)

        E[λ̂] = Σ_i (nβ h_i / 2) / a_i                       (exact posterior, ``step_size=None``)

    → d/2 as γ/nβ → 0. The SGLD (Euler–Maruyama) chain w ← w − (ε/2) a_i w + √ε ξ has stationary
    variance 1/(a_i (1 − ε a_i/4)), hence with ``step_size = ε``

        E[λ̂] = Σ_i (nβ h_i / 2) / (a_i (1 − ε a_i / 4)),   stable only if ε a_i < 4 for every i.

    ``offset``: w* placed δ away from the minimum ŵ (δ_i = (w* − ŵ)_i in the eigenbasis of the
    Hessian), so that L_n(w) − L_n(w*) = ½ Σ_i h_i ((w_i − ŵ_i)² − δ_i²). The posterior's mean is
    then ŵ + γ δ / a (the prior pulls it toward w*; the Euler chain's drift is linear, so its mean is
    the same), and each term above gains (nβ h_i / 2) ((γ δ_i / a_i)² − δ_i²): to first order λ̂
    falls by nβ (L_n(w*) − L_n(ŵ)), linearly in nβ.
    """
    h = np.atleast_1d(np.asarray(hessian_eigenvalues, dtype=float))
    if h.ndim != 1 or h.size == 0:
        raise ValueError("hessian_eigenvalues must be a non-empty 1-D sequence of numbers")
    if not np.all(np.isfinite(h)) or np.any(h < 0):
        raise ValueError("hessian_eigenvalues must be finite and >= 0 (w* must be a local minimum)")
    if not (math.isfinite(nbeta) and nbeta > 0):
        raise ValueError(f"nbeta must be a finite number > 0, got {nbeta}")
    if not (math.isfinite(localization) and localization >= 0):
        raise ValueError(f"localization must be a finite number >= 0, got {localization}")
    a = nbeta * h + localization
    if np.any(a <= 0):
        raise ValueError(
            "localization must be > 0 when some hessian_eigenvalues are 0 (the posterior is improper)"
        )
    variance = 1.0 / a
    if step_size is not None:
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"step_size must be a finite number > 0 or None, got {step_size}")
        if step_size * a.max() >= 4:
            raise ValueError(
                "the SGLD chain is unstable: step_size * (nbeta*h + localization) must be < 4; "
                f"use step_size < {4 / a.max():.6g} (got {step_size})"
            )
        variance = variance / (1 - step_size * a / 4)
    if offset is not None:
        delta = np.atleast_1d(np.asarray(offset, dtype=float))
        if delta.shape != h.shape or not np.all(np.isfinite(delta)):
            raise ValueError("offset must be finite numbers, one per hessian eigenvalue")
        variance = variance + (localization * delta / a) ** 2 - delta**2
    return float(np.sum(nbeta * h / 2 * variance))


def _check_quadrature_args(nbeta, localization, half_width, num_points, scale) -> None:
    if not (math.isfinite(nbeta) and nbeta >= 0):
        raise ValueError(f"nbeta must be a finite number >= 0, got {nbeta}")
    if not (math.isfinite(localization) and localization >= 0):
        raise ValueError(f"localization must be a finite number >= 0, got {localization}")
    if nbeta == 0 and localization == 0:
        raise ValueError("nbeta and localization cannot both be 0 (nothing to resolve); set either > 0")
    if not (math.isfinite(half_width) and half_width > 0):
        raise ValueError(f"half_width must be a finite number > 0, got {half_width}")
    _check_int("num_points", num_points, 3)
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0 or None, got {scale}")


def _sinh_grid(center: float, half_width: float, num_points: int, scale: float):
    """Nodes w = center + s sinh(u), u uniform on [−U, U] with s sinh(U) = half_width, and the
    trapezoid weights of ∫ f(w) dw = ∫ f(w(u)) s cosh(u) du (log of them, to combine with log-density)."""
    u_max = math.asinh(half_width / scale)
    u, du = np.linspace(-u_max, u_max, num_points, retstep=True)
    weights = np.full(num_points, du)
    weights[[0, -1]] *= 0.5
    return center + scale * np.sinh(u), np.log(weights * scale * np.cosh(u))


def _default_scale(nbeta: float, localization: float, half_width: float) -> float:
    # The grid spacing near the centre is ~ scale * du; a tenth of the narrowest quadratic width
    # 1/sqrt(nβ + γ) keeps a valley of width nβ^{-1/2} (or a few times narrower) resolved, while the
    # geometric growth of sinh spacing reaches the tails at ~ several/sqrt(γ) with few points.
    return min(0.1 / math.sqrt(nbeta + localization), half_width / 10)


def _tempered_mean(values_and_logw) -> float:
    """Self-normalised mean Σ e^{lw} f / Σ e^{lw} over chunks, with a running log-sum-exp."""
    log_max, s0, s1 = -math.inf, 0.0, 0.0
    for f, lw in values_and_logw:
        chunk_max = float(np.max(lw))
        if not math.isfinite(chunk_max):
            continue
        if chunk_max > log_max:
            rescale = math.exp(log_max - chunk_max)
            s0, s1, log_max = s0 * rescale, s1 * rescale, chunk_max
        e = np.exp(lw - log_max)
        s0 += float(np.sum(e))
        s1 += float(np.sum(e * f))
    if not (s0 > 0 and math.isfinite(s1)):
        raise ValueError("the tempered density has no finite mass on the grid; check delta_loss")
    return s1 / s0


def tempered_expectation_1d(
    delta_loss: Callable[[np.ndarray], np.ndarray],
    nbeta: float,
    localization: float,
    center: float = 0.0,
    half_width: float = 5.0,
    num_points: int = 2001,
    scale: float | None = None,
) -> float:
    """E_p[nβ ΔL(w)] for one parameter, by quadrature, with p(w) ∝ exp(−nβ ΔL(w) − γ/2 (w − c)²).

    ΔL(w) = L_n(w) − L_n(w*) (vectorised over a numpy array), c = ``center`` = w*, γ = ``localization``.
    This is what a perfect sampler returns for the estimator of Lau et al. (arXiv 2308.12108) at
    this nβ, so it separates sampler error from the slow convergence to λ.

    The integral over [c − half_width, c + half_width] uses the trapezoid rule on a sinh-spaced grid
    w = c + s sinh(u) (dense near c, geometric towards the tails); ``scale`` s defaults to
    min(0.1/√(nβ + γ), half_width/10). The domain is truncated at ``half_width``: choose it a few
    times 1/√γ when the valley is flat (e.g. a free direction), or the box acts as the prior.
    """
    _check_quadrature_args(nbeta, localization, half_width, num_points, scale)
    s = scale if scale is not None else _default_scale(nbeta, localization, half_width)
    w, log_weights = _sinh_grid(float(center), half_width, num_points, s)
    f = nbeta * np.broadcast_to(np.asarray(delta_loss(w), dtype=float), w.shape)
    lw = log_weights - f - 0.5 * localization * (w - center) ** 2
    return _tempered_mean([(f, lw)])


def tempered_expectation_2d(
    delta_loss: Callable[[np.ndarray, np.ndarray], np.ndarray],
    nbeta: float,
    localization: float,
    center=(0.0, 0.0),
    half_width: float = 5.0,
    num_points: int = 2001,
    scale: float | None = None,
) -> float:
    """E_p[nβ ΔL(w)] for two parameters, by quadrature, with p(w) ∝ exp(−nβ ΔL(w) − γ/2 ‖w − c‖²).

    ``delta_loss(W1, W2)`` returns ΔL = L_n(w) − L_n(w*) elementwise on arrays of the two coordinates;
    c = ``center`` = w*, γ = ``localization``. This is the finite-nβ target of the estimator of
    Lau et al. (arXiv 2308.12108) for a perfect sampler.

    Tensor-product trapezoid rule on the sinh-spaced grid of :func:`tempered_expectation_1d` in each
    coordinate (same ``scale`` and ``half_width``), evaluated in row blocks with a running
    log-sum-exp so large grids fit in memory.
    """
    _check_quadrature_args(nbeta, localization, half_width, num_points, scale)
    c1, c2 = (float(x) for x in center)
    s = scale if scale is not None else _default_scale(nbeta, localization, half_width)
    w1, lw1 = _sinh_grid(c1, half_width, num_points, s)
    w2, lw2 = _sinh_grid(c2, half_width, num_points, s)
    prior2 = lw2 - 0.5 * localization * (w2 - c2) ** 2
    rows = max(1, 2**20 // num_points)

    def blocks():
        for start in range(0, num_points, rows):
            W1, W2 = np.meshgrid(w1[start : start + rows], w2, indexing="ij")
            f = nbeta * np.broadcast_to(np.asarray(delta_loss(W1, W2), dtype=float), W1.shape)
            prior1 = lw1[start : start + rows] - 0.5 * localization * (w1[start : start + rows] - c1) ** 2
            yield f, prior1[:, None] + prior2[None, :] - f

    return _tempered_mean(blocks())
