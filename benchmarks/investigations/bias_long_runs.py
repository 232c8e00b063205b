"""Investigation (docs/accuracy.md, set v14): is an adaptive run's measured step-size bias real?

    python benchmarks/investigations/bias_long_runs.py v13 "rrr 10-10-5 r=2 n=10000"

Reads the case's auto-route settings from ``benchmarks/results/blind_accuracy_<set>.jsonl`` (a set
already seen) and runs them fixed, with no nβ check, twice: at the run's ε with 12,000 draws, and at
ε/2 with 24,000 draws, each after the run's burn-in scaled by 1/factor plus 2,000 steps. If λ̂(ε) −
λ̂(ε/2) is about half the bias the run measured, the bias check's verdict stands. One JSON line per ε.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))


def main(version: str, name: str) -> None:
    import torch

    torch.set_num_threads(1)
    import lambdahat as lh
    from blind_cases import build, cases

    task = build(next(c for c in cases(version) if c.name == name))
    rows = [json.loads(line) for line in (HERE / "results" / f"blind_accuracy_{version}.jsonl").read_text().splitlines()]
    settings = next(r for r in rows if r["case"] == name and r["route"] == "auto")["settings"]
    settings = dict(settings, nbeta_check=False)
    for factor, draws in ((1.0, 12_000), (0.5, 24_000)):
        start = time.perf_counter()
        options = dict(settings, step_size=settings["step_size"] * factor, num_draws=draws,
                       num_burnin_steps=int(settings["num_burnin_steps"] / factor) + 2_000)
        r = lh.estimate_llc(task.model, task.data, task.loss_fn, progress=False, **options)
        print(json.dumps(dict(case=name, step_factor=factor, step_size=options["step_size"], llc=r.llc_mean,
                              mcse=r.llc_mcse, failed=[c.name for c in r.checks if not c.ok],
                              seconds=round(time.perf_counter() - start))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
