"""Investigation (docs/accuracy.md, "The normal crossings"): how long full-batch Langevin needs on one copy.

    python benchmarks/investigations/crossing_langevin.py            # v14's (1, 3) crossing, nβ = 727.5

Unadjusted Langevin, w ← w − (ε/2) ∇U(w) + √ε ξ with U = nβ ΔL + (γ/2)‖w‖², on the first copy of
v14's normal crossing (1, 3)×8 (a seen case), in float64, 4,000 independent chains from w* = 0 at
the auto run's ε = 6.7·10⁻⁵ and γ = 1. Prints the chains' mean of nβ ΔL per block of steps against
the exact value of ``tasks.normal_crossing_expectation`` for that copy.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))


def main(nbeta: float = 727.5, step: float = 6.7e-5, steps: int = 40_000, chains: int = 4000) -> None:
    import torch

    torch.set_num_threads(1)
    from blind_cases import build, cases
    from lambdahat import tasks

    task = build(next(c for c in cases("v14") if c.name == "normal crossing (1, 3) x8 n=30000"))
    b = task.info["exponents"][1]
    x, y = (t[:, :1].double() for t in task.data)
    one = tasks.Task("copy 1", task.model, (x, y), task.loss_fn, None, dict(task.info))
    exact = tasks.normal_crossing_expectation(one, nbeta, 1.0)
    s, q = float((x * y).mean()), float((x * x).mean())
    gen = torch.Generator().manual_seed(0)
    w = torch.zeros(chains, 2, dtype=torch.float64)
    block = steps // 10
    print(f"exact E[nβ ΔL] of copy 1 at nβ = {nbeta}, γ = 1: {exact:.4f}")
    for k in range(10):
        total = torch.zeros(chains, dtype=torch.float64)
        for _ in range(block):
            w1, w2 = w[:, 0], w[:, 1]
            slope = nbeta * (-s + w1 * w2**b * q)  # nβ dΔL/du
            grad = torch.stack([slope * w2**b, slope * b * w1 * w2 ** (b - 1)], 1) + w
            w = w - step / 2 * grad + math.sqrt(step) * torch.randn(chains, 2, generator=gen, dtype=torch.float64)
            u = w[:, 0] * w[:, 1] ** b
            total += nbeta * (-u * s + 0.5 * u * u * q)
        mean = total / block
        print(f"steps {(k + 1) * block:6d}: {float(mean.mean()):.4f} ± {float(mean.std()) / math.sqrt(chains):.4f}")


if __name__ == "__main__":
    main()
