"""Benchmark lambdahat against devinterp 1.3.2, devinterp 2.0.1 and a bare-PyTorch SGLD loop.

    python benchmarks/compare_devinterp.py [--quick] [--workloads a,b,c,d] [--out docs/benchmarks.md]
                                           [--repeats N] [--tools lambdahat,bare,devinterp-1.3.2,devinterp-2.0.1]
                                           [--memory-workloads m,d] [--answer-workloads a,b]

In one run it

1. creates, if absent, one virtual environment per devinterp version under benchmarks/.venvs/
   (``python -m venv``; ``pip install torch==2.13.0`` first, then ``pip install devinterp==X``,
   then checks that torch was left at that version);
2. runs every (tool, workload) pair in its own subprocess (``benchmarks/run_one.py``; the
   devinterp ones with their environment's python), single-threaded
   (``torch.set_num_threads(1)``, OMP/MKL_NUM_THREADS=1), timing only the sampling call;
3. prints a markdown table (sampling wall time, steps/s, peak RSS, time ratios against lambdahat,
   the mean LLC each tool reports) with the machine, the date and the command, and writes it to
   ``--out``: between the markers ``<!-- results:start -->`` and ``<!-- results:end -->`` when the
   file has them (the rest of the file is kept), else as the whole file.

4. with ``--memory-workloads``, the peak resident memory each tool's sampling run adds, over the
   model's parameter bytes (``benchmarks/run_answer.py``: VmHWM reset right before the call, minus
   VmRSS then), on deep linear networks whose parameters dominate (``m``: 4.2M weights, or (d));
5. with ``--answer-workloads``, the time to an answer: each tool runs its chains at the same fixed
   ε, γ, nβ and batch size (ANSWER_SETTINGS, burn-in included) recording every draw's loss; the
   draws are read in blocks of ``--block`` per chain and the answer is the first block end where
   the MCSE of λ̂ (``lambdahat.diagnostics.llc_statistics`` on that tool's losses, the same for
   every tool) is at most ``--target-rel-mcse`` (5%) of λ̂. Reported: draws, seconds and gradient
   evaluations to that point (the run's measured time × the fraction of its steps needed: each
   step costs the same), ESS per gradient evaluation and per second.

``--workloads none`` skips the time-per-step table (1-3).

Every tool runs the same math (the update of Lau et al. 2023): w ← w − (ε/2)(nβ ∇L_B(w) + γ(w − w*)) + √ε ξ, the
same ε, γ, nβ = n / log n, batch size, chains and draws, no burn-in. With ``--repeats N`` each
pair runs N times (interleaved) and the fastest run is reported.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import workloads  # noqa: E402

DEVINTERP_VERSIONS = ("1.3.2", "2.0.1")
TORCH_SPEC = "torch==2.13.0"
START, END = "<!-- results:start -->", "<!-- results:end -->"


# ----------------------------------------------------------------------------- environments


def venv_python(venv_dir: Path, version: str) -> Path:
    return venv_dir / f"devinterp-{version}" / "bin" / "python"


def ensure_venv(venv_dir: Path, version: str, torch_spec: str, log) -> Path:
    """The python of a virtual environment with devinterp==version and torch_spec, made if absent."""
    env = venv_dir / f"devinterp-{version}"
    python = env / "bin" / "python"
    marker = env / ".benchmark-ready"
    if marker.exists() and python.exists():
        return python
    venv_dir.mkdir(parents=True, exist_ok=True)
    gitignore = venv_dir / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("*\n")
    log(f"creating {env} (devinterp=={version}, {torch_spec}) ...")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    # torch first, so that devinterp's `torch>=2.0.1` is already satisfied and pip pulls no other build
    subprocess.run(pip + [torch_spec], check=True)
    subprocess.run(pip + [f"devinterp=={version}"], check=True)
    wanted_torch = torch_spec.split("==", 1)[1] if "==" in torch_spec else None
    check = subprocess.run(
        [str(python), "-c", "import torch, importlib.metadata as m; print(torch.__version__, m.version('devinterp'))"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    if check[1] != version or (wanted_torch and not check[0].startswith(wanted_torch)):
        raise SystemExit(f"{env}: got torch {check[0]} and devinterp {check[1]}; expected {torch_spec}, devinterp {version}")
    marker.write_text(" ".join(check) + "\n")
    return python


# ----------------------------------------------------------------------------- lambdahat variants


def lambdahat_variants(env: dict | None = None) -> list[tuple[str, dict]]:
    """lambdahat as a user gets it by default, plus explicit sequential / vectorised runs when
    ``estimate_llc`` has an option for vectorised chains (looked up in its signature). With
    ``env``, asks a child process that imports lambdahat under that environment."""
    if env is not None:
        out = subprocess.run([sys.executable, __file__, "--list-lambdahat-variants"], env=env, cwd=str(ROOT),
                             capture_output=True, text=True, check=True).stdout
        return [tuple(v) for v in json.loads(out.strip().splitlines()[-1])]
    import lambdahat

    params = inspect.signature(lambdahat.estimate_llc).parameters
    doc = inspect.getdoc(lambdahat.estimate_llc) or ""
    variants: list[tuple[str, dict]] = [("lambdahat", {})]
    try:  # the settings live in lambdahat.settings.Settings since estimate_llc takes **settings
        from lambdahat.settings import CHAIN_MODES
    except ImportError:
        CHAIN_MODES = ()
    if "sequential" in CHAIN_MODES and "vectorized" in CHAIN_MODES:
        return variants + [("lambdahat (sequential)", {"chain_mode": "sequential"}),
                           ("lambdahat (vectorised)", {"chain_mode": "vectorized"})]
    for name, param in params.items():
        lname = name.lower()
        if lname in ("vectorize", "vectorized", "vectorised", "vmap", "vectorize_chains", "vectorized_chains"):
            variants += [("lambdahat (sequential)", {name: False}), ("lambdahat (vectorised)", {name: True})]
            break
        if "chain" in lname and ("mode" in lname or "strategy" in lname or "runner" in lname):
            text = str(param.annotation) + " " + doc
            values = set(re.findall(r"""["'`]([A-Za-z_]+)["'`]""", text))
            seq = next((v for v in sorted(values) if v.lower().startswith("seq")), None)
            vec = next((v for v in sorted(values) if re.match(r"(vec|vmap|batch)", v.lower())), None)
            if seq:
                variants.append(("lambdahat (sequential)", {name: seq}))
            if vec:
                variants.append(("lambdahat (vectorised)", {name: vec}))
            break
    return variants


# ----------------------------------------------------------------------------- running


def snapshot_source(rev: str, dest: Path) -> str:
    """Extract src/ of git revision ``rev`` into ``dest``; return its short hash."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    archive = subprocess.run(["git", "archive", commit, "src"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return commit


def child_env(extra_path: str | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false", HF_DATASETS_OFFLINE="1")
    if extra_path:
        env["PYTHONPATH"] = extra_path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_child(python: Path, tool: str, key: str, quick: bool, options: dict, logdir: Path, timeout: float,
              env: dict) -> dict:
    out = logdir / f"{tool.replace(' ', '_')}-{key}-{time.monotonic_ns()}.json"
    cmd = [str(python), str(HERE / "run_one.py"), tool, key, str(out)]
    if quick:
        cmd.append("--quick")
    for k, v in options.items():
        cmd += ["--option", f"{k}={v}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(ROOT))
    wall = time.perf_counter() - start
    (logdir / (out.stem + ".log")).write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {"tool": tool, "workload": key, "error": f"exit {proc.returncode}: {tail}", "process_wall": wall}
    record = json.loads(out.read_text())
    record["process_wall"] = wall
    return record


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", "src"):
        commit += " + uncommitted changes under src/"
    return dict(cpu=cpu, cores=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                platform=platform.platform(), commit=commit)


# ----------------------------------------------------------------------------- memory and time to an answer

#: the fixed sampler settings of the time-to-an-answer runs: the workload's γ, nβ = n / log n and
#: batch size, this ε (larger than the time-per-step table's, which does not reach stationarity in
#: a few thousand steps on (b)-(d)), this burn-in, at most max_draws draws per chain
ANSWER_SETTINGS = {
    "a": dict(step_size=1e-3, burnin=200, max_draws=1500),
    "b": dict(step_size=1e-4, burnin=200, max_draws=1500),
    "c": dict(step_size=1e-5, burnin=200, max_draws=1500),
    "d": dict(step_size=1e-5, burnin=200, max_draws=1000),
}


def run_answer_child(python: Path, tool: str, key: str, args: list[str], options: dict, logdir: Path,
                     timeout: float, env: dict) -> dict:
    """benchmarks/run_answer.py in a fresh process: its JSON record (losses included)."""
    out = logdir / f"answer-{tool.replace(' ', '_')}-{key}-{time.monotonic_ns()}.json"
    cmd = [str(python), str(HERE / "run_answer.py"), tool, key, str(out), *args]
    for k, v in options.items():
        cmd += ["--option", f"{k}={v}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"tool": tool, "workload": key, "error": f"timed out after {timeout:.0f} s"}
    (logdir / (out.stem + ".log")).write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {"tool": tool, "workload": key, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(out.read_text())


def answer_scan(record: dict, target: float, block: int, min_draws: int) -> dict:
    """Time to a λ̂ with MCSE ≤ target·λ̂: the draws read in blocks of ``block`` per chain, stopping
    at the first block end (≥ min_draws) that meets it. Seconds and gradient evaluations to that
    point are the run's own × (burn-in + draws needed) / (burn-in + draws run)."""
    import numpy as np

    from lambdahat.diagnostics import llc_statistics

    losses = np.asarray(record["losses"], dtype=float)
    init, nbeta, burnin = record["init_loss"], record["nbeta"], record["num_burnin_steps"]
    chains, total = losses.shape
    full = llc_statistics(losses, init, nbeta)
    found = None
    for d in range(block, total + 1, block):
        if d < min_draws:
            continue
        st = llc_statistics(losses[:, :d], init, nbeta)
        if math.isfinite(st["llc_mcse"]) and st["llc_mean"] != 0 and st["llc_mcse"] <= target * abs(st["llc_mean"]):
            found = (d, st)
            break
    grads_full = record["gradient_evaluations"]
    out = dict(chains=chains, draws_run=total, llc_full=full["llc_mean"], mcse_full=full["llc_mcse"],
               ess_full=full["ess"], ess_per_grad_full=full["ess"] / grads_full,
               ess_per_second_full=full["ess"] / record["seconds"], seconds_full=record["seconds"])
    if found is None:
        out.update(reached=False)
        return out
    d, st = found
    fraction = (burnin + d) / (burnin + total)
    seconds, grads = record["seconds"] * fraction, grads_full * fraction
    out.update(reached=True, draws=d, seconds=seconds, gradient_evaluations=grads, llc=st["llc_mean"],
               mcse=st["llc_mcse"], ess=st["ess"], ess_per_grad=st["ess"] / grads, ess_per_second=st["ess"] / seconds)
    return out


def memory_report(mem: dict[str, dict[str, dict]], tools: list[str]) -> list[str]:
    rows = ["| workload | tool | chains | chain mode | parameters (MB) | peak added by sampling (MB) | "
            "÷ parameter bytes (median) | ÷ parameter bytes per chain | all ratios |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for key, per_tool in mem.items():
        for tool in tools:
            r = per_tool.get(tool)
            if r is None:
                continue
            if "error" in r:
                rows.append(f"| {key} | {tool} | | | | failed: {r['error'].splitlines()[-1][:80]} | | | |")
                continue
            ratios = sorted(r.get("all_ratios") or [r["peak_added_over_param_bytes"]])
            mid = len(ratios) // 2
            ratio = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
            rows.append(f"| ({key}) {r['title']} | {tool} | {r['num_chains']} | {r.get('chain_mode') or '—'} | "
                        f"{r['param_bytes'] / 2**20:.1f} | {ratio * r['param_bytes'] / 2**20:.1f} | {ratio:.2f} | "
                        f"{ratio / r['num_chains']:.2f} | " + ", ".join(f"{x:.2f}" for x in ratios) + " |")
    return rows


def answer_report(ans: dict[str, dict[str, dict]], tools: list[str], target: float, block: int) -> list[str]:
    rows = ["| workload | tool | ε | chains | draws to the answer (per chain) | λ̂ ± MCSE at the answer | "
            "seconds to the answer | gradient evaluations | ESS | ESS / gradient evaluation | ESS / s | "
            "× lambdahat seconds | full run: draws, λ̂ ± MCSE, ESS / gradient evaluation, ESS / s | all seconds (full runs) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for key, per_tool in ans.items():
        ref = per_tool.get("lambdahat", {}).get("scan", {})
        for tool in tools:
            r = per_tool.get(tool)
            if r is None:
                continue
            if "error" in r:
                rows.append(f"| {key} | {tool} | | | failed: {r['error'].splitlines()[-1][:80]} | | | | | | | | |")
                continue
            a = r["scan"]
            times = ", ".join(f"{t:.2f}" for t in r.get("all_seconds", [r["seconds"]]))
            full = (f"{a['draws_run']}, {a['llc_full']:.4g} ± {a['mcse_full']:.2g}, {a['ess_per_grad_full']:.3g}, "
                    f"{a['ess_per_second_full']:.3g}")
            if not a["reached"]:
                rows.append(f"| ({key}) | {tool} | {r['step_size']:g} | {a['chains']} | not within {a['draws_run']} "
                            f"| | | | | | | | {full} | {times} |")
                continue
            vs = f"{a['seconds'] / ref['seconds']:.2f}" if ref.get("reached") else "—"
            rows.append(f"| ({key}) | {tool} | {r['step_size']:g} | {a['chains']} | {a['draws']} | "
                        f"{a['llc']:.4g} ± {a['mcse']:.2g} | {a['seconds']:.3g} | {a['gradient_evaluations']:,.0f} | "
                        f"{a['ess']:.0f} | {a['ess_per_grad']:.3g} | {a['ess_per_second']:.3g} | {vs} | {full} | {times} |")
    return rows


# ----------------------------------------------------------------------------- report


def fmt(value: float, digits: int = 3) -> str:
    if value is None or value != value:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def targets(results: dict[str, dict[str, dict]], ref: str) -> list[str]:
    """Issue 4's targets, read off this run (lambdahat = the default call)."""
    lines = ["(lambdahat = the default call; times are the fastest of the repeats)"]

    def t(key, tool):
        r = results.get(key, {}).get(tool)
        return r["seconds"] if r and "seconds" in r else None

    def cpu(key, tool):
        r = results.get(key, {}).get(tool)
        return r.get("min_cpu_seconds") if r else None

    def paired(key, tool):
        """Median over rounds of (tool's time / lambdahat's time) in the same round."""
        a = results.get(key, {}).get(tool, {}).get("all_seconds", [])
        b = results.get(key, {}).get(ref, {}).get("all_seconds", [])
        ratios = sorted(x / y for x, y in zip(a, b))
        if len(ratios) < 2:
            return ""
        mid = len(ratios) // 2
        med = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
        return f"; median of the {len(ratios)} same-round ratios {med:.2f}"

    def check(text, ok):
        lines.append(f"- {'met' if ok else 'MISSED'}: {text}")

    for key in results:
        lh = t(key, ref)
        if lh is None:
            continue
        d1, d2, bare = t(key, "devinterp-1.3.2"), t(key, "devinterp-2.0.1"), t(key, "bare")
        if key == "a" and d1:
            check(f"(a) ≥ 20× faster than devinterp 1.3.2: {d1 / lh:.1f}×", d1 / lh >= 20)
        if key == "b":
            if d1:
                check(f"(b) ≥ 4× faster than devinterp 1.3.2: {d1 / lh:.1f}×", d1 / lh >= 4)
            if bare:
                c = f"; CPU time bare/lambdahat {cpu(key, 'bare') / cpu(key, ref):.2f}" if cpu(key, ref) else ""
                check(f"(b) faster than the bare sequential loop: lambdahat {lh:.3g} s vs bare {bare:.3g} s "
                      f"(bare/lambdahat {bare / lh:.2f}{paired(key, 'bare')}{c})", lh < bare)
        if key in ("c", "d"):
            if bare:
                c = f"; CPU time lambdahat/bare {cpu(key, ref) / cpu(key, 'bare'):.2f}" if cpu(key, ref) else ""
                rounds = paired(key, "bare")
                if rounds:  # report lambdahat/bare, the inverse of bare/lambdahat
                    vals = results[key]["bare"]["all_seconds"], results[key][ref]["all_seconds"]
                    ratios = sorted(y / x for x, y in zip(*vals))
                    mid = len(ratios) // 2
                    med = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
                    rounds = f"; median of the {len(ratios)} same-round ratios {med:.2f}"
                check(f"({key}) within 10% of the bare loop: lambdahat/bare = {lh / bare:.2f}{rounds}{c}",
                      lh <= 1.10 * bare)
            for name, d in (("1.3.2", d1), ("2.0.1", d2)):
                if d:
                    check(f"({key}) faster than devinterp {name}: {d / lh:.2f}×", lh < d)
    return lines


def report(results: dict[str, dict[str, dict]], tools: list[str], info: dict, command: str, quick: bool,
           repeats: int, devinterp_repeats: int, total_wall: float, loads: tuple, started: str, devinterp_info: dict) -> str:
    ref = "lambdahat"
    rows = [
        "| workload | tool | sampling wall time (s) | steps/s | × lambdahat wall | CPU time (s) | × lambdahat CPU | peak RSS (MB) | Δ RSS in sampling (MB) | Δ RSS ÷ parameter bytes | mean LLC | all wall times (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, per_tool in results.items():
        w = workloads.WORKLOADS[key].scaled(quick)
        lh = per_tool.get(ref, {}).get("seconds")
        lh_cpu = per_tool.get(ref, {}).get("min_cpu_seconds")
        for tool in tools:
            r = per_tool.get(tool)
            if r is None:
                continue
            label = f"({key}) {w.num_chains}×{w.num_draws}"
            if "error" in r:
                rows.append(f"| {label} | {tool} | failed | | | | | | | | {r['error'].splitlines()[-1][:80]} | |")
                continue
            ratio = f"{r['seconds'] / lh:.2f}" if lh else "—"
            note = ""
            if r.get("diverged"):
                note = f" (diverged: {r['diverged']})"
            cpu = r.get("min_cpu_seconds")
            cpu_ratio = f"{cpu / lh_cpu:.2f}" if cpu and lh_cpu else "—"
            added = (r["peak_rss_mb"] - r["rss_before_mb"]) * 2**20
            param_bytes = 4 * r.get("num_params", 0)  # float32 workloads
            rows.append(
                f"| {label} | {tool} | {r['seconds']:.3f} | {fmt(r['steps'] / r['seconds'])} | {ratio} | "
                f"{fmt(cpu, 4)} | {cpu_ratio} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['rss_before_mb']:.1f} | "
                f"{fmt(added / param_bytes) if param_bytes else '—'} | {fmt(r['llc_mean'], 4)}{note} | "
                + ", ".join(f"{t:.2f}" for t in r.get("all_seconds", [r["seconds"]])) + " |"
            )
    wl = []
    for key in results:
        w = workloads.WORKLOADS[key].scaled(quick)
        wl.append(f"- ({key}) {w.title}: n = {w.n:,}, batch {min(w.batch_size, w.n)}, {w.num_chains} chain(s) × "
                  f"{w.num_draws} draws, ε = {w.step_size:g}, γ = {w.localization:g}, nβ = n / log n = {w.nbeta:.1f}, "
                  f"no burn-in")
    lines = [
        f"Command: `{command}`",
        "",
        f"Date: {started} (UTC). Machine: {info['cpu']}, {info['cores']} cores (every process single-threaded), "
        f"torch {info['torch']}, Python {info['python']}; lambdahat at commit {info['commit']}"
        + "".join(f"; devinterp {v} (torch {t})" for v, t in devinterp_info.items())
        + f". Load average at start {loads[0][0]:.2f}, at end {loads[1][0]:.2f}. "
        f"Total wall time of the run: {total_wall:.0f} s"
        + (f"; each lambdahat and bare pair run {repeats}×, each devinterp pair {devinterp_repeats}× "
           "(interleaved), the fastest reported, all times in the last column" if max(repeats, devinterp_repeats) > 1 else "")
        + ("; **--quick (a tenth of the draws)**" if quick else "")
        + ".",
        "",
        *wl,
        "",
        *rows,
        "",
        "Sampling time: the one call that estimates the LLC (for lambdahat `estimate_llc`, for devinterp 1.3.2 "
        "`estimate_learning_coeff_with_summary`, for devinterp 2.0.1 `llc`, for the bare loop the loop plus one "
        "full-data L_n(w*)); imports, model and data construction are not timed. steps/s = chains × draws / time. "
        "× lambdahat: this row's time over lambdahat's (above 1 = slower than lambdahat). CPU time: the "
        "sampling call's process CPU time (user + system, all threads; less disturbed than wall time by other "
        "load on the machine), the lowest over the repeats. Peak RSS: ru_maxrss "
        "of the whole benchmark process (interpreter, torch, the tool's imports, data); Δ RSS: how much the sampling "
        "call raised that peak (a lower bound when building the model and data peaked higher); Δ RSS ÷ parameter "
        "bytes: that over the model's float32 parameter bytes (meaningful only where the parameters dominate: "
        "(d); see the memory table for a precise measurement).",
        "",
        "Targets of issue 4 in this run:",
        "",
        *targets(results, ref),
    ]
    return "\n".join(lines) + "\n"


def write_out(path: Path, body: str) -> None:
    block = f"{START}\n{body}{END}\n"
    if path.exists():
        text = path.read_text()
        if START in text and END in text:
            head, rest = text.split(START, 1)
            tail = rest.split(END, 1)[1]
            path.write_text(head + block + "\n" + tail.lstrip("\n"))
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Benchmarks\n\n" + block)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--list-lambdahat-variants"]:  # internal: asked by lambdahat_variants(env)
        print(json.dumps(lambdahat_variants()))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the draws, for a smoke run")
    parser.add_argument("--workloads", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    parser.add_argument("--tools", default=None,
                        help="comma-separated subset of lambdahat,bare,devinterp-1.3.2,devinterp-2.0.1 (default: all)")
    parser.add_argument("--out", default=None, help="markdown file to write the results into")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each lambdahat and bare-loop pair, interleaved; the fastest is reported")
    parser.add_argument("--devinterp-repeats", type=int, default=1,
                        help="runs of each devinterp pair (devinterp 1.3.2 on (a) takes minutes)")
    parser.add_argument("--lambdahat-src", default="worktree",
                        help="'worktree' (the installed/editable lambdahat) or a git revision such as HEAD, "
                             "whose src/ is extracted and put first on PYTHONPATH, so that the run measures "
                             "exactly that commit")
    parser.add_argument("--venv-dir", default=str(HERE / ".venvs"))
    parser.add_argument("--torch-spec", default=TORCH_SPEC, help="pip requirement for torch in the devinterp venvs")
    parser.add_argument("--json", default=None, help="also write every measurement as JSON here")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed for one subprocess")
    parser.add_argument("--memory-workloads", default="",
                        help="comma-separated subset of m (a 4.2M-weight DLN), a,b,c,d: peak memory added by sampling "
                             "÷ parameter bytes, per tool (default: none)")
    parser.add_argument("--memory-chains", type=int, default=4, help="chains in the memory runs")
    parser.add_argument("--memory-draws", type=int, default=20, help="draws per chain in the memory runs")
    parser.add_argument("--answer-workloads", default="",
                        help="comma-separated subset of a,b,c,d: time to a λ̂ with --target-rel-mcse (default: none)")
    parser.add_argument("--target-rel-mcse", type=float, default=0.05, help="the answer: MCSE ≤ this × λ̂")
    parser.add_argument("--block", type=int, default=100, help="draws per chain between MCSE checks")
    parser.add_argument("--max-draws", type=int, default=None, help="override ANSWER_SETTINGS' max_draws")
    args = parser.parse_args(argv)

    command = "python benchmarks/compare_devinterp.py" + "".join(" " + shlex.quote(a) for a in argv)
    keys = [k.strip() for k in args.workloads.split(",") if k.strip() and k.strip() != "none"]
    for k in keys:
        if k not in workloads.WORKLOADS:
            parser.error(f"unknown workload {k!r}; choose from {','.join(workloads.WORKLOADS)}")
    import run_answer

    mem_keys = [k.strip() for k in args.memory_workloads.split(",") if k.strip()]
    for k in mem_keys:
        if k not in workloads.WORKLOADS and k not in run_answer.MEMORY_WORKLOADS:
            parser.error(f"unknown memory workload {k!r}; choose from {','.join([*run_answer.MEMORY_WORKLOADS, *workloads.WORKLOADS])}")
    ans_keys = [k.strip() for k in args.answer_workloads.split(",") if k.strip()]
    for k in ans_keys:
        if k not in ANSWER_SETTINGS:
            parser.error(f"unknown answer workload {k!r}; choose from {','.join(ANSWER_SETTINGS)}")
    wanted = None if args.tools is None else {t.strip() for t in args.tools.split(",")}

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    info = machine_info()

    with tempfile.TemporaryDirectory(prefix="lambdahat-bench-") as tmp:
        logdir = Path(tmp)
        plain_env = child_env()
        lh_env = plain_env
        if args.lambdahat_src != "worktree":
            snap = logdir / "lambdahat-src"
            snap.mkdir()
            info["commit"] = snapshot_source(args.lambdahat_src, snap) + " (src/ extracted from git)"
            lh_env = child_env(str(snap / "src"))

        # (label, python, options, env, repeats)
        runs: list[tuple[str, Path, dict, dict, int]] = []
        for label, options in lambdahat_variants(lh_env):
            if wanted is None or "lambdahat" in wanted or label in wanted:
                runs.append((label, Path(sys.executable), options, lh_env, args.repeats))
        if wanted is None or "bare" in wanted:
            runs.append(("bare", Path(sys.executable), {}, plain_env, args.repeats))
        devinterp_info = {}
        for version in DEVINTERP_VERSIONS:
            tool = f"devinterp-{version}"
            if wanted is None or tool in wanted:
                python = ensure_venv(Path(args.venv_dir), version, args.torch_spec, log)
                ready = Path(args.venv_dir) / f"devinterp-{version}" / ".benchmark-ready"
                devinterp_info[version] = ready.read_text().split()[0]
                runs.append((tool, python, {}, plain_env, args.devinterp_repeats))
        tools = [r[0] for r in runs]

        results: dict[str, dict[str, dict]] = {k: {} for k in keys}
        rounds = max(r[4] for r in runs) if keys else 0
        for rep in range(rounds):
            for key in keys:
                w = workloads.WORKLOADS[key].scaled(args.quick)
                for tool, python, options, env, repeats in runs:
                    if rep >= repeats or ("vectorised" in tool and w.num_chains == 1):
                        continue
                    # every lambdahat variant is run_one.py's "lambdahat" with options
                    child_tool = "lambdahat" if tool.startswith("lambdahat") else tool
                    r = run_child(python, child_tool, key, args.quick, options, logdir, args.timeout, env)
                    r["tool"] = tool
                    if "error" in r:
                        log(f"[{rep + 1}/{repeats}] ({key}) {tool}: FAILED {r['error']}")
                    else:
                        log(f"[{rep + 1}/{repeats}] ({key}) {tool}: {r['seconds']:.3f} s, "
                            f"LLC {r['llc_mean']:.4g}, peak RSS {r['peak_rss_mb']:.0f} MB")
                    r.setdefault("all_seconds", [])
                    best = results[key].get(tool)
                    times = (best or {}).get("all_seconds", []) + ([r["seconds"]] if "seconds" in r else [])
                    if best is None or ("error" in best and "error" not in r) or (
                        "error" not in r and "error" not in best and r["seconds"] < best["seconds"]
                    ):
                        results[key][tool] = r
                    results[key][tool]["all_seconds"] = times
                    cpus = [c for c in ((best or {}).get("min_cpu_seconds"), r.get("cpu_seconds")) if c is not None]
                    if cpus:
                        results[key][tool]["min_cpu_seconds"] = min(cpus)
        # peak memory: one run per (tool, workload), each in a fresh process
        memory: dict[str, dict[str, dict]] = {k: {} for k in mem_keys}
        for rep, key in [(rep, key) for rep in range(max(1, args.repeats)) for key in mem_keys]:
            for tool, python, options, env, repeats in runs:
                child_tool = "lambdahat" if tool.startswith("lambdahat") else tool
                if child_tool not in run_answer.RUNNERS or rep >= max(1, repeats):
                    continue
                r = run_answer_child(python, child_tool, key, ["--draws", str(args.memory_draws), "--chains",
                                                               str(args.memory_chains)], options, logdir,
                                     args.timeout, env)
                r.pop("losses", None)
                r["tool"] = tool
                prev = memory[key].get(tool)
                ratios = (prev or {}).get("all_ratios", []) + ([r["peak_added_over_param_bytes"]] if "error" not in r else [])
                if prev is None or "error" in prev:
                    memory[key][tool] = r
                memory[key][tool]["all_ratios"] = ratios
                log(f"memory ({key}) {tool}: " + (f"FAILED {r['error']}" if "error" in r else
                    f"{r['peak_added_bytes'] / 2**20:.1f} MB added = {r['peak_added_over_param_bytes']:.2f} × "
                    f"parameter bytes ({r['num_chains']} chains, {r.get('chain_mode')})"))

        # time to an answer: the same fixed settings for every tool, rounds interleaved
        answers: dict[str, dict[str, dict]] = {k: {} for k in ans_keys}
        for rep in range(max((r[4] for r in runs), default=0) if ans_keys else 0):
            for key in ans_keys:
                cfg = ANSWER_SETTINGS[key]
                draws = args.max_draws or cfg["max_draws"]
                if args.quick:
                    draws = max(args.block, draws // 10)
                child_args = ["--draws", str(draws), "--burnin", str(cfg["burnin"]), "--step-size", str(cfg["step_size"])]
                for tool, python, options, env, repeats in runs:
                    child_tool = "lambdahat" if tool.startswith("lambdahat") else tool
                    if rep >= repeats or child_tool not in run_answer.RUNNERS or (
                            "vectorised" in tool and workloads.WORKLOADS[key].num_chains == 1):
                        continue
                    r = run_answer_child(python, child_tool, key, child_args, options, logdir, args.timeout, env)
                    r["tool"] = tool
                    best = answers[key].get(tool)
                    if "error" in r:
                        log(f"answer [{rep + 1}/{repeats}] ({key}) {tool}: FAILED {r['error']}")
                        answers[key].setdefault(tool, r)
                        continue
                    times = (best or {}).get("all_seconds", []) + [r["seconds"]]
                    if best is None or "error" in best or r["seconds"] < best["seconds"]:
                        r["scan"] = answer_scan(r, args.target_rel_mcse, args.block, 2 * args.block)
                        r.pop("losses", None)
                        answers[key][tool] = best = r
                    best["all_seconds"] = times
                    a = best["scan"]
                    log(f"answer [{rep + 1}/{repeats}] ({key}) {tool}: full run {r['seconds']:.2f} s; " + (
                        f"answer at {a['draws']} draws, {a['seconds']:.2f} s, λ̂ {a['llc']:.4g} ± {a['mcse']:.2g}"
                        if a["reached"] else f"no answer within {a['draws_run']} draws"))
    total = time.perf_counter() - t0
    body = report(results, tools, info, command, args.quick, args.repeats, args.devinterp_repeats, total,
                  (load_start, os.getloadavg()), started, devinterp_info) if keys else (
        f"Command: `{command}`\n\nDate: {started} (UTC). Machine: {info['cpu']}, {info['cores']} cores (every "
        f"process single-threaded), torch {info['torch']}, Python {info['python']}; lambdahat at commit "
        f"{info['commit']}" + "".join(f"; devinterp {v} (torch {t})" for v, t in devinterp_info.items())
        + f". Load average at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}. Total wall time "
        f"{total:.0f} s.\n")
    if mem_keys:
        body += "\n".join([
            "", f"Peak memory added by sampling ({args.memory_chains} chains × {args.memory_draws} draws, a fresh "
            "process per run: VmHWM, reset right before the sampling call, minus VmRSS then (after gc and "
            "malloc_trim); the model, its data and the imports are already resident; the median over the "
            "repeats, all listed):", "",
            *memory_report(memory, tools), ""])
    if ans_keys:
        settings = "; ".join(f"({k}) ε = {ANSWER_SETTINGS[k]['step_size']:g}, burn-in {ANSWER_SETTINGS[k]['burnin']}, "
                             f"at most {args.max_draws or ANSWER_SETTINGS[k]['max_draws']} draws per chain"
                             for k in ans_keys)
        body += "\n".join([
            "", f"Time to an answer: λ̂ with MCSE ≤ {args.target_rel_mcse:.0%} of λ̂, MCSE by "
            "lambdahat.diagnostics.llc_statistics on each tool's own per-draw losses, checked every "
            f"{args.block} draws per chain (from {2 * args.block}); every tool at the same γ, nβ = n / log n, batch "
            f"size and {settings}. Seconds and gradient evaluations to the answer: the full run's × (burn-in + "
            "draws needed) / (burn-in + draws run), the fastest full run of the repeats; ESS / s and ESS / "
            "gradient evaluation at the answer, and over the whole run (steadier: the stopping block is "
            "itself a noisy statistic, so draws to the answer differ between tools by chance at the "
            "block size):", "",
            *answer_report(answers, tools, args.target_rel_mcse, args.block), ""])
    print(body)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(info=info, command=command, results=results, memory=memory,
                                                   answers=answers), indent=1))
    if args.out:
        write_out(Path(args.out), body)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
