"""Investigation (docs/speed.md, "Vectorised MLP chains without vmap"): what the direct batched
forward of ``lambdahat.stacked_mlp`` saves, paired in one process against the vmap path.

    python benchmarks/investigations/stacked_mlp_paired.py                     # workload (b), 5 rounds
    python benchmarks/investigations/stacked_mlp_paired.py --cases "dln 4-8-7 r=2 n=10000"

Each round runs the same call with the direct path and with it switched off (``stacked_mlp.build``
replaced by one that declines every model), and, for workload (b), the bare loop of
``benchmarks/run_one.py``; CPU seconds, one thread, the fastest round reported. ``--cases`` names
blind cases of ``--set`` (default v19, a seen set) run with no settings, twice per path, and prints
each λ̂ in full, to show that the two paths give the same bits.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))


def _cpu(call) -> tuple[float, object]:
    start = time.process_time()
    out = call()
    return time.process_time() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=[])
    parser.add_argument("--set", default="v19")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    import lambdahat as lh
    from lambdahat import stacked_mlp

    direct_build = stacked_mlp.build

    def path(direct: bool) -> None:
        stacked_mlp.build = direct_build if direct else (lambda *a, **k: None)

    if not args.cases:
        import run_one
        import workloads

        w = workloads.WORKLOADS["b"]
        model, x, y = workloads.build("b")
        estimate = run_one.run_lambdahat(w, model, x, y, {})
        bare = run_one.run_bare(w, model, x, y, {})
        times: dict[str, list[float]] = {"bare loop": [], "direct path": [], "vmap path": []}
        for _ in range(args.rounds):
            times["bare loop"].append(_cpu(bare)[0])
            path(True)
            times["direct path"].append(_cpu(estimate)[0])
            path(False)
            times["vmap path"].append(_cpu(estimate)[0])
        fastest_bare = min(times["bare loop"])
        for name, values in times.items():
            print(f"(b) {name:12s} fastest {min(values):.3f} s CPU, bare loop ÷ this {fastest_bare / min(values):.2f}; "
                  f"all {', '.join(f'{v:.2f}' for v in values)}")
        return

    from blind_cases import build, cases

    chosen = {c.name: c for c in cases(args.set)}
    for name in args.cases:
        task = build(chosen[name])
        for direct in (True, False, True, False):
            path(direct)
            seconds, result = _cpu(lambda: lh.estimate_llc(task.model, task.data, task.loss_fn, progress=False))
            print(f"{name} | {'direct' if direct else 'vmap'} path | {seconds:.1f} s CPU | λ̂ = {result.llc_mean!r} | "
                  f"certified {result.certified}", flush=True)


if __name__ == "__main__":
    main()
