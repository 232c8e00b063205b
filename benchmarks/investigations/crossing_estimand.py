"""Investigation (docs/accuracy.md, "The normal crossings"): is a crossing's miss the sampler's or the estimand's?

    python benchmarks/investigations/crossing_estimand.py            # every set with a committed cache

For each normal crossing of every blind set in ``benchmarks/results`` (all seen), the auto route's
reported λ̂ against ``tasks.normal_crossing_expectation`` at the run's nβ and γ: the value a perfect
sampler returns there, the noise of the case's own targets included. Then the best value any nβ on
the ladder n / log n × 4^k (k = −3..2; ``blind_accuracy.crossing_best``) gives a perfect sampler. No sampling is done: quadrature only.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))


def main() -> None:
    from blind_accuracy import crossing_best
    from blind_cases import VERSIONS, build, cases
    from lambdahat import tasks

    print("| set | case | truth | nβ | λ̂ ± MCSE | exact at nβ | (λ̂ − exact) / MCSE | exact − λ | best over nβ |")
    print("|---|---|---|---|---|---|---|---|---|")
    gaps, bests, zs = [], [], []
    for version in sorted(VERSIONS, key=lambda v: int(v[1:])):
        path = HERE / "results" / f"blind_accuracy_{version}.jsonl"
        if not path.exists():
            continue
        rows = {r["case"]: r for r in map(json.loads, path.read_text().splitlines()) if r.get("route") == "auto"}
        for case in cases(version):
            r = rows.get(case.name)
            if case.kind != "normal_crossing" or r is None or "error" in r:
                continue
            task = build(case)
            truth = float(task.truth.value)
            settings = r.get("settings") or {}
            gamma = settings.get("localization", 1.0)
            nbeta = settings.get("nbeta") or task.n / math.log(task.n)
            exact = tasks.normal_crossing_expectation(task, nbeta, gamma)
            best = crossing_best(task, gamma)
            z = (r["llc"] - exact) / r["mcse"]
            gaps.append((exact - truth) / truth)
            bests.append((best - truth) / truth)
            zs.append(z)
            print(f"| {version} | {case.name} | {truth:.4g} | {nbeta:.4g} | {r['llc']:.4g} ± {r['mcse']:.2g} | "
                  f"{exact:.4g} | {z:+.1f} | {gaps[-1]:+.1%} | {best:.4g} ({bests[-1]:+.1%}) |")
    k = len(zs)
    print(f"\n{k} runs: exact − λ at the run's nβ {min(gaps):+.1%} to {max(gaps):+.1%} (mean {sum(gaps) / k:+.1%}); "
          f"best over nβ {min(bests):+.1%} to {max(bests):+.1%} (mean {sum(bests) / k:+.1%}); "
          f"|z| ≤ 2 in {sum(abs(z) <= 2 for z in zs)} of {k}, median z {sorted(zs)[k // 2]:+.1f}")


if __name__ == "__main__":
    main()
