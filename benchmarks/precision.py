"""λ̂ with a bfloat16 (or float16) forward and backward under torch.autocast, against float32 and
the exact λ, on known-answer deep linear networks; and the time per step of each.

    python benchmarks/precision.py [--precisions float32,bfloat16] [--chains 4] [--timing-repeats 3]

Every case runs the settings of tests/test_known_answers.py (``_dln_settings``: fixed ε, γ = 1,
nβ = n / log n, batch 500, half the steps burn-in) with the same seed in each precision, so the
chains see the same minibatches and the same noise ξ: the λ̂ difference between precisions is the
rounding effect plus the part of the Monte Carlo error the two runs do not share. ``naive`` is the
model cast to bfloat16 (weights, noise and update in bfloat16), which lambdahat warns about.
The timing rows are sequential steps of one chain on a larger model, float32 and autocast runs
interleaved, ``--timing-repeats`` each, in this process (one torch thread).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
import warnings

import torch

import lambdahat as lh
from lambdahat import tasks

CASES = [((4, 3, 2), 1, 1000), ((3, 2, 4), 1, 100_000), ((8, 4, 6, 5), 1, 100_000), ((30, 20, 10), 1, 100_000)]


def dln_settings(widths) -> dict:
    """tests/test_known_answers.py's fixed settings for a DLN of these widths."""
    steps = 20_000 if len(widths) >= 5 else 10_000
    return dict(step_size=1.5e-5 if max(widths) <= 10 else 3e-6, localization=1.0, nbeta=None,
                num_draws=steps // 2, num_burnin_steps=steps // 2, batch_size=500)


def known_answer_rows(precisions: list[str], chains: int) -> list[dict]:
    rows = []
    for widths, rank, n in CASES:
        task = tasks.deep_linear_network(list(widths), rank, n=n, seed=1, aligned=False)  # the teachers of docs/speed.md's table
        settings = dict(dln_settings(widths), num_chains=chains, seed=0, sampler="sgld", chain_mode="sequential",
                        progress=False)
        runs = {}
        for precision in precisions:
            start = time.perf_counter()
            result = lh.estimate_llc(task.model, task.data, task.loss_fn, precision=precision, **settings)
            runs[precision] = (result, time.perf_counter() - start)
        if widths == (4, 3, 2):  # the audit's case: the weights themselves in bfloat16
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model = copy.deepcopy(task.model).to(torch.bfloat16)
                data = tuple(t.to(torch.bfloat16) for t in task.data)
                start = time.perf_counter()
                result = lh.estimate_llc(model, data, task.loss_fn, **settings)
            runs["naive bfloat16 weights"] = (result, time.perf_counter() - start)
        ref = runs["float32"][0]
        for name, (result, seconds) in runs.items():
            truth = float(task.truth.value)
            se = math.hypot(result.llc_mcse, ref.llc_mcse)
            rows.append(dict(case=task.name, truth=truth, precision=name, llc=result.llc_mean, mcse=result.llc_mcse,
                             rel_error=(result.llc_mean - truth) / truth, diff_vs_float32=result.llc_mean - ref.llc_mean,
                             z_vs_float32=(result.llc_mean - ref.llc_mean) / se if se else 0.0, seconds=seconds))
            print(rows[-1], flush=True)
    return rows


def timing_rows(precisions: list[str], repeats: int, steps: int = 200) -> list[dict]:
    """ms per SGLD step of one chain, each precision interleaved over ``repeats`` runs."""
    models = {
        "DLN 100-50-50 (7,500 weights), batch 500": tasks.deep_linear_network([100, 50, 50], 2, n=20_000, seed=1),
        "DLN 512-512-512-512 (786k weights), batch 500": tasks.deep_linear_network([512, 512, 512, 512], 4, n=5_000,
                                                                                   seed=1),
    }
    rows = []
    for title, task in models.items():
        times: dict[str, list[float]] = {p: [] for p in precisions}
        for _ in range(repeats):
            for precision in precisions:
                settings = dict(step_size=1e-7, localization=1.0, nbeta=None, num_chains=1, num_draws=steps,
                                num_burnin_steps=0, batch_size=500, seed=0, sampler="sgld", chain_mode="sequential",
                                progress=False, precision=precision)
                start = time.perf_counter()
                lh.estimate_llc(task.model, task.data, task.loss_fn, **settings)
                times[precision].append(1e3 * (time.perf_counter() - start) / steps)
        for precision, values in times.items():
            ratios = sorted(v / f for v, f in zip(values, times["float32"]))
            rows.append(dict(model=title, precision=precision, ms_per_step=sorted(values)[len(values) // 2],
                             ratio_vs_float32=ratios[len(ratios) // 2], all_ms=values))
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--timing-repeats", type=int, default=3)
    parser.add_argument("--skip-known", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    precisions = args.precisions.split(",")
    if not args.skip_known:
        rows = known_answer_rows(precisions, args.chains)
        print("\n| case | truth | precision | λ̂ ± MCSE | relative error | λ̂ − λ̂(float32) (z) | seconds |")
        print("|---|---:|---|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['case']} | {r['truth']:g} | {r['precision']} | {r['llc']:.3f} ± {r['mcse']:.3f} | "
                  f"{r['rel_error']:+.1%} | {r['diff_vs_float32']:+.3f} ({r['z_vs_float32']:+.2f}) | {r['seconds']:.1f} |")
    if args.timing_repeats:
        rows = timing_rows(precisions, args.timing_repeats)
        print("\n| model | precision | ms / step (median) | ÷ float32 (median of same-repeat ratios) | all ms |")
        print("|---|---|---:|---:|---|")
        for r in rows:
            print(f"| {r['model']} | {r['precision']} | {r['ms_per_step']:.2f} | {r['ratio_vs_float32']:.2f} | "
                  + ", ".join(f"{v:.2f}" for v in r["all_ms"]) + " |")


if __name__ == "__main__":
    main()
