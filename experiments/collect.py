"""Join the experiments' sections (docs/results/*.md) into docs/results.md.

``python -m experiments.collect``
"""

from __future__ import annotations

from ._common import DOCS

ORDER = ["dln_accuracy", "sgld_vs_mala", "training_heuristics", "transformer_stages"]

HEADER = """# Results: the paper's claims, rerun

Each section below was written by the command it names, at full size, on the machine it names.
The same scripts with `--quick` run in CI (`tests/test_experiment_*.py`) and check the direction of
each result. Paper: Lau, Furman, Wang, Murfet, Wei, *The Local Learning Coefficient: A
Singularity-Aware Complexity Measure* (arXiv 2308.12108).

"""


def main() -> None:
    parts = [HEADER]
    folder = DOCS / "results"
    names = [n for n in ORDER if (folder / f"{n}.md").exists()]
    names += sorted(p.stem for p in folder.glob("*.md") if p.stem not in ORDER)
    for name in names:
        parts.append((folder / f"{name}.md").read_text().rstrip() + "\n\n")
    (DOCS / "results.md").write_text("".join(parts).rstrip() + "\n")
    print(f"wrote {DOCS / 'results.md'} from {len(names)} sections")


if __name__ == "__main__":
    main()
