"""Ready-made problems with a known learning coefficient, for tests, demos and calibration.

Each task returns the model already at w*, its data, the loss (``losses.gaussian_nll`` or a
potential) and the truth from :mod:`lambdahat.truth`. Data are made here from a seed: nothing
is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import losses, truth

__all__ = [
    "Task",
    "deep_linear_network",
    "reduced_rank_regression",
    "normal_crossing",
    "normal_crossing_expectation",
    "quasi_homogeneous",
    "linear_regression",
    "relu_teacher_student",
]


@dataclass
class Task:
    """A model at w*, its data and loss, and the true learning coefficient there (None when no
    exact value is known, as for the ReLU teacher–student: compare samplers with exact MALA)."""

    name: str
    model: nn.Module
    data: Any
    loss_fn: Callable[..., Tensor]
    truth: truth.LearningCoefficient | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.data[0].shape[0])


def _rank_r_matrix(rows: int, cols: int, rank: int, gen: torch.Generator,
                   inputs: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """A random rows × cols matrix of rank exactly ``rank`` (singular values in [0.75, 1.25]), and
    its output directions (its left singular vectors, rows × rank; None for rank 0).

    ``inputs`` (cols × k orthonormal columns, the previous layer's output directions), if given,
    become its first min(k, rank) right singular vectors, so that a product of such layers keeps
    every singular value of its layers' scale instead of losing a factor of about √(rank / width)
    at each junction of independently drawn subspaces."""
    if rank == 0:
        return torch.zeros(rows, cols), None
    u, _ = torch.linalg.qr(torch.randn(rows, rank, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(cols, rank, generator=gen))
    if inputs is not None:
        k = min(inputs.shape[1], rank)
        v, _ = torch.linalg.qr(torch.cat([inputs[:, :k], v[:, k:]], dim=1))
        v[:, :k] = inputs[:, :k]  # QR may flip their signs; the rest is already orthogonal to them
    s = 0.75 + 0.5 * torch.rand(rank, generator=gen)
    return (u * s) @ v.T, u


def deep_linear_network(
    widths: Sequence[int],
    rank: int,
    n: int = 10_000,
    noise: float = 0.0,
    seed: int = 0,
    layer_ranks: Sequence[int] | None = None,
    aligned: bool = True,
) -> Task:
    """A bias-free deep linear network f(x) = W_L ⋯ W_1 x at a teacher whose every layer has rank r.

    ``widths`` run input → output. The teacher is the student at w*, so w* is a true parameter;
    every layer has rank exactly r (for r = 0, all weights are zero), which makes Aoyagi's global
    learning coefficient (Neural Networks 172, 2024, Thm 1) the local one at w* (
    a layer of rank above r would make the map locally more regular). Inputs x ~ N(0, I);
    targets y = f(x) + noise · N(0, I); loss ½‖y − f(x)‖² (Gaussian NLL).

    ``layer_ranks`` gives each layer its own rank instead (Lau et al.'s rank-reduced teachers);
    their minimum must be ``rank``, the rank of the product. ``truth`` is then still Aoyagi's
    global λ for that rank, which the LLC at such a w* can exceed.

    ``aligned`` (the default) makes each layer's input directions the previous layer's output
    directions, so the product's r singular values stay within [0.75^L, 1.25^L]. Drawn
    independently (``aligned=False``), the subspaces shrink the product by about √(r / width) per
    junction: at depth 5 its singular values fall to 10⁻³–10⁻² from layers near 1, below the
    posterior's resolution 1/√(nβ) (0.03 at n = 10⁴), so that the data cannot tell the teacher from
    one of lower rank and λ̂ approaches that rank's coefficient, not λ (docs/accuracy.md). Both
    points lie in the same rank stratum, so λ is the same; only the n it takes to see it differs.
    """
    widths = [int(w) for w in widths]
    lc = truth.deep_linear_network(widths, rank)
    ranks = [rank] * (len(widths) - 1) if layer_ranks is None else [int(r) for r in layer_ranks]
    if len(ranks) != len(widths) - 1 or min(ranks) != rank:
        raise ValueError(
            f"layer_ranks must give one rank per layer ({len(widths) - 1}) with minimum rank={rank}, got {layer_ranks}"
        )
    for i, (r, a, b) in enumerate(zip(ranks, widths[:-1], widths[1:])):
        if r > min(a, b):
            raise ValueError(f"layer_ranks[{i}] = {r} exceeds that layer's size {b} × {a}")
    gen = torch.Generator().manual_seed(seed)
    layers = [nn.Linear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:])]
    with torch.no_grad():
        outputs = None  # the previous layer's output directions, when aligned
        for layer, r in zip(layers, ranks):
            weight, outputs = _rank_r_matrix(layer.out_features, layer.in_features, r, gen, outputs if aligned else None)
            layer.weight.copy_(weight)
    model = nn.Sequential(*layers)
    x = torch.randn(n, widths[0], generator=gen)
    with torch.no_grad():
        y = model(x) + noise * torch.randn(n, widths[-1], generator=gen)
    name = f"dln {'-'.join(map(str, widths))} r={rank}"
    return Task(name, model, (x, y), losses.gaussian_nll, lc,
                {"widths": widths, "rank": rank, "layer_ranks": ranks, "noise": noise, "aligned": aligned})


def reduced_rank_regression(
    input_dim: int, hidden_dim: int, output_dim: int, rank: int, n: int = 10_000, noise: float = 0.0, seed: int = 0,
    aligned: bool = True,
) -> Task:
    """f(x) = B A x with A: H × M, B: N × H at a rank-r teacher (Aoyagi & Watanabe 2005); ``aligned``
    as in :func:`deep_linear_network`."""
    task = deep_linear_network([input_dim, hidden_dim, output_dim], rank, n=n, noise=noise, seed=seed, aligned=aligned)
    task.truth = truth.reduced_rank_regression(input_dim, hidden_dim, output_dim, rank)
    task.name = f"rrr M={input_dim} H={hidden_dim} N={output_dim} r={rank}"
    return task


class NormalCrossingModel(nn.Module):
    """f_j(x) = w1_j^a · w2_j^b · x_j for j = 1..copies: independent copies of one normal crossing."""

    def __init__(self, exponents: tuple[int, int], point: tuple[float, float], copies: int):
        super().__init__()
        self.exponents = exponents
        self.w1 = nn.Parameter(torch.full((copies,), float(point[0])))
        self.w2 = nn.Parameter(torch.full((copies,), float(point[1])))

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.exponents
        return self.w1.pow(a) * self.w2.pow(b) * x


def normal_crossing(
    exponents: tuple[int, int] = (1, 2),
    point: tuple[float, float] = (0.0, 0.0),
    n: int = 10_000,
    copies: int = 1,
    seed: int = 0,
) -> Task:
    """The normal-crossing model f(x; w) = w1^a w2^b x with pure-noise targets y ~ N(0, 1).

    The population loss is K(w) = ½ E[x²] (w1^a w2^b)² ∝ w1^{2a} w2^{2b}, so at the origin
    λ = min(1/(2a), 1/(2b)) (Watanabe, "Algebraic Geometry and Statistical Learning Theory", 2009); away from the origin it depends on the point:
    at (0, 1) only w1 is constrained and λ = 1/(2a). ``copies`` independent copies (each with its
    own inputs) add up: λ_total = copies · λ, with multiplicity (copies·(m − 1) + 1).
    """
    a, b = exponents
    w1, w2 = point
    active = [k for k, w in ((a, w1), (b, w2)) if k > 0 and w == 0]
    if not active:
        raise ValueError(f"point {point} is not a zero of w1^{a} w2^{b}: put w1 = 0 or w2 = 0.")
    single = truth.normal_crossing(active)
    lc = truth.LearningCoefficient(single.value * copies, copies * (single.multiplicity - 1) + 1)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, copies, generator=gen)
    y = torch.randn(n, copies, generator=gen)
    model = NormalCrossingModel((a, b), (w1, w2), copies)
    info = {"exponents": (a, b), "point": (w1, w2), "copies": copies}
    return Task(f"normal crossing a={a} b={b} at {point} ×{copies}", model, (x, y), losses.gaussian_nll, lc, info)


def normal_crossing_expectation(task: Task, nbeta: float, localization: float = 1.0, num_points: int = 2001) -> float:
    """E_p[nβ (L_n(w) − L_n(w*))] of a :func:`normal_crossing` task on its own data, by quadrature:
    what a perfect sampler returns at this nβ and γ, noise in the targets included.

    Per copy, with u = w1^a w2^b, s = mean(x y) and q = mean(x²), the loss change from w* is
    ΔL = −(u − u*) s + ½ (u² − u*²) q; the copies are independent, so their expectations add
    (:func:`lambdahat.truth.tempered_expectation_2d` for each). The gap between this and λ is the
    estimand's own at this n, which no sampler or setting at this nβ removes.
    """
    if not localization > 0:
        raise ValueError(f"localization must be > 0 (got {localization}): without it the crossing's posterior is "
                         "improper along its axes.")
    if task.info.get("exponents") is None:
        raise ValueError(f"task {task.name!r} is not a normal crossing: pass a task from tasks.normal_crossing.")
    a, b = task.info["exponents"]
    c1, c2 = task.info["point"]
    x, y = (t.double() for t in task.data)
    u_star = c1**a * c2**b
    half_width = max(5.0, 8.0 / math.sqrt(localization))  # 8 prior standard deviations
    total = 0.0
    for s, q in zip((x * y).mean(dim=0).tolist(), x.pow(2).mean(dim=0).tolist()):
        def delta(w1, w2, s=s, q=q):
            u = w1**a * w2**b
            return -(u - u_star) * s + 0.5 * (u**2 - u_star**2) * q
        total += truth.tempered_expectation_2d(delta, nbeta, localization, center=(c1, c2),
                                                half_width=half_width, num_points=num_points)
    return total


class QuasiHomogeneousModel(nn.Module):
    """A model whose loss is a fixed function K(w) of its weights: Σ_i c_i |w_i|^{p_i} per copy."""

    def __init__(self, powers: Sequence[int], coefficients: Sequence[float], copies: int):
        super().__init__()
        self.register_buffer("powers", torch.tensor([float(p) for p in powers]))
        self.register_buffer("coefficients", torch.tensor([float(c) for c in coefficients]))
        self.w = nn.Parameter(torch.zeros(copies, len(powers)))

    def forward(self, x: Tensor | None = None) -> Tensor:
        return (self.coefficients * self.w.abs().pow(self.powers)).sum()


def potential_loss(model: Callable[..., Tensor], batch: Any) -> Tensor:
    """Loss of a :class:`QuasiHomogeneousModel`: K(w), independent of the data."""
    return model()


def quasi_homogeneous(
    powers: Sequence[int] = (2,), coefficients: Sequence[float] | None = None, copies: int = 1
) -> Task:
    """K(w) = Σ_i c_i |w_i|^{p_i}, at w* = 0, with γ = 0: E[nβ K] = Σ_i 1/p_i exactly, any nβ.

    Under exp(−nβ K) the coordinates are independent and nβ c |w|^p is Gamma(1/p)-distributed,
    so E[nβ K] = Σ 1/p_i exactly, for any nβ. The data are a placeholder of one sample: pass nβ
    explicitly and set localization = 0.
    """
    coefficients = list(coefficients) if coefficients is not None else [1.0] * len(powers)
    if len(coefficients) != len(powers):
        raise ValueError("coefficients must have one entry per power.")
    single = truth.quasi_homogeneous(list(powers))
    lc = truth.LearningCoefficient(single.value * copies, 1)
    model = QuasiHomogeneousModel(powers, coefficients, copies)
    data = (torch.zeros(1, 1), torch.zeros(1, 1))
    info = {"powers": list(powers), "coefficients": coefficients, "copies": copies}
    return Task(f"quasi-homogeneous {list(powers)} ×{copies}", model, data, potential_loss, lc, info)


def linear_regression(dim: int = 10, n: int = 1000, seed: int = 0) -> Task:
    """Regular linear regression y = w·x + N(0, 1) at the least-squares w* (a true minimum of L_n).

    L_n(w) − L_n(w*) = ½ (w − w*)ᵀ H (w − w*) exactly, H = XᵀX / n, so full-batch SGLD has a
    closed-form expectation at every ε, γ, nβ: ``truth.quadratic_expectation(eig(H), ...)``
    (the Gaussian posterior of a quadratic loss). ``info["hessian_eigenvalues"]`` holds eig(H).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 2.0, dim, dtype=torch.float64)
    w_true = torch.randn(dim, 1, generator=gen, dtype=torch.float64)
    y = x @ w_true + torch.randn(n, 1, generator=gen, dtype=torch.float64)
    w_star = torch.linalg.lstsq(x, y).solution
    model = nn.Linear(dim, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w_star.T)
    eig = torch.linalg.eigvalsh(x.T @ x / n)
    info = {"hessian_eigenvalues": eig.tolist()}
    return Task(f"linear regression d={dim}", model, (x, y), losses.gaussian_nll, truth.regular(dim), info)


def relu_teacher_student(n: int = 5000, d_in: int = 4, hidden: int = 16, noise: float = 1.0, seed: int = 0) -> Task:
    """A one-hidden-layer ReLU MLP (d_in → hidden → 1, with biases; d = 97 for 4-16-1) at a random
    teacher of the same shape, which is also w*; x ~ N(0, I), y = teacher(x) + noise · N(0, 1),
    loss ½ (y − f(x))². Weights N(0, 1/fan_in), biases N(0, 0.25).

    No exact λ is known (``truth`` is None): this is the task on which Lau et al. (arXiv
    2308.12108) compare SGLD with exact MALA. w* is a true parameter but not the minimum of L_n
    (the noise moves that by O(1/√n)); every sampler targets the same localised posterior anyway.
    """
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) / math.sqrt(layer.in_features))
            layer.bias.copy_(0.5 * torch.randn(layer.bias.shape, generator=gen))
        x = torch.randn(n, d_in, generator=gen)
        y = model(x) + noise * torch.randn(n, 1, generator=gen)
    d = sum(p.numel() for p in model.parameters())
    return Task(f"relu {d_in}-{hidden}-1 teacher-student n={n}", model, (x, y), losses.gaussian_nll, None, {"num_params": d})
