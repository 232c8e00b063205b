"""lambdahat's BIF and susceptibilities against devinterp 2.0.1's, side by side, on one tiny language model.

    python benchmarks/compare_observables.py [--quick] [--out DIR] [--json PATH] [--venv-dir DIR]

One command. It

1. creates, if absent, the virtual environment ``benchmarks/.venvs/devinterp-2.0.1`` with
   ``compare_devinterp.ensure_venv`` (``pip install torch==2.13.0``, then ``devinterp==2.0.1``);
2. trains a tiny causal language model (``TinyLM`` below: embeddings, two attention heads, an MLP,
   2,800 weights) for a few seconds on seeded synthetic token windows, and fixes a probe set of
   sequences and a reference set of training windows;
3. runs lambdahat (``lh.susceptibilities``, whose full run also gives ``lh.bif``) in this process
   and devinterp (``devinterp.slt.susceptibilities.susceptibilities``, whose full run's samples give
   ``devinterp.slt.bif.compute_bif``) in a child process with the venv's python (the child imports
   only torch, numpy and devinterp; it reads the model's state dict and the token tensors from a
   temporary folder and runs this same file with ``--child``), both at the same ε (devinterp
   ``lr``), γ (``localization``), nβ, chains, burn-in, draws, thinning, batch size and seeds;
4. (a) deterministic identity: lambdahat's recorded per-token probe losses, put into the layout of
   devinterp's sampler output (an ``xarray.DataTree`` with ``loss_<name>``, ``input_ids_<name>`` and
   ``init_loss``), go through devinterp's own ``compute_bif`` / ``compute_susceptibilities``, and
   devinterp's recorded losses go through lambdahat's ``lh.bif`` / ``susceptibility_from_runs``;
   after the conversion below the two agree to float rounding;
   (b) statistical: each tool's own sampler, BIF correlation matrix and χ compared entry by entry in
   units of their Monte Carlo error (a delete-one-group jackknife, groups = (seed, block of
   consecutive draws), each group holding that block of every chain and every run of the seed);
5. writes ``docs/results/observables_devinterp.md`` and ``benchmarks/results/observables_devinterp.json``
   (or under ``--out DIR``).

Conventions (read in the released devinterp 2.0.1, ``site-packages/devinterp/slt``):

* BIF: ``compute_bif`` returns +Corr(ℓ_i, ℓ_j) over the stacked (chain, draw) samples, +Cov (ddof 1)
  with ``compute_covariance=True``; per token ((batch_1, batch_2, target_position,
  target_position_T)) by default, per sequence with ``correlation_method="sequence"``. lambdahat's
  ``lh.bif`` is −Cov, ``correlation=True`` −Corr, per token (m, T, m, T). So
  ``lh.bif(r, correlation=True) = −devinterp`` and ``lh.bif(r)[a, s, b, t] = −devinterp_cov[a, b, s, t]``.
* Susceptibilities: devinterp's ``sus = E_C[φ L̄] − E_C[φ ℓ] − E_C[φ](E_full[L̄] − E_full[ℓ])``,
  φ = L̄ − L0, per token, is lambdahat's χ = −(E_C[φ ΔL] − E_C[φ] E_full[ΔL]) with the same sign
  and scale (no nβ), given the same L̄ and L0. They differ in L0: devinterp's is the full run's
  ``init_loss`` (the mean per-token loss over ``num_init_loss_batches`` shuffled minibatches of
  the sampling dataset, train mode), lambdahat's L̄(w*) on the reference set. χ is affine in L0:
  χ(L0') = χ(L0) + (L0' − L0)(E_C[ΔL] − E_full[ΔL]) (:func:`shift_l0`). lambdahat's per-sample χ
  is the mean over positions of the per-token χ.
* Sample order: devinterp stores an observable's sequences in ``random.Random(obs_seed).sample``
  order; they are mapped back to the probe's order by matching the stored ``input_ids``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VERSION = "2.0.1"

#: the comparison's settings; --quick uses QUICK's overrides
SETTINGS = dict(
    vocab=16, context=8, n_train=1024, n_probe=32, n_reference=128, batch_size=32,
    train_steps=500, train_lr=1e-2, data_seed=0,
    step_size=3e-4, localization=100.0, nbeta=None,  # None: n / log n
    num_chains=4, num_burnin_steps=150, num_draws=120, every=4, seeds=2, blocks=6,
    obs_seed=1337,
)
QUICK = dict(num_burnin_steps=100, num_draws=60, every=2, seeds=1, blocks=6)
#: components: parameter-name prefixes of TinyLM (whole parameters, so that both tools restrict the same weights)
COMPONENTS = {"head0": ["heads.0"], "mlp": ["mlp"]}


# ----------------------------------------------------------------------------- the model (both sides)


class _Head(nn.Module):
    def __init__(self, d_model: int, d_head: int):
        super().__init__()
        self.q = nn.Linear(d_model, d_head, bias=False)
        self.k = nn.Linear(d_model, d_head, bias=False)
        self.v = nn.Linear(d_model, d_head, bias=False)
        self.o = nn.Linear(d_head, d_model, bias=False)

    def forward(self, x: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / math.sqrt(self.q.out_features)
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        return self.o(pattern @ self.v(x))


class TinyLM(nn.Module):
    """A one-layer causal transformer: token + position embeddings, ``n_heads`` attention heads
    (each its own parameters, ``heads.h.*``), a pre-LayerNorm ReLU MLP (``mlp.*``), an unembedding.
    tokens (B, t) → logits (B, t, vocab), t ≤ ``context``. No dropout or batch statistics, so train
    and eval mode compute the same function."""

    def __init__(self, vocab: int = 16, d_model: int = 16, n_heads: int = 2, d_head: int = 8, d_mlp: int = 32,
                 context: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(context, d_model) * 0.1)
        self.heads = nn.ModuleList(_Head(d_model, d_head) for _ in range(n_heads))
        self.ln = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.ReLU(), nn.Linear(d_mlp, d_model))
        self.unembed = nn.Linear(d_model, vocab)
        self.register_buffer("causal", torch.tril(torch.ones(context, context, dtype=torch.bool)), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[-1]
        x = self.embed(tokens) + self.pos[:t]
        causal = self.causal[:t, :t]
        attn = self.heads[0](x, causal)
        for head in self.heads[1:]:
            attn = attn + head(x, causal)
        x = x + attn
        x = x + self.mlp(self.ln(x))
        return self.unembed(x)


def make_tokens(cfg: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded synthetic language, windows of context + 1 tokens: each next token repeats the token two
    back with probability 0.4 (an attention task), else follows a sparse Markov chain (one likely
    successor 0.75, another 0.15, else uniform). Returns (train (n_train, T+1), probe (n_probe, T+1)):
    the probe is half training windows (spread evenly), half fresh windows of the same process."""
    g = torch.Generator().manual_seed(cfg["data_seed"])
    v, length = cfg["vocab"], cfg["context"] + 1
    first = torch.randperm(v, generator=g)
    second = torch.randperm(v, generator=g)
    probs = torch.full((v, v), 0.10 / v)
    probs[torch.arange(v), first] += 0.75
    probs[torch.arange(v), second] += 0.15
    n_fresh = cfg["n_probe"] - cfg["n_probe"] // 2

    def windows(n: int) -> torch.Tensor:
        x = torch.empty(n, length, dtype=torch.long)
        x[:, 0] = torch.randint(v, (n,), generator=g)
        x[:, 1] = torch.multinomial(probs[x[:, 0]], 1, generator=g)[:, 0]
        for t in range(2, length):
            markov = torch.multinomial(probs[x[:, t - 1]], 1, generator=g)[:, 0]
            repeat = torch.rand(n, generator=g) < 0.4
            x[:, t] = torch.where(repeat, x[:, t - 2], markov)
        return x

    train = windows(cfg["n_train"])
    fresh = windows(n_fresh)
    seen = train[torch.linspace(0, cfg["n_train"] - 1, cfg["n_probe"] // 2).round().long()]
    probe = torch.cat([seen, fresh])
    if len({tuple(r) for r in probe.tolist()}) != len(probe):
        raise SystemExit("probe windows are not distinct; change data_seed")
    return train, probe


def train_model(cfg: dict, train: torch.Tensor) -> TinyLM:
    """Adam on minibatches of 128 for train_steps steps, seeded."""
    torch.manual_seed(cfg["data_seed"])
    model = TinyLM(vocab=cfg["vocab"], context=cfg["context"] + 1)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["train_lr"])
    for _ in range(cfg["train_steps"]):
        opt.zero_grad()
        batch = train[torch.randint(len(train), (128,))]
        logits = model(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
    return model


def reference_indices(n: int, r: int) -> np.ndarray:
    """The reference rows lh.susceptibilities(reference=r) takes from n data samples (spread evenly;
    the report checks that L̄(w*) on these rows equals the one lambdahat reports)."""
    if r >= n:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, r)).astype(np.int64))


# ----------------------------------------------------------------------------- pure helpers (tests/test_compare_observables.py)


def devinterp_observable_order(n: int, seed: int) -> list[int]:
    """The order in which devinterp 2.0.1 stores an observable of n sequences (all of them drawn): its
    DeterministicShuffledSampler's ``random.Random(seed).sample(range(n), n)``."""
    return random.Random(seed).sample(range(n), n)


def match_rows(stored: np.ndarray, original: np.ndarray) -> np.ndarray:
    """``index`` with ``stored[k] == original[index[k]]`` for every k (rows matched exactly; every
    row of ``original`` distinct). Raises ValueError if some stored row is not in ``original``."""
    lookup = {tuple(row): i for i, row in enumerate(np.asarray(original).tolist())}
    if len(lookup) != len(original):
        raise ValueError("match_rows: the original rows are not distinct")
    try:
        return np.array([lookup[tuple(row)] for row in np.asarray(stored).tolist()], dtype=np.int64)
    except KeyError:
        raise ValueError("match_rows: a stored row is not among the original rows") from None


def to_probe_order(values: np.ndarray, index: np.ndarray, axis: int = 0) -> np.ndarray:
    """Values indexed by devinterp's stored order (``index`` from :func:`match_rows`) put back in the
    probe's order along ``axis``."""
    out = np.empty_like(values)
    where = [slice(None)] * values.ndim
    where[axis] = index
    out[tuple(where)] = values
    return out


def bif_from_devinterp(value: np.ndarray, per_token: bool = False) -> np.ndarray:
    """devinterp's +Corr / +Cov in lambdahat's convention (−Corr / −Cov): the sign, and per token the
    axes (batch_1, batch_2, s, t) → (sample a, s, sample b, t) of ``lh.bif``."""
    value = -np.asarray(value, dtype=np.float64)
    return value.transpose(0, 2, 1, 3) if per_token else value


def shift_l0(chi: np.ndarray, l0_from: float, l0_to: float, mean_delta_c: np.ndarray,
             mean_delta_full: np.ndarray) -> np.ndarray:
    """χ computed with φ = L̄ − ``l0_from`` converted to φ = L̄ − ``l0_to``: χ is affine in L0,
    χ(L0') = χ(L0) + (L0' − L0)(E_C[ΔL] − E_full[ΔL]), ΔL = ℓ − L̄ (means of the restricted and the
    full run's draws)."""
    return chi + (l0_to - l0_from) * (np.asarray(mean_delta_c) - np.asarray(mean_delta_full))


def groups(draws: int, blocks: int) -> list[np.ndarray]:
    """``blocks`` consecutive, disjoint, nearly equal blocks of draw indices covering 0..draws−1."""
    if blocks < 2 or draws < blocks:
        raise ValueError(f"groups: need 2 ≤ blocks ≤ draws, got blocks={blocks}, draws={draws}")
    return [np.asarray(b) for b in np.array_split(np.arange(draws), blocks)]


def jackknife(statistic, runs: list[list[np.ndarray]], blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Delete-one-group jackknife of ``statistic(*arrays)``.

    ``runs[s]`` is the list of arrays of seed s, each (chain, draw, ...), with equal draw counts;
    ``statistic`` receives, for each array position, the draws of every chain of every seed pooled
    into one array (1, Σ chain × draw, ...), so it must be a function of the pooled draws (as the
    BIF and χ are: means and covariances over all draws). A group is (seed s, block b): deleting it removes block b's draws from every chain of
    every array of seed s, so that dependence between the chains of a seed and between its runs
    (devinterp's chains share batches; its runs share seeds) stays inside a group. Returns
    (the estimate on everything, its jackknife standard error).
    """
    def combine(parts):  # every seed's chains pooled as one (1, chain × draw, ...) sample
        return [np.concatenate([p[k].reshape(1, -1, *p[k].shape[2:]) for p in parts], axis=1)
                for k in range(len(parts[0]))]

    full = np.asarray(statistic(*combine(runs)), dtype=np.float64)
    leave_out = []
    for s, arrays in enumerate(runs):
        draws = arrays[0].shape[1]
        for block in groups(draws, blocks):
            keep = np.setdiff1d(np.arange(draws), block)
            parts = [[a[:, keep] for a in arrays] if t == s else arrays for t, arrays in enumerate(runs)]
            leave_out.append(np.asarray(statistic(*combine(parts)), dtype=np.float64))
    leave_out = np.stack(leave_out)
    g = len(leave_out)
    se = np.sqrt((g - 1) / g * ((leave_out - leave_out.mean(axis=0)) ** 2).sum(axis=0))
    return full, se


def compare(a: np.ndarray, se_a: np.ndarray, b: np.ndarray, se_b: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Entry-by-entry comparison of two estimates with independent Monte Carlo errors: z = (a − b) /
    √(se_a² + se_b²) over the entries of ``mask`` (all if None): max |z|, mean z², the fraction
    with |z| > 2 and > 3, the Pearson correlation of a and b over those entries, and the normal
    expectation of the largest |z| among that many independent entries."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    mask = np.ones(a.shape, bool) if mask is None else np.asarray(mask, bool)
    z = (a - b) / np.sqrt(np.asarray(se_a, float) ** 2 + np.asarray(se_b, float) ** 2)
    z, x, y = z[mask], a[mask], b[mask]
    n = int(z.size)
    return dict(entries=n, max_abs_z=float(np.max(np.abs(z))), mean_z2=float(np.mean(z ** 2)),
                frac_gt2=float(np.mean(np.abs(z) > 2)), frac_gt3=float(np.mean(np.abs(z) > 3)),
                corr=float(np.corrcoef(x, y)[0, 1]) if n > 2 else float("nan"),
                expected_max_abs_z=expected_max_abs_normal(n))


def expected_max_abs_normal(n: int) -> float:
    """The median of max |Z_i| over n independent standard normals: the x with (2Φ(x) − 1)^n = ½."""
    target = 0.5 ** (1.0 / max(n, 1))  # P(|Z| ≤ x) = target
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if math.erf(mid / math.sqrt(2)) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def off_diagonal(m: int) -> np.ndarray:
    """The (m, m) mask of the entries above the diagonal."""
    return np.triu(np.ones((m, m), bool), k=1)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| / max |b| (0 when both are all zero)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = float(np.max(np.abs(b)))
    diff = float(np.max(np.abs(a - b)))
    return diff / scale if scale else diff


# ----------------------------------------------------------------------------- the devinterp child


def _datatree(losses: dict[str, np.ndarray], ids: dict[str, np.ndarray], init_loss: np.ndarray):
    """Arrays in the layout of devinterp 2.0.1's ``sample()`` output, for its estimators."""
    import xarray as xr

    data = {"init_loss": (("chain", "token_pos"), init_loss)}
    for name, value in losses.items():
        data[f"loss_{name}"] = (("chain", "draw", f"batch_{name}", "token_pos"), value)
        data[f"input_ids_{name}"] = ((f"batch_{name}", "token"), ids[name])
    return xr.DataTree(xr.Dataset(data))


def _devinterp_estimates(trees: dict, names: list[str], m: int, t: int) -> dict:
    """devinterp's compute_bif (sequence and token, correlation and covariance) on the full run's tree
    and compute_susceptibilities on all, in the stored order (batch as stored)."""
    from devinterp.slt.bif import compute_bif
    from devinterp.slt.susceptibilities import compute_susceptibilities

    out = {}
    full = trees["full"]
    for method in ("sequence", "token"):
        for cov in (False, True):
            res = compute_bif(full, correlation_method=method, loss_keys=["probe"], compute_covariance=cov,
                              device="cpu")
            out[f"bif_{method}_{'cov' if cov else 'corr'}"] = np.asarray(res["influences"].values, np.float64)
    sus = compute_susceptibilities(trees, "pretrain")
    s = sus["susceptibilities"].dataset
    flat = np.asarray(s["sus"].values, np.float64)  # (sus_flat, wr)
    wr = [str(w) for w in s["wr"].values]
    batch = np.asarray(s["batch"].values)
    pos = np.asarray(s["target_position"].values)
    chi = np.full((len(names), m, t), np.nan)
    for k, name in enumerate(names):
        chi[k, batch, pos - 1] = flat[:, wr.index(name)]
    out["sus"] = chi
    return out


def child_main(workdir: Path) -> int:
    """Run in the devinterp venv: devinterp's sampler and estimators; nothing of lambdahat is imported."""
    import warnings

    os.environ["TQDM_DISABLE"] = "1"  # devinterp's per-chain progress bars
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    begin = time.perf_counter()
    job = json.loads((workdir / "job.json").read_text())
    cfg = job["cfg"]
    import importlib.metadata

    from datasets import Dataset
    from devinterp.slt.susceptibilities import susceptibilities

    tensors = np.load(workdir / "tokens.npz")
    train, probe, ref = tensors["train"], tensors["probe"], tensors["reference"]
    model = TinyLM(vocab=cfg["vocab"], context=cfg["context"] + 1)
    model.load_state_dict(torch.load(workdir / "model.pt", weights_only=True))
    m, t = len(probe), cfg["context"]
    names = list(job["components"])
    bs = cfg["batch_size"]
    result = {"devinterp": importlib.metadata.version("devinterp"), "torch": torch.__version__, "runs": []}
    arrays = {}

    # (a) lambdahat's draws through devinterp's estimators
    lh = np.load(workdir / "lambdahat_draws.npz")
    ids = {"probe": probe, "pretrain": ref}
    trees = {}
    for name in ["full", *names]:
        rows = lh[f"{name}"]  # (chain, draw, m + R, T), float64
        trees[name] = _datatree({"probe": rows[:, :, :m], "pretrain": rows[:, :, m:]}, ids,
                                np.full((rows.shape[0], t), float(lh["l0"])))
    print(f"devinterp imported in {time.perf_counter() - begin:.1f} s", file=sys.stderr, flush=True)
    est = _devinterp_estimates(trees, names, m, t)
    for key, value in est.items():
        arrays[f"identity_{key}"] = value
    print(f"identity estimates done at {time.perf_counter() - begin:.1f} s", file=sys.stderr, flush=True)

    # (b) devinterp's own sampler
    train_ds = Dataset.from_dict({"input_ids": train.tolist()}).with_format("torch")
    observables = {"pretrain": (Dataset.from_dict({"input_ids": ref.tolist()}).with_format("torch"), len(ref) // bs),
                   "probe": (Dataset.from_dict({"input_ids": probe.tolist()}).with_format("torch"), m // bs)}
    params = dict(model.named_parameters())
    restrictions = {"full": None}
    for name, prefixes in job["components"].items():
        restrictions[name] = {p: None for p in params if any(p == x or p.startswith(x + ".") for x in prefixes)}
    for s, seed in enumerate(job["devinterp_seeds"]):
        base = workdir / f"seed{s}" / "samples.zarr"
        base.parent.mkdir()
        start = time.perf_counter()
        sus = susceptibilities(model, train_ds, observables, restrictions, sampling_task="pretrain",
                               lr=cfg["step_size"], n_beta=cfg["nbeta"], localization=cfg["localization"],
                               num_chains=cfg["num_chains"], num_draws=cfg["num_draws"],
                               num_burnin_steps=cfg["num_burnin_steps"], num_steps_bw_draws=cfg["every"],
                               batch_size=bs, num_init_loss_batches=len(train) // bs, init_seed=seed,
                               obs_seed=cfg["obs_seed"], device="cpu", output_path=str(base))
        seconds = time.perf_counter() - start
        import xarray as xr

        trees = {name: xr.open_datatree(str(base.parent / f"{base.stem}_{name}{base.suffix}"), engine="zarr",
                                        consolidated=False) for name in ["full", *names]}
        flat = sus["susceptibilities"].dataset
        keep = np.asarray(flat["dataset_id"].values) == list(flat.attrs["dataset_id_to_name"]).index("probe")
        wr = [str(w) for w in flat["wr"].values]
        chi = np.full((len(names), m, t), np.nan)
        batch, pos = np.asarray(flat["batch"].values)[keep], np.asarray(flat["target_position"].values)[keep]
        for k, name in enumerate(names):
            chi[k, batch, pos - 1] = np.asarray(flat["sus"].values, np.float64)[keep, wr.index(name)]
        arrays[f"seed{s}_sus"] = chi
        est = _devinterp_estimates(trees, names, m, t)
        for key in ("bif_sequence_corr", "bif_sequence_cov"):
            arrays[f"seed{s}_{key}"] = est[key]
        for name, tree in trees.items():
            ds = tree.dataset
            arrays[f"seed{s}_{name}_probe"] = np.asarray(ds["loss_probe"].values)
            arrays[f"seed{s}_{name}_pretrain"] = np.asarray(ds["loss_pretrain"].values)
            arrays[f"seed{s}_{name}_init_loss"] = np.asarray(ds["init_loss"].values)
        arrays[f"seed{s}_ids_probe"] = np.asarray(trees["full"].dataset["input_ids_probe"].values)
        arrays[f"seed{s}_ids_pretrain"] = np.asarray(trees["full"].dataset["input_ids_pretrain"].values)
        result["runs"].append(dict(seed=seed, seconds=seconds))
        print(f"devinterp seed {seed}: {seconds:.1f} s", file=sys.stderr, flush=True)
    np.savez(workdir / "devinterp.npz", **arrays)
    (workdir / "devinterp.json").write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- the lambdahat side


def lambdahat_runs(cfg: dict, model: TinyLM, train: torch.Tensor, probe: torch.Tensor, seeds: list[int], log) -> list:
    import lambdahat as lh

    out = []
    for seed in seeds:
        start = time.perf_counter()
        chi = lh.susceptibilities(
            model, train, lh.losses.next_token, COMPONENTS, probe, per_token=True, reference=cfg["n_reference"],
            probe_every=cfg["every"], probe_batch_size=len(probe) + cfg["n_reference"], progress=False, step_size=cfg["step_size"], localization=cfg["localization"],
            nbeta=cfg["nbeta"], num_chains=cfg["num_chains"], num_burnin_steps=cfg["num_burnin_steps"],
            num_draws=cfg["num_draws"] * cfg["every"], batch_size=cfg["batch_size"], sampler="sgld",
            control_variate=False, seed=seed)
        seconds = time.perf_counter() - start
        log(f"lambdahat seed {seed}: {seconds:.1f} s")
        out.append((chi, seconds))
    return out


def _rows(result) -> np.ndarray:
    trace = result.trace
    if len(trace.healthy_chains) != trace.probe.shape[0]:
        raise SystemExit(f"a lambdahat chain diverged: healthy {trace.healthy_chains}")
    return np.asarray(trace.probe, dtype=np.float64)


class _Draws:
    """What lh.bif reads from a result: the probe losses (chain, draw, ...) and the healthy chains."""

    def __init__(self, probe: np.ndarray):
        self.probe = probe
        self.healthy_chains = list(range(probe.shape[0]))


def lh_bif_corr(probe: np.ndarray) -> np.ndarray:
    """lambdahat's per-sample −Corr on (chain, draw, m, T) per-token losses (sequence means first)."""
    import lambdahat as lh

    return lh.bif(_Draws(probe), correlation=True, per_token=False)


def lh_chi(restricted: np.ndarray, full: np.ndarray, m: int, l0: float) -> np.ndarray:
    """lambdahat's per-sample χ (chain, draw, m + R, T) rows → (m,): the mean over positions of per-token χ."""
    from lambdahat.susceptibility import susceptibility_from_runs

    return susceptibility_from_runs(restricted, full, m, l0)[0].mean(axis=-1)


def mean_delta(rows: np.ndarray, m: int) -> np.ndarray:
    """E[ΔL] = E[ℓ − L̄] per probe sample and position over a run's draws, rows (chain, draw, m + R, T)."""
    ref = rows[:, :, m:].mean(axis=(2, 3))
    return (rows[:, :, :m] - ref[:, :, None, None]).mean(axis=(0, 1))


# ----------------------------------------------------------------------------- main


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args) -> dict:
    import compare_devinterp as cd

    import lambdahat as lh
    from lambdahat.susceptibility import susceptibility_from_runs

    torch.set_num_threads(1)
    cfg = dict(SETTINGS, **(QUICK if args.quick else {}))
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in SETTINGS:
            raise SystemExit(f"--set: unknown setting {key!r}")
        cfg[key] = type(SETTINGS[key] if SETTINGS[key] is not None else 1.0)(value)
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    load_start = os.getloadavg()[0]
    info = cd.machine_info()
    report: dict = dict(command=args.command, started=started, machine=info, settings=cfg, components=COMPONENTS,
                        lambdahat=getattr(lh, "__version__", "?"))
    try:
        python = cd.ensure_venv(Path(args.venv_dir), VERSION, cd.TORCH_SPEC, log)
    except (subprocess.CalledProcessError, SystemExit, OSError) as err:
        report["devinterp_error"] = f"devinterp {VERSION} could not be installed: {type(err).__name__}: {err}"
        log(report["devinterp_error"])
        return report

    train, probe = make_tokens(cfg)
    start = time.perf_counter()
    model = train_model(cfg, train)
    train_seconds = time.perf_counter() - start
    cfg["nbeta"] = cfg["nbeta"] or cfg["n_train"] / math.log(cfg["n_train"])
    ref_index = reference_indices(cfg["n_train"], cfg["n_reference"])
    ref = train[torch.as_tensor(ref_index)]
    m, t, n_comp = len(probe), cfg["context"], len(COMPONENTS)
    names = list(COMPONENTS)
    n_weights = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        per_token = lh.losses.next_token.per_token
        full_loss = float(per_token(model, train).double().mean())
        ref_loss = float(per_token(model, ref).double().mean())
        # devinterp's loss feeds all T+1 tokens and drops the last logit; lambdahat's feeds the first T
        logits = model(probe)
        lp = torch.log_softmax(logits, -1)[:, :-1].gather(-1, probe[:, 1:, None])[..., 0]
        causal_gap = float((-lp - per_token(model, probe)).abs().max())
    report["model"] = dict(weights=n_weights, train_seconds=train_seconds, train_loss=full_loss,
                           reference_loss=ref_loss, causal_gap=causal_gap,
                           component_weights={k: sum(p.numel() for n, p in model.named_parameters()
                                                     if any(n.startswith(x + ".") for x in v))
                                              for k, v in COMPONENTS.items()})
    log(f"model: {n_weights} weights, trained {train_seconds:.1f} s, L_n(w*) {full_loss:.4f}, "
        f"L̄(w*) on the reference {ref_loss:.4f}")

    lh_seeds = [100 * (s + 1) for s in range(cfg["seeds"])]
    di_seeds = [1000 * (s + 1) for s in range(cfg["seeds"])]
    lh_out = lambdahat_runs(cfg, model, train, probe, lh_seeds, log)
    chi0 = lh_out[0][0]
    if abs(chi0.reference_loss - ref_loss) > 1e-6 * max(1, abs(ref_loss)) or chi0.reference_size != len(ref_index):
        raise SystemExit(f"reference set mismatch: lambdahat L̄(w*) {chi0.reference_loss} over {chi0.reference_size} "
                         f"rows, here {ref_loss} over {len(ref_index)}")
    l0_lh = float(chi0.reference_loss)

    with tempfile.TemporaryDirectory(prefix="lambdahat-obs-") as tmp:
        work = Path(tmp)
        torch.save(model.state_dict(), work / "model.pt")
        np.savez(work / "tokens.npz", train=train.numpy(), probe=probe.numpy(), reference=ref.numpy())
        np.savez(work / "lambdahat_draws.npz", l0=l0_lh, full=_rows(chi0.full),
                 **{name: _rows(chi0.runs[name]) for name in names})
        (work / "job.json").write_text(json.dumps(dict(cfg=cfg, components=COMPONENTS, devinterp_seeds=di_seeds)))
        start = time.perf_counter()
        proc = subprocess.run([str(python), str(Path(__file__).resolve()), "--child", str(work)],
                              env=cd.child_env(), cwd=str(ROOT), capture_output=True, text=True, timeout=args.timeout)
        child_seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit("devinterp child failed:\n" + proc.stderr[-4000:])
        log("\n".join(line for line in proc.stderr.splitlines() if line.startswith(("devinterp", "identity"))))
        di = dict(np.load(work / "devinterp.npz"))
        di_info = json.loads((work / "devinterp.json").read_text())
    report["devinterp"] = dict(version=di_info["devinterp"], torch=di_info["torch"], child_seconds=child_seconds,
                               seconds=[r["seconds"] for r in di_info["runs"]])
    report["lambdahat_seconds"] = [s for _, s in lh_out]

    # ---- (a) deterministic identity
    idn: dict = {}
    rows_full0 = _rows(chi0.full)
    lh_bif = {"bif_sequence_corr": lh.bif(chi0.full, correlation=True, per_token=False, samples=range(m)),
              "bif_sequence_cov": lh.bif(chi0.full, per_token=False, samples=range(m)),
              "bif_token_corr": lh.bif(chi0.full, correlation=True, samples=range(m)),
              "bif_token_cov": lh.bif(chi0.full, samples=range(m))}
    for key, ours in lh_bif.items():
        theirs = bif_from_devinterp(di[f"identity_{key}"], per_token="token" in key)
        idn[key] = relative_error(theirs, ours)
    idn["sus_token"] = relative_error(di["identity_sus"], chi0.values)
    # devinterp's own draws through lambdahat's estimators, at devinterp's own L0
    ids_probe = match_rows(di["seed0_ids_probe"], probe.numpy())
    stored_ref = di["seed0_ids_pretrain"]
    if sorted(map(tuple, stored_ref.tolist())) != sorted(map(tuple, ref.numpy().tolist())):
        raise SystemExit("devinterp's reference observable holds other rows than the reference set")
    expected = np.asarray(devinterp_observable_order(m, cfg["obs_seed"]))
    report["order_matches_devinterp_sampler"] = bool(np.array_equal(ids_probe, expected))

    def di_rows(s: int, name: str) -> np.ndarray:
        """devinterp's run rows in lambdahat's layout: (chain, draw, m + R, T), probe in the probe's order."""
        p = to_probe_order(di[f"seed{s}_{name}_probe"].astype(np.float64), ids_probe, axis=2)
        r = di[f"seed{s}_{name}_pretrain"].astype(np.float64)
        return np.concatenate([p, r], axis=2)

    l0_di = [float(di[f"seed{s}_full_init_loss"].astype(np.float64).mean()) for s in range(cfg["seeds"])]
    full_d0 = di_rows(0, "full")
    ours = lh.bif(_Draws(full_d0[:, :, :m]), correlation=True, per_token=False)
    idn["reverse_bif_sequence_corr"] = relative_error(
        ours, to_probe_order(to_probe_order(bif_from_devinterp(di["seed0_bif_sequence_corr"]), ids_probe, 0), ids_probe, 1))
    ours_chi = np.stack([susceptibility_from_runs(di_rows(0, n), full_d0, m, l0_di[0])[0] for n in names])
    idn["reverse_sus_token"] = relative_error(ours_chi, to_probe_order(di["seed0_sus"], ids_probe, axis=1))
    report["identity"] = idn
    log("identity (max relative difference): " + ", ".join(f"{k} {v:.1e}" for k, v in idn.items()))

    # ---- (b) statistical
    blocks = cfg["blocks"]
    lh_runs = [[_rows(c.full)] + [_rows(c.runs[n]) for n in names] for c, _ in lh_out]
    di_runs = [[di_rows(s, "full")] + [di_rows(s, n) for n in names] for s in range(cfg["seeds"])]
    mask = off_diagonal(m)
    stat = {}

    def bif_stat(full, *_):
        return lh_bif_corr(full[:, :, :m])

    b_lh, se_b_lh = jackknife(bif_stat, lh_runs, blocks)
    b_di, se_b_di = jackknife(bif_stat, di_runs, blocks)
    stat["bif_corr"] = compare(b_lh, se_b_lh, b_di, se_b_di, mask)
    # the same-tool control: lambdahat's seeds split into two halves need ≥ 2 seeds per half; instead
    # compare lambdahat's first seed with its others (one more check that the error bars are honest)
    if cfg["seeds"] >= 2:
        a, sa = jackknife(bif_stat, lh_runs[:1], blocks)
        c, sc = jackknife(bif_stat, lh_runs[1:], blocks)
        stat["bif_corr_lambdahat_seed_split"] = compare(a, sa, c, sc, mask)
        a, sa = jackknife(bif_stat, di_runs[:1], blocks)
        c, sc = jackknife(bif_stat, di_runs[1:], blocks)
        stat["bif_corr_devinterp_seed_split"] = compare(a, sa, c, sc, mask)

    def chi_stat_l0(l0):
        def f(full, *restricted):
            return np.stack([lh_chi(r, full, m, l0) for r in restricted])
        return f

    chi_lh, se_chi_lh = jackknife(chi_stat_l0(l0_lh), lh_runs, blocks)
    l0_di_mean = float(np.mean(l0_di))
    chi_di_raw, se_chi_di_raw = jackknife(chi_stat_l0(l0_di_mean), di_runs, blocks)
    chi_di, se_chi_di = jackknife(chi_stat_l0(l0_lh), di_runs, blocks)
    stat["chi_raw_l0"] = compare(chi_lh, se_chi_lh, chi_di_raw, se_chi_di_raw)
    stat["chi"] = compare(chi_lh, se_chi_lh, chi_di, se_chi_di)
    stat["chi_per_component"] = {n: compare(chi_lh[k], se_chi_lh[k], chi_di[k], se_chi_di[k])
                                 for k, n in enumerate(names)}
    # the L0 shift on devinterp's own draws, computed by the affine conversion and directly
    delta_c = np.stack([mean_delta(np.concatenate([r[k + 1] for r in di_runs]), m).mean(-1) for k in range(n_comp)])
    delta_f = mean_delta(np.concatenate([r[0] for r in di_runs]), m).mean(-1)
    shifted = shift_l0(chi_di_raw, l0_di_mean, l0_lh, delta_c, delta_f[None])
    report["l0"] = dict(devinterp_init_loss=l0_di, lambdahat_reference_loss=l0_lh, train_loss=full_loss,
                        shift_check=relative_error(shifted, chi_di),
                        shift_size_over_se=float(np.max(np.abs(chi_di - chi_di_raw) / se_chi_di)))
    # lambdahat's own standard error (delta method, batch means) against the jackknife, as a check of both
    # (per-sample rows: the mean over positions, whose χ is the per-sample χ; combined over the seeds)
    own_var = [np.stack([susceptibility_from_runs(r[k + 1].mean(-1), r[0].mean(-1), m, l0_lh)[1] ** 2
                         for k in range(n_comp)]) for r in lh_runs]
    own_se = np.sqrt(np.mean(own_var, axis=0) / cfg["seeds"])
    report["lambdahat_own_stderr_over_jackknife"] = float(np.median(own_se / se_chi_lh))
    stat["bif_median_se"] = dict(lambdahat=float(np.median(se_b_lh[mask])), devinterp=float(np.median(se_b_di[mask])))
    stat["chi_median_se"] = dict(lambdahat=float(np.median(se_chi_lh)), devinterp=float(np.median(se_chi_di)))
    report["statistical"] = stat
    report["values"] = dict(bif_lambdahat=b_lh[mask].tolist(), bif_devinterp=b_di[mask].tolist(),
                            chi_lambdahat=chi_lh.tolist(), chi_devinterp=chi_di.tolist(),
                            chi_devinterp_raw_l0=chi_di_raw.tolist(), se_chi_lambdahat=se_chi_lh.tolist(),
                            se_chi_devinterp=se_chi_di.tolist())
    # nβ (E_full[L̄] − L̄(w*)): the LLC read off the reference rows, the same way for both tools
    report["llc_reference"] = dict(lambdahat=[float(cfg["nbeta"] * (r[0][:, :, m:].mean() - l0_lh)) for r in lh_runs],
                                   devinterp=[float(cfg["nbeta"] * (r[0][:, :, m:].mean() - l0_lh)) for r in di_runs])
    report["llc_lambdahat"] = [float(c.full.llc_mean) for c, _ in lh_out]
    report["total_seconds"] = time.perf_counter() - t0
    report["load"] = [load_start, os.getloadavg()[0]]
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(Path(argv[1]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer draws and seeds (about 2 minutes)")
    parser.add_argument("--out", default=None, help="write the report and JSON under DIR instead of the repository")
    parser.add_argument("--venv-dir", default=str(HERE / ".venvs"))
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one of SETTINGS (for exploration; the report records it)")
    args = parser.parse_args(argv)
    args.command = "python benchmarks/compare_observables.py" + "".join(" " + shlex.quote(a) for a in argv)
    sys.path.insert(0, str(HERE))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    report = run(args)
    md = markdown(report)
    out = Path(args.out) if args.out else None
    md_path = (out / "observables_devinterp.md") if out else ROOT / "docs" / "results" / "observables_devinterp.md"
    js_path = (out / "observables_devinterp.json") if out else ROOT / "benchmarks" / "results" / "observables_devinterp.json"
    for path in (md_path, js_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    js_path.write_text(json.dumps(report, indent=1) + "\n")
    md_path.write_text(md)
    print(md)
    log(f"wrote {md_path} and {js_path}")
    return 0


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) and math.isfinite(x) else str(x)


IDENTITY_ROWS = [
    ("bif_sequence_corr", "lambdahat's draws", "`compute_bif(correlation_method=\"sequence\")`",
     "`lh.bif(r, correlation=True, per_token=False)` = −devinterp"),
    ("bif_sequence_cov", "lambdahat's draws", "`compute_bif(\"sequence\", compute_covariance=True)`",
     "`lh.bif(r, per_token=False)` = −devinterp"),
    ("bif_token_corr", "lambdahat's draws", "`compute_bif()` (per token)",
     "`lh.bif(r, correlation=True)[a, s, b, t]` = −devinterp[a, b, s, t]"),
    ("bif_token_cov", "lambdahat's draws", "`compute_bif(compute_covariance=True)`",
     "`lh.bif(r)[a, s, b, t]` = −devinterp[a, b, s, t]"),
    ("sus_token", "lambdahat's draws, L0 = L̄(w*)", "`compute_susceptibilities`",
     "`lh.susceptibilities(..., per_token=True).values` = devinterp (same sign)"),
    ("reverse_bif_sequence_corr", "devinterp's draws (its float32 zarr)", "devinterp's own `compute_bif` output",
     "`lh.bif` on those draws = −devinterp, rows mapped back from devinterp's stored order"),
    ("reverse_sus_token", "devinterp's draws, its own L0", "devinterp's own `susceptibilities` output",
     "`susceptibility_from_runs(..., L0 = init_loss)` = devinterp"),
]


def markdown(r: dict) -> str:
    cfg = r["settings"]
    mi = r["machine"]
    lines = ["# lambdahat against devinterp 2.0.1: BIF and susceptibilities", "",
             "Issue 12: against devinterp 2.0.1 in its own virtual environment, on the same tiny language model, probe "
             "set and sampler settings, do the Bayesian influence function (Kreer et al., arXiv 2509.26544) and the "
             "susceptibilities (Baker et al., arXiv 2504.18274, App. C.4) agree after converting conventions?", "",
             f"Command: `{r['command']}` (written by `benchmarks/compare_observables.py`; every number below is in "
             "`benchmarks/results/observables_devinterp.json`).", "",
             f"Date {r['started']} (UTC). Machine: {mi['cpu']}, {mi['cores']} cores shared with other jobs (load "
             f"average {_fmt(r['load'][0])} at the start, {_fmt(r['load'][-1])} at the end), every process on one "
             f"thread; Python {mi['python']}, torch {mi['torch']}; lambdahat at commit {mi['commit']}."]
    if "devinterp_error" in r:
        lines += ["", f"**{r['devinterp_error']}** Nothing was compared.", ""]
        return "\n".join(lines) + "\n"
    d, mo = r["devinterp"], r["model"]
    lines += [f"devinterp {d['version']} (torch {d['torch']}) in `benchmarks/.venvs/devinterp-2.0.1`, made by "
              "`compare_devinterp.ensure_venv` (`pip install torch==2.13.0`, then `pip install devinterp==2.0.1` from "
              f"PyPI). Total wall time {_fmt(r['total_seconds'])} s.", "",
              "## Setup", "",
              f"- Model: `TinyLM` (in the script, imported by both processes): token and position embeddings, two "
              f"attention heads with their own parameters, a pre-LayerNorm ReLU MLP, an unembedding; {mo['weights']} "
              f"weights, trained {cfg['train_steps']} Adam steps ({_fmt(mo['train_seconds'])} s) on "
              f"{cfg['n_train']} seeded synthetic windows of {cfg['context'] + 1} tokens (vocabulary {cfg['vocab']}: "
              "repeat the token two back with probability 0.4, else a sparse Markov chain). L_n(w*) = "
              f"{_fmt(mo['train_loss'], 5)} nats per token. No dropout or batch statistics, so devinterp's train mode "
              "and lambdahat's eval mode compute the same function.",
              f"- Probe: {cfg['n_probe']} sequences, half training windows, half fresh ones. Reference set (L̄): the "
              f"{cfg['n_reference']} training windows `lh.susceptibilities(reference={cfg['n_reference']})` takes, "
              f"given to devinterp as its `sampling_task` observable; L̄(w*) = {_fmt(mo['reference_loss'], 5)}.",
              "- Components (weight restrictions): " + ", ".join(f"`{k}` = parameters `{'`, `'.join(v)}.*` "
                                                              f"({mo['component_weights'][k]} weights)"
                                                              for k, v in r["components"].items()) +
              "; devinterp `weight_restrictions={\"full\": None, name: {parameter: None, ...}}`, lambdahat "
              "`components={name: [prefix]}`.",
              f"- Sampler, both tools: SGLD, ε = `lr` = {cfg['step_size']:g}, γ = `localization` = "
              f"{cfg['localization']:g}, nβ = n / log n = {_fmt(cfg['nbeta'], 5)}, {cfg['num_chains']} chains, "
              f"batch {cfg['batch_size']}, {cfg['num_burnin_steps']} burn-in steps, then {cfg['num_draws']} draws "
              f"{cfg['every']} steps apart (lambdahat `num_draws={cfg['num_draws'] * cfg['every']}, "
              f"probe_every={cfg['every']}`; devinterp `num_draws={cfg['num_draws']}, "
              f"num_steps_bw_draws={cfg['every']}`), {cfg['seeds']} seed(s) per tool (lambdahat "
              "`seed` 100, 200, …; devinterp `init_seed` 1000, 2000, …), one full run and one restricted run per "
              "component per seed. At ε = 3e-4 lambdahat's own checks certify the full run (λ̂ ≈ 40); the LLC read "
              "off the reference rows, nβ (E_full[L̄] − L̄(w*)): lambdahat "
              + ", ".join(_fmt(x, 4) for x in r["llc_reference"]["lambdahat"]) + "; devinterp "
              + ", ".join(_fmt(x, 4) for x in r["llc_reference"]["devinterp"]) + ".",
              f"- Time (sampling, both estimators; wall clock on the shared machine): lambdahat "
              + ", ".join(_fmt(x) for x in r["lambdahat_seconds"]) + " s per seed; devinterp "
              + ", ".join(_fmt(x) for x in d["seconds"]) + f" s per seed (its child process {_fmt(d['child_seconds'])} "
              "s in all, imports and the identity part included).", "",
              "## Conventions, as read in the released devinterp 2.0.1", "",
              "Read in `benchmarks/.venvs/devinterp-2.0.1/lib/python3.11/site-packages/devinterp/slt/` (`bif.py`, "
              "`covariance.py`, `susceptibilities.py`, `sampling.py`, `sampler.py`, `observables.py`, `lm_loss.py`). "
              "What docs/observables.md says from GitHub main is **confirmed** for 2.0.1:", "",
              "- `compute_bif` / `bif` return +Corr(ℓ_i, ℓ_j) (no minus sign), +Cov with ddof 1 when "
              "`compute_covariance=True`; per token by default (`correlation_method=\"token\"`, dims (batch_1, "
              "batch_2, target_position, target_position_T)), per sequence (mean over positions first) with "
              "`\"sequence\"`; chains stacked (`reduce_chain_dimension_method=\"stack\"`: one mean over all chains' "
              "draws, as `lh.bif`).",
              "- `compute_susceptibilities`: per token, sus = E_C[φ L̄] − E_C[φ ℓ] − E_C[φ](E_full[L̄] − E_full[ℓ]), "
              "φ = L̄ − L0, L̄ the per-draw mean of the `sampling_task` observable, L0 the mean of the full run's "
              "`init_loss`; `weight_restrictions` must contain `\"full\"`; `susceptibilities()` calls `sample()` for "
              "every restriction with the same keyword arguments, so the same `init_seed`.",
              "- `sample()`: `localization` defaults to 0; `match_sampling_input_ids_across_chains=True` gives every "
              "chain the same batches; `init_loss` is the mean per-token loss over `num_init_loss_batches` shuffled "
              "minibatches of the sampling dataset with the model in train mode.", "",
              "Found in 2.0.1 beyond what docs/observables.md says:", "",
              "- An observable holds `batch_size × batches_per_draw` sequences drawn by "
              "`random.Random(obs_seed).sample` and stored in that order; results are indexed by that order, not the "
              "dataset's (here mapped back by matching the stored `input_ids`; the order equals "
              f"`random.Random({cfg['obs_seed']}).sample(range(m), m)`: {r['order_matches_devinterp_sampler']}).",
              "- The batch feed is `itertools.cycle` over one shuffled epoch (`epoch_mode=\"cycle\"`), so every "
              f"chain replays the same {cfg['n_train'] // cfg['batch_size']}-step batch sequence; lambdahat draws "
              "each chain's batches afresh.",
              "- Draws are taken after steps burn-in + j × `num_steps_bw_draws` (j = 0, 1, …), observables evaluated "
              "in train mode; the default loss feeds all T + 1 tokens and drops the last logit, lambdahat's "
              "`next_token` feeds the first T: the same numbers for a causal model (largest gap on the probe at w*: "
              f"{_fmt(mo['causal_gap'])}).",
              "- The per-token `compute_bif` result is written into a float32 array even from float64 losses; the "
              "per-sequence one keeps float64.", "",
              "The conversion: **BIF**: lambdahat = −devinterp, for correlation and covariance alike (per token also "
              "the axes: `lh.bif(r)[a, s, b, t]` = −devinterp[a, b, s, t]). **Susceptibilities**: the same sign and "
              "scale, per token; lambdahat's per-sample χ is the mean over positions of the per-token χ; and χ is "
              "affine in L0, χ(L0') = χ(L0) + (L0' − L0)(E_C[ΔL] − E_full[ΔL]) with ΔL = ℓ − L̄, so devinterp's "
              "numbers at its L0 convert exactly to lambdahat's L0 = L̄(w*).", "",
              "## (a) The same draws through both estimators", "",
              "| draws | devinterp code path | conversion | max abs difference / max abs value |",
              "|---|---|---|---:|"]
    for key, draws, path, conv in IDENTITY_ROWS:
        lines.append(f"| {draws} | {path} | {conv} | {r['identity'][key]:.1e} |")
    worst = max(r["identity"].values())
    lines += ["", "lambdahat's draws went into devinterp's estimators as an `xarray.DataTree` laid out as `sample()` "
              "writes it (`loss_probe`, `loss_pretrain` (chain, draw, batch, token_pos), `input_ids_*`, `init_loss` "
              "(chain, token_pos) set to L̄(w*)), in float64; devinterp's recorded draws (float32 in its zarr store) "
              "went into `lh.bif` and `lambdahat.susceptibility.susceptibility_from_runs`. "
              + ("The two agree to float rounding " if worst < 1e-5 else "**They do not agree** ")
              + f"(largest relative difference {worst:.1e}: float64 paths ~1e-16, paths through devinterp's float32 "
              "arithmetic ~1e-7 to 1e-6).", ""]
    st = r["statistical"]
    lines += ["## (b) Each tool's own sampler", "",
              "Both tools sample at the settings above; each tool's BIF correlation matrix (per sample, −Corr in "
              "lambdahat's convention, the entries above the diagonal) and χ (per sample, lambdahat's L0 = L̄(w*) "
              "unless marked) are compared entry by entry as z = (lambdahat − devinterp) / √(se² + se²). Monte Carlo "
              f"error: a delete-one-group jackknife, groups = (seed, one of {cfg['blocks']} blocks of consecutive "
              "draws), a group holding that block of every chain and of every run (full and restricted) of the seed, "
              "so that the dependence devinterp builds in (all chains one batch sequence, all runs one seed) stays "
              "inside a group. Both tools' point estimates use the same estimator on their own draws, which (a) "
              "shows is each tool's own. Expected max |z|: the median of the largest of that many independent "
              "normals (the entries are correlated, so it is a guide).", "",
              "| comparison | entries | corr(lambdahat, devinterp) | max abs z | expected max abs z | mean z² | "
              "abs z > 2 | abs z > 3 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    label = {"bif_corr": "BIF −Corr, lambdahat vs devinterp",
             "bif_corr_lambdahat_seed_split": "BIF −Corr, lambdahat seed 1 vs seed 2 (control)",
             "bif_corr_devinterp_seed_split": "BIF −Corr, devinterp seed 1 vs seed 2 (control)",
             "chi": "χ, lambdahat vs devinterp converted to L0 = L̄(w*)",
             "chi_raw_l0": "χ, lambdahat vs devinterp at its own L0"}
    rows = [(label[k], st[k]) for k in label if k in st]
    rows += [(f"χ of `{n}`, lambdahat vs devinterp (converted)", v) for n, v in st["chi_per_component"].items()]
    for name, c in rows:
        lines.append(f"| {name} | {c['entries']} | {c['corr']:.3f} | {c['max_abs_z']:.2f} | "
                     f"{c['expected_max_abs_z']:.2f} | {c['mean_z2']:.2f} | {c['frac_gt2']:.1%} | {c['frac_gt3']:.1%} |")
    l0 = r["l0"]
    lines += ["", f"Median standard error of a BIF entry: lambdahat {_fmt(st['bif_median_se']['lambdahat'])}, devinterp "
              f"{_fmt(st['bif_median_se']['devinterp'])}; of χ: lambdahat {_fmt(st['chi_median_se']['lambdahat'])}, "
              f"devinterp {_fmt(st['chi_median_se']['devinterp'])}. lambdahat's own `chi.stderr` (delta method, batch "
              f"means) is {_fmt(r['lambdahat_own_stderr_over_jackknife'])} × the jackknife's (median ratio).", "",
              f"L0: devinterp's `init_loss` {', '.join(_fmt(x, 6) for x in l0['devinterp_init_loss'])} (here "
              f"`num_init_loss_batches` × batch = the {cfg['n_train']} training windows, one epoch, so it is L_n(w*) = "
              f"{_fmt(l0['train_loss'], 6)}), lambdahat's L̄(w*) {_fmt(l0['lambdahat_reference_loss'], 6)}. The affine "
              f"conversion reproduces devinterp's χ recomputed at lambdahat's L0 to {l0['shift_check']:.0e}; the "
              f"shift is at most {_fmt(l0['shift_size_over_se'])} standard errors here.", ""]
    controls = [st[k]["mean_z2"] for k in ("bif_corr_lambdahat_seed_split", "bif_corr_devinterp_seed_split") if k in st]
    if controls:
        steps = cfg["num_draws"] * cfg["every"] // cfg["blocks"]
        lines += [f"The same-tool controls have mean z² {', '.join(f'{x:.2f}' for x in controls)} where honest error "
                  f"bars give 1: with {cfg['blocks']} blocks of {steps} steps per seed (the prior's relaxation time "
                  f"2/(εγ) is {2 / (cfg['step_size'] * cfg['localization']):.0f} steps) the jackknife's standard "
                  f"errors are about {math.sqrt(max(controls)):.2f} × too small, for both tools alike, so the "
                  "cross-tool numbers are judged against these controls, not against 1.", ""]
    lines += ["What differs between the tools, and what it does here:", "",
              "- L0 (random minibatches at w* in train mode for devinterp, L̄(w*) on the reference for lambdahat): "
              "an exact affine shift of χ, removed by the conversion above; here it is small because devinterp's "
              "init-loss batches cover the whole training set once and the reference is an even eighth of it.",
              "- Batches: devinterp gives every chain the same batch sequence (one shuffled epoch replayed by "
              "`itertools.cycle`) and every restricted run the full run's seed; lambdahat gives each chain and run "
              "its own. This leaves the stationary law unchanged (the minibatch noise has the same distribution) but "
              "makes devinterp's chains and runs dependent; the grouped jackknife carries that, and devinterp's "
              "error bars come out no larger than lambdahat's here.",
              "- Train vs eval mode, and T + 1 vs T tokens fed: no effect on this model (no dropout or batch "
              "statistics; causal).",
              "- Draw times (after step burn-in + j k in devinterp, after every k-th draw in lambdahat): one step "
              "apart, no effect on a stationary chain.", ""]
    lines += ["## Verdict", "", *verdict(r), ""]
    return "\n".join(lines) + "\n"


def verdict(r: dict) -> list[str]:
    """The verdict in words, from the numbers (so that a rerun states its own)."""
    st, idn = r["statistical"], r["identity"]
    out = []
    ok_id = max(idn.values()) < 1e-5
    out.append(("- Deterministic identity: **agree** — " if ok_id else "- Deterministic identity: **disagree** — ")
               + f"the same draws give the same BIF (correlation and covariance, per sequence and per token) and the "
               f"same susceptibilities through devinterp 2.0.1's code and lambdahat's, after BIF = −devinterp and "
               f"the same L0 (largest relative difference {max(idn.values()):.1e}).")
    controls = [st[k]["mean_z2"] for k in ("bif_corr_lambdahat_seed_split", "bif_corr_devinterp_seed_split") if k in st]
    bar = max([1.0, *controls])
    for key, what in (("bif_corr", "BIF correlation matrix"), ("chi", "susceptibilities (L0 converted)")):
        c = st[key]
        consistent = c["mean_z2"] <= 1.5 * bar and c["frac_gt3"] <= 0.02 + 2 * max(
            [st[k]["frac_gt3"] for k in ("bif_corr_lambdahat_seed_split", "bif_corr_devinterp_seed_split") if k in st]
            or [0.0])
        out.append(f"- {what}, each tool's own sampler: " + ("**consistent within Monte Carlo error**" if consistent
                                                             else "**differences beyond the Monte Carlo error**")
                   + f" (mean z² {c['mean_z2']:.2f}, max |z| {c['max_abs_z']:.2f} over {c['entries']} entries, "
                   f"{c['frac_gt3']:.1%} beyond 3; same-tool seed splits: mean z² "
                   + (", ".join(f"{x:.2f}" for x in controls) if controls else "not run (one seed)")
                   + f"; correlation between the two tools' estimates {c['corr']:.3f}).")
    return out


if __name__ == "__main__":
    sys.exit(main())
