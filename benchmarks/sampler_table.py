"""Every sampler × the known-answer suite, at one fixed setting per sampler and one budget.

    python benchmarks/sampler_table.py [--quick] [--out docs/samplers.md]

Two stages, both printed and both written to ``--out``:

1. **Step-size sweep, on one task only** (the 4-3-8 r=0 deep linear network) and by a rule that
   never looks at the truth, as a user would calibrate:
   - SGLD and RMSProp-SGLD: the largest ε on the grid whose mean MALA acceptance of the
     sampler's own proposals (``trace["mala_accept"]``) is ≥ 0.9 (Lau et al. 2023).
   - MALA: the largest ε on the grid with acceptance ≥ 0.6 (the 0.6–0.9 band).
   - SGHMC: the largest ε whose mean kinetic temperature ‖v‖²/(dη) is within 5% of the value
     its discretisation has for exact gradients, 2/(2 − α) (1.053 at friction α = 0.1); a larger
     step or minibatch noise heats it.
   - SGNHT: SGHMC's ε (same integrator; its thermostat pins the temperature to 1, so the
     temperature says nothing about its step).
   Acceptance and temperature are post-burn-in means.
   Options stay at their defaults (RMSProp α = 0.99, eps = 0.1; SGHMC friction 0.1; SGNHT
   diffusion 0.01).
2. **The table**: each sampler at its chosen ε on every task, with the same number of chains and
   steps (so the same number of gradient evaluations; MALA's are full-batch, the others'
   minibatch), reporting λ̂ ± MCSE, the target, the relative error, ESS per gradient evaluation,
   the mean MALA acceptance where the sampler reports one, and wall time.

Common setting: nβ = 10⁵ / log 10⁵ ≈ 8686 (the library default n / log n at the paper's DLN n = 10⁵)
and γ = 1 (the paper's) on every task, except the quasi-homogeneous potential, which has γ = 0
(there E[nβ K] = Σ 1/p exactly, a product of Gamma integrals). The regression tasks use n = 2,000 noise-free
teacher samples: L_n is then an exact quadratic form in the network's map, whose learning
coefficient does not depend on n, so n only sets the cost of MALA's full-batch step; the
minibatch samplers use batches of 500.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import lambdahat as lh
from lambdahat import tasks, truth

NBETA = 1e5 / math.log(1e5)
GAMMA = 1.0
N = 2000
BATCH = 500
SAMPLERS = ["sgld", "rmsprop_sgld", "sghmc", "sgnht", "mala"]
GRID = [1.25e-6, 2.5e-6, 5e-6, 1e-5, 2e-5, 4e-5, 8e-5]
SWEEP_TASK = ((8, 4, 6, 5), 1)


@dataclass
class Case:
    name: str
    build: Callable[[], tasks.Task]
    target: Callable[[tasks.Task], float]
    compared_with: str
    localization: float = GAMMA
    exact: bool = False  # the target is the exact finite-nβ value (a perfect sampler's answer)


def _teacher(widths, rank):
    """The DLN task of every table here: layers drawn with independent subspaces (``aligned=False``),
    the teachers docs/samplers.md was measured on, before the tasks aligned them."""
    return tasks.deep_linear_network(widths, rank, n=N, seed=1, aligned=False)


def _dln(widths, rank):
    def build():
        return _teacher(widths, rank)

    return Case(f"DLN {'-'.join(map(str, widths))} r={rank}", build, lambda t: float(t.truth.value), "λ (Aoyagi)")


def _rrr(m, h, n_out, rank):
    def build():
        return tasks.reduced_rank_regression(m, h, n_out, rank, n=N, seed=1)

    return Case(f"RRR {m}-{h}-{n_out} r={rank}", build, lambda t: float(t.truth.value), "λ (Aoyagi & Watanabe)")


QH_COPIES, QH_POWERS, QH_COEFFS = 500, [4, 2], [1.0, 0.05]


def _quasi_homogeneous():
    # coefficients chosen so both coordinates have a similar stiffness at this nβ (E[nβK] does
    # not depend on them): curvature ≈ 870 for the p = 2 one, ≈ 560 at a typical p = 4 point
    return Case(
        f"quasi-homogeneous {QH_POWERS} ×{QH_COPIES}, γ=0",
        lambda: tasks.quasi_homogeneous(QH_POWERS, QH_COEFFS, copies=QH_COPIES),
        lambda t: float(t.truth.value),
        "exact E[nβK]",
        localization=0.0,
        exact=True,
    )


NC_COPIES = 1000


def _normal_crossing():
    """K = ½ w1² w2⁴ exactly (noise-free targets y = 0, inputs scaled to mean x² = 1), as in
    tests/test_known_answers.py, against the quadrature value at this nβ and γ."""

    def build():
        task = tasks.normal_crossing((1, 2), point=(0.0, 0.0), n=64, copies=NC_COPIES, seed=0)
        x = task.data[0]
        x = x / x.pow(2).mean(dim=0).sqrt()
        task.data = (x, torch.zeros_like(x))
        return task

    def target(task):
        per_copy = truth.tempered_expectation_2d(lambda w1, w2: 0.5 * w1**2 * w2**4, NBETA, GAMMA, num_points=1601)
        return NC_COPIES * per_copy

    return Case(f"normal crossing w1·w2² ×{NC_COPIES}", build, target, "quadrature (finite nβ)", exact=True)


SUITE = [
    _quasi_homogeneous(),
    _normal_crossing(),
    _rrr(3, 3, 3, 1),
    _dln((3, 2, 4), 1),
    _dln((4, 3, 8), 0),
    _dln((8, 4, 6, 5), 1),
    _dln((30, 20, 10), 1),
]


def run(task, sampler, step, *, localization, chains, steps, batch=BATCH, seed=0, nbeta=NBETA):
    config = lh.SamplerConfig(sampler)
    kwargs = dict(batch_size=None if config.full_batch else min(batch, task.n))
    start = time.perf_counter()
    result = lh.estimate_llc(
        task.model,
        task.data,
        task.loss_fn,
        step_size=step,
        localization=localization,
        nbeta=nbeta,
        num_chains=chains,
        num_draws=steps // 2,
        num_burnin_steps=steps - steps // 2,
        sampler=config,
        seed=seed,
        progress=False,
        **kwargs,
    )
    wall = time.perf_counter() - start
    arrays = result.trace.arrays
    burn = steps - steps // 2
    accept = float(np.nanmean(arrays["mala_accept"][:, burn:])) if "mala_accept" in arrays else float("nan")
    temperature = float(np.mean(arrays["temperature"][:, burn:])) if "temperature" in arrays else float("nan")
    return dict(
        estimate=result.llc_mean,
        mcse=result.llc_mcse,
        ess_per_eval=result.ess / (chains * steps),
        accept=accept,
        temperature=temperature,
        wall=wall,
        diverged=len(result.diverged),
        between_se=result.llc_std / math.sqrt(chains),
    )


def sweep(chains, steps, log):
    widths, rank = SWEEP_TASK
    task = _teacher(widths, rank)
    rows, chosen = [], {}
    for sampler in ["sgld", "rmsprop_sgld", "sghmc", "mala"]:
        for step in GRID:
            r = run(task, sampler, step, localization=GAMMA, chains=chains, steps=steps)
            rows.append((sampler, step, r))
            log(
                f"sweep {sampler:13s} ε={step:.0e}: λ̂={r['estimate']:9.3f} ± {r['mcse']:.3f}  "
                f"accept={r['accept']:.3f}  T={r['temperature']:.3f}  diverged={r['diverged']}  {r['wall']:.1f}s"
            )
        ok = [s for name, s, r in rows if name == sampler and r["diverged"] == 0 and _passes_rule(sampler, r)]
        chosen[sampler] = max(ok) if ok else min(GRID)
    chosen["sgnht"] = chosen["sghmc"]
    return rows, chosen


def _passes_rule(sampler, r):
    if sampler in ("sgld", "rmsprop_sgld"):
        return r["accept"] >= 0.9
    if sampler == "mala":
        return r["accept"] >= 0.6
    if sampler == "sghmc":
        friction = lh.SamplerConfig("sghmc").options["friction"]
        return abs(r["temperature"] / (2 / (2 - friction)) - 1) <= 0.05
    raise ValueError(sampler)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short chains (a smoke run, not for conclusions)")
    parser.add_argument("--out", default=None, help="write the Markdown report here (e.g. docs/samplers.md)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    parser.add_argument(
        "--mlp-only",
        action="store_true",
        help="only the ReLU teacher–student section, at the step sizes of the recorded run (RECORDED_CHOICE)",
    )
    parser.add_argument(
        "--default-check",
        action="store_true",
        help="only compare SGLD at ε = 1e-4 (the library default) and 2e-5 with exact MALA at the default γ = 100",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.default_check:
        return default_check()
    chains, steps = (2, 2000) if args.quick else (3, 4000)
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.mlp_only:
        mlp_report = mlp_section(RECORDED_CHOICE, chains, steps, log)
        print(mlp_report)
        if args.out:
            _splice(Path(args.out), mlp_report, MLP_BEGIN, MLP_END)
        return None
    sweep_chains, sweep_steps = (2, 600) if args.quick else (2, 3000)
    samplers = args.samplers.split(",")
    begin = time.perf_counter()

    sweep_rows, chosen = sweep(sweep_chains, sweep_steps, log)
    log("chosen step sizes: " + ", ".join(f"{k} {v:.2g}" for k, v in chosen.items()))

    table = []
    for case in SUITE:
        task = case.build()
        target = case.target(task)
        for sampler in samplers:
            r = run(case.build(), sampler, chosen[sampler], localization=case.localization, chains=chains, steps=steps)
            r.update(case=case.name, sampler=sampler, step=chosen[sampler], target=target, compared_with=case.compared_with, exact=case.exact)
            table.append(r)
            log(
                f"{case.name:34s} {sampler:13s} λ̂={r['estimate']:9.3f} ± {r['mcse']:.3f} vs {target:.3f} "
                f"({(r['estimate'] - target) / target:+.1%})  ESS/eval={r['ess_per_eval']:.4f}  "
                f"accept={r['accept']:.3f}  diverged={r['diverged']}  {r['wall']:.1f}s"
            )
    total = time.perf_counter() - begin
    report = render(sweep_rows, chosen, table, chains, steps, sweep_chains, sweep_steps, total, args)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(sweep=sweep_rows, chosen=chosen, table=table, total=total), indent=1))
    print(report)
    if args.out:
        _splice(Path(args.out), report)
    if set(samplers) == set(SAMPLERS):
        mlp_report = mlp_section(chosen, chains, steps, log)
        print(mlp_report)
        if args.out:
            _splice(Path(args.out), mlp_report, MLP_BEGIN, MLP_END)


def default_check():
    """SGLD at the library's default step (1e-4) and at 2e-5 against exact MALA, at the default
    localisation γ = 100 and nβ = 8686, on the two deeper/wider DLNs (docs/samplers.md)."""
    print("| task | MALA (exact) | SGLD ε = 1e-4 (acceptance) | SGLD ε = 2e-5 (acceptance) |")
    print("|---|---|---|---|")
    for widths, rank in [((30, 20, 10), 1), ((8, 4, 6, 5), 1)]:
        out = {}
        for sampler, step in [("mala", 2e-5), ("sgld", 1e-4), ("sgld", 2e-5)]:
            task = _teacher(widths, rank)
            out[sampler, step] = run(task, sampler, step, localization=100.0, chains=3, steps=4000)
        ref = out["mala", 2e-5]
        cells = [f"{ref['estimate']:.4g} ± {ref['mcse']:.2g} ({ref['accept']:.2f})"]
        for step in (1e-4, 2e-5):
            r = out["sgld", step]
            cells.append(
                f"{r['estimate']:.4g} ± {r['mcse']:.2g}, {(r['estimate'] - ref['estimate']) / ref['estimate']:+.0%} ({r['accept']:.2f})"
            )
        print(f"| DLN {'-'.join(map(str, widths))} r={rank} | " + " | ".join(cells) + " |", flush=True)


BEGIN, END = "<!-- sampler_table: begin -->", "<!-- sampler_table: end -->"
MLP_BEGIN, MLP_END = "<!-- sampler_table_mlp: begin -->", "<!-- sampler_table_mlp: end -->"


def _splice(path: Path, report: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the generated block of ``path`` (between the markers), or append it."""
    block = f"{begin}\n{report}\n{end}"
    text = path.read_text() if path.exists() else ""
    if begin in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        path.write_text(head + block + tail)
    else:
        path.write_text(text + ("\n" if text else "") + block + "\n")


# ---------------------------------------------------------------- ReLU teacher–student: MALA as the reference

# The step sizes the sweep chose in the run recorded in docs/samplers.md (used by --mlp-only).
RECORDED_CHOICE = {"sgld": 2e-5, "rmsprop_sgld": 2.5e-6, "sghmc": 2e-5, "sgnht": 2e-5, "mala": 4e-5}
MLP_N, MLP_GAMMA = 5000, 100.0


def mlp_section(chosen, chains, steps, log):
    """Every sampler on the ReLU teacher–student MLP at nβ = n / log n and γ = 100 (the library's
    defaults), each at its table ε rescaled to keep ε·nβ fixed (the stiff curvatures scale with
    nβ), the same chains × steps; the target is exact MALA's estimate."""
    nbeta = MLP_N / math.log(MLP_N)
    scale = NBETA / nbeta
    rows = {}
    for sampler in SAMPLERS:
        step = chosen[sampler] * scale
        r = run(tasks.relu_teacher_student(n=MLP_N), sampler, step, localization=MLP_GAMMA, chains=chains, steps=steps, nbeta=nbeta)
        r["step"] = step
        rows[sampler] = r
        log(f"relu mlp {sampler:13s} ε={step:.2g} λ̂={r['estimate']:.3f} ± {r['mcse']:.3f} (between-chain SE {r['between_se']:.3f}) accept={r['accept']:.3f} {r['wall']:.1f}s")
    ref = rows["mala"]
    lines = [
        f"**ReLU teacher–student** (4-16-1, d = 97, n = {MLP_N}, σ = 1, w* = the teacher; nβ = n / log n = {nbeta:.0f}, "
        f"γ = {MLP_GAMMA:g}, minibatch {BATCH}, {chains} chains × {steps} steps): each sampler at its table ε × {scale:.1f} "
        "(the same ε·nβ); no exact value exists, so exact MALA is the reference. SE = the larger of the MCSE and the "
        "between-chain standard error (the MCSE of minibatch runs can be too small, see above).",
        "",
        "| sampler | ε | λ̂ ± SE | vs MALA | within 4 combined SE | ESS / grad eval | MALA acceptance | diverged | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref_se = ref["mcse"]  # llc_mcse is never below the between-chain standard error
    for sampler, r in rows.items():
        se = r["mcse"]
        if r is ref:
            vs, within = "—", "—"
        else:
            diff = r["estimate"] - ref["estimate"]
            vs = f"{diff / ref['estimate']:+.1%}" if math.isfinite(diff) else "—"
            within = "yes" if math.isfinite(diff) and abs(diff) <= 4 * math.hypot(se, ref_se) else "no"
        lines.append(
            f"| {sampler} | {r['step']:.2g} | {r['estimate']:.4g} ± {se:.2g} | {vs} | {within} | {r['ess_per_eval']:.4f} "
            f"| {_fmt(r['accept'], '.3f')} | {r['diverged']} | {r['wall']:.1f} |"
        )
    return "\n".join(lines)


def _fmt_rel(r):
    return f"{(r['estimate'] - r['target']) / r['target']:+.1%}" if math.isfinite(r["estimate"]) else "—"


def render(sweep_rows, chosen, table, chains, steps, sweep_chains, sweep_steps, total, args):
    cmd = "python benchmarks/sampler_table.py" + (" --quick" if args.quick else "") + (f" --out {args.out}" if args.out else "")
    machine = f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, 1 thread, Python {platform.python_version()}"
    lines = [
        f"Command: `{cmd}` — {machine}; total wall time {total / 60:.1f} min "
        "(the machine's 2 cores were shared with other processes, so wall times are indicative only).",
        "",
        f"Setting: nβ = {NBETA:.0f}, γ = {GAMMA:g} (γ = 0 on the quasi-homogeneous row), n = {N} noise-free "
        f"teacher samples for the regression tasks, minibatch {BATCH} (MALA: full batch), "
        f"{chains} chains × {steps} steps ({steps - steps // 2} burn-in) for every run: "
        f"{chains * steps} gradient evaluations each.",
        "",
        f"**Step-size sweep** on DLN {'-'.join(map(str, SWEEP_TASK[0]))} r={SWEEP_TASK[1]} only "
        f"({sweep_chains} chains × {sweep_steps} steps), chosen by the truth-free rules in the script's docstring:",
        "",
        "| sampler | ε | λ̂ ± MCSE | MALA acceptance | kinetic temperature | diverged chains |",
        "|---|---|---|---|---|---|",
    ]
    for sampler, step, r in sweep_rows:
        mark = " **←**" if chosen.get(sampler) == step else ""
        lines.append(
            f"| {sampler} | {step:.2g}{mark} | {r['estimate']:.3g} ± {r['mcse']:.2g} | {_fmt(r['accept'], '.3f')} "
            f"| {_fmt(r['temperature'], '.3f')} | {r['diverged']} |"
        )
    lines += [
        "",
        "Chosen: " + ", ".join(f"{k} ε = {v:.2g}" for k, v in chosen.items()) + " (SGNHT takes SGHMC's).",
        "",
        "**The table** (relative error = (λ̂ − target)/target; ESS per gradient evaluation = effective sample size / (chains × steps)):",
        "",
        "| task | compared with | target | sampler | ε | λ̂ ± MCSE | rel. error | within 4 MCSE | vs MALA | ESS / grad eval | MALA acceptance | diverged | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    mala = {r["case"]: r for r in table if r["sampler"] == "mala"}
    for r in table:
        if not r["exact"]:
            within = "(λ: n/a)"
        else:
            within = "yes" if math.isfinite(r["estimate"]) and abs(r["estimate"] - r["target"]) <= 4 * r["mcse"] else "no"
        ref = mala.get(r["case"])
        vs_mala = (
            f"{(r['estimate'] - ref['estimate']) / ref['estimate']:+.1%}"
            if ref is not None and r is not ref and math.isfinite(r["estimate"]) and math.isfinite(ref["estimate"])
            else "—"
        )
        lines.append(
            f"| {r['case']} | {r['compared_with']} | {r['target']:.4g} | {r['sampler']} | {r['step']:.2g} "
            f"| {r['estimate']:.4g} ± {r['mcse']:.2g} | {_fmt_rel(r)} | {within} | {vs_mala} "
            f"| {r['ess_per_eval']:.4f} | {_fmt(r['accept'], '.3f')} | {r['diverged']} | {r['wall']:.1f} |"
        )
    lines += ["", "Summary per sampler (over the rows above):", "", "| sampler | ε | median abs. rel. error | max abs. rel. error | rows within 10% of target | median ESS / grad eval | total wall (s) |", "|---|---|---|---|---|---|---|"]
    for sampler in dict.fromkeys(r["sampler"] for r in table):
        rows = [r for r in table if r["sampler"] == sampler]
        rel = np.array([abs(r["estimate"] - r["target"]) / r["target"] for r in rows])
        rel = np.where(np.isfinite(rel), rel, np.inf)
        lines.append(
            f"| {sampler} | {rows[0]['step']:.2g} | {np.median(rel):.1%} | {np.max(rel):.1%} | {int((rel <= 0.10).sum())}/{len(rows)} "
            f"| {np.median([r['ess_per_eval'] for r in rows]):.4f} | {sum(r['wall'] for r in rows):.0f} |"
        )
    return "\n".join(lines)


def _fmt(x, spec):
    return format(x, spec) if math.isfinite(x) else "—"


if __name__ == "__main__":
    sys.exit(main())
