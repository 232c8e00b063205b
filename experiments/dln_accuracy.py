"""Claim 1: the estimator recovers the known learning coefficient of deep linear networks.

Lau et al. (arXiv 2308.12108) and Furman & Lau (arXiv 2402.03698) estimate λ̂ for random
deep linear networks (DLNs) f(x) = W_L ⋯ W_1 x from 1K to 100M weights and compare it with
Aoyagi's exact λ (Neural Networks 172, 2024, Thm 1).

Protocol here, per size band (1K, 10K, 100K, 1M weights on a CPU; ``--bands 1e7 1e8`` on a GPU):

- depth L ∈ {2, 3} weight matrices, widths random around √(d/L) so that d lands within a factor
  2 of the band, the rank r uniform on {0, …, min width − 1};
- the teacher is the point estimated at: **every layer has rank exactly r** (singular values in
  [0.75, 1.25]), so Aoyagi's global λ for rank r is also the local one there;
- n = 100,000 inputs x ~ N(0, I), noise-free targets y = f(x), loss ½‖y − f(x)‖²;
- SGLD (the library's default sampler) at nβ = n / log n (the default), γ = 1 and ε₀ = 0.04 / nβ.

γ and ε₀ come from the library's grid calibration of its demo DLN at commit 7fb4961 (ε = 4.6e-5
at nβ = 1086, γ = 1; recorded in ``docs/calibration.md``), with ε·nβ ≈ 0.04 carried to this nβ. Where
the library's health checks say the step was too large, ε is halved and the network rerun (at most
twice): the truth-free fix those verdicts advise. ε·nβ·h_max at w* is reported as the stability
margin.

**This is the committed run's protocol, kept as it was** (docs/results/dln_accuracy.md, 65
networks, 185 min of sampling): ε₀ and the fixed chain budgets are inputs of that table, and
issue 16 quotes it as the fixed-setting baseline that the adaptive estimate is measured against.
Replacing them by the library's adaptive ``estimate_llc`` (``step_size="auto"``) would make this a
different experiment, which ``benchmarks/blind_accuracy.py`` is. The retry rule reads the library's
own checks (``lambdahat.health``), with one pin: "λ̂ still moving" is
:func:`lambdahat.health.drift` at the thresholds the committed run's ``convergence`` check had
(z > 3 *and* more than 5% of λ̂; no 10% cap). The library's check now also fails a change above 10%
that is within noise, a verdict about the number of draws ("run more draws"), not the step size;
letting it halve ε makes reruns the committed rule did not (measured on the ``--quick`` set: two
of its six networks, −8% and −17% at ε₀, were rerun at ε₀/2 and ε₀/4 and ended at −41% and −37%:
the same number of steps at a smaller ε travels less far).

The paper's own protocol, layers made rank-deficient at random with probability ½
(the second set, 10 per band in the two smallest bands), puts the teacher where some layers have a higher rank than the product;
there the local λ is larger than Aoyagi's global one, and the table shows that gap.

Every estimate is cached as one JSON line, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import lambdahat as lh
from lambdahat import health, tasks, truth
from lambdahat.potential import default_nbeta

from ._common import REPO, markdown_table, parse, spearman

NAME = "dln_accuracy"
FULL_BANDS = (1_000, 10_000, 100_000, 1_000_000)


@dataclass(frozen=True)
class Budget:
    """How long each network's chains run in a band."""

    chains: int
    burnin: int
    draws: int


def budget_for(band: int, quick: bool) -> Budget:
    if quick:
        return Budget(chains=2, burnin=1000, draws=1000)
    if band <= 10_000:
        return Budget(chains=4, burnin=4000, draws=4000)
    if band <= 100_000:
        return Budget(chains=2, burnin=3000, draws=3000)
    return Budget(chains=2, burnin=1500, draws=1500)


@dataclass(frozen=True)
class Network:
    """One random DLN: widths input → output, the rank of each layer and of their product."""

    band: int
    index: int
    widths: tuple[int, ...]
    layer_ranks: tuple[int, ...]

    @property
    def rank(self) -> int:
        return min(self.layer_ranks)

    @property
    def num_params(self) -> int:
        return sum(a * b for a, b in zip(self.widths[:-1], self.widths[1:]))

    @property
    def every_layer_rank_r(self) -> bool:
        return len(set(self.layer_ranks)) == 1

    @property
    def global_lambda(self) -> float:
        """Aoyagi's λ for the product's rank: the LLC at the most singular true parameter."""
        return float(truth.deep_linear_network(list(self.widths), self.rank).value)


def random_network(band: int, index: int, rank_reduced: bool, seed: int) -> Network:
    """Depth, widths and ranks for network ``index`` of a band, from a seed of its own.

    ``rank_reduced=False``: every layer has the same rank r (the exact-λ protocol).
    ``rank_reduced=True``: each layer is full rank, or with probability ½ reduced to a random
    lower rank (Lau et al.'s protocol); the product's rank is the smallest layer rank.
    """
    gen = torch.Generator().manual_seed(seed)
    depth = int(torch.randint(2, 4, (1,), generator=gen))
    target = band * 10 ** (0.6 * float(torch.rand(1, generator=gen)) - 0.3)
    base = math.sqrt(target / depth)
    widths = tuple(max(2, round(base * (0.5 + float(torch.rand(1, generator=gen))))) for _ in range(depth + 1))
    if not rank_reduced:
        r = int(torch.randint(0, min(widths), (1,), generator=gen))
        return Network(band, index, widths, (r,) * depth)
    ranks = []
    for a, b in zip(widths[:-1], widths[1:]):
        full = min(a, b)
        reduce = float(torch.rand(1, generator=gen)) < 0.5
        ranks.append(int(torch.randint(0, full, (1,), generator=gen)) if reduce else full)
    return Network(band, index, widths, tuple(ranks))


def teacher_task(net: Network, n: int, seed: int, device: str = "cpu") -> tasks.Task:
    """The DLN at its teacher, with n inputs x ~ N(0, I) and noise-free targets, on ``device``.

    The paper's protocol draws each layer at random (``aligned=False``: independent singular
    subspaces), and the tables of docs/results.md were measured on such teachers."""
    task = tasks.deep_linear_network(net.widths, net.rank, n=n, seed=seed, layer_ranks=net.layer_ranks, aligned=False)
    task.model = task.model.to(device)
    task.data = tuple(t.to(device) for t in task.data)
    return task


def top_curvature(task: tasks.Task, samples: int = 4096, iterations: int = 20) -> float:
    """h_max: the largest Hessian eigenvalue of L_n at w*, by power iteration on Hessian-vector
    products over the first ``samples`` inputs (a stability margin, not used to tune ε)."""
    model = task.model
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    w0 = torch.cat([p.detach().flatten() for p in model.parameters()])
    x, y = task.data[0][:samples], task.data[1][:samples]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params = {k: v.view(s) for k, v, s in zip(names, flat.split(sizes), shapes)}
        return task.loss_fn(torch.func.functional_call(model, params, (x,)), y)

    v = torch.randn(w0.shape, generator=torch.Generator().manual_seed(0)).to(w0.device)
    v /= v.norm()
    value = 0.0
    for _ in range(iterations):
        hv = torch.func.jvp(torch.func.grad(loss), (w0,), (v,))[1]
        value = float(hv @ v)
        norm = hv.norm()
        if norm == 0:
            return 0.0
        v = hv / norm
    return value


@dataclass
class Row:
    band: int
    index: int
    widths: str
    layer_ranks: str
    rank: int
    num_params: int
    truth: float
    estimate: float
    mcse: float
    rel_error: float
    first_half: float
    second_half: float
    stability: float
    diverged: int
    failed_checks: str
    seconds: float
    step_size: float = float("nan")
    attempts: int = 1
    accept: float = float("nan")
    retry_pending: bool = False
    #: λ̂ still moving by the committed run's convergence thresholds (None in rows cached before
    #: this field: their ``convergence`` verdict was computed with those thresholds)
    drifting: bool | None = None


def estimate_one(net: Network, n: int, settings: dict, budget: Budget, seed: int, device: str) -> Row:
    task = teacher_task(net, n, seed, device)
    stability = settings["step_size"] * default_nbeta(n) * top_curvature(task)
    start = time.perf_counter()
    result = lh.estimate_llc(
        task.model,
        task.data,
        task.loss_fn,
        num_chains=budget.chains,
        num_burnin_steps=budget.burnin,
        num_draws=budget.draws,
        seed=seed,
        progress=False,
        **settings,
    )
    seconds = time.perf_counter() - start
    draws = np.asarray(result.trace.draws("loss"), dtype=float)[result.trace.healthy_chains]
    half = draws.shape[1] // 2
    halves = [result.nbeta * (part.mean() - result.init_loss) if part.size else float("nan")
              for part in (draws[:, :half], draws[:, half:])]
    lam = net.global_lambda
    moving = not health.drift(draws, result.init_loss, result.nbeta, result.llc_mean, z=3.0, min_relative=0.05,
                              max_relative=math.inf).ok if draws.size else False
    return Row(
        band=net.band,
        index=net.index,
        widths="-".join(map(str, net.widths)),
        layer_ranks=",".join(map(str, net.layer_ranks)),
        rank=net.rank,
        num_params=net.num_params,
        truth=lam,
        estimate=float(result.llc_mean),
        mcse=float(result.llc_mcse),
        rel_error=float((result.llc_mean - lam) / lam) if lam > 0 else float("nan"),
        first_half=float(halves[0]),
        second_half=float(halves[1]),
        stability=float(stability),
        diverged=int(budget.chains - len(result.trace.healthy_chains)),
        failed_checks=" ".join(c.name for c in result.checks if not c.ok),
        seconds=seconds,
        step_size=settings["step_size"],
        accept=next((c.value for c in result.checks if c.name == "mala_accept"), float("nan")),
        drifting=moving,
    )


def summarize(rows: list[Row]) -> dict:
    bands = {}
    for band in sorted({r.band for r in rows}):
        sub = [r for r in rows if r.band == band]
        rel = np.array([abs(r.rel_error) for r in sub if math.isfinite(r.rel_error)])
        bands[band] = {
            "networks": len(sub),
            "mare": float(rel.mean()) if rel.size else float("nan"),
            "max_abs_rel": float(rel.max()) if rel.size else float("nan"),
            "mean_rel": float(np.mean([r.rel_error for r in sub if math.isfinite(r.rel_error)])),
            "spearman": spearman(np.array([r.truth for r in sub]), np.array([r.estimate for r in sub]))
            if len(sub) > 2 else float("nan"),
            "diverged_chains": sum(r.diverged for r in sub),
            "seconds": sum(r.seconds for r in sub),
        }
    truths = np.array([r.truth for r in rows])
    estimates = np.array([r.estimate for r in rows])
    return {"bands": bands, "spearman_all": spearman(truths, estimates) if len(rows) > 2 else float("nan")}


def scatter(rows: list[Row], reduced: list[Row], path: Path) -> None:
    """Estimated against true λ on log axes, coloured by band; rank-reduced teachers hollow."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5.4), layout="constrained")
    ax, err_ax = fig.subplots(1, 2)
    bands = sorted({r.band for r in rows} | {r.band for r in reduced})
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for i, band in enumerate(bands):
        color = cmap(i / max(1, len(bands) - 1))
        sub = [r for r in rows if r.band == band]
        if sub:
            err_ax.errorbar([r.num_params for r in sub], [100 * r.rel_error for r in sub],
                            yerr=[200 * r.mcse / r.truth for r in sub], fmt="o", ms=5, color=color)
            ax.errorbar([r.truth for r in sub], [r.estimate for r in sub], yerr=[2 * r.mcse for r in sub],
                        fmt="o", ms=5, color=color, label=f"~{band:,} weights (every layer rank r)")
        sub = [r for r in reduced if r.band == band]
        if sub:
            ax.scatter([r.truth for r in sub], [r.estimate for r in sub], s=40, facecolors="none",
                       edgecolors=color, label=f"~{band:,}, rank-reduced teacher (vs global λ)")
    values = [r.truth for r in rows + reduced] + [r.estimate for r in rows + reduced]
    values = [v for v in values if v > 0 and math.isfinite(v)]
    low, high = min(values) / 1.5, max(values) * 1.5
    ax.plot([low, high], [low, high], "k--", lw=1, label="λ̂ = λ")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("true λ (Aoyagi 2024)")
    ax.set_ylabel("estimated λ̂ (SGLD), ±2 MCSE")
    ax.set_title("Deep linear networks: estimated vs true learning coefficient")
    ax.legend(fontsize=7, loc="upper left")
    err_ax.axhspan(-10, 10, color="0.9", zorder=0, label="±10%")
    err_ax.axhline(0, color="k", lw=1)
    err_ax.set_xscale("log")
    err_ax.set_xlabel("number of weights d")
    err_ax.set_ylabel("relative error of λ̂ (%), ±2 MCSE")
    err_ax.set_title("Relative error against size (every layer rank r)")
    err_ax.legend(fontsize=7, loc="upper left")
    fig.savefig(path, dpi=110)


def _cached(cache: Path) -> dict[str, dict]:
    if not cache.exists():
        return {}
    out = {}
    for line in cache.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            out[entry["key"]] = entry["row"]
    return out


STEP_CHECKS = {"divergence", "runaway", "convergence", "mala_accept"}
MAX_HALVINGS = 2
ACCEPT_FLOOR = 0.8  # the committed run's mala_accept floor (the library's MALA_ACCEPT_LOW then and now)


def step_size_too_large(row: Row) -> bool:
    """The library's own verdicts that call for a smaller ε: diverged or runaway chains, a λ̂
    still moving (``convergence``, at the committed run's thresholds: see the module docstring),
    or the MALA acceptance of SGLD's steps below its 0.8 floor (an acceptance above the 0.995
    ceiling also fails ``mala_accept`` but means the opposite)."""
    failed = set(row.failed_checks.split())
    if "mala_accept" in failed and not row.accept < ACCEPT_FLOOR:
        failed.discard("mala_accept")
    if row.drifting is not None:
        failed.discard("convergence")
        if row.drifting:
            failed.add("convergence")
    return bool(failed & STEP_CHECKS)


def run_set(
    nets: list[Network], n: int, settings: dict, quick: bool, cache: Path | None, label: str, device: str,
    cached_only: bool = False,
) -> list[Row]:
    """Estimate every network; where the health checks say the step was too large, halve ε and
    rerun (at most twice), as the ``mala_accept`` and ``convergence`` verdicts advise. Only the
    library's truth-free verdicts decide; the last attempt is the one reported. ``cached_only``
    reports what the cache holds and computes nothing: a network never run is left out, one whose
    due retry is missing keeps its last attempt, marked ``retry_pending``."""
    done = _cached(cache) if cache else {}
    rows = []
    for i, net in enumerate(nets):
        budget = budget_for(net.band, quick)
        row = None
        for attempt in range(MAX_HALVINGS + 1):
            tried = dict(settings, step_size=settings["step_size"] / 2**attempt)
            key = json.dumps([asdict(net), n, tried, asdict(budget)], sort_keys=True)
            if key in done:
                row = Row(**done[key])
                row.step_size = tried["step_size"]
            elif cached_only:
                if row is not None:
                    row.retry_pending = True
                break
            else:
                row = estimate_one(net, n, tried, budget, seed=1000 * net.band.bit_length() + net.index,
                                   device=device)
                if cache:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    with cache.open("a") as f:
                        f.write(json.dumps({"key": key, "row": asdict(row)}) + "\n")
            row.attempts = attempt + 1
            print(f"[{label} {i + 1}/{len(nets)}] {row.widths} ranks {row.layer_ranks} d={row.num_params:,} "
                  f"ε={row.step_size:.2g} λ={row.truth:g} λ̂={row.estimate:.1f}±{row.mcse:.1f} "
                  f"({row.rel_error:+.1%}) {row.seconds:.0f}s {row.failed_checks}", flush=True)
            if not step_size_too_large(row):
                break
        if row is not None:
            rows.append(row)
    return rows


TABLE_COLUMNS = [
    ("band", "band"), ("widths", "widths"), ("rank", "r"), ("num_params", "d"), ("truth", "λ"),
    ("estimate", "λ̂"), ("mcse", "MCSE"), ("rel_error", "rel. error"), ("first_half", "λ̂ 1st half"),
    ("second_half", "λ̂ 2nd half"), ("step_size", "ε"), ("stability", "ε·nβ·h_max"), ("failed_checks", "failed checks"),
    ("seconds", "s"),
]


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--bands", type=float, nargs="+", default=None,
                            help="size bands in weights (default 1e3 1e4 1e5 1e6; quick: 100 300)")
        parser.add_argument("--per-band", type=int, default=None, help="networks per band below 1M (default 20)")
        parser.add_argument("--per-band-large", type=int, default=5, help="networks per band at ≥1M (default 5)")
        parser.add_argument("--rank-reduced", type=int, default=None,
                            help="rank-reduced teachers per band, in the two smallest bands (default 10; quick 2)")
        parser.add_argument("--sets", nargs="+", choices=["exact", "reduced"], default=["exact", "reduced"],
                            help="which network sets to run (a second process can take one; the cache is shared)")
        parser.add_argument("--cached-only", action="store_true",
                            help="write the section from the cached estimates only; compute nothing")
        parser.add_argument("--device", default="cpu", help="torch device for model and data, e.g. cuda")
        parser.add_argument("--n", type=int, default=None, help="training inputs (default 100,000; quick 10,000)")

    run, args = parse(NAME, "Estimated vs exact λ for random deep linear networks in size bands.", argv, extra)
    quick = run.quick
    bands = [int(b) for b in (args.bands or ((100, 300) if quick else FULL_BANDS))]
    per_band = args.per_band or (3 if quick else 20)
    reduced_per_band = args.rank_reduced if args.rank_reduced is not None else (2 if quick else 10)
    n = args.n or (10_000 if quick else 100_000)
    nbeta = default_nbeta(n)
    settings = dict(step_size=0.04 / nbeta, localization=1.0, batch_size=500)
    cache = None if quick else REPO / "experiments" / "out" / f"{NAME}.jsonl"

    nets = [random_network(b, i, False, seed=b * 1000 + i)
            for b in bands for i in range(per_band if b < 1_000_000 else args.per_band_large)]
    run_args = (n, settings, quick, cache)
    rows = run_set(nets, *run_args, "exact", args.device, args.cached_only) if "exact" in args.sets else []
    small = sorted(bands)[:2]
    reduced_nets = [random_network(b, i, True, seed=b * 1000 + 500 + i) for b in small for i in range(reduced_per_band)]
    reduced = (run_set(reduced_nets, *run_args, "rank-reduced", args.device, args.cached_only)
               if "reduced" in args.sets else [])
    if not rows:
        return {"reduced_rows": [asdict(r) for r in reduced]}
    summary = summarize(rows)
    reduced_gap = [r.estimate / r.truth for r in reduced if r.truth > 0]
    summary["rank_reduced_ratio"] = reduced_gap
    summary["rows"] = [asdict(r) for r in rows]
    summary["reduced_rows"] = [asdict(r) for r in reduced]
    figure = run.figure_path(NAME)
    scatter(rows, reduced, figure)
    summary["figure"] = str(figure)
    if not quick:
        every_attempt = sum(entry["seconds"] for entry in _cached(cache).values())
        run.write_section(section(rows, reduced, summary, settings, n, bands, every_attempt))
    return summary


def reading(rows: list[Row], reduced: list[Row], summary: dict) -> str:
    """What held and what did not, from the numbers."""
    bands = summary["bands"]
    met = [b for b, v in bands.items() if v["mare"] <= 0.10]
    missed = [b for b, v in bands.items() if v["mare"] > 0.10]
    depth = []
    for band in bands:
        for layers in (2, 3):
            errs = [abs(r.rel_error) for r in rows if r.band == band and r.widths.count("-") == layers]
            if errs:
                depth.append(f"{band:,}/L={layers}: {np.mean(errs):.1%} ({len(errs)})")
    retried = [r for r in rows if r.attempts > 1]
    ratios = np.array([r.estimate / r.truth for r in reduced if r.truth > 0])
    high_accept = sum(1 for r in rows if r.accept > 0.995)
    parts = [
        f"- **Target met** (mean absolute relative error ≤ 10%) in the bands {', '.join(f'{b:,}' for b in met) or 'none'}"
        + (f"; **missed** in {', '.join(f'{b:,}' for b in missed)}." if missed else ".")
        + f" Spearman over all networks {summary['spearman_all']:.4f} (target 0.95). "
        + f"Diverged chains: {sum(v['diverged_chains'] for v in bands.values())}.",
        "- By band and depth (mean absolute relative error, networks): " + "; ".join(depth) + ".",
        "- **Small depth-3 networks come out low** (1K band, L = 3: five of seven between −11% and −21%, "
        "at ranks 1–7) while their chains are stationary (first and second halves agree). That is the "
        "finite-nβ gap, not the "
        "sampler: for 22-8-21-21 at r = 1 (λ = 84, λ̂ = 69 here), a separate run at 8× the nβ "
        "(ε·nβ fixed, 4 chains × 32,000 steps) climbed through 61, 68, 70 to 73 and was still rising: "
        "E[nβ (L − L*)] approaches λ from below, slowly, as nβ grows.",
        f"- **Large networks are the hard part.** {len(retried)} of {len(rows)} networks were rerun at a "
        "smaller ε because their first attempt failed `convergence` (λ̂ still rising) or `mala_accept`; "
        "their first attempts were mostly high (up to +36%: the deep-network drift, where flat directions "
        "spread under γ = 1 and stiffen the others), the reruns at ε/2 mostly low (−14% to +1%). Both are "
        "fixed-length answers, not plateaus: at these budgets (2 chains × 6,000 steps at 100K, × 3,000 "
        "at 1M) every 100K and 1M estimate fails `rhat` and `ess`, so the library says plainly that "
        "more steps are needed. "
        f"{high_accept} of them fail `mala_accept` on the high side (acceptance ≈ 1): at this ε the "
        "discretisation error per step is negligible, and the error is the chain length. The paper's "
        "budgets for these sizes were 50,000 steps.",
        f"- **Rank-reduced teachers** (the paper's protocol): λ̂ / λ_global has median {np.median(ratios):.2f} "
        f"(range {ratios.min():.2f}–{ratios.max():.2f}), at or above 1 in {int((ratios >= 0.995).sum())} of "
        f"{len(ratios)}; the largest gaps are where a wide layer keeps full rank above a low-rank "
        "product. Measured against Aoyagi's global λ, such a protocol would read these gaps as "
        "estimator error; the rank-r-everywhere teachers above avoid that.",
    ]
    return "\n".join(parts)


def pending_text(rows: list[Row]) -> str:
    pending = [f"{r.widths} (r = {r.rank})" for r in rows if r.retry_pending]
    if not pending:
        return ""
    return ("\n**Retries not run** (the session's time ran out; the last attempt is reported, and its "
            "failed checks say it should have been rerun at ε/2): " + ", ".join(pending) + ".")


def section(
    rows: list[Row], reduced: list[Row], summary: dict, settings: dict, n: int, bands: list[int], every_attempt: float
) -> str:
    band_rows = [
        dict(band=f"{b:,}", networks=v["networks"], mare=f"{v['mare']:.1%}", max_abs=f"{v['max_abs_rel']:.1%}",
             mean_rel=f"{v['mean_rel']:+.1%}", spearman=f"{v['spearman']:.3f}", diverged=v["diverged_chains"],
             minutes=f"{v['seconds'] / 60:.1f}")
        for b, v in summary["bands"].items()
    ]
    band_table = markdown_table(band_rows, [
        ("band", "band (weights)"), ("networks", "networks"), ("mare", "mean abs. rel. error"),
        ("max_abs", "max abs. rel. error"), ("mean_rel", "mean rel. error"), ("spearman", "Spearman"),
        ("diverged", "diverged chains"), ("minutes", "sampling time (min)"),
    ])
    fmt = [dict(asdict(r), rel_error=f"{r.rel_error:+.1%}", stability=f"{r.stability:.3f}") for r in rows]
    reduced_fmt = [dict(asdict(r), local_over_global=f"{r.estimate / r.truth:.2f}" if r.truth else "–") for r in reduced]
    budgets = ", ".join(f"{b:,}: {budget_for(b, False).chains} chains × ({budget_for(b, False).burnin} + "
                        f"{budget_for(b, False).draws})" for b in bands)
    return f"""## Deep linear networks: estimated vs exact λ

**Claim** (Lau et al.; Furman & Lau, arXiv 2402.03698): λ̂ recovers the exact learning
coefficient of deep linear networks across sizes. **Targets** (issue 7): mean absolute relative
error ≤ 10% in every band, Spearman ≥ 0.95 over all runs, no unexplained divergences.

**Protocol.** Random DLNs per band: depth L ∈ {{2, 3}}, widths random around √(d/L), rank r
uniform on 0 … min width − 1, and **every layer of the teacher has rank exactly r**, so Aoyagi's
global λ (Aoyagi, Neural Networks 172, 2024) is the local one. n = {n:,} inputs x ~ N(0, I), noise-free targets,
loss ½‖y − f(x)‖². SGLD at nβ = n/log n = {default_nbeta(n):.0f}, γ = {settings['localization']:g},
ε₀ = {settings['step_size']:.3g}, batch {settings['batch_size']}; chains × (burn-in + draws) per band:
{budgets}. The starting setting is the library's grid calibration of its demo DLN at commit 7fb4961
(`docs/calibration.md`: γ = 1, ε·nβ ≈ 0.04) carried to this nβ. Where the library's own health
checks say the step was too large (`divergence`, `runaway`, `convergence` with z > 3 and a change
above 5%, or `mala_accept` below 0.8) ε is halved and the network rerun, at most twice, as those
verdicts advise; the last attempt is reported (column ε). No choice looks at the truth.
(The paper draws x ~ U[−10, 10]; scaling x by c is exactly the same as scaling nβ by c², since
f is linear.) "ε·nβ·h_max" is the stability margin at w* (SGLD on a quadratic is unstable at 4).
"failed checks" are the library's verdicts on the reported attempt.{pending_text(rows + reduced)}
"λ̂ 1st/2nd half" split the draws in two: a rising λ̂ means the chains were still climbing.

### Per band

{band_table}

Spearman rank correlation over all {len(rows)} networks: **{summary['spearman_all']:.4f}**.
Sampling time, every attempt of every network included (both sets): **{every_attempt / 60:.0f} min**
of wall time, each estimate on one thread with 2–3 such processes sharing the 2 cores. Each estimate is cached (`experiments/out/dln_accuracy.jsonl`), so a
rerun only writes this section; the wall time stamped below is that of the command that wrote it.

![Estimated vs true λ](figures/{NAME}.png)

### Reading

{reading(rows, reduced, summary)}

### Every network

{markdown_table(fmt, TABLE_COLUMNS)}

### Rank-reduced teachers: local versus global

The paper's protocol reduces each layer's rank at random with probability ½. The product then has
rank r = min over layers, and Aoyagi's λ for that r is the *global* coefficient, the LLC at the
most singular true parameter. At a teacher whose other layers have rank above r the map is
locally more regular, so its LLC is larger: λ̂ / λ_global > 1 is the expected gap, not an error.

{markdown_table(reduced_fmt, [("band", "band"), ("widths", "widths"), ("layer_ranks", "layer ranks"),
                              ("rank", "product rank r"), ("truth", "global λ"), ("estimate", "λ̂"),
                              ("mcse", "MCSE"), ("local_over_global", "λ̂ / λ_global")])}
"""


if __name__ == "__main__":
    main()
