"""Investigation (docs/accuracy.md): λ̂ along a ladder of nβ at fixed γ = 1 on seen v3 cases.

python benchmarks/investigations/nbeta_ladder.py OUT.jsonl "dln 60-64" "dln 19-19" ... --factors 0.25 0.5 1 2 4
Each (case, factor) runs estimate_llc with nbeta = factor × n/log n and localization = 1, every other
setting adaptive, in its own process (one thread); rows are appended to OUT.jsonl.
If λ̂ rises toward Aoyagi's λ as nβ grows, the miss is the finite-nβ gap of the localised posterior;
if λ̂ is flat in nβ, it is not.
"""
import argparse, json, os, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def one(prefix: str, factor: float, version: str) -> dict:
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import lambdahat as lh
    from blind_cases import cases, build
    from lambdahat.potential import default_nbeta
    case = next(c for c in cases(version) if c.name.startswith(prefix))
    task = build(case)
    nbeta = factor * default_nbeta(task.n)
    t = time.perf_counter()
    r = lh.estimate_llc(task.model, task.data, task.loss_fn, nbeta=nbeta, localization=1.0, progress=False)
    return dict(case=case.name, factor=factor, nbeta=nbeta, truth=float(task.truth.value), llc=float(r.llc_mean),
                mcse=float(r.llc_mcse), certified=bool(r.certified), failed=[c.name for c in r.checks if not c.ok],
                step_size=r.settings.step_size, seconds=time.perf_counter() - t,
                grads=int(r.gradient_evaluations))


def job(args):
    prefix, factor, version = args
    code = ("import json,sys; sys.path.insert(0,%r); import nbeta_ladder as m; print('ROW '+json.dumps(m.one(%r,%r,%r)))"
            % (str(Path(__file__).parent), prefix, factor, version))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    for line in p.stdout.splitlines():
        if line.startswith("ROW "):
            return json.loads(line[4:])
    return dict(case=prefix, factor=factor, error=p.stderr[-1500:])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out"); ap.add_argument("cases", nargs="+")
    ap.add_argument("--factors", type=float, nargs="+", default=[0.25, 0.5, 1, 2, 4])
    ap.add_argument("--version", default="v3"); ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    jobs = [(c, f, a.version) for c in a.cases for f in a.factors]
    with ThreadPoolExecutor(a.workers) as ex, open(a.out, "a") as fh:
        for row in ex.map(job, jobs):
            print(json.dumps(row), flush=True); fh.write(json.dumps(row) + "\n"); fh.flush()
