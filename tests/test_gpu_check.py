"""benchmarks/gpu_check.py on the CPU: the `--device cpu --quick` run end to end, its device branch
(run with the CPU standing in for the device) and its CPU-noise shim."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

SECTIONS = ["same_seed", "dln", "workloads", "mixed_precision"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check_out")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    seconds = time.perf_counter() - start
    assert (out / "results.json").exists(), proc.stderr[-3000:]
    return proc, json.loads((out / "results.json").read_text()), (out / "results.md").read_text(), seconds


def test_quick_cpu_run_passes_and_writes_every_section(quick_run):
    proc, res, md, seconds = quick_run
    assert proc.returncode == 0, (res.get("failed_checks"), res.get("errors"), proc.stderr[-3000:])
    assert res["passed"] and res["exit_status"] == 0 and not res["errors"] and not res["failed_checks"]
    assert set(SECTIONS) <= set(res["sections"])
    for name in SECTIONS:
        assert "error" not in res["sections"][name], res["sections"][name].get("traceback")
        assert f"## {name}" in md
    m = res["machine"]
    assert m["device"] == "cpu" and m["torch"] == torch.__version__ and res["total_wall_seconds"] > 0
    print(f"gpu_check --device cpu --quick: {seconds:.1f} s (script's own total {res['total_wall_seconds']:.1f} s)")


def test_same_seed_checks_cover_every_sampler_and_mode(quick_run):
    sec = quick_run[1]["sections"]["same_seed"]
    assert sec["passed"]
    assert {(c["sampler"], c["chain_mode"]) for c in sec["cases"]} == {
        (s, m) for s in gpu_check.SAMPLERS for m in gpu_check.CHAIN_MODES
    }
    names = [c["name"] for c in sec["checks"]]
    for s in gpu_check.SAMPLERS:
        assert f"{s}: vectorized vs sequential on cpu" in names
        for m in gpu_check.CHAIN_MODES:
            assert f"{s}/{m}: repeat on cpu (bit-identical)" in names
            assert f"{s}/{m}: CPU-noise shim == plain CPU run (bit-identical)" in names
    for c in sec["checks"]:
        assert c["passed"] and c["counted"], c
        if "bit-identical" in c["name"]:
            assert c["max_rel_diff"] == 0.0
    for case in sec["cases"]:  # float32 rounding measured, far inside the tolerance
        assert 0 < case["float32_rounding"] < 1e-5 and case["tolerance"] == gpu_check.BASE_TOLERANCE


def test_other_sections_have_their_numbers(quick_run):
    secs = quick_run[1]["sections"]
    sizes = secs["dln"]["sizes"]
    assert [s["label"] for s in sizes] == ["10k", "100k"]
    for s in sizes:
        assert s["truth"] > 0 and s["runs"]
        ok = [r for r in s["runs"] if r["llc_mean"] is not None]
        assert ok and all(r["seconds"] > 0 and r["rel_error"] is not None for r in ok)
    rows = {r["workload"]: r for r in secs["workloads"]["rows"]}
    assert set(rows) == {"b", "c", "d"}
    for r in rows.values():
        assert r["bare"]["ms_per_step"] > 0 and r["ratio_sequential_over_bare"] > 0
    mp = secs["mixed_precision"]
    assert mp["available"] is False or "float32" in mp or "error" in mp


def test_device_branch_with_the_cpu_standing_in(monkeypatch):
    """The comparisons that run on a CUDA device, exercised on the CPU (one sampler): there the
    'device' result with CPU noise is bit-identical to the CPU's."""
    monkeypatch.setattr(gpu_check, "SAMPLERS", ["sgld"])
    sec = gpu_check.section_same_seed(dict(device=torch.device("cpu"), quick=True, foreign=True))
    assert sec["passed"]
    names = {c["name"]: c for c in sec["checks"]}
    for m in gpu_check.CHAIN_MODES:
        same = names[f"sgld/{m}: cpu vs cpu, same seed and noise"]
        assert same["passed"] and same["max_rel_diff"] == 0.0
        assert names[f"sgld/{m}: repeat on cpu (bit-identical expected)"]["bit_identical"]
        stat = names[f"sgld/{m}: cpu own noise vs cpu (statistical)"]
        assert not stat["counted"] and stat["z"] == 0.0


class _FakeDeviceGenerator:
    """Stands in for a CUDA generator: not a CPU one, knows its seed."""

    class device:
        type = "cuda"

    def __init__(self, seed):
        self.seed = seed

    def initial_seed(self):
        return self.seed


def test_cpu_noise_shim_draws_from_a_cpu_twin_with_the_same_seed():
    from lambdahat.samplers import _common, sgld

    gens = [_FakeDeviceGenerator(7), _FakeDeviceGenerator(2**62 + 3)]
    buf = torch.empty(2, 33, dtype=torch.float64)
    original = _common.normal_
    with gpu_check.cpu_noise() as calls:
        assert sgld.normal_ is not original and _common.normal_ is not original  # patched where imported
        sgld.normal_(buf, gens)
        second = _common.normal_(torch.empty(2, 33), gens)  # the same twins, advanced
        u = _common.uniform(torch.empty(2), gens)
    assert sgld.normal_ is original and _common.normal_ is original and calls == {"normal": 2, "uniform": 1}
    for k, seed in enumerate([7, 2**62 + 3]):
        twin = torch.Generator().manual_seed(seed)
        first = torch.empty(33).normal_(generator=twin)
        assert torch.equal(buf[k], first.double())
        assert torch.equal(second[k], torch.empty(33).normal_(generator=twin))
        assert u[k] == torch.empty(()).uniform_(generator=twin)
