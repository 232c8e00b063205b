"""Peak memory that lambdahat's sampling adds, ÷ the model's parameter bytes, per sampler setup.

    python benchmarks/memory.py [--repeats 3] [--cases seq,check,vec,...]

Each (case, allocator, repeat) runs in a fresh process (``--child CASE``): a bias-free deep linear
network 512-1024-1024-1024-1024-512 (4,194,304 weights, 16 MiB) on n = 256 samples with batch 4,
so the parameters dominate activations and data; gc and glibc malloc_trim, VmRSS read, the peak
(VmHWM) reset by writing 5 to /proc/self/clear_refs, one ``estimate_llc`` at fixed settings (6
draws, no burn-in), then (VmHWM − VmRSS before) ÷ parameter bytes. That includes everything the
call holds at its peak (w*, the loss check at w*, L_n(w*), the trace).

Two allocator columns. "glibc": the default malloc, whose mmap threshold rises to the size of
the largest block freed (up to 32 MiB), so after the first step the 16 MiB vectors and 4 MiB
layer gradients come from the heap, and freed heap memory is not always returned: this is what a
user's process sees. "live": the child runs with ``MALLOC_MMAP_THRESHOLD_=131072`` (every block
of 128 KiB or more is mmapped and returned when freed), so the peak is the tensors alive at once.

Cases: ``seq`` one SGLD chain without the acceptance check; ``check`` the same with the check on
every step (acceptance_every=1); ``vec`` 4 vectorised SGLD chains without the check (the ratio
per chain is printed too); ``sghmc`` / ``sghmc_check`` one SGHMC chain (the auto sampler's
engine) without / with the check every step; ``rmsprop_check``, ``sgnht``, ``mala`` one chain
(MALA full batch: n = 256 in one batch). One torch thread.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys

CASES = {
    "seq": dict(num_chains=1, chain_mode="sequential", sampler=("sgld", dict(acceptance_every=0))),
    "check": dict(num_chains=1, chain_mode="sequential", sampler=("sgld", dict(acceptance_every=1))),
    "vec": dict(num_chains=4, chain_mode="vectorized", sampler=("sgld", dict(acceptance_every=0))),
    "sghmc": dict(num_chains=1, chain_mode="sequential", sampler=("sghmc", dict(acceptance_every=0))),
    "sghmc_check": dict(num_chains=1, chain_mode="sequential", sampler=("sghmc", dict(acceptance_every=1))),
    "rmsprop_check": dict(num_chains=1, chain_mode="sequential", sampler=("rmsprop_sgld", dict(acceptance_every=1))),
    "sgnht": dict(num_chains=1, chain_mode="sequential", sampler=("sgnht", {})),
    "mala": dict(num_chains=1, chain_mode="sequential", sampler=("mala", {}), batch_size=256),
}
ALLOCATORS = {"glibc": {}, "live": {"MALLOC_MMAP_THRESHOLD_": "131072"}}
DEFAULT_CASES = ["seq", "check", "vec", "sghmc", "sghmc_check"]
WIDTHS = [512, 1024, 1024, 1024, 1024, 512]


def _status(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return float(line.split()[1]) * 1024
    raise RuntimeError(field)


def child(case: str) -> dict:
    import torch
    from torch import nn

    import lambdahat as lh
    from lambdahat.samplers import SamplerConfig

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(*[nn.Linear(a, b, bias=False) for a, b in zip(WIDTHS[:-1], WIDTHS[1:])]).eval()
    x = torch.randn(256, WIDTHS[0], generator=gen)
    with torch.no_grad():
        y = model(x)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    spec = dict(CASES[case])
    name, options = spec.pop("sampler")
    sampler = SamplerConfig(name, **options)
    spec.setdefault("batch_size", 4)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    result = lh.estimate_llc(model, (x, y), lh.losses.gaussian_nll, sampler=sampler, step_size=1e-6, localization=100.0,
                             nbeta=50.0, num_burnin_steps=0, num_draws=6, seed=0, progress=False, **spec)
    ratio = (_status("VmHWM") - before) / param_bytes
    return dict(case=case, ratio=ratio, per_chain=ratio / spec["num_chains"], chain_mode=result.trace.config["chain_mode"])


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1])))
        return 0
    repeats = int(argv[argv.index("--repeats") + 1]) if "--repeats" in argv else 3
    cases = argv[argv.index("--cases") + 1].split(",") if "--cases" in argv else DEFAULT_CASES
    rows: dict[tuple[str, str], list[dict]] = {(c, a): [] for c in cases for a in ALLOCATORS}
    for _ in range(repeats):
        for case in cases:
            for allocator, extra in ALLOCATORS.items():
                env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
                out = subprocess.run([sys.executable, __file__, "--child", case], capture_output=True, text=True,
                                     env=env, check=True).stdout
                rows[case, allocator].append(json.loads(out.strip().splitlines()[-1]))
    print("| case | sampler | chains | chain mode | glibc: peak added ÷ parameter bytes (median) | per chain | all "
          "| live: median | per chain | all |")
    print("|---|---|---:|---|---:|---:|---|---:|---:|---|")
    for case in cases:
        k = CASES[case]["num_chains"]
        name, options = CASES[case]["sampler"]
        cells = []
        for allocator in ALLOCATORS:
            ratios = sorted(r["ratio"] for r in rows[case, allocator])
            median = ratios[len(ratios) // 2]
            cells.append(f"{median:.2f} | {median / k:.2f} | " + ", ".join(f"{r:.2f}" for r in ratios))
        print(f"| {case} | {name} {options or ''} | {k} | {rows[case, 'glibc'][0]['chain_mode']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
