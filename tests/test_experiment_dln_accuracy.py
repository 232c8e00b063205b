"""The quick DLN accuracy experiment: λ̂ tracks Aoyagi's exact λ across random networks.

Six networks of 50–500 weights (depth 2–3, every layer of rank r) with 2 chains × (1000 + 1000)
SGLD steps. The between-chain MCSEs are 1–4% of λ, so the 15% band on the mean absolute relative
error leaves room for the finite-nβ bias the full run measures (−2% to −18% at these budgets;
docs/results.md) and nothing else; a sampler that ignored the loss, or an nβ off by a factor,
misses it by far. λ spans 10–90 here, so a Spearman of 0.9 over 6 networks asks that λ̂ order
them as λ does, allowing one adjacent swap.
"""

import math

from experiments import dln_accuracy


def test_quick_dln_accuracy(tmp_path):
    summary = dln_accuracy.main(["--quick", "--out", str(tmp_path)])
    rows = summary["rows"]
    assert len(rows) == 6
    assert all(r["diverged"] == 0 for r in rows)
    mare = sum(abs(r["rel_error"]) for r in rows) / len(rows)
    assert mare <= 0.15, [(r["widths"], r["rank"], r["truth"], r["estimate"]) for r in rows]
    assert summary["spearman_all"] >= 0.9
    assert all(math.isfinite(r["estimate"]) and r["estimate"] > 0 for r in summary["reduced_rows"])
    assert (tmp_path / "dln_accuracy.png").stat().st_size > 10_000
