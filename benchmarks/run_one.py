"""Run ONE (tool, workload) benchmark in this process and write its measurements as JSON.

    python benchmarks/run_one.py TOOL WORKLOAD OUT.json [--quick] [--option KEY=VALUE ...]

TOOL is one of: lambdahat, bare, devinterp-1.3.2, devinterp-2.0.1 (the devinterp ones must run
with the python of a virtual environment that has that devinterp installed). Only the sampling
call is timed (model and data construction, imports and data wrapping are not); the JSON also
holds the process's peak resident set size (ru_maxrss) just before and after that call. Imports only the standard library,
torch and numpy at the top, so any of the environments can run it.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import workloads  # noqa: E402


def _maxrss_mb() -> float:
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- lambdahat


def run_lambdahat(w, model, x, y, options):
    import lambdahat

    kwargs = dict(
        step_size=w.step_size,
        localization=w.localization,
        nbeta=w.nbeta,
        num_chains=w.num_chains,
        num_draws=w.num_draws,
        num_burnin_steps=0,
        batch_size=w.batch_size,
        seed=0,
        progress=False,
    )
    for key, value in options.items():
        kwargs[key] = value

    def go():
        result = lambdahat.estimate_llc(model, (x, y), workloads.loss_fn, **kwargs)
        return float(result.llc_mean), {"diverged": {str(k): int(v) for k, v in result.diverged.items()}}

    return go


# ----------------------------------------------------------------------------- bare loop


def bare_sgld(w, model, x, y, steps: int):
    """Plain PyTorch SGLD, the update of Lau et al. (arXiv 2308.12108), chains one after another:

        w ← w − (ε/2) (nβ ∇L_B(w) + γ (w − w*)) + √ε ξ,   ξ ~ N(0, I)

    in-memory tensors, a minibatch by indexing a fresh permutation each epoch (the full data when
    the batch is the whole set), forward + backward, a torch._foreach update, the batch loss
    recorded into a preallocated tensor (no .item() in the loop). Runs on the data's device (the
    generator and the loss buffer live there; on the CPU the draws do not depend on that).
    Returns the batch losses (chain, step) of ``steps`` steps per chain; the model is left at w*."""
    device = x.device
    eps, gamma, nbeta = w.step_size, w.localization, w.nbeta
    n, batch_size = w.n, min(w.batch_size, w.n)
    params = [p for p in model.parameters()]
    loss_fn = workloads.loss_fn
    noise_std = math.sqrt(eps)
    with torch.no_grad():
        w_star = [p.detach().clone() for p in params]
    noise = [torch.empty_like(p) for p in params]
    losses = torch.empty(w.num_chains, steps, device=device)
    for chain in range(w.num_chains):
        gen = torch.Generator(device=device).manual_seed(1000 + chain)
        with torch.no_grad():
            torch._foreach_copy_(params, w_star)
        perm, pos = None, n
        for t in range(steps):
            if batch_size >= n:
                xb, yb = x, y
            else:
                if pos + batch_size > n:
                    perm, pos = torch.randperm(n, generator=gen, device=device), 0
                idx = perm[pos : pos + batch_size]
                pos += batch_size
                xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            loss = loss_fn(model(xb), yb)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                losses[chain, t] = loss
                offset = torch._foreach_sub(params, w_star)
                torch._foreach_mul_(grads, nbeta)
                torch._foreach_add_(grads, offset, alpha=gamma)  # drift = nβ g + γ (w − w*)
                torch._foreach_add_(params, grads, alpha=-eps / 2)
                for buf in noise:
                    buf.normal_(generator=gen)
                torch._foreach_add_(params, noise, alpha=noise_std)
    with torch.no_grad():
        torch._foreach_copy_(params, w_star)
    return losses


def run_bare(w, model, x, y, options):
    """:func:`bare_sgld` for ``num_draws`` steps per chain, λ̂ from its batch losses and L_n(w*)."""

    def go():
        with torch.no_grad():
            init_loss = float(workloads.loss_fn(model(x), y))  # L_n(w*) on the full data
        losses = bare_sgld(w, model, x, y, w.num_draws)
        llc_per_chain = w.nbeta * (losses.double().mean(dim=1) - init_loss)
        return float(llc_per_chain.mean()), {}

    return go


# ----------------------------------------------------------------------------- devinterp 1.3.2


def run_devinterp_132(w, model, x, y, options):
    """devinterp 1.3.2: estimate_learning_coeff_with_summary with its default SGLD optimizer
    (lr = ε, localization = γ, nbeta = nβ: the same update), a shuffled DataLoader over a
    TensorDataset of the in-memory tensors, offline LLCEstimator (the default), cores = 1,
    its default init loss (num_chains batches; L_n(w*) = 0 on every batch here)."""
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(x, y), batch_size=min(w.batch_size, w.n), shuffle=True)

    def evaluate(model, data):
        xb, yb = data
        return workloads.loss_fn(model(xb), yb)

    def go():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = estimate_learning_coeff_with_summary(
                model,
                loader,
                evaluate=evaluate,
                sampling_method=SGLD,
                optimizer_kwargs=dict(lr=w.step_size, localization=w.localization, nbeta=w.nbeta),
                num_draws=w.num_draws,
                num_chains=w.num_chains,
                num_burnin_steps=0,
                cores=1,
                seed=0,
                device="cpu",
                verbose=False,
                online=False,
            )
        return float(result["llc/mean"]), {}

    return go


# ----------------------------------------------------------------------------- devinterp 2.0.1


def run_devinterp_201(w, model, x, y, options):
    """devinterp 2.0.1: devinterp.slt.llc.llc (sample + compute_llc), default SGMCMC.sgld
    (lr = ε, localization = γ, n_beta = nβ: the same update), no observables.

    2.0.1 only takes a HuggingFace Dataset with an "input_ids" column and a per-token
    loss_fn(model, input_ids) -> (batch, seq-1). Each row's input_ids is [i, 0], i the sample's
    index; the loss looks the sample up in the in-memory tensors and returns its ½‖y − f(x)‖²
    as a (batch, 1) "per-token" loss, whose batch mean is the same L_B. Init loss over n // batch
    batches (the full data, as lambdahat does); its defaults otherwise (zarr output, in a
    temporary folder)."""
    import tempfile

    from datasets import Dataset
    from devinterp.slt.llc import llc

    batch_size = min(w.batch_size, w.n)
    ids = torch.stack([torch.arange(w.n), torch.zeros(w.n, dtype=torch.long)], dim=1)
    dataset = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")

    def per_token_loss(model, input_ids):
        idx = input_ids[:, 0]
        return workloads.per_sample_loss(model(x[idx]), y[idx]).unsqueeze(1)

    def go():
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = llc(
                model,
                dataset,
                {},
                lr=w.step_size,
                n_beta=w.nbeta,
                localization=w.localization,
                num_chains=w.num_chains,
                num_draws=w.num_draws,
                num_burnin_steps=0,
                batch_size=batch_size,
                num_init_loss_batches=max(1, w.n // batch_size),
                init_seed=0,
                device="cpu",
                loss_fn=per_token_loss,
                output_path=os.path.join(tmp, "samples.zarr"),
            )
            return float(result["llc_mean"].values), {}

    return go


RUNNERS = {
    "lambdahat": run_lambdahat,
    "bare": run_bare,
    "devinterp-1.3.2": run_devinterp_132,
    "devinterp-2.0.1": run_devinterp_201,
}


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    tool, key, out_path = argv[:3]
    quick = "--quick" in argv
    options = {}
    for i, arg in enumerate(argv):
        if arg == "--option":
            k, v = argv[i + 1].split("=", 1)
            options[k] = _parse_value(v)
    w = workloads.WORKLOADS[key].scaled(quick)
    process_start = time.perf_counter()
    model, x, y = workloads.build(key)
    go = RUNNERS[tool](w, model, x, y, options)  # imports and data wrapping, not timed
    rss_before = _maxrss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    llc_mean, extra = go()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    rss_after = _maxrss_mb()
    record = dict(
        tool=tool,
        workload=key,
        options=options,
        seconds=elapsed,
        cpu_seconds=cpu,
        steps=w.num_chains * w.num_draws,
        llc_mean=llc_mean,
        rss_before_mb=rss_before,
        peak_rss_mb=rss_after,
        num_params=workloads.num_params(model),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        build_and_run_seconds=time.perf_counter() - process_start,
        **extra,
    )
    with open(out_path, "w") as fh:
        json.dump(record, fh)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
