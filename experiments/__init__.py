"""Reproductions of the LLC paper's claims (Lau et al., arXiv 2308.12108), one module each.

Run one with ``python -m experiments.NAME`` (full size, writes its section of docs/results.md)
or ``python -m experiments.NAME --quick`` (CI size, checks the direction of the result).
"""
