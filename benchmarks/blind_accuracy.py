"""Blind accuracy: the cases of ``benchmarks/blind_cases.py``, each estimated with no settings at all.

    python benchmarks/blind_accuracy.py                       # every route, 2 worker processes
    python benchmarks/blind_accuracy.py --routes auto --bands 100 1k
    python benchmarks/blind_accuracy.py --report-only         # docs/accuracy.md from the cache
    python benchmarks/blind_accuracy.py --set v2 --routes auto fixed   # the second blind set

Routes, each one process per (case, route), one torch thread:

- ``auto``: ``lh.estimate_llc(model, data, loss)``, no settings (this version);
- ``rmsprop``: the same with ``sampler="rmsprop_sgld"`` alone, a candidate engine: the warm-up
  adapts RMSProp-SGLD's diagonal preconditioner with ε and freezes both for the draws;
- ``fixed``: a hand-tuned fixed setting, the rule of ``experiments/dln_accuracy`` (ε·nβ = 0.04,
  γ = 1, 4 × (4000 + 4000) steps, batch 500), for the time-to-accuracy comparison;
- ``settings``: the auto route's own final settings (``result.fixed_settings()``, from the cache;
  ``result.settings`` in rows from before it existed) given as a fixed setting with no nβ check: the run someone who already knew the right setting would make,
  for issue 16's wall-time target (auto within 3× of a fixed run of the same accuracy). It runs
  after the auto route and reads only the auto row's settings;
- ``old_defaults``: the defaults of the previous release (main at 56bf46a: ε = 2e-5, γ = 100,
  4 × (500 + 1000)), run from a git worktree of that commit;
- ``old_calibrate``: that release's ``lh.calibrate`` with its defaults, then ``estimate_llc`` at
  its recommendation with the advised draws capped at 4000.

Results are cached in ``benchmarks/out/blind_accuracy.jsonl`` for set v1 and
``benchmarks/out/blind_accuracy_<set>.jsonl`` for the others (one line per case and route, keyed by
the case and the route; delete the file, or pass ``--cache``, to start over). The truth is only compared at the end: no
route reads it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from blind_cases import BANDS, VERSIONS, Case, cases  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
CACHE = OUT / "blind_accuracy.jsonl"
OLD_COMMIT = "56bf46a"
OLD_TREE = OUT / "old_release"
ROUTES = ("auto", "rmsprop", "fixed", "settings", "old_defaults", "old_calibrate")
#: what each adaptive route gives beside the data: the auto route nothing, the rmsprop route only
#: the sampler (a candidate engine: RMSProp-SGLD, its preconditioner adapted in the warm-up and
#: frozen for the draws)
ADAPTIVE = {"auto": {}, "rmsprop": {"sampler": "rmsprop_sgld"}}
BAND_ORDER = (*BANDS, "rrr", "crossing")


def _auto_settings(done: dict, name: str) -> dict | None:
    """The auto route's ``result.fixed_settings()`` for case ``name`` (its ``result.settings`` in
    rows written before that existed), as a fixed setting with no nβ check."""
    row = done.get((name, "auto"))
    if row is None or "settings" not in row:
        return None
    return {**row.get("fixed_settings", row["settings"]), "nbeta_check": False}


def _run_case(case_name: str, route: str, version: str = "v1", given: dict | None = None) -> dict:
    """One (case, route) in this worker process: returns the row (no truth read by the route);
    ``given``: the settings of the ``settings`` route."""
    import torch

    torch.set_num_threads(1)
    import lambdahat as lh
    from blind_cases import build

    case = next(c for c in cases(version) if c.name == case_name)
    task = build(case)
    start = time.perf_counter()
    row: dict = dict(case=case.name, band=case.band, route=route)
    if route in ADAPTIVE:
        result = lh.estimate_llc(task.model, task.data, task.loss_fn, progress=False, **ADAPTIVE[route])
        row.update(certified=result.certified, failed=[c.name for c in result.checks if not c.ok],
                   gradient_evaluations=result.gradient_evaluations, settings=result.settings.to_dict(),
                   bias=result.adaptation.bias, notes=list(result.adaptation.notes),
                   fixed_settings=result.fixed_settings().to_dict())
        comparison = result.nbeta_comparison()
        if comparison is not None:  # the nβ check's second run (lambdahat.nbeta_rung)
            row.update(nbeta_rung=result.nbeta_rung.to_dict(), nbeta_kind=comparison.kind,
                       nbeta_implied=comparison.implied, nbeta_implied_se=comparison.implied_se)
        if result.descent is not None:  # the descent from w* (lambdahat.descent)
            row.update(descent=result.descent.to_dict())
        if result.lowered_from is not None:  # λ̂ fell with nβ: the estimate is at nβ / 4
            row.update(nbeta=result.nbeta, lowered_from=result.lowered_from,
                       fall_rung=result.fall_rung.to_dict() if result.fall_rung else None)
    elif route == "settings":
        result = lh.estimate_llc(task.model, task.data, task.loss_fn, progress=False,
                                 **lh.Settings.from_mapping(given))
        row.update(certified=result.certified, failed=[c.name for c in result.checks if not c.ok],
                   gradient_evaluations=result.gradient_evaluations)
    elif route == "fixed":
        n = task.n
        from lambdahat.potential import default_nbeta  # here: the old routes' release has no default_nbeta

        nbeta = default_nbeta(n)
        result = lh.estimate_llc(task.model, task.data, task.loss_fn, step_size=0.04 / nbeta, localization=1.0,
                                 num_chains=4, num_burnin_steps=4000, num_draws=4000, batch_size=500, progress=False)
        row.update(certified=result.certified, failed=[c.name for c in result.checks if not c.ok],
                   gradient_evaluations=result.gradient_evaluations)
    else:
        result = _old_route(task, route)
        row.update(certified=result.healthy, failed=[c.name for c in result.checks if not c.ok],
                   gradient_evaluations=None)
    row.update(llc=float(result.llc_mean), mcse=float(result.llc_mcse), seconds=time.perf_counter() - start,
               num_params=int(sum(p.numel() for p in task.model.parameters())), n=task.n)
    return row


def _old_route(task, route: str):
    """The previous release's defaults or calibrate route (lambdahat imported from its worktree)."""
    import lambdahat as old

    if route == "old_defaults":
        return old.estimate_llc(task.model, task.data, task.loss_fn, progress=False)
    cal = old.calibrate(task.model, task.data, task.loss_fn, progress=False)
    if cal.recommended is None:
        return old.estimate_llc(task.model, task.data, task.loss_fn, progress=False)
    rec = cal.recommended
    return old.estimate_llc(task.model, task.data, task.loss_fn, step_size=rec["step_size"], nbeta=rec["nbeta"],
                            localization=rec["localization"], num_draws=min(rec["num_draws"], 4000), progress=False)


def _job(args: tuple[str, str, str, dict | None]) -> dict:
    case_name, route, version, given = args
    env = dict(os.environ, OMP_NUM_THREADS="1")
    code = ("import json, sys; sys.path.insert(0, %r); import blind_accuracy as b; "
            "print('ROW ' + json.dumps(b._run_case(%r, %r, %r, json.loads(%r))))") % (
                str(ROOT / "benchmarks"), case_name, route, version, json.dumps(given))
    if route.startswith("old"):
        env["PYTHONPATH"] = str(OLD_TREE / "src")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(ROOT))
    for line in proc.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    return dict(case=case_name, route=route, error=(proc.stderr or proc.stdout)[-2000:])


def _rows(cache: Path) -> list[dict]:
    """Every row of the cache, in the order written."""
    if not cache.exists():
        return []
    return [json.loads(line) for line in cache.read_text().splitlines() if line.strip()]


def _cached(cache: Path) -> dict[tuple[str, str], dict]:
    return {(r["case"], r["route"]): r for r in _rows(cache) if "error" not in r}


def _stopped(cache: Path) -> dict[tuple[str, str], dict]:
    """The runs stopped by hand (their error row says why): not tried again, and listed in the report.
    Any other failed run is tried again."""
    return {(r["case"], r["route"]): r for r in _rows(cache) if r.get("error", "").startswith("stopped by hand")}


def _old_tree() -> None:
    if not OLD_TREE.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(OLD_TREE), OLD_COMMIT], check=True)


def run(routes: list[str], bands: list[str], workers: int, version: str, cache: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if any(r.startswith("old") for r in routes):
        _old_tree()
    done = {**_cached(cache), **_stopped(cache)}
    todo = [(c.name, r) for r in routes for c in cases(version) if c.band in bands and (c.name, r) not in done]
    if "settings" in routes and "auto" in routes and any(r == "auto" for _, r in todo):
        run(["auto"], bands, workers, version, cache)  # the settings route needs the auto rows first
        return run([r for r in routes if r != "auto"], bands, workers, version, cache)
    jobs = [(name, r, version, given) for name, r in todo
            for given in [_auto_settings(done, name) if r == "settings" else None]
            if r != "settings" or given is not None]
    print(f"{len(jobs)} runs to do ({len(done)} cached)", flush=True)
    with ProcessPoolExecutor(workers) as pool:
        for row in pool.map(_job, jobs):
            with cache.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            if "error" in row:
                print(f"  {row['route']:13} {row['case']}: ERROR {(row['error'].splitlines() or ['(no message)'])[-1]}",
                      flush=True)
            else:
                print(f"  {row['route']:13} {row['case']}: λ̂ = {row['llc']:.4g} ± {row['mcse']:.2g}, "
                      f"{'certified' if row['certified'] else 'not certified'}, {row['seconds']:.0f} s", flush=True)


def report(version: str, cache: Path) -> str:
    """The tables of docs/accuracy.md from the cache (the truth enters here, and only here)."""
    from blind_cases import build

    rows = _cached(cache)
    truths = {c.name: float(build(c).truth.value) if c.kind != "dln" else _dln_truth(c) for c in cases(version)}
    lines = ["| band | route | cases | mean abs. rel. error | worst | certified | certified off by > 10% | "
             "gradient evals (mean) | wall time per estimate (mean, s) |", "|---|---|---|---|---|---|---|---|---|"]
    for band in BAND_ORDER:
        for route in ROUTES:
            got = [rows[(c.name, route)] for c in cases(version) if c.band == band and (c.name, route) in rows]
            if not got:
                continue
            errs = [(r["llc"] - truths[r["case"]]) / truths[r["case"]] for r in got]
            cert = [r for r, e in zip(got, errs) if r["certified"]]
            bad = sum(1 for r, e in zip(got, errs) if r["certified"] and abs(e) > 0.10)
            evals = [r["gradient_evaluations"] for r in got if r.get("gradient_evaluations")]
            worst = max(errs, key=abs)
            lines.append(
                f"| {band} | {route} | {len(got)} | {sum(map(abs, errs)) / len(errs):.1%} | {worst:+.1%} | "
                f"{len(cert)}/{len(got)} | {bad} | {(sum(evals) / len(evals)) if evals else float('nan'):.3g} | "
                f"{sum(r['seconds'] for r in got) / len(got):.0f} |"
            )
    detail = ["| case | truth | route | λ̂ ± MCSE | error | certified | failed checks | s |", "|---|---|---|---|---|---|---|---|"]
    for c in cases(version):
        for route in ROUTES:
            r = rows.get((c.name, route))
            if r is None:
                continue
            t = truths[c.name]
            detail.append(f"| {c.name} | {t:.4g} | {route} | {r['llc']:.4g} ± {r['mcse']:.2g} | {(r['llc'] - t) / t:+.1%} | "
                          f"{'yes' if r['certified'] else 'no'} | {', '.join(r['failed']) or '—'} | {r['seconds']:.0f} |")
    text = "\n".join(lines) + "\n\n" + "\n".join(detail) + "\n"
    return (text + _nbeta_table(version, rows, truths) + _lowered_table(version, rows, truths)
            + _rules_table(version, rows, truths) + _crossing_table(version, rows, truths)
            + _overhead_table(version, rows, truths, _stopped(cache)))


def _nbeta_table(version: str, rows: dict, truths: dict[str, float]) -> str:
    """The auto route's nβ check per case: λ̂ at t and at 4t, the λ the change implies, and each one's error.

    t is the nβ of the reported estimate: n / log n, or a quarter of it where the estimate was lowered
    (then 4t is the run at n / log n; :func:`_lowered_table` shows all three runs).
    """
    got = [(c.name, rows[(c.name, "auto")]) for c in cases(version) if "nbeta_rung" in rows.get((c.name, "auto"), {})]
    if not got:
        return ""
    out = ["", "| case | truth | λ̂ (t) | λ̂ (4t) | change | implied λ | error at t | at 4t | implied |",
           "|---|---|---|---|---|---|---|---|---|"]
    sums = [0.0, 0.0, 0.0]
    for name, r in got:
        t, rung = truths[name], r["nbeta_rung"]
        rung_llc, rung_mcse = (float("nan") if rung[k] is None else rung[k] for k in ("llc", "mcse"))
        errs = [(r["llc"] - t) / t, (rung_llc - t) / t, (r["nbeta_implied"] - t) / t]
        sums = [a + abs(e) for a, e in zip(sums, errs)]
        out.append(f"| {name} | {t:.4g} | {r['llc']:.4g} ± {r['mcse']:.2g} | {rung_llc:.4g} ± "
                   f"{rung_mcse:.2g} | {r['nbeta_kind']} | {r['nbeta_implied']:.4g} ± "
                   f"{r['nbeta_implied_se']:.2g} | {errs[0]:+.1%} | {errs[1]:+.1%} | {errs[2]:+.1%} |")
    k = len(got)
    out.append(f"| mean abs. rel. error ({k} cases) | | | | | | {sums[0] / k:.1%} | {sums[1] / k:.1%} | {sums[2] / k:.1%} |")
    return "\n".join(out) + "\n"


def _lowered_table(version: str, rows: dict, truths: dict[str, float]) -> str:
    """The auto route's estimates that moved to nβ / 4 because λ̂ fell with nβ: all three runs."""
    got = [(c.name, rows[(c.name, "auto")]) for c in cases(version) if rows.get((c.name, "auto"), {}).get("lowered_from")]
    if not got:
        return ""
    out = ["", "| case | truth | λ̂ at nβ / 4 (reported) | at nβ | at 4nβ | error at nβ / 4 | at nβ | at 4nβ | "
           "descent's fall at nβ | certified |", "|---|---|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    for name, r in got:
        t, first, fall = truths[name], r["nbeta_rung"], r.get("fall_rung")
        values = [(r["llc"], r["mcse"])] + [tuple(nan if x[k] is None else x[k] for k in ("llc", "mcse"))
                                            for x in (first, fall) if x is not None]
        cells = [f"{v:.4g} ± {e:.2g}" for v, e in values]
        errs = [f"{(v - t) / t:+.1%}" for v, _ in values]
        if fall is None:  # the descent showed the fall: no run at 4nβ
            cells.append("not run")
            errs.append("—")
        descent = f"{r['descent']['fall']:.3g}" if r.get("descent") else "not measured"
        out.append(f"| {name} | {t:.4g} | " + " | ".join(cells) + " | " + " | ".join(errs)
                   + f" | {descent} | {'yes' if r['certified'] else 'no'} |")
    return "\n".join(out) + "\n"


def _rules_table(version: str, rows: dict, truths: dict[str, float]) -> str:
    """Each candidate rule of ``benchmarks/ladder_rules.py`` on the auto route: error per case, mean and worst."""
    from ladder_rules import RULES

    got = [(c.name, rows[(c.name, "auto")]) for c in cases(version) if "nbeta_rung" in rows.get((c.name, "auto"), {})]
    if not got:
        return ""
    # t, 4t as in _nbeta_table: the reported estimate's nβ and its rung's.
    out = ["", "| case | truth | " + " | ".join(RULES).replace("4nβ", "4t").replace("nβ", "t") + " |",
           "|---|---|" + "---|" * len(RULES)]
    errors = {name: [] for name in RULES}
    for name, r in got:
        t = truths[name]
        cells = []
        for rule, value in RULES.items():
            errors[rule].append((value(r) - t) / t)
            cells.append(f"{value(r):.4g} ({errors[rule][-1]:+.1%})")
        out.append(f"| {name} | {t:.4g} | " + " | ".join(cells) + " |")
    out.append(f"| mean abs. rel. error ({len(got)} cases) | | "
               + " | ".join(f"{sum(map(abs, e)) / len(e):.1%}" for e in errors.values()) + " |")
    out.append("| worst | | " + " | ".join(f"{max(e, key=abs):+.1%}" for e in errors.values()) + " |")
    return "\n".join(out) + "\n"


def _overhead_table(version: str, rows: dict, truths: dict[str, float], stopped: dict) -> str:
    """Per band, the auto route's wall time against the ``settings`` route's (its own final settings,
    fixed): what finding the setting and checking it cost over one run at it, and both errors."""
    out = ["", "| band | cases | auto: mean abs. rel. error | its settings, fixed | auto wall time (mean, s) | "
           "fixed at its settings (mean, s) | ratio |", "|---|---|---|---|---|---|---|"]
    ratios = []
    for band in BAND_ORDER:
        pairs = [(rows[(c.name, "auto")], rows[(c.name, "settings")], truths[c.name]) for c in cases(version)
                 if c.band == band and (c.name, "settings") in rows and (c.name, "auto") in rows]
        if not pairs:
            continue
        auto_s, fixed_s = (sum(p[k]["seconds"] for p in pairs) / len(pairs) for k in (0, 1))
        errs = [sum(abs(p[k]["llc"] - p[2]) / p[2] for p in pairs) / len(pairs) for k in (0, 1)]
        ratios += [p[0]["seconds"] / p[1]["seconds"] for p in pairs]
        out.append(f"| {band} | {len(pairs)} | {errs[0]:.1%} | {errs[1]:.1%} | {auto_s:.0f} | {fixed_s:.0f} | "
                   f"{auto_s / fixed_s:.1f}× |")
    if not ratios:
        return ""
    stopped = [f"{name} ({row['error']})" for (name, route), row in stopped.items() if route == "settings"]
    ratios.sort()
    out.append(f"| all | {len(ratios)} | | | | | per case {ratios[0]:.1f}× to {ratios[-1]:.1f}×, "
               f"median {ratios[len(ratios) // 2]:.1f}× |")
    if stopped:
        out.append("\nNot in this table (no run at its settings): " + "; ".join(stopped) + ".")
    return "\n".join(out) + "\n"


#: The nβ ladder of the crossings' "best over nβ": n / log n × 4^k for these k.
CROSSING_LADDER = range(-3, 3)


def crossing_best(task, localization: float) -> float:
    """The largest exact E_p[nβ ΔL] (``tasks.normal_crossing_expectation``) of a crossing task over
    :data:`CROSSING_LADDER`: the closest to λ a perfect sampler gets on that ladder at this γ."""
    from lambdahat import tasks

    base = task.n / math.log(task.n)
    return max(tasks.normal_crossing_expectation(task, base * 4.0**k, localization) for k in CROSSING_LADDER)


def _crossing_table(version: str, rows: dict, truths: dict[str, float]) -> str:
    """The normal crossings' auto runs against what a perfect sampler gives at each run's nβ.

    ``tasks.normal_crossing_expectation`` integrates the localised posterior of each case's own data
    (γ of the reported run, which every rung shares unless its warm-up lowered γ), so a run's error
    splits into the sampler's (λ̂ − exact(nβ), in MCSE) and the estimand's (exact(nβ) − λ). The last
    column is :func:`crossing_best`.
    """
    from blind_cases import build
    from lambdahat import tasks

    got = [(c, rows[(c.name, "auto")]) for c in cases(version)
           if c.kind == "normal_crossing" and (c.name, "auto") in rows and "error" not in rows[(c.name, "auto")]]
    if not got:
        return ""
    out = ["", "| case | truth | run | nβ | λ̂ ± MCSE | exact at nβ | sampler (λ̂ − exact) / MCSE | exact − λ |"
           " best over nβ |", "|---|---|---|---|---|---|---|---|---|"]
    for case, r in got:
        task, t = build(case), truths[case.name]
        gamma = r["settings"]["localization"]
        best = crossing_best(task, gamma)
        runs = [("reported", r["settings"]["nbeta"] or task.n / math.log(task.n), r["llc"], r["mcse"])]
        for label, key in (("rung", "nbeta_rung"), ("fall rung", "fall_rung")):
            if r.get(key):
                runs.append((label, r[key]["nbeta"], r[key]["llc"], r[key]["mcse"]))
        for label, nbeta, llc, mcse in runs:
            exact = tasks.normal_crossing_expectation(task, nbeta, gamma)
            llc, mcse = (float("nan") if v is None else v for v in (llc, mcse))
            out.append(f"| {case.name} | {t:.4g} | {label} | {nbeta:.4g} | {llc:.4g} ± {mcse:.2g} | {exact:.4g} | "
                       f"{(llc - exact) / mcse:+.1f} | {(exact - t) / t:+.1%} | {best:.4g} ({(best - t) / t:+.1%}) |")
    return "\n".join(out) + "\n"


def _dln_truth(case: Case) -> float:
    from lambdahat import truth

    return float(truth.deep_linear_network(case.params["widths"], case.params["rank"]).value)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", nargs="+", default=list(ROUTES), choices=ROUTES)
    parser.add_argument("--bands", nargs="+", default=list(BAND_ORDER), choices=BAND_ORDER)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--set", dest="version", default="v1", choices=sorted(VERSIONS))
    parser.add_argument("--cache", type=Path, default=None, help="the results file (default: per set, under benchmarks/out)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cache = args.cache or (CACHE if args.version == "v1" else OUT / f"blind_accuracy_{args.version}.jsonl")
    out = args.out or OUT / f"accuracy_tables{'' if args.version == 'v1' else '_' + args.version}.md"
    if not args.report_only:
        run(args.routes, args.bands, args.workers, args.version, cache)
    text = report(args.version, cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
