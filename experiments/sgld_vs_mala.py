"""Minibatch SGLD against exact full-batch MALA on a ReLU teacher–student MLP, n = 100 … 100,000.

Claim (Lau, Furman, Wang, Murfet, Wei, arXiv 2308.12108, the MALA comparison): on a
small ReLU MLP, SGLD and Metropolis-adjusted Langevin (MALA, exact: Roberts & Tweedie 1996) give
the same λ̂ within noise from n = 100 to 100,000 (10-20-20-10 MLP, e.g. n = 1e5: 355.8 vs 349.1),
SGLD at 7–33× less time.

Protocol: ``lambdahat.tasks.relu_teacher_student`` (4-16-1, d = 97) at its teacher w*, with
noise-free targets, for each n; both samplers through ``lh.estimate_llc`` at the same nβ = n / log n
and γ. Each sampler's ε comes from its own acceptance rule on short pilot chains, never from the
other's λ̂: MALA's is the largest ε·nβ on a grid whose pilot acceptance is ≥ 0.7 (the library's
"aim for 0.6–0.9"); SGLD's is the largest whose recorded MALA acceptance of its own minibatch steps
(``trace["mala_accept"]``) is ≥ 0.95 (the health check's "≳ 0.95 is a safe target"). SGLD also runs
at 2ε, which measures its own first-order step-size bias, b̂ = λ̂(2ε) − λ̂(ε) (the bias of an
Euler-discretised Langevin chain is O(ε); Richardson: λ̂(0) ≈ 2 λ̂(ε) − λ̂(2ε)). Both samplers run
the same Langevin time ε × steps, long enough for the directions held only by γ (relaxation time
2/γ) to settle.

**The step-size rules are this experiment's own, kept on purpose.** The library's adaptive
warm-up (``lambdahat.adapt``, ``step_size="auto"``) chooses ε by the same statistic, the MALA
acceptance of the sampler's steps, but aims it at ``health.acceptance_target(λ̂)`` (0.9 at the
time of writing; since 2026-12-02 it depends on λ̂) for SGLD and ``MALA_ACCEPTANCE`` (0.6) for MALA, adapts during
burn-in rather than on pilots, and measures SGLD's bias by halving ε rather than doubling it.
The committed table (docs/results/sgld_vs_mala.md, n up to 10⁵) is the result of this protocol:
SGLD's gap to MALA, its b̂ = λ̂(2ε) − λ̂(ε) and the Richardson values are properties of the ε the
0.95 rule picked, so swapping in the library's rule would change what those numbers mean (a
different ε, a larger bias) rather than tidy the code. nβ is the library's default
(:func:`lambdahat.potential.default_nbeta`, n / log n).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import lambdahat as lh
from lambdahat.potential import default_nbeta
from lambdahat.tasks import Task, relu_teacher_student

from ._common import markdown_table, parse

NAME = "sgld_vs_mala"
TITLE = "SGLD against exact MALA on a ReLU MLP"
GAMMA = 100.0  # γ: the library's default localisation; see why in the section text
TAU = 2.0 / GAMMA  # Langevin-time relaxation of a direction held only by γ: w ← w(1 − εγ/2) per step
MAX_BATCH = 500
ACCEPTANCE_EVERY = 50  # the library default: one extra forward/backward on the batch every 50 steps
#: ε·nβ grids, largest first: each rule takes the largest that meets its acceptance target.
MALA_GRID = (1.0, 1 / 2**0.5, 1 / 2, 1 / 2**1.5, 1 / 4, 1 / 8, 1 / 16)
SGLD_GRID = (1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64)
MALA_TARGET = 0.7  # pilot acceptance floor: inside 0.6–0.9 with room for the pilot's optimism
SGLD_TARGET = 0.95
SIGMAS = 3.0  # agreement: |Δλ̂| ≤ 3 combined MCSE (+ the measured O(ε) allowance)


@dataclass(frozen=True)
class Size:
    """How far to go in n and how long to sample (Langevin times are in units of ε × steps)."""

    ns: tuple[int, ...]
    num_chains: int
    burnin_time: float
    draws_time: float
    min_burnin: int
    min_draws: int
    pilot_chains: int
    pilot_burnin: int
    pilot_draws: int


FULL = Size(
    ns=(100, 1000, 10_000, 100_000), num_chains=4, burnin_time=2 * TAU, draws_time=8 * TAU,
    min_burnin=500, min_draws=1500, pilot_chains=2, pilot_burnin=150, pilot_draws=150,
)
QUICK = Size(
    ns=(100, 1000), num_chains=4, burnin_time=2 * TAU, draws_time=4 * TAU,
    min_burnin=400, min_draws=1000, pilot_chains=2, pilot_burnin=150, pilot_draws=150,
)


def make_task(n: int) -> Task:
    """The 4-16-1 ReLU teacher at every n (its weights are drawn before the data, so the same w*).

    Noise-free targets: with unit noise the per-sample loss has variance ½ at w*, and λ̂ read from
    minibatch losses carries a floor of nβ·sd/√(m · draws) ≈ 275/√draws at n = 10⁵ (measured:
    ±4.5 on λ̂ ≈ 10 from 4 × 1000 draws); without noise the loss is 0 at w* and its batch noise
    scales with λ̂ itself. The paper's deep-linear experiments also used noise-free teachers.
    """
    return relu_teacher_student(n=n, d_in=4, hidden=16, noise=0.0, seed=0)


def batch_size(n: int) -> int:
    """SGLD's minibatch: 500, or n/4 below n = 2000, so that SGLD is stochastic at every n."""
    return min(MAX_BATCH, n // 4)


def steps(eps: float, langevin_time: float, minimum: int) -> int:
    """Steps for a Langevin time T = ε × steps, at least ``minimum``."""
    return max(minimum, math.ceil(langevin_time / eps))


def _estimate(task: Task, sampler: str, eps: float, chains: int, burnin: int, draws: int, seed: int,
              acceptance_every: int = ACCEPTANCE_EVERY) -> lh.LLCResult:
    """λ̂ = nβ (E[L_n] − L_n(w*)) at nβ = n / log n, γ = GAMMA (Lau et al.), by one sampler."""
    if sampler == "sgld":
        config, batch = lh.SamplerConfig("sgld", acceptance_every=acceptance_every), batch_size(task.n)
    else:
        config, batch = lh.SamplerConfig("mala"), None
    return lh.estimate_llc(
        task.model, task.data, task.loss_fn, sampler=config, step_size=eps, localization=GAMMA, nbeta=None,
        num_chains=chains, num_burnin_steps=burnin, num_draws=draws, batch_size=batch, seed=seed,
        progress=False,
    )


def acceptance(result: lh.LLCResult) -> float:
    """Mean post-burn-in MALA acceptance (MALA: of its proposals; SGLD: of its own minibatch steps)."""
    values = result.trace.draws("mala_accept")
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def choose_step(task: Task, sampler: str, size: Size) -> tuple[float, list[dict[str, float]]]:
    """The sampler's ε by its own acceptance rule on pilot chains (never by λ̂).

    Walk down the ε·nβ grid and take the first (largest) ε whose pilot acceptance reaches the
    sampler's target; SGLD's pilot records its acceptance every 5 steps to have enough values.
    """
    nbeta = default_nbeta(task.n)
    grid, target = (MALA_GRID, MALA_TARGET) if sampler == "mala" else (SGLD_GRID, SGLD_TARGET)
    tried = []
    for c in grid:
        eps = c / nbeta
        pilot = _estimate(task, sampler, eps, size.pilot_chains, size.pilot_burnin, size.pilot_draws, seed=100,
                          acceptance_every=5)
        rate = acceptance(pilot)
        tried.append(dict(eps_nbeta=c, step_size=eps, acceptance=rate))
        if rate >= target:
            return eps, tried
    return grid[-1] / nbeta, tried


def _failed(result: lh.LLCResult, sampler: str) -> list[str]:
    # mala_accept's [0.8, 0.995] band is about SGLD's discretisation bias; MALA has none (only mixing)
    return [c.name for c in result.checks if not c.ok and not (sampler == "mala" and c.name == "mala_accept")]


def _run(task: Task, sampler: str, eps: float, size: Size) -> dict[str, Any]:
    """One production run at ε, with its numbers, cost (per-example gradients) and verdicts."""
    burnin = steps(eps, size.burnin_time, size.min_burnin)
    draws = steps(eps, size.draws_time, size.min_draws)
    result = _estimate(task, sampler, eps, size.num_chains, burnin, draws, seed=0)
    per_step = task.n if sampler == "mala" else batch_size(task.n) * (1 + 1 / ACCEPTANCE_EVERY)
    return dict(
        llc=result.llc_mean, mcse=result.llc_mcse, per_chain=[float(v) for v in result.llc_per_chain],
        step_size=eps, burnin=burnin, draws=draws, acceptance=acceptance(result), ess=result.ess,
        wall=result.wall_time, grads=size.num_chains * (burnin + draws) * per_step, failed=_failed(result, sampler),
    )


def compare(n: int, size: Size) -> dict[str, Any]:
    """Both samplers at one n: chosen ε, λ̂ ± MCSE, wall time, gradients, and the agreement tests.

    Δ = λ̂_SGLD(ε) − λ̂_MALA in units of σ = √(MCSE_S² + MCSE_M²). SGLD's O(ε) bias is measured from
    its own step doubling, b̂ = λ̂(2ε) − λ̂(ε); the Richardson value λ̂_R = 2 λ̂(ε) − λ̂(2ε) removes
    it to first order, with MCSE √(4 MCSE_ε² + MCSE_2ε²).
    """
    task = make_task(n)
    d = task.info["num_params"]
    eps_m, pilots_m = choose_step(task, "mala", size)
    eps_s, pilots_s = choose_step(task, "sgld", size)
    mala = _run(task, "mala", eps_m, size)
    sgld = _run(task, "sgld", eps_s, size)
    sgld2 = _run(task, "sgld", 2 * eps_s, size)
    sigma = math.hypot(sgld["mcse"], mala["mcse"])
    diff = sgld["llc"] - mala["llc"]
    bias = sgld2["llc"] - sgld["llc"]
    rich = 2 * sgld["llc"] - sgld2["llc"]
    rich_mcse = math.hypot(2 * sgld["mcse"], sgld2["mcse"])
    rich_sigma = math.hypot(rich_mcse, mala["mcse"])
    return dict(
        n=n, d=d, nbeta=default_nbeta(n), gamma=GAMMA, batch=batch_size(n),
        mala=mala, sgld=sgld, sgld_2eps=sgld2, pilots_mala=pilots_m, pilots_sgld=pilots_s,
        diff=diff, sigma=sigma, z=diff / sigma, bias_2eps=bias,
        agree=abs(diff) <= SIGMAS * sigma,
        agree_with_allowance=abs(diff) <= SIGMAS * sigma + abs(bias),
        richardson=rich, richardson_mcse=rich_mcse, richardson_z=(rich - mala["llc"]) / rich_sigma,
        agree_richardson=abs(rich - mala["llc"]) <= SIGMAS * rich_sigma,
        sane=all(0 < r["llc"] < d / 2 for r in (mala, sgld)),
        time_ratio=mala["wall"] / sgld["wall"], grad_ratio=mala["grads"] / sgld["grads"],
        time_per_ess_ratio=(mala["wall"] / mala["ess"]) / (sgld["wall"] / sgld["ess"]),
    )


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One Markdown row per n."""
    out = []
    for r in rows:
        m, s = r["mala"], r["sgld"]
        out.append(dict(
            n=f"{r['n']:,}", nbeta=r["nbeta"],
            mala_eps=f"{m['step_size']:.2g} ({m['step_size'] * r['nbeta']:.2g})",
            mala=f"{m['llc']:.3g} ± {m['mcse']:.2g}", mala_acc=f"{m['acceptance']:.2f}",
            sgld_eps=f"{s['step_size']:.2g} ({s['step_size'] * r['nbeta']:.2g})",
            sgld=f"{s['llc']:.3g} ± {s['mcse']:.2g}", sgld_acc=f"{s['acceptance']:.3f}",
            z=f"{r['z']:+.1f}", bias=f"{r['bias_2eps']:+.2g}",
            rich=f"{r['richardson']:.3g} ± {r['richardson_mcse']:.2g} ({r['richardson_z']:+.1f})",
            agree=("yes" if r["agree"] else "no") + " / " + ("yes" if r["agree_with_allowance"] else "no")
            + " / " + ("yes" if r["agree_richardson"] else "no"),
            wall=f"{m['wall']:.0f} / {s['wall']:.0f}", ratio=f"{r['time_ratio']:.2g}",
            grads=f"{m['grads']:.2g} / {s['grads']:.2g}", ess_ratio=f"{r['time_per_ess_ratio']:.2g}",
        ))
    return out


COLUMNS = [
    ("n", "n"), ("nbeta", "nβ"), ("mala_eps", "MALA ε (ε·nβ)"), ("mala", "MALA λ̂ ± MCSE"),
    ("mala_acc", "MALA accept."), ("sgld_eps", "SGLD ε (ε·nβ)"), ("sgld", "SGLD λ̂ ± MCSE"),
    ("sgld_acc", "SGLD MALA-accept."), ("z", "Δ / σ"), ("bias", "b̂ = λ̂(2ε) − λ̂(ε)"),
    ("rich", "SGLD Richardson (Δ/σ)"), ("agree", "agree: 3σ / +b̂ / Richardson"),
    ("wall", "wall s MALA / SGLD"), ("ratio", "time ratio"), ("grads", "example-grads MALA / SGLD"),
    ("ess_ratio", "time per ESS ratio"),
]


def figure(rows: list[dict[str, Any]], path) -> None:
    """λ̂ vs n for both samplers, SGLD's relative gap to MALA (raw and Richardson), and wall time vs n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = np.array([r["n"] for r in rows], dtype=float)
    mala = np.array([r["mala"]["llc"] for r in rows])
    fig, (ax, gx, bx) = plt.subplots(1, 3, figsize=(15, 4.2))
    for key, label, shift, style in (("mala", "MALA (exact, full batch)", 0.94, "o"),
                                     ("sgld", "SGLD at its ε", 1.0, "s")):
        ax.errorbar(ns * shift, [r[key]["llc"] for r in rows], yerr=[r[key]["mcse"] for r in rows],
                    fmt=style + "-", capsize=3, label=label)
    ax.errorbar(ns * 1.06, [r["richardson"] for r in rows], yerr=[r["richardson_mcse"] for r in rows],
                fmt="^", mfc="none", capsize=3, label="SGLD, 2λ̂(ε) − λ̂(2ε)")
    ax.set(xscale="log", yscale="log", xlabel="n", ylabel="λ̂ ± MCSE",
           title=f"ReLU 4-16-1 (d = {rows[0]['d']}), nβ = n/log n, γ = {GAMMA:g}")
    ax.legend(fontsize=8)
    gx.axhline(0.0, color="k", lw=0.8)
    gx.errorbar(ns, [r["diff"] for r in rows] / mala, yerr=SIGMAS * np.array([r["sigma"] for r in rows]) / mala,
                fmt="s-", capsize=3, color="C1", label="SGLD at its ε")
    rich_sigma = np.array([math.hypot(r["richardson_mcse"], r["mala"]["mcse"]) for r in rows])
    gx.errorbar(ns * 1.08, (np.array([r["richardson"] for r in rows]) - mala) / mala, yerr=SIGMAS * rich_sigma / mala,
                fmt="^", mfc="none", capsize=3, color="C2", label="SGLD, 2λ̂(ε) − λ̂(2ε)")
    gx.set(xscale="log", xlabel="n", ylabel="(λ̂_SGLD − λ̂_MALA) / λ̂_MALA",
           title=f"gap to exact MALA, bars ± {SIGMAS:g} combined MCSE")
    gx.legend(fontsize=8)
    bx.plot(ns, [r["mala"]["wall"] for r in rows], "o-", label="MALA")
    bx.plot(ns, [r["sgld"]["wall"] for r in rows], "s-", label="SGLD")
    bx.set(xscale="log", yscale="log", xlabel="n", ylabel="wall time of the run (s, 1 thread)",
           title="time (each sampler's own ε and steps)")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def section(rows: list[dict[str, Any]], size: Size) -> str:
    """The Markdown section (numbers filled in; the reading is written after the full run)."""
    table = markdown_table(table_rows(rows), COLUMNS)
    pilots = "; ".join(
        f"n = {r['n']:,}: MALA " + ", ".join(f"{p['eps_nbeta']:.2g}→{p['acceptance']:.2f}" for p in r["pilots_mala"])
        + " · SGLD " + ", ".join(f"{p['eps_nbeta']:.2g}→{p['acceptance']:.3f}" for p in r["pilots_sgld"])
        for r in rows
    )
    checks = "; ".join(
        f"n = {r['n']:,}: MALA {', '.join(r['mala']['failed']) or 'none'}, SGLD {', '.join(r['sgld']['failed']) or 'none'}"
        for r in rows
    )
    return f"""## {TITLE}

**Claim** (Lau et al., arXiv 2308.12108, the MALA comparison): on a small ReLU MLP, minibatch SGLD
and exact full-batch MALA give the same λ̂ within noise for n = 100 … 100,000 (a 10-20-20-10 MLP;
e.g. n = 10⁵: 355.8 vs 349.1), SGLD taking 7–33× less time.

**Protocol.** `lambdahat.tasks.relu_teacher_student` (4 → 16 → 1 with biases, d = {rows[0]['d']}) at
its random teacher w*, noise-free targets, x ~ N(0, I), loss ½(y − f)²; the same teacher at every n.
Both samplers through `lh.estimate_llc` at nβ = n / log n and γ = {GAMMA:g}, {size.num_chains} chains each.
SGLD uses minibatches of min(500, n/4); MALA the full data. **Step sizes, each by its own rule, on
pilot chains ({size.pilot_chains} × ({size.pilot_burnin} + {size.pilot_draws}) steps), never by λ̂:** MALA takes the largest
ε·nβ in {{1, 0.71, 0.5, 0.35, 0.25, 0.125, 0.0625}} with acceptance ≥ {MALA_TARGET} (the library's "aim for
0.6–0.9"); SGLD the largest in {{1/4, 1/8, 1/16, 1/32, 1/64}} whose MALA acceptance of its own
minibatch steps is ≥ {SGLD_TARGET} (the health check's safe target). Pilots (ε·nβ → acceptance): {pilots}.
Both then run the same Langevin time: burn-in ε × steps = {size.burnin_time:g} and draws {size.draws_time:g}
({size.burnin_time / TAU:g} and {size.draws_time / TAU:g} relaxation times 2/γ of a direction held only by γ), at least {size.min_burnin} + {size.min_draws} steps.
SGLD also runs at 2ε to measure its own first-order step-size bias b̂ = λ̂(2ε) − λ̂(ε); the
Richardson value 2λ̂(ε) − λ̂(2ε) removes it to first order. σ = √(MCSE_SGLD² + MCSE_MALA²) (each
MCSE the larger of the ESS-based and between-chain errors). Agreement flags: |Δ| ≤ 3σ; |Δ| ≤ 3σ + |b̂|;
Richardson within 3 of its combined σ. "Example-grads" = chains × steps × examples per step (SGLD:
batch × 1.02 for the acceptance diagnostic every 50 steps). "Time per ESS ratio" = MALA's wall time per
effective draw over SGLD's.

**Why this model and γ.** The paper's 10-20-20-10 MLP (~850 weights) has ≈ 9× the weights of the
4-16-1, so ≈ 9× its cost per example; MALA's full-batch steps at n = 10⁵ already took ≈ 22 ms each
here on one thread (so ≈ 0.2 s for the bigger net, estimated: one 4-chain run of a few thousand
steps would exceed the whole 20-minute budget). γ = {GAMMA:g} (the library default) keeps the relaxation of the directions that
only γ holds (ReLU rescalings, dead units) at 2/(εγ) steps: at n = 10⁵ with γ = 1 and MALA's ε, one
such relaxation time alone would be ~7 × 10⁴ full-batch steps. The cost: at small n the prior, not the
loss, confines part of the posterior (the `localization` check), so λ̂ there is far below d/2 and far
from the paper's values; both samplers still target the same posterior, which is what this
experiment compares.

{table}

![SGLD vs MALA: λ̂ and time vs n](figures/{NAME}.png)

Failed health checks (MALA's acceptance is exempt from the `mala_accept` band, which is about
SGLD's bias): {checks}.

{reading(rows)}
"""


def _listed(ns: list[int]) -> str:
    return ", ".join(f"{n:,}" for n in ns) if ns else "none"


def reading(rows: list[dict[str, Any]]) -> str:
    """The honest reading, from the numbers (so a rerun cannot leave stale prose behind)."""
    gaps = ", ".join(
        f"{(r['diff'] / r['mala']['llc']):+.1%} ({r['z']:+.1f}σ) at n = {r['n']:,}" for r in rows
    )
    agree = [r["n"] for r in rows if r["agree"]]
    disagree = [r["n"] for r in rows if not r["agree"]]
    positive_bias = [r["n"] for r in rows if r["bias_2eps"] > 0]
    rich_ok = [r["n"] for r in rows if r["agree_richardson"]]
    worst_rich = max(abs(r["richardson_z"]) for r in rows)
    accept = f"{min(r['sgld']['acceptance'] for r in rows):.2f}–{max(r['sgld']['acceptance'] for r in rows):.2f}"
    times = ", ".join(
        f"{r['time_ratio']:.1f}× ({r['time_per_ess_ratio']:.1f}× per effective draw) at n = {r['n']:,}" for r in rows
    )
    big = rows[-1]
    worst = max(rows, key=lambda r: abs(r["diff"]) / r["mala"]["llc"])
    worst_gap = worst["diff"] / worst["mala"]["llc"]
    slow = [r["n"] for r in rows if r["time_ratio"] < 1.5]
    eps_ratio = big["mala"]["step_size"] / big["sgld"]["step_size"]
    step_ratio = (big["sgld"]["burnin"] + big["sgld"]["draws"]) / (big["mala"]["burnin"] + big["mala"]["draws"])
    lo, hi = min(r["mala"]["llc"] for r in rows), max(r["mala"]["llc"] for r in rows)
    local = [r["n"] for r in rows if "localization" in r["mala"]["failed"]]
    fast = [r for r in rows if r["time_ratio"] >= 1.5]
    # gaps that step doubling explains less than half of (Richardson then agrees only by its wider error)
    weak = [r for r in rows if r["z"] > 1 and abs(r["bias_2eps"]) < 0.5 * r["diff"]]
    verdict = (
        f"**Verdict.** *Same λ̂ within noise:* held within 3 combined MCSE at n = {_listed(agree)}"
        + (f", not at n = {_listed(disagree)}" if disagree else "")
        + (
            "; every gap has the same sign (SGLD high) and is consistent with SGLD's own O(ε) bias, which its "
            "step doubling removes (the Richardson value agrees at every n"
            + (
                ", though at n = " + _listed([r["n"] for r in weak])
                + " only within its wider error: there b̂ is less than half the gap)" if weak else ")"
            )
            if all(r["diff"] > 0 for r in rows) and len(rich_ok) == len(rows) else ""
        )
        + f". *Less time:* {big['time_ratio']:.1f}× at n = {big['n']:,} (the paper: 7–33×)"
        + (f", rising from n = {fast[0]['n']:,}" if fast else "")
        + (f", none at n = {_listed(slow)}" if slow else "")
        + "."
    )
    lines = [
        verdict,
        "**Reading.** *Agreement.* SGLD − MALA: " + gaps + f". Within 3 combined MCSE at n = {_listed(agree)}; "
        f"outside at n = {_listed(disagree)}. "
        + (
            "SGLD sits above MALA at every n, and its own step doubling says why: "
            if all(r["diff"] > 0 for r in rows) else "SGLD's own step doubling measures its step-size bias: "
        )
        + f"λ̂(2ε) > λ̂(ε) at n = {_listed(positive_bias)}, and the Richardson value 2λ̂(ε) − λ̂(2ε), which "
        f"removes the O(ε) part without looking at MALA, agrees with MALA at n = {_listed(rich_ok)} "
        f"(largest |Δ|/σ {worst_rich:.1f}). So SGLD and exact MALA target the same λ̂ here, and what separates "
        f"them is SGLD's discretisation bias at the step its acceptance rule allows: with MALA acceptances "
        f"of its own steps of {accept} (healthy by the library's check) SGLD was up to {worst_gap:+.1%} off "
        f"(n = {worst['n']:,}). The acceptance diagnostic sees the step's error on one minibatch; it does not bound "
        "the bias of λ̂ on this piecewise-linear network (docs/samplers.md saw the same, ~10% at n = 2,000).",
        f"*Time.* MALA's wall time over SGLD's: {times}. The speed-up grows with n because a MALA step costs "
        f"n example-gradients and an SGLD step at most {MAX_BATCH}; no speed-up (< 1.5×) at n = {_listed(slow)} "
        "(small batches: per-step overhead dominates; per effective draw MALA, at a larger ε, is then the cheaper). The paper reports 7–33× on a larger network; "
        f"here the largest n gives {big['time_ratio']:.1f}× in wall time although SGLD, at a "
        f"{eps_ratio:.0f}× smaller ε, ran {step_ratio:.0f}× the steps ({big['grad_ratio']:.0f}× fewer "
        "example-gradients). Wall times come from a 2-core machine shared with other jobs (load average 2–6), so they are indicative only.",
        f"*What differs from the paper.* A {rows[0]['d']}-weight one-hidden-layer net instead of the 10-20-20-10 MLP "
        f"(cost, above), so λ̂ is {lo:.2g}–{hi:.3g}, not ~350, and at γ = {GAMMA:g} the `localization` check "
        f"says the prior holds part of MALA's posterior at n = {_listed(local)}. Noise-free targets: a first attempt with unit-variance label noise gave SGLD an "
        "irreducible error from the minibatch losses themselves (nβ·sd(L_B) ≈ 275 per draw at n = 10⁵, "
        "±4.5 on λ̂ ≈ 10 from 4 × 1,000 draws), which would have made any agreement vacuous.",
    ]
    return "\n\n".join(lines)


def summary(rows: list[dict[str, Any]], run) -> dict[str, Any]:
    keys = ("n", "d", "nbeta", "batch", "diff", "sigma", "z", "bias_2eps", "agree", "agree_with_allowance",
            "richardson", "richardson_mcse", "richardson_z", "agree_richardson", "sane", "time_ratio",
            "grad_ratio", "time_per_ess_ratio", "mala", "sgld", "sgld_2eps")
    per_n = [{k: r[k] for k in keys} for r in rows]
    return dict(
        name=NAME, quick=run.quick, gamma=GAMMA, per_n=per_n,
        all_agree=all(r["agree"] for r in rows),
        all_agree_with_allowance=all(r["agree_with_allowance"] for r in rows),
        all_agree_richardson=all(r["agree_richardson"] for r in rows),
        all_sane=all(r["sane"] for r in rows),
    )


def main(argv=None) -> dict[str, Any]:
    run, _ = parse(NAME, __doc__.splitlines()[0], argv)
    size = QUICK if run.quick else FULL
    rows = []
    for n in size.ns:
        rows.append(compare(n, size))
        r = rows[-1]
        print(f"n={n}: MALA {r['mala']['llc']:.3f}±{r['mala']['mcse']:.3f} ({r['mala']['wall']:.0f}s) "
              f"SGLD {r['sgld']['llc']:.3f}±{r['sgld']['mcse']:.3f} ({r['sgld']['wall']:.0f}s) "
              f"z={r['z']:+.2f} b={r['bias_2eps']:+.3f} R={r['richardson']:.3f} [{run.elapsed():.0f}s]", flush=True)
    figure(rows, run.figure_path(NAME))
    result = summary(rows, run)
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / f"{NAME}.json").write_text(json.dumps(result, indent=1, default=float))
    if not run.quick:
        run.write_section(section(rows, size))
    return result


if __name__ == "__main__":
    main()
