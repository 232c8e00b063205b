"""How fast can four chains of workload (b) go on one CPU thread? The floor under issue 13's target.

    python benchmarks/investigations/vectorized_floor.py [--repeats 3] [--calls 300]

Issue 13 asks the vectorised chains to run workload (b) (the 10,497-weight ReLU MLP, batch 256,
4 chains) at 1.5× the speed of the bare sequential loop. This times one forward and backward pass
of all four chains (each on its own minibatch of 256) in five ways, interleaved in one process:

- ``sequential``: four ordinary passes, one per chain (what the bare loop does);
- ``hand-batched``: one pass of hand-written ``baddbmm`` layers over weights stacked (4, …) — the
  fastest batched form of this model, and not available for a model in general;
- ``vmap, hand-written``: ``torch.func.vmap`` of a functional MLP (``F.linear``) over the stack;
- ``vmap, model call``: ``vmap`` of the model itself through :class:`lambdahat.losses.ModuleCall`
  (what ``chain_mode="vectorized"`` runs);
- ``vmap, forward only``: the last without gradients.

The microseconds per call of all four chains are printed, with their ratio to ``sequential``.
Only the pass is timed: no update, noise or minibatch selection.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import workloads  # noqa: E402

from lambdahat.losses import ModuleCall  # noqa: E402

K = 4


def _timed(fn, calls: int) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def passes():
    model, x, y = workloads.build("b")
    names = [name for name, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randperm(x.shape[0], generator=gen)[:256] for _ in range(K)]
    xs, ys = torch.stack([x[r] for r in rows]), torch.stack([y[r] for r in rows])
    single = [p.clone().requires_grad_(True) for p in params]
    stacked = [p.expand(K, *p.shape).clone().requires_grad_(True) for p in params]

    def model_of(p, xb):
        h = F.relu(F.linear(xb, p[0], p[1]))
        h = F.relu(F.linear(h, p[2], p[3]))
        return F.linear(h, p[4], p[5])

    def sequential():
        for k in range(K):
            loss = workloads.loss_fn(model_of(single, xs[k]), ys[k])
            torch.autograd.grad(loss, single)

    def hand_batched():
        h = torch.relu(torch.baddbmm(stacked[1].unsqueeze(1), xs, stacked[0].transpose(1, 2)))
        h = torch.relu(torch.baddbmm(stacked[3].unsqueeze(1), h, stacked[2].transpose(1, 2)))
        out = torch.baddbmm(stacked[5].unsqueeze(1), h, stacked[4].transpose(1, 2))
        loss = 0.5 * (out - ys).square().sum(-1).mean(-1)
        torch.autograd.grad(loss.sum(), stacked)

    per_chain_hand = torch.func.vmap(lambda p, xb, yb: workloads.loss_fn(model_of(p, xb), yb))

    def vmap_hand():
        torch.autograd.grad(per_chain_hand(stacked, xs, ys).sum(), stacked)

    call = ModuleCall(model)
    per_chain_model = torch.func.vmap(lambda p, xb, yb: workloads.loss_fn(call(dict(zip(names, p)), xb), yb))

    def vmap_model():
        torch.autograd.grad(per_chain_model(stacked, xs, ys).sum(), stacked)

    def vmap_forward():
        with torch.no_grad():
            per_chain_model(stacked, xs, ys)

    return {"sequential": sequential, "hand-batched": hand_batched, "vmap, hand-written": vmap_hand,
            "vmap, model call": vmap_model, "vmap, forward only": vmap_forward}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    fns = passes()
    times = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn, args.calls))
    base = min(times["sequential"])
    print(f"one forward and backward of {K} chains, workload (b), one thread; µs per call (fastest, all repeats)")
    for name, got in times.items():
        print(f"  {name:20s} {min(got):7.0f}  ({min(got) / base:.2f}× sequential)  "
              + ", ".join(f"{t:.0f}" for t in got))


if __name__ == "__main__":
    main()
