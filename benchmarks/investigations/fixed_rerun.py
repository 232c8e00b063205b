"""Investigation (docs/accuracy.md, "A fixed rerun at the adaptive run's settings"): does
``result.settings`` give the same λ̂ when rerun as one fixed setting, and does ``result.fixed_settings()``?

    python benchmarks/investigations/fixed_rerun.py v14 dln      # the deep linear networks of v14 (seen)

Per case, in its own process with one thread: ``estimate_llc(model, data, loss)`` with no settings
(the blind run again, bit for bit), then fixed runs from w* at ``**result.settings`` and at
``**result.fixed_settings()``, both with ``nbeta_check=False``. One JSON line per case in
``benchmarks/results/fixed_rerun_<set>.jsonl``; a table at the end (the truth enters only there).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))


def _one(args: tuple[str, str]) -> dict:
    import torch

    torch.set_num_threads(1)
    import lambdahat as lh
    from blind_cases import build, cases

    version, name = args
    task = build(next(c for c in cases(version) if c.name == name))
    row: dict = dict(case=name)
    for label in ("auto", "settings", "fixed_settings"):
        start = time.perf_counter()
        if label == "auto":
            result = auto = lh.estimate_llc(task.model, task.data, task.loss_fn, progress=False)
            row["burnin_travel"] = auto.adaptation.burnin_travel
        else:
            given = auto.settings if label == "settings" else auto.fixed_settings()
            result = lh.estimate_llc(task.model, task.data, task.loss_fn, progress=False,
                                     **given.replace(nbeta_check=False))
        row[label] = dict(llc=float(result.llc_mean), mcse=float(result.llc_mcse), certified=result.certified,
                          failed=[c.name for c in result.checks if not c.ok],
                          num_burnin_steps=int(result.settings.num_burnin_steps),
                          num_draws=int(result.settings.num_draws), seconds=time.perf_counter() - start)
    return row


def main(version: str, kind: str, workers: int = 2) -> None:
    from blind_cases import build, cases

    chosen = [c for c in cases(version) if c.kind == kind]
    out = HERE / "results" / f"fixed_rerun_{version}.jsonl"
    done = {json.loads(line)["case"] for line in out.read_text().splitlines()} if out.exists() else set()
    with ProcessPoolExecutor(workers) as pool:
        for row in pool.map(_one, [(version, c.name) for c in chosen if c.name not in done]):
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(row["case"], {k: round(row[k]["llc"], 4) for k in ("auto", "settings", "fixed_settings")}, flush=True)
    rows = {r["case"]: r for r in map(json.loads, out.read_text().splitlines())}
    print("| case | truth | auto | at result.settings (burn-in) | at result.fixed_settings() (burn-in) |")
    print("|---|---|---|---|---|")
    errors = {k: [] for k in ("auto", "settings", "fixed_settings")}
    for case in chosen:
        r = rows.get(case.name)
        if r is None:
            continue
        t = float(build(case).truth.value)
        cells = []
        for k in errors:
            v = r[k]
            errors[k].append(abs(v["llc"] - t) / t)
            cells.append(f"{v['llc']:.4g} ± {v['mcse']:.2g} ({(v['llc'] - t) / t:+.1%}, "
                         f"{'certified' if v['certified'] else 'refused'}"
                         + (f", {v['num_burnin_steps']}" if k != "auto" else "") + ")")
        print(f"| {case.name} | {t:.4g} | " + " | ".join(cells) + " |")
    print("| mean abs. rel. error | | " + " | ".join(f"{sum(e) / len(e):.1%}" for e in errors.values()) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 2)
