"""Run ONE (tool, workload) sampling run that records every chain's per-step loss, and measure the
peak memory it adds; write the measurements as JSON. compare_devinterp.py's --answer and --memory
rows come from here.

    python benchmarks/run_answer.py TOOL WORKLOAD OUT.json --draws D [--burnin B] [--chains C]
                                    [--step-size EPS] [--option KEY=VALUE ...]

TOOL: lambdahat, bare or devinterp-1.3.2 (that one with the python of its virtual environment).
WORKLOAD: a key of workloads.WORKLOADS, or one of MEMORY_WORKLOADS below (a deep linear network
whose parameters dominate the memory). Every tool runs the same update at the workload's ε, γ,
nβ = n / log n and batch size, B burn-in steps then D draws per chain, and reports the
minibatch loss of every draw (chain, draw): lambdahat its ``trace.draws("loss")``, devinterp
1.3.2 its ``loss/trace``, the bare loop the loss it computes for the gradient. L_n(w*) is
computed here once, on the full data, the same for every tool.

Memory: the process's resident set right before the sampling call (VmRSS, after a gc and glibc's
malloc_trim), the peak
resident set during it (VmHWM, reset right before the call by writing 5 to /proc/self/clear_refs;
ru_maxrss when that is not possible) and the parameter bytes of the model; on CUDA also
torch.cuda.max_memory_allocated over the call minus what was allocated before it. Imports only
the standard library, torch and numpy at the top, so any of the environments can run it.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import time
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workloads  # noqa: E402

# key -> (title, widths, n, batch size, ε): bias-free DLNs at w* with teacher targets (as workloads (c), (d))
MEMORY_WORKLOADS = {
    "m": ("DLN 512-1024-1024-1024-1024-512, 5 layers (4,194,304 params)",
          [512, 1024, 1024, 1024, 1024, 512], 512, 32, 1e-5),
}


def workload(key: str, chains: int | None, draws: int, step_size: float | None = None):
    """(Workload, model, x, y) for ``key`` with ``chains`` chains (None: the workload's), ``draws``
    draws and step size ``step_size`` (None: the workload's)."""
    if key in MEMORY_WORKLOADS:
        title, widths, n, batch, eps = MEMORY_WORKLOADS[key]
        w = workloads.Workload(key, title, n=n, batch_size=batch, num_chains=chains or 1, num_draws=draws,
                               step_size=step_size or eps)
        gen = torch.Generator().manual_seed(workloads.SEED)
        model = workloads._dln(widths, gen)
        x = torch.randn(n, widths[0], generator=gen)
        model.eval()
        with torch.no_grad():
            y = model(x).detach().clone()
        return w, model, x, y
    base = workloads.WORKLOADS[key]
    w = workloads.Workload(base.key, base.title, base.n, base.batch_size, chains or base.num_chains, draws,
                           step_size or base.step_size, base.localization)
    model, x, y = workloads.build(key)
    return w, model, x, y


# ----------------------------------------------------------------------------- memory


def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _trim_heap() -> None:
    """Give the heap's free pages back to the OS (glibc malloc_trim), so that VmRSS before the call
    counts only live memory and the call cannot reuse pages freed while the model was built."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- tools


def run_lambdahat(w, model, x, y, burnin, options):
    import lambdahat

    kwargs = dict(step_size=w.step_size, localization=w.localization, nbeta=w.nbeta, num_chains=w.num_chains,
                  num_draws=w.num_draws, num_burnin_steps=burnin, batch_size=w.batch_size, seed=0, progress=False)
    kwargs.update(options)

    def go():
        result = lambdahat.estimate_llc(model, (x, y), workloads.loss_fn, **kwargs)
        return dict(losses=np.asarray(result.trace.draws("loss"), dtype=float),
                    gradient_evaluations=int(result.gradient_evaluations),
                    chain_mode=result.trace.config.get("chain_mode"),
                    tool_llc_mean=float(result.llc_mean), tool_llc_mcse=float(result.llc_mcse))

    return go


def run_bare(w, model, x, y, burnin, options):
    """benchmarks/run_one.py's bare loop (:func:`run_one.bare_sgld`), run for burn-in + draws steps
    per chain, returning the per-step losses after the burn-in."""
    from run_one import bare_sgld

    steps = burnin + w.num_draws

    def go():
        losses = bare_sgld(w, model, x, y, steps)
        return dict(losses=losses[:, burnin:].double().cpu().numpy(), gradient_evaluations=w.num_chains * steps)

    return go


def run_devinterp_132(w, model, x, y, burnin, options):
    """devinterp 1.3.2's estimate_learning_coeff_with_summary, as benchmarks/run_one.py calls it,
    with num_burnin_steps = burnin; its loss/trace holds the draws after the burn-in."""
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(x, y), batch_size=min(w.batch_size, w.n), shuffle=True)

    def evaluate(model, data):
        xb, yb = data
        return workloads.loss_fn(model(xb), yb)

    def go():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = estimate_learning_coeff_with_summary(
                model, loader, evaluate=evaluate, sampling_method=SGLD,
                optimizer_kwargs=dict(lr=w.step_size, localization=w.localization, nbeta=w.nbeta),
                num_draws=w.num_draws, num_chains=w.num_chains, num_burnin_steps=burnin, cores=1, seed=0,
                device="cpu", verbose=False, online=False,
            )
        losses = np.asarray(result["loss/trace"], dtype=float).reshape(w.num_chains, -1)
        # + num_chains batches for its init loss
        return dict(losses=losses, gradient_evaluations=w.num_chains * (burnin + w.num_draws),
                    tool_llc_mean=float(result["llc/mean"]))

    return go


RUNNERS = {"lambdahat": run_lambdahat, "bare": run_bare, "devinterp-1.3.2": run_devinterp_132}


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def main(argv: list[str]) -> int:
    threads = int(os.environ.get("BENCH_THREADS", "1"))
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    tool, key, out_path = argv[:3]
    opts = {"--draws": None, "--burnin": "0", "--chains": None, "--step-size": None}
    options = {}
    i = 3
    while i < len(argv):
        if argv[i] == "--option":
            k, v = argv[i + 1].split("=", 1)
            options[k] = _parse_value(v)
        elif argv[i] in opts:
            opts[argv[i]] = argv[i + 1]
        else:
            raise SystemExit(f"unknown argument {argv[i]!r}")
        i += 2
    draws, burnin = int(opts["--draws"]), int(opts["--burnin"])
    chains = int(opts["--chains"]) if opts["--chains"] else None
    step_size = float(opts["--step-size"]) if opts["--step-size"] else None
    w, model, x, y = workload(key, chains, draws, step_size)
    with torch.no_grad():
        init_loss = float(workloads.loss_fn(model(x), y))  # L_n(w*), the same for every tool
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    go = RUNNERS[tool](w, model, x, y, burnin, options)  # imports and data wrapping, not timed
    gc.collect()
    _trim_heap()
    cuda = x.is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    rss_before_kb = _status_kb("VmRSS")
    maxrss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm_reset = _reset_peak()
    start, cpu_start = time.perf_counter(), time.process_time()
    out = go()
    if cuda:
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak_kb = _status_kb("VmHWM") if hwm_reset else None
    maxrss_after_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if peak_kb is not None and rss_before_kb is not None:
        added, how = (peak_kb - rss_before_kb) * 1024, "VmHWM - VmRSS"
    else:
        added, how = (maxrss_after_kb - maxrss_before_kb) * 1024, "ru_maxrss after - before"
    losses = out.pop("losses")
    record = dict(
        tool=tool, workload=key, title=w.title, options=options, n=w.n, batch_size=min(w.batch_size, w.n),
        step_size=w.step_size, localization=w.localization, nbeta=w.nbeta, num_chains=w.num_chains,
        num_draws=draws, num_burnin_steps=burnin, seconds=elapsed, cpu_seconds=cpu, init_loss=init_loss,
        num_params=workloads.num_params(model), param_bytes=param_bytes,
        rss_before_mb=(rss_before_kb or 0) / 1024, peak_added_bytes=added, peak_added_how=how,
        peak_added_over_param_bytes=added / param_bytes,
        cuda_peak_added_over_param_bytes=((torch.cuda.max_memory_allocated() - cuda_before) / param_bytes
                                          if cuda else None),
        threads=torch.get_num_threads(), torch=torch.__version__, losses=losses.tolist(), **out,
    )
    with open(out_path, "w") as fh:
        json.dump(record, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
