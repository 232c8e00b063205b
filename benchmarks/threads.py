"""Steps per second at 1 and 2 torch intra-op threads, for three model sizes: the measurement behind
the thread policy (lambdahat.estimate.select_threads, SINGLE_THREAD_MAX_PARAMS; the CLI's
torch_threads).

    python benchmarks/threads.py [--sizes 10k,100k,1M] [--threads 1,2] [--repeats 3]
                                 [--json benchmarks/out/threads.json] [--out benchmarks/out/threads.md]

Each (tool, size, threads) run is a fresh process (OMP_NUM_THREADS and torch.set_num_threads set
before any work), and the runs are interleaved: for each repeat, every size, every thread count,
every tool, so that a change in the machine's load hits all of them alike. The models are ReLU
MLPs 32-h-h-1 (h = 84, 300, 983: 9,997, 100,501 and 1,000,695 weights), n = 8192 samples, batch 256,
one sequential chain, ε = 1e-5, γ = 100, nβ = n / log n. Tools: the bare SGLD loop of
benchmarks/run_answer.py, and lambdahat.estimate_llc (chain_mode="sequential"), which applies its
own thread policy inside the call: at or below SINGLE_THREAD_MAX_PARAMS sampled weights it runs on
one thread whatever the caller set, so its "2 threads" row there measures the policy, not 2 threads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

SIZES = {"10k": (84, 2000), "100k": (300, 600), "1M": (983, 120)}  # hidden width, steps
N, BATCH, EPS, GAMMA = 8192, 256, 1e-5, 100.0


def child(tool: str, size: str, threads: int, out: str) -> None:
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    sys.path.insert(0, str(HERE))
    import run_answer
    import workloads

    width, steps = SIZES[size]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))
    model.eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 32, generator=gen)
    with torch.no_grad():
        y = model(x).detach().clone()
    w = workloads.Workload("t", f"MLP 32-{width}-{width}-1", n=N, batch_size=BATCH, num_chains=1, num_draws=steps,
                           step_size=EPS, localization=GAMMA)
    if tool == "bare":
        go = run_answer.run_bare(w, model, x, y, 0, {})
    else:
        import lambdahat

        def go():
            lambdahat.estimate_llc(model, (x, y), workloads.loss_fn, step_size=EPS, localization=GAMMA, nbeta=w.nbeta,
                                   num_chains=1, num_draws=steps, num_burnin_steps=0, batch_size=BATCH,
                                   chain_mode="sequential", seed=0, progress=False)
    start, cpu = time.perf_counter(), time.process_time()
    go()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    Path(out).write_text(json.dumps(dict(tool=tool, size=size, threads=threads, steps=steps, seconds=seconds,
                                         cpu_seconds=cpu, steps_per_second=steps / seconds,
                                         num_params=sum(p.numel() for p in model.parameters()))))


def median(values):
    v = sorted(values)
    m = len(v) // 2
    return v[m] if len(v) % 2 else (v[m - 1] + v[m]) / 2


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2], int(argv[3]), argv[4])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1M")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--tools", default="bare,lambdahat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=str(HERE / "out" / "threads.json"))
    parser.add_argument("--out", default=str(HERE / "out" / "threads.md"))
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    thread_counts = [int(t) for t in args.threads.split(",")]
    tools = args.tools.split(",")
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    load_start = os.getloadavg()[0]
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for size in sizes:
                for threads in thread_counts:
                    for tool in tools:
                        out = os.path.join(tmp, f"{tool}-{size}-{threads}-{rep}.json")
                        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                                   PYTHONWARNINGS="ignore")
                        subprocess.run([sys.executable, __file__, "--child", tool, size, str(threads), out],
                                       check=True, env=env, cwd=str(ROOT))
                        r = json.loads(Path(out).read_text())
                        r["repeat"] = rep
                        records.append(r)
                        print(f"[{rep + 1}/{args.repeats}] {tool} {size} {threads} thread(s): "
                              f"{r['steps_per_second']:.1f} steps/s (CPU {r['cpu_seconds'] / r['seconds']:.2f}× wall)",
                              file=sys.stderr, flush=True)
    load_end = os.getloadavg()[0]
    rows = ["| model | weights | tool | steps/s at " + " | steps/s at ".join(f"{t} thread(s)" for t in thread_counts)
            + " | 2 threads ÷ 1 thread (median of same-repeat ratios) | all steps/s |",
            "|---|---:|---|" + "---:|" * len(thread_counts) + "---:|---|"]
    for size in sizes:
        for tool in tools:
            by = {t: [r for r in records if r["size"] == size and r["tool"] == tool and r["threads"] == t]
                  for t in thread_counts}
            meds = [median([r["steps_per_second"] for r in by[t]]) for t in thread_counts]
            ratio = "—"
            if 1 in by and 2 in by:
                pairs = [b["steps_per_second"] / a["steps_per_second"] for a, b in zip(by[1], by[2])]
                ratio = f"{median(pairs):.2f}"
            allv = "; ".join(f"{t}: " + ", ".join(f"{r['steps_per_second']:.0f}" for r in by[t]) for t in thread_counts)
            width = SIZES[size][0]
            rows.append(f"| MLP 32-{width}-{width}-1 | {by[thread_counts[0]][0]['num_params']:,} | {tool} | "
                        + " | ".join(f"{m:.1f}" for m in meds) + f" | {ratio} | {allv} |")
    command = "python benchmarks/threads.py" + "".join(" " + a for a in argv)
    text = "\n".join([
        f"Command: `{command}`", "",
        f"Date: {started} (UTC), {os.cpu_count()} cores, load average {load_start:.2f} at start, {load_end:.2f} at end; "
        f"n = {N}, batch {BATCH}, one sequential chain, medians over {args.repeats} interleaved repeats.", "",
        *rows, ""])
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(dict(command=command, started=started, loads=[load_start, load_end],
                                               records=records), indent=1))
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
