"""The matrix products of one SGLD step of workload (b), timed alone: the floor no sampler beats.

    python benchmarks/investigations/gemm_floor.py [--reps 400]

Workload (b) is a ReLU MLP 16-128-64-1 on minibatches of 256. Per layer, one step does the
forward product x Wᵀ, the weight gradient gᵀ x and (past the first layer) the input gradient g W.
Those products are timed as ``torch.bmm`` over C = 1 and C = 4 chains, on one thread, and
reported in µs per chain-step. Compare that with the bare loop's whole step (benchmarks/run_one.py).
"""

from __future__ import annotations

import argparse
import time

import torch

BATCH, DIMS = 256, (16, 128, 64, 1)


def products(chains: int) -> list:
    ops = []
    for layer, (fan_in, fan_out) in enumerate(zip(DIMS[:-1], DIMS[1:])):
        x, w, g = torch.randn(chains, BATCH, fan_in), torch.randn(chains, fan_in, fan_out), torch.randn(chains, BATCH, fan_out)
        ops.append(lambda x=x, w=w: torch.bmm(x, w))
        ops.append(lambda x=x, g=g: torch.bmm(g.transpose(1, 2), x))
        if layer > 0:
            ops.append(lambda g=g, w=w: torch.bmm(g, w.transpose(1, 2)))
    return ops


def seconds_per_step(ops: list, reps: int) -> float:
    for _ in range(30):
        for op in ops:
            op()
    start = time.perf_counter()
    for _ in range(reps):
        for op in ops:
            op()
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for chains in (1, 4):
        step = seconds_per_step(products(chains), args.reps)
        print(f"{chains} chain(s): the products of one step take {step * 1e6:.0f} µs, {step / chains * 1e6:.0f} µs per chain-step")


if __name__ == "__main__":
    main()
