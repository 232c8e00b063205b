"""What several test files share: the Monte Carlo comparison with an exact answer, the quadratic
(Gaussian-posterior) target of full-batch SGLD, the small deep linear network most tests run on,
and the text of a figure.

**The z threshold.** A test that compares an estimate with an exact answer asks for agreement
within ``Z`` = 4 of the estimate's Monte Carlo standard errors (from the split-chain effective
sample size), *and* within a relative tolerance that the test states. For a correct sampler the
error is about normal, so a single comparison fails by chance with probability
P(|N(0, 1)| > 4) ≈ 6e-5; the suite makes a few hundred such comparisons, so at Z = 4 a correct
library fails a run by chance well under 1% of the time, where Z = 3 (2.7e-3 each) would fail
a noticeable fraction of CI runs. The relative tolerance keeps the test meaningful when the MCSE
is large: a noisy run cannot pass by having wide error bars.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from lambdahat import tasks, truth

__all__ = ["Z", "agrees", "finite_step_quadratic", "small_dln", "linear_gaussian_probe_problem", "figure_text", "Pairs"]

#: |estimate − truth| ≤ Z · MCSE: a false alarm rate of ~6e-5 per check for a correct sampler.
Z = 4.0


def agrees(result, target: float, rel_tol: float, bias: float = 0.0) -> tuple[bool, str]:
    """Whether λ̂ agrees with the exact ``target``: |λ̂ − target| ≤ ``rel_tol`` · |target| and
    ≤ Z · MCSE + ``bias`` · |target| (an allowance for a known bias of the sampler, 0 by default);
    and the message to assert with.  ``ok, message = agrees(result, target, 0.02); assert ok, message``.
    """
    error = result.llc_mean - target
    ok = abs(error) <= rel_tol * abs(target) and abs(error) <= Z * result.llc_mcse + bias * abs(target) + 1e-12
    allowance = f", bias allowance {bias:.1%}" if bias else ""
    return ok, (
        f"estimate {result.llc_mean:.4f} ± {result.llc_mcse:.4f} vs exact {target:.4f} "
        f"(relative error {error / target:+.2%}, tolerance {rel_tol:.0%}{allowance})"
    )


def finite_step_quadratic(eig: Sequence[float], nbeta: float, gamma: float) -> tuple[float, float]:
    """(ε, target) for full-batch SGLD on a quadratic loss with Hessian eigenvalues ``eig``: the
    step ε = 2 / (nβ a_max + γ) (ε a_max = 2: stable, < 4, and far from the ε → 0 limit), and the
    exact expectation of nβ (L − L(w*)) under that Euler chain's own stationary (Gaussian) law,
    :func:`lambdahat.truth.quadratic_expectation` at ``step_size=ε``."""
    step = 2.0 / (nbeta * max(eig) + gamma)
    return step, truth.quadratic_expectation(eig, nbeta, gamma, step_size=step)


def small_dln(seed: int = 0, n: int = 1000):
    """The 4-3-2 deep linear network of rank 1, teacher seed ``seed``: small and quick, the model
    most tests of the estimator, the health checks, the calibration and the report run on."""
    return tasks.deep_linear_network([4, 3, 2], rank=1, n=n, seed=seed)


def figure_text(fig) -> str:
    """Every piece of text on a matplotlib figure: titles, labels, legends."""
    from matplotlib.text import Text

    return "\n".join(t.get_text() for t in fig.findobj(Text))


class Pairs(Dataset):
    """A plain map-style dataset returning (x_i, y_i): data read item by item, as a user's own
    Dataset would be."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def linear_gaussian_probe_problem(n: int = 40, d: int = 3):
    """The probe tests' linear-Gaussian problem: data (X, y) of n samples in d = 3 dimensions, a
    probe of 3 training and 2 new samples, and a float64 linear model at w* off the least-squares
    point w_ls (so that the localisation pulls every posterior mean away from w_ls). Returns
    (model, (x, y), (xp, yp), w_ls, w_star)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-0.5], [0.8]], dtype=torch.float64) + 0.5 * torch.randn(n, 1, generator=gen,
                                                                                          dtype=torch.float64)
    xp = torch.cat([x[:3], torch.randn(2, d, generator=gen, dtype=torch.float64)])
    yp = torch.cat([y[:3], torch.randn(2, 1, generator=gen, dtype=torch.float64)])
    w_ls = np.linalg.lstsq(x.numpy(), y.numpy()[:, 0], rcond=None)[0]
    w_star = w_ls + np.array([0.1, -0.05, 0.08])
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(w_star)[None])
    return model, (x, y), (xp, yp), w_ls, w_star
