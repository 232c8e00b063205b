"""The benchmark workloads: the same model, data and sampler settings in every process.

Imports only torch (and the standard library), so that the devinterp virtual environments can
import it too. Everything is built from fixed seeds, so every tool samples around the same w*
with the same data.

Every workload uses noise-free teacher targets y = f(x; w*), so w* is an exact global minimum
(L_n(w*) = 0) and no training is needed, and the Gaussian negative log-likelihood
l(w; x, y) = ½ ‖y − f(x; w)‖² (summed over outputs, averaged over the batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Workload", "WORKLOADS", "build", "loss_fn", "per_sample_loss"]

SEED = 1234


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    n: int
    batch_size: int
    num_chains: int
    num_draws: int
    step_size: float
    localization: float = 100.0

    @property
    def nbeta(self) -> float:
        """n / log n, the paper's default (β* = 1 / log n)."""
        return self.n / math.log(self.n)

    def scaled(self, quick: bool) -> "Workload":
        """The --quick version: a tenth of the draws."""
        if not quick:
            return self
        return Workload(
            self.key, self.title, self.n, self.batch_size, self.num_chains,
            max(10, self.num_draws // 10), self.step_size, self.localization,
        )


WORKLOADS: dict[str, Workload] = {
    w.key: w
    for w in [
        Workload("a", "normal crossing f = w1·w2²·x (2 params)", n=1000, batch_size=1000,
                 num_chains=8, num_draws=2000, step_size=1e-5),
        Workload("b", "ReLU MLP 16-128-64-1 (10,497 params)", n=8192, batch_size=256,
                 num_chains=4, num_draws=500, step_size=1e-5),
        Workload("c", "DLN 128-256-256-256-256-128, 5 layers (262,144 params)", n=8192, batch_size=256,
                 num_chains=1, num_draws=500, step_size=1e-5),
        Workload("d", "DLN 256-512-512-512-512-256, 5 layers (1,048,576 params)", n=8192, batch_size=256,
                 num_chains=1, num_draws=200, step_size=1e-5),
    ]
}


class NormalCrossing(nn.Module):
    """f(x; w) = w1 · w2² · x, with two scalar parameters (K(w) ∝ w1² w2⁴ near w1 = 0)."""

    def __init__(self, w1: float, w2: float):
        super().__init__()
        self.w1 = nn.Parameter(torch.tensor([w1]))
        self.w2 = nn.Parameter(torch.tensor([w2]))

    def forward(self, x: Tensor) -> Tensor:
        return self.w1 * self.w2.pow(2) * x


def _mlp(gen_seed: int) -> nn.Module:
    torch.manual_seed(gen_seed)  # nn.Linear's default init draws from the global generator
    return nn.Sequential(nn.Linear(16, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1))


def _dln(widths: list[int], gen: torch.Generator) -> nn.Module:
    """Bias-free deep linear network with (semi-)orthogonal layers: every layer has operator norm
    1, so the loss curvature stays O(depth) and ε = 1e-5 is stable at nβ = n / log n."""
    layers = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layer = nn.Linear(fan_in, fan_out, bias=False)
        with torch.no_grad():
            nn.init.orthogonal_(layer.weight, generator=gen)
        layers.append(layer)
    return nn.Sequential(*layers)


def build(key: str) -> tuple[nn.Module, Tensor, Tensor]:
    """The model at w* and its data (x, y) for workload ``key``, identical in every process."""
    gen = torch.Generator().manual_seed(SEED)
    w = WORKLOADS[key]
    if key == "a":
        model = NormalCrossing(0.0, 1.0)
        x = torch.randn(w.n, 1, generator=gen)
    elif key == "b":
        model = _mlp(SEED)
        x = torch.randn(w.n, 16, generator=gen)
    elif key == "c":
        model = _dln([128, 256, 256, 256, 256, 128], gen)
        x = torch.randn(w.n, 128, generator=gen)
    elif key == "d":
        model = _dln([256, 512, 512, 512, 512, 256], gen)
        x = torch.randn(w.n, 256, generator=gen)
    else:
        raise KeyError(f"unknown workload {key!r}; choose from {sorted(WORKLOADS)}")
    model.eval()
    with torch.no_grad():
        y = model(x).detach().clone()  # noise-free teacher targets: w* is an exact minimum
    return model, x, y


def per_sample_loss(output: Tensor, target: Tensor) -> Tensor:
    """½ ‖y − f(x)‖² per sample (Gaussian NLL with unit variance, without the constant)."""
    return 0.5 * (output - target).reshape(output.shape[0], -1).pow(2).sum(dim=1)


def loss_fn(output: Tensor, target: Tensor) -> Tensor:
    """The batch mean of :func:`per_sample_loss` (same as ``lambdahat.losses.gaussian_nll``)."""
    return per_sample_loss(output, target).mean()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
