"""Raw probe rows against streaming probe moments (docs/observables.md, "Cost").

A 97-weight tanh MLP (4 → 16 → 1) on 1,024 samples, 2 chains × DRAWS draws at batch 256,
``probe_every=10``, a probe of 10⁴ samples; for each storage: the wall time of the run, the bytes the
trace holds for the probe, and the time of ``lh.bif``. Run: ``OMP_NUM_THREADS=1 python
benchmarks/probe_store.py [draws]``.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

import lambdahat as lh


def main(draws: int = 1000) -> None:
    torch.manual_seed(0)
    x = torch.randn(1024 + 10_000, 4)
    y = torch.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3] + 0.1 * torch.randn(len(x), 1)
    data, probe = (x[:1024], y[:1024]), (x[1024:], y[1024:])
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    settings = dict(step_size=1e-4, localization=1.0, num_chains=2, num_burnin_steps=100, num_draws=draws,
                    batch_size=256, seed=0, progress=False)
    cases = [("none", {}), ("raw", dict(probe=probe, probe_every=10)),
             ("moments, 10 queries", dict(probe=probe, probe_every=10, probe_store="moments",
                                          probe_queries=list(range(10)))),
             ("moments, 100 queries", dict(probe=probe, probe_every=10, probe_store="moments",
                                           probe_queries=list(range(100))))]
    print(f"| storage | wall time | probe bytes | lh.bif |  ({draws} draws)")
    for name, options in cases:
        start = time.perf_counter()
        result = lh.estimate_llc(model, data, lh.losses.gaussian_nll, **options, **settings)
        wall = time.perf_counter() - start
        trace = result.trace
        held = trace.probe.nbytes if trace.probe is not None else (
            trace.probe_moments.nbytes if trace.probe_moments is not None else 0)
        bif = "—"
        if "probe" in options:
            start = time.perf_counter()
            lh.bif(result) if trace.probe is None else lh.bif(result, samples=list(range(10)))
            bif = f"{time.perf_counter() - start:.2f} s"
        print(f"| {name} | {wall:.2f} s | {held / 1e6:.2f} MB | {bif} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
