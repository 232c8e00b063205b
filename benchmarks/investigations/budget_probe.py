"""Investigation (docs/accuracy.md, "Set v20's 10⁴ networks at 1.5× and 3× the step budget"): one blind
case estimated with no settings but a step budget, printed as one JSON line.

    python benchmarks/investigations/budget_probe.py "dln 30-55-26-64-53-64 r=10 n=10000" 30000 --set v20
    python benchmarks/investigations/budget_probe.py "dln 30-55-26-64-53-64 r=10 n=10000" auto --set v20

The line holds λ̂, its MCSE, whether it was certified, the failed checks with their verdicts, the
values of the R̂, ESS, bias and nβ checks, and the wall time (one thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case")
    parser.add_argument("max_steps", help="a number of steps, or auto (the default budget)")
    parser.add_argument("--set", default="v20")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    import lambdahat as lh
    from blind_cases import build, cases

    task = build({c.name: c for c in cases(args.set)}[args.case])
    budget = {} if args.max_steps == "auto" else {"max_steps": int(args.max_steps)}
    start = time.time()
    r = lh.estimate_llc(task.model, task.data, task.loss_fn, progress=False, **budget)
    print(json.dumps(dict(
        case=args.case, max_steps=args.max_steps, llc=float(r.llc_mean), mcse=float(r.llc_mcse),
        certified=bool(r.certified), failed=[c.name for c in r.checks if not c.ok],
        checks={c.name: [c.value, c.threshold] for c in r.checks if c.name in ("ess", "rhat", "bias", "nbeta")},
        verdicts={c.name: c.verdict for c in r.checks if not c.ok}, seconds=round(time.time() - start, 1),
    ), default=str), flush=True)


if __name__ == "__main__":
    main()
