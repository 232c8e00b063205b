"""Does ``torch.compile`` pay for itself on a CPU? (issue 13, item 2)

    python benchmarks/compile_check.py [--workload b] [--steps 500] [--repeats 3]

Times one chain's loss-and-gradient step (minibatch forward, backward, an in-place update of the
parameters) of a workload of ``benchmarks/workloads.py``, eagerly and wrapped in ``torch.compile``,
interleaved ``--repeats`` times in one process, one thread; prints the compile time (the first
call) and each repeat. Nothing here is lambdahat's: it asks whether compiling the step could win
at all before the library offers it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", default="b")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, x, y = workloads.build(args.workload)
    batch = workloads.WORKLOADS[args.workload].batch_size
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}

    def step(p, xb, yb):
        loss = workloads.loss_fn(functional_call(model, p, (xb,)), yb)
        grads = torch.autograd.grad(loss, list(p.values()))
        with torch.no_grad():
            for v, g in zip(p.values(), grads):
                v.sub_(1e-9 * g)
        return loss.detach()

    def timed(fn) -> float:
        gen = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for _ in range(args.steps):
            idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
            fn(params, x[idx], y[idx])
        return time.perf_counter() - start

    compiled = torch.compile(step)
    start = time.perf_counter()
    compiled(params, x[:batch], y[:batch])
    compile_seconds = time.perf_counter() - start
    rows = [dict(eager=timed(step), compiled=timed(compiled)) for _ in range(args.repeats)]
    print(json.dumps(dict(workload=args.workload, steps=args.steps, torch=torch.__version__,
                          compile_seconds=round(compile_seconds, 2),
                          repeats=[{k: round(v, 3) for k, v in r.items()} for r in rows])))


if __name__ == "__main__":
    main()
