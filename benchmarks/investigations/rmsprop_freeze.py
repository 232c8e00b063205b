"""Investigation (docs/samplers.md, the RMSProp-SGLD caveat): what freezing RMSProp-SGLD's
preconditioner after the first half of the burn-in does to its Γ-term tilt.

    python benchmarks/investigations/rmsprop_freeze.py [step_size]

The slow tier's quasi-homogeneous potential ([4, 2] × 500 copies, nβ = 1, γ = 0, exact λ̂ = 375),
RMSProp-SGLD (α = 0.99, eps = 0.1) at ε = 2e-4 by default, 4 chains, with ``adapt="burnin"`` (the
default) and ``adapt="always"`` (devinterp's), at four (burn-in, draws, seed) settings. One line each.
"""

from __future__ import annotations

import sys

import torch

import lambdahat as lh
from lambdahat import tasks

SETTINGS = [(1000, 4000, 0), (1000, 4000, 1), (3000, 4000, 0), (1000, 16000, 0)]


def main() -> None:
    torch.set_num_threads(1)
    step = float(sys.argv[1]) if len(sys.argv) > 1 else 2e-4
    task = tasks.quasi_homogeneous([4, 2], copies=500)
    target = float(task.truth.value)
    for adapt in ("burnin", "always"):
        for burnin, draws, seed in SETTINGS:
            sampler = lh.SamplerConfig("rmsprop_sgld", alpha=0.99, eps=0.1, adapt=adapt)
            r = lh.estimate_llc(task.model, task.data, task.loss_fn, sampler=sampler, step_size=step, localization=0.0,
                                nbeta=1.0, num_burnin_steps=burnin, num_draws=draws, num_chains=4, seed=seed,
                                progress=False)
            print(f"adapt={adapt:6s} burn-in {burnin:5d} draws {draws:5d} seed {seed}: "
                  f"{r.llc_mean:.1f} ± {r.llc_mcse:.1f} ({r.llc_mean / target - 1:+.2%})", flush=True)


if __name__ == "__main__":
    main()
