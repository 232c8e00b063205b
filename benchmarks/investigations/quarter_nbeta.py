"""λ̂ at nβ / 4, nβ and 4nβ on seen reduced-rank regressions whose λ̂ falls with nβ (noisy targets).

    python benchmarks/investigations/quarter_nbeta.py "rrr 10-3-7 r=0 n=10000" "rrr 3-10-5 r=2 n=10000" ...

Each case (by name, from any set of ``benchmarks/blind_cases.py``; every set named here was seen
before this ran) is estimated with no settings at the default nβ = n / log n, which runs its nβ
check at 4nβ too, and once more at nβ / 4 with ``nbeta_check=False``. Printed per case, one JSON
line: the three values, the linear model's extrapolations to nβ → 0 from (nβ / 4, nβ) and from
(nβ, 4nβ), the quadratic through all three, and each one's error against λ. This is the evidence
behind ``lambdahat.nbeta_rung``'s "Lowering nβ" (docs/accuracy.md, before set v13; the lines are in
``benchmarks/results/quarter_nbeta_seen.jsonl``). It ran at 951edf1, before the lowering existed;
since, an estimate that falls moves to nβ / 4 by itself, with the same settings and seed as the
run at nβ / 4 here, so that run is then the estimate itself and is not repeated.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(name: str) -> dict:
    import torch

    torch.set_num_threads(1)
    import lambdahat as lh
    from blind_cases import VERSIONS, build, cases

    case = next(c for v in VERSIONS for c in cases(v) if c.name == name)
    task = build(case)
    start = time.perf_counter()
    result = lh.estimate_llc(task.model, task.data, task.loss_fn, nbeta_check=True, progress=False)
    if result.lowered_from is None:
        l1, l4 = result.llc_mean, result.nbeta_rung.llc
        quarter = lh.estimate_llc(task.model, task.data, task.loss_fn, nbeta=result.nbeta / 4, seed=2, progress=False)
    else:  # the estimate is the run at nβ / 4
        l1, l4, quarter = result.nbeta_rung.llc, result.fall_rung.llc, result
    q = quarter.llc_mean
    truth = float(task.truth)
    values = dict(quarter=q, at_t=l1, at_4t=l4, linear_low=(4 * q - l1) / 3, linear_high=(4 * l1 - l4) / 3,
                  quadratic=(64 * q - 20 * l1 + l4) / 45)
    row = dict(case=name, truth=truth, multiplicity=task.truth.multiplicity, mcse_quarter=quarter.llc_mcse,
               failed_quarter=[c.name for c in quarter.checks if not c.ok], seconds=time.perf_counter() - start,
               **values, **{f"error_{k}": (v - truth) / truth for k, v in values.items()})
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(run, sys.argv[1:]))
