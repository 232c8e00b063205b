"""GPU check: lambdahat on an accelerator, in one command, against the CPU and known answers.

    python benchmarks/gpu_check.py [--device cuda] [--quick] [--out DIR] [--sections LIST]

Sections (each guarded: a failure is recorded with its error text and the rest still run):

1. ``same_seed`` — every sampler (sgld, rmsprop_sgld, sghmc, sgnht, mala) × every chain mode
   (sequential, vectorized) on a small deep linear network, compared with the CPU result of the
   same seed. lambdahat draws its noise from a generator *on the model's device*, and CUDA's
   generator (Philox) is not the CPU's (Mersenne Twister), so the same seed gives different noise
   on the two devices. The exact check therefore runs the device with "CPU noise": every
   sampler's N(0, 1) / U(0, 1) draws come from a CPU twin of its generator (same seed) and are
   copied to the device (``cpu_noise()`` below); minibatch order is drawn on the CPU anyway. Then
   only the arithmetic differs, and λ̂ must agree to float rounding (per chain, relative).
   The tolerance is max(1e-4, 10 × r), r being the measured float32 rounding of that case (the
   same chains in float64 on the CPU, same noise): float32's unit roundoff is 6e-8 and the
   localised Langevin dynamics contract perturbations rather than amplify them, so over a few
   hundred steps r is ~1e-6 and 1e-4 leaves a wide margin while still catching a wrong kernel,
   a wrong stream or a missed update (those move λ̂ by whole percent).
   Also, on the device with its own generator: a repeated run (bit-identical expected),
   sequential vs vectorised (same chains, so equal to rounding), and the native-noise λ̂ against
   the CPU's in units of their combined MCSE (statistical; listed, not counted in the exit status).
   With ``--device cpu`` the device *is* the CPU: sequential vs vectorised, a repeat
   (bit-identical) and the CPU-noise shim against the plain run (bit-identical) are checked.
2. ``dln`` — a 10M- and a 100M-parameter deep linear network (4 layers, rank-4 teacher,
   ``lambdahat.tasks.deep_linear_network`` for the teacher and ``lambdahat.truth`` for Aoyagi's
   exact λ), data generated on the device from a seeded generator: time, peak memory
   (``torch.cuda.max_memory_allocated``), λ̂ and its error against Aoyagi's λ, at four step sizes
   ε·nβ = 0.03-0.24 (λ̂ after a few hundred steps moves with ε; the error is reported, not
   judged). ``--quick``: 10k and 100k parameters.
3. ``workloads`` — workloads (b)-(d) of ``benchmarks/workloads.py`` on the device beside the bare
   PyTorch SGLD loop of ``benchmarks/run_one.py`` (ported to the device: its generators and
   index tensors are CPU-only), time per step and the ratio.
4. ``mixed_precision`` — a low-precision option of ``estimate_llc`` if it has one (looked up in
   its signature at run time), against float32 and the truth; "not available" otherwise.

Writes ``results.json`` and ``results.md`` under ``--out`` (default ``gpu_check_out/``). Exit
status: 0 when every counted check passed, 1 when a counted (same-seed) check failed, 2 when
none failed but a section raised an error.

Every ``estimate_llc`` call passes every sampling setting explicitly (the defaults are being
changed to adaptive ones); ``preconditioner="none"`` is added when the signature has it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import inspect
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run_one  # noqa: E402  (benchmarks/run_one.py: the lambdahat runner and the bare loop)
import workloads  # noqa: E402

import lambdahat  # noqa: E402
from lambdahat import losses, tasks, truth  # noqa: E402
from lambdahat.potential import default_nbeta  # noqa: E402

SAMPLERS = ["sgld", "rmsprop_sgld", "sghmc", "sgnht", "mala"]
CHAIN_MODES = ["sequential", "vectorized"]
BASE_TOLERANCE = 1e-4
STAT_Z = 6.0  # native-noise device vs CPU: |Δλ̂| / combined MCSE (listed, not counted)

# small model of the same-seed section: 8-12-10-6 deep linear network, rank 2, n = 1000
SMALL_WIDTHS, SMALL_RANK, SMALL_N = [8, 12, 10, 6], 2, 1000
SMALL_STEP = 1e-4  # ε·nβ = 0.0145 at nβ = n / log n = 144.8; rmsprop_sgld at ε/10 (its P ≈ 10).
# Measured float32 rounding of λ̂ (per chain, vs float64 with the same noise) at this step: 1e-7 to
# 7e-7 for every sampler. At 5e-4 SGNHT's grew to 8e-4 (its thermostat runs hot and amplifies
# perturbations), which would loosen its tolerance 80-fold, so the step stays small: this section
# checks arithmetic, not accuracy (the short chains do not reach the truth, 23.5).


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- helpers


def estimate_options() -> set[str]:
    """The keyword options estimate_llc accepts: its named parameters, plus the fields of
    ``lambdahat.settings.Settings`` when it takes ``**settings`` (the redesigned API)."""
    params = inspect.signature(lambdahat.estimate_llc).parameters
    names = {n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        try:
            import dataclasses

            from lambdahat.settings import Settings

            names |= {f.name for f in dataclasses.fields(Settings)}
        except (ImportError, TypeError):
            pass
    return names


def llc_kwargs(**settings: Any) -> dict[str, Any]:
    """Explicit settings for estimate_llc, plus preconditioner="none" where it exists."""
    required = ("step_size", "localization", "nbeta", "num_chains", "num_burnin_steps", "num_draws",
                "batch_size", "seed", "sampler", "chain_mode")
    missing = [k for k in required if k not in settings]
    if missing:
        raise ValueError(f"llc_kwargs: pass every setting explicitly, missing {missing}")
    kwargs = dict(settings, progress=False)
    if "preconditioner" in estimate_options() and "preconditioner" not in kwargs:
        kwargs["preconditioner"] = "none"
    return kwargs


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_diff(a: float, b: float) -> float:
    if a == b:
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return float("inf")
    return abs(a - b) / max(abs(b), 1e-12)


def max_rel(a, b) -> float:
    """Largest relative difference over paired per-chain values."""
    return max((rel_diff(float(x), float(y)) for x, y in zip(a, b, strict=True)), default=0.0)


def finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def summary(result) -> dict[str, Any]:
    return dict(
        llc_mean=finite(result.llc_mean),
        llc_mcse=finite(result.llc_mcse),
        llc_per_chain=[finite(v) for v in result.llc_per_chain],
        diverged={str(k): int(v) for k, v in result.diverged.items()},
        wall_time=finite(result.wall_time),
    )


def clone_to(model: torch.nn.Module, device, dtype=None) -> torch.nn.Module:
    import copy

    m = copy.deepcopy(model)
    return m.to(device=device, dtype=dtype) if dtype is not None else m.to(device)


@contextlib.contextmanager
def cpu_noise():
    """Within this block every sampler draws its N(0, 1) and U(0, 1) noise from a CPU twin of the
    generator it is given (a CPU generator is its own twin; a device generator's twin is a CPU
    generator seeded with its ``initial_seed()``), in float32, and copies it to the buffer's
    device and dtype. For a float32 CPU run this is exactly what the samplers do anyway (checked
    in the CPU path); on another device, or in float64, the chains then see the same noise as the
    float32 CPU run, so λ̂ differs only by the arithmetic.

    Patched: ``normal_`` and ``uniform`` of ``lambdahat.samplers._common`` wherever a lambdahat
    module imported them. ``calls`` counts the draws (a check that the shim was used at all)."""
    from lambdahat.samplers import _common

    orig_normal, orig_uniform = _common.normal_, _common.uniform
    twins: dict[int, tuple[torch.Generator, torch.Generator]] = {}
    calls = {"normal": 0, "uniform": 0}

    def twin(gen: torch.Generator) -> torch.Generator:
        if gen.device.type == "cpu":
            return gen
        key = id(gen)
        if key not in twins:  # keep gen alive in the value so its id is not reused
            twins[key] = (gen, torch.Generator().manual_seed(gen.initial_seed()))
        return twins[key][1]

    def normal_(buffer, generator):
        calls["normal"] += 1
        if isinstance(generator, torch.Generator):
            pairs = [(buffer, generator)]
        else:
            pairs = list(zip(buffer, generator, strict=True))
        for row, gen in pairs:
            draw = torch.empty(row.shape, dtype=torch.float32).normal_(generator=twin(gen))
            row.copy_(draw)
        return buffer

    def uniform(like, generator):
        calls["uniform"] += 1
        out = torch.empty_like(like)
        if isinstance(generator, torch.Generator) or out.dim() == 0:
            gen = generator if isinstance(generator, torch.Generator) else generator[0]
            return out.copy_(torch.empty(out.shape, dtype=torch.float32).uniform_(generator=twin(gen)))
        for row, gen in zip(out, generator, strict=True):
            row.copy_(torch.empty(row.shape, dtype=torch.float32).uniform_(generator=twin(gen)))
        return out

    patched = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "lambdahat" or name.startswith("lambdahat.")):
            continue
        for attr, orig, new in (("normal_", orig_normal, normal_), ("uniform", orig_uniform, uniform)):
            if getattr(module, attr, None) is orig:
                setattr(module, attr, new)
                patched.append((module, attr, orig))
    try:
        yield calls
    finally:
        for module, attr, orig in patched:
            setattr(module, attr, orig)


# ----------------------------------------------------------------------------- 1. same seed


def small_task():
    return tasks.deep_linear_network(SMALL_WIDTHS, SMALL_RANK, n=SMALL_N, noise=0.0, seed=0)


def small_settings(sampler: str, chain_mode: str, n: int) -> dict[str, Any]:
    return dict(
        step_size=SMALL_STEP / 10 if sampler == "rmsprop_sgld" else SMALL_STEP,
        localization=1.0,
        nbeta=default_nbeta(n),
        num_chains=4,
        num_burnin_steps=50,
        num_draws=150,
        batch_size=n if sampler == "mala" else 100,  # MALA is full-batch by definition
        seed=0,
        sampler=sampler,
        chain_mode=chain_mode,
    )


def _run_small(task, sampler, mode, device, dtype=None, shim=False):
    model = clone_to(task.model, device, dtype)
    x, y = (t.to(device=device, dtype=dtype) if dtype is not None else t.to(device) for t in task.data)
    settings = small_settings(sampler, mode, task.n)
    ctx = cpu_noise() if shim else contextlib.nullcontext({})
    with ctx as calls:
        result = lambdahat.estimate_llc(model, (x, y), task.loss_fn, **llc_kwargs(**settings))
    out = summary(result)
    if shim:
        out["noise_draws_through_shim"] = dict(calls)
    return out


def _check(checks: list, name: str, passed: bool, counted: bool = True, **numbers) -> dict:
    row = dict(name=name, passed=bool(passed), counted=counted, **numbers)
    checks.append(row)
    log(f"{'PASS' if passed else 'FAIL'}{'' if counted else ' (not counted)'} {name} "
        + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items()))
    return row


def section_same_seed(ctx) -> dict[str, Any]:
    device = ctx["device"]
    cpu = torch.device("cpu")
    task = small_task()
    checks: list[dict] = []
    cases: list[dict] = []
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32: the comparison is of float32 arithmetic
    try:
        _same_seed_cases(device, cpu, task, checks, cases, foreign=device.type != "cpu" or ctx.get("foreign", False))
    finally:
        torch.set_float32_matmul_precision(precision)
    counted = [c for c in checks if c["counted"]]
    return dict(
        model=f"deep linear network {'-'.join(map(str, SMALL_WIDTHS))}, rank {SMALL_RANK}, n = {SMALL_N}, noise-free",
        num_params=sum(p.numel() for p in task.model.parameters()),
        truth=float(task.truth),
        tolerance_rule=f"per-chain relative difference ≤ max({BASE_TOLERANCE:g}, 10 × float32 rounding), "
                       "the rounding measured as float32 vs float64 on the CPU with the same noise",
        max_rel_diff=max((c.get("max_rel_diff", 0.0) for c in counted), default=0.0),
        max_float32_rounding=max((c.get("float32_rounding", 0.0) for c in cases), default=0.0),
        matmul_precision="highest",
        cases=cases,
        checks=checks,
        passed=all(c["passed"] for c in counted),
    )


def _same_seed_cases(device, cpu, task, checks, cases, foreign: bool) -> None:
    """``foreign``: the device is not the CPU (the tests set it on a CPU, to run that branch)."""
    for sampler in SAMPLERS:
        for mode in CHAIN_MODES:
            label = f"{sampler}/{mode}"
            case: dict[str, Any] = dict(sampler=sampler, chain_mode=mode, settings=small_settings(sampler, mode, task.n))
            cases.append(case)
            try:
                ref = _run_small(task, sampler, mode, cpu)
                ref64 = _run_small(task, sampler, mode, cpu, dtype=torch.float64, shim=True)
                rounding = max_rel(ref["llc_per_chain"], ref64["llc_per_chain"])
                tol = max(BASE_TOLERANCE, 10 * rounding)
                case.update(cpu=ref, cpu_float64=ref64, float32_rounding=rounding, tolerance=tol,
                            truth=float(task.truth))
                if any(v is None for v in ref["llc_per_chain"]):
                    _check(checks, f"{label}: CPU reference finite", False, max_rel_diff=float("inf"))
                    continue
                if not foreign:
                    shimmed = _run_small(task, sampler, mode, cpu, shim=True)
                    d = max_rel(shimmed["llc_per_chain"], ref["llc_per_chain"])
                    case["cpu_noise_shim"] = shimmed
                    _check(checks, f"{label}: CPU-noise shim == plain CPU run (bit-identical)",
                           d == 0.0 and shimmed["noise_draws_through_shim"]["normal"] > 0, max_rel_diff=d)
                    repeat = _run_small(task, sampler, mode, cpu)
                    d = max_rel(repeat["llc_per_chain"], ref["llc_per_chain"])
                    case["repeat"] = repeat
                    _check(checks, f"{label}: repeat on cpu (bit-identical)", d == 0.0, max_rel_diff=d)
                else:
                    same = _run_small(task, sampler, mode, device, shim=True)
                    d = max_rel(same["llc_per_chain"], ref["llc_per_chain"])
                    case["device_cpu_noise"] = same
                    case["max_rel_diff_device_vs_cpu"] = d
                    _check(checks, f"{label}: {device.type} vs cpu, same seed and noise", d <= tol,
                           max_rel_diff=d, tolerance=tol)
                    native = _run_small(task, sampler, mode, device)
                    repeat = _run_small(task, sampler, mode, device)
                    case["device_native"], case["device_repeat"] = native, repeat
                    d = max_rel(repeat["llc_per_chain"], native["llc_per_chain"])
                    _check(checks, f"{label}: repeat on {device.type} (bit-identical expected)", d <= tol,
                           max_rel_diff=d, tolerance=tol, bit_identical=d == 0.0)
                    a, b = native["llc_mean"], ref["llc_mean"]
                    se = math.hypot(native["llc_mcse"] or 0.0, ref["llc_mcse"] or 0.0)
                    z = abs(a - b) / se if (a is not None and b is not None and se > 0) else float("inf")
                    _check(checks, f"{label}: {device.type} own noise vs cpu (statistical)", z <= STAT_Z,
                           counted=False, z=z, device_llc=a, cpu_llc=b)
            except Exception as err:  # one case failing must not lose the others
                case["error"] = f"{type(err).__name__}: {err}"
                case["traceback"] = traceback.format_exc()
                _check(checks, f"{label}: ran", False, error=case["error"])
        # sequential vs vectorised: the same chains (same generators), equal to rounding
        by_mode = {c["chain_mode"]: c for c in cases if c["sampler"] == sampler}
        key = "device_native" if foreign else "cpu"
        try:
            s, v = by_mode["sequential"][key], by_mode["vectorized"][key]
            tol = max(by_mode["sequential"]["tolerance"], by_mode["vectorized"]["tolerance"])
            d = max_rel(v["llc_per_chain"], s["llc_per_chain"])
            _check(checks, f"{sampler}: vectorized vs sequential on {device.type}", d <= tol,
                   max_rel_diff=d, tolerance=tol)
        except KeyError as err:
            _check(checks, f"{sampler}: vectorized vs sequential on {device.type}", False, error=f"missing {err}")


# ----------------------------------------------------------------------------- 2. big DLNs


def dln_sizes(quick: bool) -> list[dict[str, Any]]:
    """4-layer square DLNs (5 widths H), rank-4 teacher."""
    if quick:
        return [dict(label="10k", width=50, n=5000), dict(label="100k", width=158, n=5000)]
    return [dict(label="10M", width=1581, n=100_000), dict(label="100M", width=5000, n=100_000)]


def dln_step_sizes(width: int, nbeta: float) -> list[float]:
    """ε·nβ ∈ {0.03, 0.06, 0.12, 0.24}. Measured on the CPU with these settings (300 steps): H = 500,
    n = 10⁵ (1M weights): −77%, −42%, −4%, +45% against Aoyagi's λ and divergence at 0.49;
    H = 50, n = 5000: +1% at 0.12; H = 158, n = 5000: +20% at 0.06, divergence at 0.12 — on teachers
    drawn before ``tasks`` aligned the layers' subspaces; the aligned ones are stiffer, so the grid's
    upper end may diverge (every ε of the grid is reported with its own λ̂ or error)."""
    return [float(f"{c / nbeta:.3g}") for c in (0.03, 0.06, 0.12, 0.24)]


def section_dln(ctx) -> dict[str, Any]:
    device, quick = ctx["device"], ctx["quick"]
    rows = []
    for size in dln_sizes(quick):
        row: dict[str, Any] = dict(size)
        rows.append(row)
        try:
            width, n, rank = size["width"], size["n"], 4
            widths = [width] * 5
            lc = truth.deep_linear_network(widths, rank)
            row.update(widths=widths, rank=rank, truth=float(lc), truth_text=str(lc))
            t0 = time.perf_counter()
            teacher = tasks.deep_linear_network(widths, rank, n=1, noise=0.0, seed=0)  # weights only
            model = teacher.model.to(device)
            del teacher
            gen = torch.Generator(device=device).manual_seed(12345)
            x = torch.randn(n, widths[0], generator=gen, device=device)
            with torch.no_grad():
                y = torch.cat([model(chunk) for chunk in x.split(8192)])
            sync(device)
            num_params = sum(p.numel() for p in model.parameters())
            nbeta = default_nbeta(n)
            row.update(num_params=num_params, build_seconds=time.perf_counter() - t0, nbeta=nbeta,
                       param_bytes=num_params * 4, data_bytes=(x.numel() + y.numel()) * 4)
            runs = []
            row["runs"] = runs
            for eps in dln_step_sizes(width, nbeta):
                settings = dict(step_size=eps, localization=1.0, nbeta=nbeta, num_chains=1,
                                num_burnin_steps=100, num_draws=200, batch_size=500, seed=0,
                                sampler="sgld", chain_mode="sequential")
                run: dict[str, Any] = dict(settings=settings)
                runs.append(run)
                try:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                        base = torch.cuda.memory_allocated(device)
                    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                    sync(device)
                    t = time.perf_counter()
                    result = lambdahat.estimate_llc(model, (x, y), losses.gaussian_nll, **llc_kwargs(**settings))
                    sync(device)
                    run["seconds"] = time.perf_counter() - t
                    steps = settings["num_burnin_steps"] + settings["num_draws"]
                    run["ms_per_step"] = 1e3 * run["seconds"] / steps
                    if device.type == "cuda":
                        peak = torch.cuda.max_memory_allocated(device)
                        run.update(peak_memory_bytes=peak, peak_above_model_and_data_bytes=peak - base,
                                   peak_above_over_param_bytes=(peak - base) / (num_params * 4))
                    else:
                        run["peak_rss_mb_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                        run["peak_rss_growth_mb"] = run["peak_rss_mb_process"] - rss0
                    run.update(summary(result))
                    est = run["llc_mean"]
                    run["rel_error"] = (est - float(lc)) / float(lc) if est is not None else None
                    log(f"dln {size['label']} ε={eps:g}: λ̂={est} truth={float(lc):.6g} {run['seconds']:.1f}s")
                except Exception as err:
                    run["error"] = f"{type(err).__name__}: {err}"
                    run["traceback"] = traceback.format_exc()
                    log(f"dln {size['label']} ε={eps:g}: ERROR {run['error']}")
            del model, x, y
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {err}"
            row["traceback"] = traceback.format_exc()
            log(f"dln {size['label']}: ERROR {row['error']}")
    return dict(
        note="sgld, γ = 1, nβ = n / log n, 1 chain, 100 burn-in + 200 draws, batch 500, ε·nβ = 0.03-0.24; "
             "the error against Aoyagi's λ is reported, not judged (after a few hundred steps λ̂ still moves with ε)",
        sizes=rows,
        errors=[r["error"] for r in rows if "error" in r] + [u["error"] for r in rows for u in r.get("runs", []) if "error" in u],
    )


# ----------------------------------------------------------------------------- 3. workloads


def bare_sgld(w, model, x, y):
    """The bare PyTorch SGLD loop of ``run_one.run_bare``, which runs on the data's device."""
    return run_one.run_bare(w, model, x, y, {})


def _timed(go, device):
    sync(device)
    t = time.perf_counter()
    llc, _ = go()
    sync(device)
    return time.perf_counter() - t, llc


def _short(w, draws=5):
    return workloads.Workload(w.key, w.title, w.n, w.batch_size, w.num_chains, draws, w.step_size, w.localization)


def section_workloads(ctx) -> dict[str, Any]:
    device, quick = ctx["device"], ctx["quick"]
    out: dict[str, Any] = dict(rows=[])
    # the port is the same loop: on the CPU, its λ̂ equals run_one.run_bare's exactly
    for key in ["b", "c", "d"]:
        row: dict[str, Any] = dict(workload=key)
        out["rows"].append(row)
        try:
            w = workloads.WORKLOADS[key].scaled(quick)
            model, x, y = workloads.build(key)
            model, x, y = model.to(device), x.to(device), y.to(device)
            steps = w.num_chains * w.num_draws
            row.update(title=w.title, num_params=workloads.num_params(model), steps=steps,
                       settings=dict(step_size=w.step_size, localization=w.localization, nbeta=w.nbeta,
                                     num_chains=w.num_chains, num_draws=w.num_draws, num_burnin_steps=0,
                                     batch_size=w.batch_size, seed=0, sampler="sgld"))
            modes = ["sequential", "vectorized"] if w.num_chains > 1 else ["sequential"]
            tools = {"bare": lambda ww: bare_sgld(ww, model, x, y)}
            for mode in modes:
                options = {k: v for k, v in llc_kwargs(step_size=w.step_size, localization=w.localization,
                                                       nbeta=w.nbeta, num_chains=w.num_chains, num_burnin_steps=0,
                                                       num_draws=w.num_draws, batch_size=w.batch_size, seed=0,
                                                       sampler="sgld", chain_mode=mode).items()
                           if k not in ("step_size", "localization", "nbeta", "num_chains", "num_draws")}
                tools[f"lambdahat/{mode}"] = (lambda ww, o=options: run_one.run_lambdahat(ww, model, x, y, o))
            for name, make in tools.items():
                try:
                    _timed(make(_short(w)), device)  # warm-up (CUDA init, kernels)
                    seconds, llc = _timed(make(w), device)
                    row[name] = dict(seconds=seconds, ms_per_step=1e3 * seconds / steps, llc=llc)
                except Exception as err:
                    row[name] = dict(error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
            bare = row.get("bare", {}).get("seconds")
            for mode in modes:
                lam = row.get(f"lambdahat/{mode}", {}).get("seconds")
                if bare and lam:
                    row[f"ratio_{mode}_over_bare"] = lam / bare
            log(f"workload {key}: " + ", ".join(f"{k} {v['seconds']:.2f}s" for k, v in row.items()
                                                if isinstance(v, dict) and "seconds" in v))
            del model, x, y
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {err}"
            row["traceback"] = traceback.format_exc()
    out["errors"] = [r["error"] for r in out["rows"] if "error" in r] + [
        v["error"] for r in out["rows"] for v in r.values() if isinstance(v, dict) and "error" in v
    ]
    return out


# ----------------------------------------------------------------------------- 4. mixed precision

PRECISION_OPTIONS = ("autocast_dtype", "compute_dtype", "amp_dtype", "mixed_precision", "precision", "autocast", "dtype", "amp")


def section_mixed_precision(ctx) -> dict[str, Any]:
    device = ctx["device"]
    params = estimate_options()
    found = [name for name in PRECISION_OPTIONS if name in params]
    if not found:
        return dict(available=False, status="not available",
                    note=f"estimate_llc has none of the options {list(PRECISION_OPTIONS)} (its options: {sorted(params)})")
    option = found[0]
    task = tasks.deep_linear_network([8, 4, 6, 5], 1, n=2000, noise=0.0, seed=0)
    model = task.model.to(device)
    x, y = (t.to(device) for t in task.data)
    settings = dict(step_size=1e-5, localization=1.0, nbeta=default_nbeta(100_000), num_chains=4,
                    num_burnin_steps=500, num_draws=1500, batch_size=500, seed=0, sampler="sgld",
                    chain_mode="sequential")
    out: dict[str, Any] = dict(available=True, option=option, truth=float(task.truth), settings=settings)
    ref = lambdahat.estimate_llc(model, (x, y), task.loss_fn, **llc_kwargs(**settings))
    out["float32"] = summary(ref)
    last_err = None
    for value in (torch.bfloat16, "bfloat16", "bf16", True):
        try:
            low = lambdahat.estimate_llc(model, (x, y), task.loss_fn, **llc_kwargs(**settings), **{option: value})
        except (TypeError, ValueError) as err:
            last_err = err
            continue
        out["low_precision"] = dict(value=str(value), **summary(low))
        a, b = low.llc_mean, ref.llc_mean
        out["rel_diff_vs_float32"] = rel_diff(a, b)
        out["rel_error_vs_truth"] = {"float32": (b - float(task.truth)) / float(task.truth),
                                     "low_precision": (a - float(task.truth)) / float(task.truth)}
        se = math.hypot(low.llc_mcse, ref.llc_mcse)
        out["z_vs_float32"] = abs(a - b) / se if se > 0 else float("inf")
        out["within_5pct_or_3mcse_of_float32"] = bool(abs(a - b) <= max(0.05 * abs(b), 3 * se))
        return out
    out["error"] = f"option {option!r} accepted none of bfloat16 / 'bfloat16' / 'bf16' / True: {last_err}"
    return out


# ----------------------------------------------------------------------------- report

SECTIONS = {
    "same_seed": section_same_seed,
    "dln": section_dln,
    "workloads": section_workloads,
    "mixed_precision": section_mixed_precision,
}


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = dict(
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        lambdahat=getattr(lambdahat, "__version__", None),
        python=platform.python_version(),
        platform=platform.platform(),
        cpu_count=os.cpu_count(),
        threads=torch.get_num_threads(),
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        estimate_llc_signature=str(inspect.signature(lambdahat.estimate_llc)),
        estimate_llc_options=sorted(estimate_options()),
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}")
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True,
                                            text=True, timeout=10).stdout.strip() or None
    except Exception:
        info["git_commit"] = None
    return info


def _fmt(x, spec=".4g") -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def to_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# GPU check",
        "",
        f"`{res['command']}` — {res['date']}, {_fmt(res['total_wall_seconds'], '.1f')} s in all, "
        f"**{'PASS' if res['passed'] else 'FAIL'}** (exit status {res['exit_status']})",
        "",
        f"Device {m['device']} ({m['device_name']}), torch {m['torch']} (CUDA {m['cuda']}), "
        f"{m['cpu_count']} CPUs, {m['threads']} thread(s), TF32 matmul {m['tf32_matmul']}, commit {m.get('git_commit')}.",
        "",
    ]
    for name in SECTIONS:
        sec = res["sections"].get(name)
        if sec is None:
            continue
        lines.append(f"## {name}  ({_fmt(res['section_seconds'].get(name), '.1f')} s)")
        lines.append("")
        if "error" in sec and len(sec) <= 3:
            lines += [f"**ERROR**: `{sec['error']}`", "", "```", sec.get("traceback", "").strip(), "```", ""]
            continue
        if name == "same_seed":
            lines += [sec["model"] + f"; truth λ = {sec['truth']:.4g} (short chains at a small step: λ̂ is not meant "
                      f"to reach it; this section checks arithmetic). Tolerance: {sec['tolerance_rule']}.",
                      f"Largest counted relative difference {sec['max_rel_diff']:.3g}; largest float32 rounding "
                      f"{sec['max_float32_rounding']:.3g}.", "",
                      "| check | result | max rel. diff | tolerance | notes |", "|---|---|---|---|---|"]
            for c in sec["checks"]:
                notes = []
                if not c["counted"]:
                    notes.append(f"not counted; z = {_fmt(c.get('z'), '.2f')}, device {_fmt(c.get('device_llc'))}, cpu {_fmt(c.get('cpu_llc'))}")
                if "bit_identical" in c:
                    notes.append(f"bit-identical {c['bit_identical']}")
                if "error" in c:
                    notes.append(f"`{c['error']}`")
                lines.append(f"| {c['name']} | {'pass' if c['passed'] else '**FAIL**'} | {_fmt(c.get('max_rel_diff'), '.3g')} "
                             f"| {_fmt(c.get('tolerance'), '.3g')} | {'; '.join(notes)} |")
            lines += ["", "| sampler | mode | λ̂ cpu ± MCSE | float32 rounding |", "|---|---|---|---|"]
            for c in sec["cases"]:
                cpu = c.get("cpu", {})
                lines.append(f"| {c['sampler']} | {c['chain_mode']} | {_fmt(cpu.get('llc_mean'))} ± {_fmt(cpu.get('llc_mcse'), '.2g')} "
                             f"| {_fmt(c.get('float32_rounding'), '.2g')} |")
        elif name == "dln":
            lines += [sec["note"], "", "| size | params | n | ε | λ̂ | Aoyagi λ | rel. error | s | ms/step | peak mem (GiB; CPU: process RSS) | peak above model+data / param bytes | diverged |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in sec["sizes"]:
                if "error" in r:
                    lines.append(f"| {r['label']} | {_fmt(r.get('num_params'))} | {r['n']} | — | **ERROR** `{r['error']}` | | | | | | | |")
                for u in r.get("runs", []):
                    if "error" in u:
                        lines.append(f"| {r['label']} | {r.get('num_params')} | {r['n']} | {u['settings']['step_size']:g} | **ERROR** `{u['error']}` | | | | | | | |")
                        continue
                    peak = u.get("peak_memory_bytes")
                    if peak is None and u.get("peak_rss_mb_process") is not None:
                        peak = u["peak_rss_mb_process"] * 2**20  # CPU: the process's peak RSS
                    lines.append(
                        f"| {r['label']} | {r['num_params']:,} | {r['n']:,} | {u['settings']['step_size']:g} | {_fmt(u.get('llc_mean'))} "
                        f"| {r['truth']:.6g} | {_fmt(u.get('rel_error'), '+.1%')} | {u['seconds']:.2f} | {u['ms_per_step']:.2f} "
                        f"| {_fmt(peak / 2**30 if peak else None, '.2f')} | {_fmt(u.get('peak_above_over_param_bytes'), '.2f')} | {u.get('diverged') or '—'} |")
        elif name == "workloads":
            lines += ["Bare loop: `run_one.run_bare`, which runs on the data's device.", "",
                      "| workload | params | steps | bare ms/step | lambdahat sequential ms/step (ratio) | lambdahat vectorized ms/step (ratio) | λ̂ bare / lambdahat |",
                      "|---|---|---|---|---|---|---|"]
            for r in sec["rows"]:
                if "error" in r:
                    lines.append(f"| {r['workload']} | **ERROR** `{r['error']}` | | | | | |")
                    continue

                def cell(tool, ratio):
                    v = r.get(tool)
                    if v is None:
                        return "—"
                    if "error" in v:
                        return f"ERROR `{v['error']}`"
                    return f"{v['ms_per_step']:.3f}" + (f" ({r[ratio]:.2f}×)" if ratio in r else "")

                llcs = " / ".join(_fmt(r.get(t, {}).get("llc")) for t in ("bare", "lambdahat/sequential"))
                lines.append(f"| ({r['workload']}) {r['title']} | {r['num_params']:,} | {r['steps']} | {cell('bare', '')} "
                             f"| {cell('lambdahat/sequential', 'ratio_sequential_over_bare')} "
                             f"| {cell('lambdahat/vectorized', 'ratio_vectorized_over_bare')} | {llcs} |")
        elif name == "mixed_precision":
            if not sec.get("available"):
                lines.append(f"Not available: {sec.get('note')}.")
            elif "error" in sec:
                lines.append(f"Option `{sec['option']}`: **ERROR** `{sec['error']}`")
            else:
                lo, hi = sec["low_precision"], sec["float32"]
                lines.append(f"Option `{sec['option']}={lo['value']}`: λ̂ {lo['llc_mean']:.4g} ± {lo['llc_mcse']:.2g} vs float32 "
                             f"{hi['llc_mean']:.4g} ± {hi['llc_mcse']:.2g} (truth {sec['truth']:.4g}); relative difference "
                             f"{sec['rel_diff_vs_float32']:.3g}, z = {sec['z_vs_float32']:.2f}; within 5% or 3 MCSE: "
                             f"{sec['within_5pct_or_3mcse_of_float32']}.")
        lines.append("")
    if res["errors"]:
        lines += ["## Errors", ""] + [f"- {e}" for e in res["errors"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="10k/100k-parameter DLNs and a tenth of the workload draws")
    parser.add_argument("--out", default="gpu_check_out")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {list(SECTIONS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the CPU work (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.init()
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    names = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = dict(
        command="python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        date=dt.datetime.now().isoformat(timespec="seconds"),
        quick=args.quick,
        machine=machine_info(device),
        sections={},
        section_seconds={},
    )
    ctx = dict(device=device, quick=args.quick)
    for name in names:
        log(f"section {name} ...")
        t = time.perf_counter()
        try:
            res["sections"][name] = SECTIONS[name](ctx)
        except Exception as err:
            res["sections"][name] = dict(error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
            log(f"section {name}: ERROR {err}")
        res["section_seconds"][name] = time.perf_counter() - t
        res["total_wall_seconds"] = time.perf_counter() - start
        _write(res, out_dir, final=False)  # partial results survive a kill
    errors = []
    for name, sec in res["sections"].items():
        if "error" in sec and not isinstance(sec.get("error"), dict):
            errors.append(f"{name}: {sec['error']}")
        errors += [f"{name}: {e}" for e in sec.get("errors", [])]
    failed = [c["name"] for c in res["sections"].get("same_seed", {}).get("checks", []) if c["counted"] and not c["passed"]]
    if "same_seed" in names and "checks" not in res["sections"].get("same_seed", {}):
        failed.append("same_seed section did not run")
    res.update(errors=errors, failed_checks=failed, passed=not failed and not errors,
               exit_status=1 if failed else (2 if errors else 0),
               total_wall_seconds=time.perf_counter() - start)
    _write(res, out_dir, final=True)
    log(f"done in {res['total_wall_seconds']:.1f} s: {'PASS' if res['passed'] else 'FAIL'}; wrote {out_dir}/results.json, results.md")
    return res["exit_status"]


def _write(res: dict[str, Any], out_dir: Path, final: bool) -> None:
    res.setdefault("errors", [])
    res.setdefault("passed", False)
    res.setdefault("exit_status", None)
    (out_dir / "results.json").write_text(json.dumps(res, indent=1, default=str))
    try:
        (out_dir / "results.md").write_text(to_markdown(res))
    except Exception as err:  # the JSON is the record; a formatting bug must not lose it
        (out_dir / "results.md").write_text(f"# GPU check\n\nMarkdown report failed: {err}\n\n```\n{traceback.format_exc()}```\n")


if __name__ == "__main__":
    sys.exit(main())
