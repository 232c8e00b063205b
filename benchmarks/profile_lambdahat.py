"""Where lambdahat's time goes on one benchmark workload, next to the bare loop's.

    python benchmarks/profile_lambdahat.py WORKLOAD [--quick] [--top 25] [--torch-profiler]

Runs ``estimate_llc`` on the workload (the same settings as compare_devinterp.py) under cProfile,
single-threaded, and prints the functions with the most cumulative and own time; with
``--torch-profiler`` also the torch operators by self CPU time, for lambdahat and for the bare
loop, so the two can be compared operator by operator.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run_one  # noqa: E402
import workloads  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--torch-profiler", action="store_true")
    parser.add_argument("--option", action="append", default=[], help="KEY=VALUE passed to estimate_llc")
    parser.add_argument("--skip-bare", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    w = workloads.WORKLOADS[args.workload].scaled(args.quick)

    options = dict((kv.split("=", 1)[0], run_one._parse_value(kv.split("=", 1)[1])) for kv in args.option)
    for tool in ("lambdahat",) if args.skip_bare else ("lambdahat", "bare"):
        model, x, y = workloads.build(args.workload)
        go = run_one.RUNNERS[tool](w, model, x, y, options if tool == "lambdahat" else {})
        go()  # warm-up (first-call costs are not what we want to see)
        cpu = time.process_time()
        start = time.perf_counter()
        go()
        print(f"== {tool}: {time.perf_counter() - start:.3f} s wall, {time.process_time() - cpu:.3f} s CPU, without profiler")
        if tool == "lambdahat":
            prof = cProfile.Profile()
            prof.enable()
            go()
            prof.disable()
            for key in ("cumulative", "tottime"):
                out = io.StringIO()
                pstats.Stats(prof, stream=out).strip_dirs().sort_stats(key).print_stats(args.top)
                print(f"-- cProfile, sorted by {key}")
                print(out.getvalue())
        if args.torch_profiler:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as tp:
                go()
            print(f"-- torch.profiler ({tool}), by self CPU time")
            print(tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
