"""Investigation (docs/accuracy.md, "The depth-5 certified miss of v8, examined"): λ̂ on the seen v8
case dln 13-12-20-15-18-20 r=3 n=10000 (λ = 84) against the step size, the sampler, the start and nβ.

    python benchmarks/investigations/deep_miss_step_and_nbeta.py sgld:0.01 30000 40000   # SGLD, ε·nβ = 0.01
    python benchmarks/investigations/deep_miss_step_and_nbeta.py sghmc:1.6e-7:0.02 6000 60000
    python benchmarks/investigations/deep_miss_step_and_nbeta.py auto_sgld             # adaptive, sampler="sgld"
    python benchmarks/investigations/deep_miss_step_and_nbeta.py nb16                  # the same at 16 nβ

Prints one JSON row: λ̂ ± MCSE, λ̂ over eight consecutive windows of the draws, the mean MALA
acceptance, the failed checks and the adaptation's notes. One thread; 1–2 minutes per row.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)
import lambdahat as lh  # noqa: E402
from blind_cases import build, cases  # noqa: E402
from lambdahat.potential import default_nbeta  # noqa: E402

case = next(c for c in cases("v8") if c.name == "dln 13-12-20-15-18-20 r=3 n=10000")
task = build(case)
nb = default_nbeta(task.n)
cfg = sys.argv[1]
fixed = dict(num_chains=4, batch_size=256, localization=1.0, nbeta_check=False, progress=False)
if cfg.startswith("sgld:"):
    kw = dict(fixed, step_size=float(cfg.split(":")[1]) / nb, num_burnin_steps=int(sys.argv[2]), num_draws=int(sys.argv[3]))
elif cfg.startswith("sghmc:"):
    _, eps, friction = cfg.split(":")
    kw = dict(fixed, step_size=float(eps), num_burnin_steps=int(sys.argv[2]), num_draws=int(sys.argv[3]),
              sampler=dict(name="sghmc", friction=float(friction)))
elif cfg.startswith("nb"):
    kw = dict(progress=False, sampler="sgld", nbeta_check=False, nbeta=float(cfg[2:]) * nb)
elif cfg == "auto_sgld":
    kw = dict(progress=False, sampler="sgld", nbeta_check=False)
else:
    kw = dict(progress=False)
start = time.time()
r = lh.estimate_llc(task.model, task.data, task.loss_fn, **kw)
losses = r.trace.draws("loss")
windows = [float(r.nbeta * (losses[:, i].mean() - r.init_loss)) for i in np.array_split(np.arange(losses.shape[1]), 8)]
accept = r.trace.draws("mala_accept") if "mala_accept" in r.trace.arrays else None
print(json.dumps(dict(
    cfg=cfg, argv=sys.argv[2:], llc=float(r.llc_mean), mcse=float(r.llc_mcse), truth=float(task.truth.value),
    windows=[round(w, 2) for w in windows], accept=None if accept is None else float(np.nanmean(accept)),
    certified=r.certified, failed=[c.name for c in r.checks if not c.ok],
    notes=r.adaptation.notes if r.adaptation else None, settings=str(r.settings), seconds=round(time.time() - start, 1))))
