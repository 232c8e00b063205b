"""The LLC reflects training heuristics: stronger implicit regularisation, lower λ̂.

Lau et al. (arXiv 2308.12108) train ResNet18 on CIFAR-10 with SGD and report that a larger learning
rate, a smaller batch and momentum — each a stronger implicit regulariser — end training at a lower
LLC, with higher test accuracy alongside. Here the same three sweeps run on a small residual CNN
trained with plain SGD on scikit-learn's ``load_digits`` (offline), every model trained for the same
number of SGD steps and measured at the end of training with **one** sampler setting, chosen by
:func:`lambdahat.calibrate` on the baseline and the most regularised model before the sweep: the
library's adaptive warm-up on each, then the smallest ε and γ and the longest chains of the two
(its step size, localisation and chain length; nβ stays the paper's n / log n).

The committed section (docs/results/training_heuristics.md) was produced by the earlier grid
calibration (ε ∈ {2e-4, 1e-4, 5e-5, 2.5e-5}, γ = 1, 4 × (500 + 500) steps), which recommended no
setting, so that run used its fallback ε = 5e-5, γ = 1 with 4 × (500 + 700) steps; ``--quick``
keeps γ but samples at the smaller ε the library's MALA acceptance band asks for at these λ̂
(``QUICK_SETTING``). Its 2 × (200 + 250) steps at a fifth of the step do not get the chains far
(λ̂ ≈ 9 against the full run's ≈ 36 on the baseline; the ladder check fails on every model), so
``--quick`` checks the plumbing and the sign of the momentum effect only. A full rerun calibrates
with :func:`lambdahat.calibrate` as above and measures every model at the recommended ε, γ,
burn-in and draws.

``python -m experiments.training_heuristics`` (full: ≈ 30 min on one thread with the grid calibration;
not yet timed with lh.calibrate) or ``--quick`` (CI).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lambdahat as lh

from ._common import markdown_table, parse, spearman

NAME = "training_heuristics"
TITLE = "Training heuristics: stronger implicit regularisation, lower LLC"

N_TRAIN = 1200  # of load_digits' 1,797 images; the other 597 are the test set
SPLIT_SEED = 0
WIDTH = 8
BASELINE = {"lr": 0.05, "batch": 32, "momentum": 0.0}
WARMUP = 200  # steps of linear learning-rate warm-up; without it lr 0.2 diverged at step 400 on one seed
#: below this train accuracy a run has failed (diverged, or collapsed to a constant): no minimum to measure
FAILED_TRAIN_ACC = 0.95
#: each knob's values, weakest implicit regularisation first (Lau et al.: larger lr, smaller batch
#: and momentum regularise more)
SWEEPS = {
    "lr": [0.05, 0.1, 0.15],
    "batch": [128, 32, 8],
    "momentum": [0.0, 0.5, 0.9],
}
KNOB_LABEL = {"lr": "SGD learning rate", "batch": "batch size", "momentum": "momentum"}
SAMPLER_BATCH = 64
NBETA = N_TRAIN / math.log(N_TRAIN)  # the paper's nβ = n / log n
#: --quick cannot afford a calibration of its own. The committed full run's ε = 5e-5 is outside the
#: library's MALA acceptance band (``lh.health.acceptance_band``, which narrows as λ̂ falls) on
#: these models: 0.89 on a baseline at λ̂ ≈ 35 (band from 0.943), and at 1.5e-5 still 0.952 on a
#: momentum-0.9 model at λ̂ ≈ 13 (band from 0.965, i.e. ε ≤ 1.2e-5 by σ ∝ ε^{3/2}). --quick
#: samples at 1e-5; γ stays the full run's.
QUICK_SETTING = {"step_size": 1e-5, "localization": 1.0}
#: lh.calibrate's budget of steps per chain (warm-up, burn-in and draws together) on each model:
#: it bounds the chain length recommended, and so the cost of the sweep (24 models × 4 chains)
CALIBRATION_MAX_STEPS = 6000
CALIBRATION_CHAINS = 4


@dataclass(frozen=True)
class Plan:
    """The size of a run: training steps, seeds, knob values and sampler chain lengths."""

    train_steps: int
    seeds: tuple[int, ...]
    sweeps: dict[str, list[float]]
    num_chains: int
    num_burnin: int
    num_draws: int
    calibrate: bool
    control_steps: int | None = None  # the baseline trained this long too: λ̂ against training length alone


FULL = Plan(train_steps=2000, seeds=(0, 1, 2), sweeps=SWEEPS, num_chains=4, num_burnin=500, num_draws=700,
            calibrate=True, control_steps=4000)
#: the quick run keeps the one direction that the full run shows far beyond its errors (momentum:
#: Δλ̂ ≈ −33 on every seed, against a combined sampler MCSE of ≈ 4); learning rate and batch size
#: (Δλ̂ ≈ −9 to −20 per seed) would need the full chains to be told from noise
QUICK = Plan(train_steps=2000, seeds=(0, 1), sweeps={"momentum": [0.0, 0.9]},
             num_chains=2, num_burnin=200, num_draws=250, calibrate=False)


# ---------------------------------------------------------------- data and model


def digits(train_size: int = N_TRAIN, seed: int = SPLIT_SEED) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """load_digits (8×8, 10 classes; inside the scikit-learn wheel), a fixed stratified split.

    Pixels are standardised with the training set's mean and standard deviation (one number each).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, train_size=train_size, stratify=y, random_state=seed)
    mean, std = x_tr.mean(), x_tr.std()

    def tensors(a: np.ndarray, b: np.ndarray) -> tuple[Tensor, Tensor]:
        return torch.tensor((a - mean) / std, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.tensor(b)

    return tensors(x_tr, y_tr), tensors(x_te, y_te)


class ResidualBlock(nn.Module):
    """h ↦ relu(h + α · conv(relu(conv(h)))), α a learnt scalar starting at 0.

    Without BatchNorm, the zero-initialised branch scale (SkipInit; De & Smith, NeurIPS 2020) keeps
    plain SGD stable at every learning rate of the sweep.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, h: Tensor) -> Tensor:
        return F.relu(h + self.alpha * self.conv2(F.relu(self.conv1(h))))


class DigitsResNet(nn.Module):
    """A ResNet in miniature: stem conv, a residual block at 8×8 (``width`` channels), a stride-2
    conv to 4×4 (2 × ``width``), a second residual block, global average pooling, a linear head.

    About 7,200 weights at width 8. No BatchNorm (unlike ResNet18), so the network is the same
    function in training and in the sampler's eval mode.
    """

    def __init__(self, width: int = WIDTH, classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.block1 = ResidualBlock(width)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.block2 = ResidualBlock(2 * width)
        self.head = nn.Linear(2 * width, classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # He initialisation: the default is too small to leave the start
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block1(F.relu(self.stem(x)))
        h = self.block2(F.relu(self.down(h)))
        return self.head(h.mean(dim=(2, 3)))


# ---------------------------------------------------------------- training


def train(lr: float, batch: int, momentum: float, steps: int, seed: int, data: tuple[Tensor, Tensor]) -> nn.Module:
    """Plain SGD (heavy-ball momentum when ``momentum`` > 0, no weight decay) on the mean
    cross-entropy, ``steps`` minibatch steps, each epoch a fresh permutation; the learning rate rises
    linearly to ``lr`` over the first :data:`WARMUP` steps (as ResNets are usually trained), then stays.

    ``seed`` fixes the initial weights and the batch order, so models that differ in one knob start
    from the same weights (a paired comparison across knob values).
    """
    x, y = data
    torch.manual_seed(seed)
    model = DigitsResNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    generator = torch.Generator().manual_seed(seed)
    order, position = torch.randperm(len(x), generator=generator), 0
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / WARMUP)
        if position + batch > len(x):
            order, position = torch.randperm(len(x), generator=generator), 0
        index = order[position : position + batch]
        position += batch
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, data: tuple[Tensor, Tensor]) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on ``data``."""
    x, y = data
    logits = model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def configs(sweeps: dict[str, list[float]]) -> list[dict[str, float]]:
    """Every distinct training configuration: the baseline with one knob changed at a time."""
    out: list[dict[str, float]] = []
    for knob, values in sweeps.items():
        for value in values:
            config = {**BASELINE, knob: value}
            if config not in out:
                out.append(config)
    return out


# ---------------------------------------------------------------- sampler setting


def choose_setting(models: dict[str, nn.Module], data: tuple[Tensor, Tensor]) -> tuple[dict[str, Any], str, list]:
    """One setting for every model, by :func:`lambdahat.calibrate` on the models given (nβ = n/log n).

    The library's rule: the adaptive warm-up of ``estimate_llc`` on each model chooses ε, γ and the
    chain length; the recommended setting is the smallest ε and γ and the longest chains of the
    two, and both models are estimated again at it. Returns the setting (ε, γ, burn-in, draws),
    the rule in words with the verdict, and the calibration's rows for the section.
    """
    cal = lh.calibrate(
        models, data, lh.losses.cross_entropy, nbeta=NBETA, num_chains=CALIBRATION_CHAINS, batch_size=SAMPLER_BATCH,
        max_steps=CALIBRATION_MAX_STEPS, seed=0, progress=True,
    )
    print(cal, flush=True)
    keys = ("stage", "model", "step_size", "localization", "num_burnin_steps", "num_draws", "llc", "mcse", "certified",
            "failed", "mala_accept")
    rows = [{k: row[k] for k in keys} for row in cal.rows]
    rec = cal.recommended
    failing = [r for r in rows if r["stage"] == "common" and not r["certified"]]
    verdict = ("certified on both models." if cal.certified else "**not certified** on " + "; ".join(
        f"the {r['model']} model (failed: {', '.join(r['failed'])})" for r in failing)
        + ": the absolute λ̂ below belong to this setting and chain length.")
    setting = {"step_size": rec.step_size, "localization": rec.localization,
               "num_burnin_steps": rec.num_burnin_steps, "num_draws": rec.num_draws}
    return setting, f"{cal.rule} The recommended setting is {verdict}", rows


def measure(model: nn.Module, data: tuple[Tensor, Tensor], setting: dict[str, float], plan: Plan, seed: int) -> lh.LLCResult:
    """λ̂ at the end of training, on the training data, cross-entropy loss, the one fixed setting
    (its chain length where it has one, else the plan's)."""
    return lh.estimate_llc(
        model, data, lh.losses.cross_entropy, nbeta=NBETA, num_chains=plan.num_chains,
        num_burnin_steps=setting.get("num_burnin_steps", plan.num_burnin),
        num_draws=setting.get("num_draws", plan.num_draws), batch_size=SAMPLER_BATCH, seed=seed,
        progress=False, step_size=setting["step_size"], localization=setting["localization"],
    )


# ---------------------------------------------------------------- summary


def knob_rows(records: list[dict[str, Any]], plan: Plan) -> dict[str, list[dict[str, Any]]]:
    """Per knob and value: mean λ̂ and its standard error over seeds, test accuracy, train loss."""
    out: dict[str, list[dict[str, Any]]] = {}
    for knob, values in plan.sweeps.items():
        rows = []
        for value in values:
            config = {**BASELINE, knob: value}
            group = [r for r in records if all(r[k] == config[k] for k in BASELINE)]
            diverged = sum(not math.isfinite(r["llc"]) for r in group)
            group = [r for r in group if math.isfinite(r["llc"])]  # diverged trainings are counted apart
            llc = np.array([r["llc"] for r in group])
            rows.append({
                "knob": knob, "value": value, "seeds": len(group), "diverged": diverged,
                "llc_mean": float(llc.mean()), "llc_sem": float(llc.std(ddof=1) / math.sqrt(len(llc))) if len(llc) > 1 else float("nan"),
                "llc_sd": float(llc.std(ddof=1)) if len(llc) > 1 else float("nan"),
                "llc_mcse": float(np.sqrt(np.mean([r["llc_mcse"] ** 2 for r in group]))),
                "test_acc": float(np.mean([r["test_acc"] for r in group])),
                "test_acc_sd": float(np.std([r["test_acc"] for r in group], ddof=1)) if len(group) > 1 else float("nan"),
                "train_loss": float(np.mean([r["train_loss"] for r in group])),
                "train_acc": float(np.mean([r["train_acc"] for r in group])),
                "healthy": sum(r["healthy"] for r in group),
                "llc_per_seed": [float(v) for v in llc],
            })
        out[knob] = rows
    return out


def direction(records: list[dict[str, Any]], knob: str, values: list[float], seeds: tuple[int, ...]) -> dict[str, Any]:
    """The paper's direction for one knob: weakest (values[0]) vs strongest (values[-1]) regulariser.

    Paired over seeds (same initial weights and batch order): Δ = λ̂(strong) − λ̂(weak) per seed, its
    mean, standard error, and whether every seed agrees. Same for test accuracy.
    """
    def value_of(value: float, seed: int, key: str) -> float:
        config = {**BASELINE, knob: value}
        (row,) = [r for r in records if r["seed"] == seed and all(r[k] == config[k] for k in BASELINE)]
        return row[key]

    seeds = tuple(s for s in seeds if all(math.isfinite(value_of(v, s, "llc")) for v in values))

    out: dict[str, Any] = {"weak": values[0], "strong": values[-1]}
    for key in ("llc", "test_acc"):
        delta = np.array([value_of(values[-1], s, key) - value_of(values[0], s, key) for s in seeds])
        sem = float(delta.std(ddof=1) / math.sqrt(len(delta))) if len(delta) > 1 else float("nan")
        out[f"{key}_delta"] = float(delta.mean())
        out[f"{key}_delta_sem"] = sem
        out[f"{key}_delta_per_seed"] = [float(d) for d in delta]
    out["llc_delta_mcse_per_seed"] = [
        float(math.hypot(value_of(values[-1], s, "llc_mcse"), value_of(values[0], s, "llc_mcse"))) for s in seeds
    ]
    out["llc_lower"] = out["llc_delta"] < 0
    out["llc_lower_every_seed"] = all(d < 0 for d in out["llc_delta_per_seed"])
    out["test_acc_higher"] = out["test_acc_delta"] > 0
    means = [np.mean([value_of(v, s, "llc") for s in seeds]) for v in values]
    out["llc_monotone"] = bool(all(b < a for a, b in zip(means, means[1:])))
    return out


def control_summary(records: list[dict[str, Any]], control: list[dict[str, Any]]) -> dict[str, Any]:
    """The baseline trained longer against the baseline: how much λ̂ moves with training length alone."""
    base = {r["seed"]: r for r in records if all(r[k] == BASELINE[k] for k in BASELINE)}
    delta = np.array([c["llc"] - base[c["seed"]]["llc"] for c in control])
    return {
        "steps": control[0]["steps"], "llc_mean": float(np.mean([c["llc"] for c in control])),
        "llc_delta": float(delta.mean()), "llc_delta_sem": float(delta.std(ddof=1) / math.sqrt(len(delta))),
        "llc_delta_per_seed": [float(d) for d in delta],
        "train_loss": float(np.mean([c["train_loss"] for c in control])),
        "test_acc": float(np.mean([c["test_acc"] for c in control])),
    }


# ---------------------------------------------------------------- figure and section


def figure(rows: dict[str, list[dict[str, Any]]], path) -> None:
    """One column per knob: λ̂ (mean ± sd over seeds, seeds as dots) on top, test accuracy below."""
    from matplotlib.figure import Figure

    knobs = list(rows)
    fig = Figure(figsize=(4.0 * len(knobs), 6.0), layout="constrained")
    axes = fig.subplots(2, len(knobs), squeeze=False, sharex="col")
    for j, knob in enumerate(knobs):
        values = [r["value"] for r in rows[knob]]
        top, bottom = axes[0][j], axes[1][j]
        for r in rows[knob]:
            top.scatter([r["value"]] * len(r["llc_per_seed"]), r["llc_per_seed"], color="0.6", s=12, zorder=1)
        top.errorbar(values, [r["llc_mean"] for r in rows[knob]], yerr=[r["llc_sd"] for r in rows[knob]],
                     marker="o", color="C0", capsize=3, zorder=2)
        bottom.errorbar(values, [100 * r["test_acc"] for r in rows[knob]],
                        yerr=[100 * r["test_acc_sd"] for r in rows[knob]], marker="s", color="C1", capsize=3)
        top.set_title(KNOB_LABEL[knob] + " (other knobs at baseline)")
        top.set_ylabel("λ̂ at end of training")
        bottom.set_ylabel("test accuracy (%)")
        bottom.set_xlabel(KNOB_LABEL[knob])
        if knob in ("lr", "batch"):
            bottom.set_xscale("log", base=2)
        bottom.set_xticks(values, [f"{v:g}" for v in values])
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
    fig.savefig(path, dpi=120)


def reading(summary: dict[str, Any]) -> str:
    """The result in words, from the numbers: each direction, its size against its standard error,
    the training-length control and the sampler caveat."""
    lines = ["**Reading.**"]
    for knob, d in summary["directions"].items():
        z = abs(d["llc_delta"]) / d["llc_delta_sem"] if d["llc_delta_sem"] > 0 else math.inf
        agree = sum(v < 0 for v in d["llc_delta_per_seed"])
        verdict = (
            "the paper's direction held" + (" clearly" if z >= 2 and agree == len(d["llc_delta_per_seed"]) else
                                            ", but not clearly (within 2 standard errors or not on every seed)")
            if d["llc_lower"] else "the paper's direction did **not** hold"
        )
        acc, acc_sem = d["test_acc_delta"] * 100, d["test_acc_delta_sem"] * 100
        acc_word = ("higher, as in the paper" if acc > 2 * acc_sem else
                    "higher on average but within 2 standard errors" if acc > 0 else "not higher")
        failed = sum(not math.isfinite(r["llc"]) for r in summary["records"] if r[knob] == d["strong"])
        lines.append(
            f"- {KNOB_LABEL[knob]} {d['weak']:g} → {d['strong']:g}: λ̂ moved by {d['llc_delta']:+.1f} ± "
            f"{d['llc_delta_sem']:.1f} (paired over seeds, {abs(d['llc_delta']) / max(d['llc_delta_sem'], 1e-12):.1f} s.e.; "
            f"lower on {agree} of {len(d['llc_delta_per_seed'])} seeds): {verdict}"
            f"{'; monotone over the sweep' if d['llc_monotone'] else '; not monotone over the sweep'}. "
            f"Test accuracy moved by {acc:+.2f} ± {acc_sem:.2f} points ({acc_word})."
            + (f" {failed} of {len(summary['plan']['seeds'])} trainings at {d['strong']:g} failed (diverged or "
               "collapsed; table), so this pair rests on the remaining seeds." if failed else "")
        )
    control = summary.get("control")
    if control:
        base_loss = summary["knobs"]["momentum"]["train_loss"][0]
        smallest = min(abs(d["llc_delta"]) for d in summary["directions"].values())
        lines.append(
            f"- Control, training length alone: the stronger regularisers also reach lower training losses in the "
            f"same number of steps (table), so part of their lower λ̂ could be how far training has gone rather "
            f"than where it went. Training the baseline {control['steps'] / summary['plan']['train_steps']:g}× "
            f"as long ({control['steps']} steps) took its train loss from {base_loss:.1e} to "
            f"{control['train_loss']:.1e} and moved λ̂ by {control['llc_delta']:+.1f} ± {control['llc_delta_sem']:.1f} "
            f"(per seed: {', '.join(f'{v:+.1f}' for v in control['llc_delta_per_seed'])}), "
            + ("small next to the smallest knob effect above" if abs(control["llc_delta"]) < smallest / 3
               else "not small next to the knob effects above, so they are partly a training-length effect")
            + f" ({smallest:.1f})."
        )
    for knob, d in summary["directions"].items():
        values, loss = summary["knobs"][knob]["values"], summary["knobs"][knob]["train_loss"]
        strong, weak = loss[values.index(d["strong"])], loss[values.index(d["weak"])]
        if d["llc_lower"] and strong > weak:
            lines.append(
                f"- The {KNOB_LABEL[knob]} sweep runs against the training-loss explanation: its strong end ends at the "
                f"higher train loss ({strong:.1e} at {d['strong']:g} against {weak:.1e} at {d['weak']:g}) and still at "
                "the lower λ̂."
            )
    measured = [r for r in summary["records"] if math.isfinite(r["llc"])]
    losses = np.log([r["train_loss"] for r in measured])
    llcs = np.array([r["llc"] for r in measured])
    rho = spearman(losses, llcs)
    summary["spearman_train_loss_llc"] = rho
    lines.append(f"- Across all {len(llcs)} models, the rank correlation of λ̂ with the final train loss is {rho:+.2f}.")
    robust = epsilon_robustness(summary.get("calibration_rows", []))
    if robust:
        lines.append(robust)
    unconverged = sum("convergence" in r["failed"] for r in measured)
    if unconverged:
        lines.append(
            f"- {unconverged} of {len(measured)} final estimates fail the `convergence` health check (λ̂ over the "
            "second half of the draws above the first half's): with γ = 1 the chains keep spreading along the flat "
            "directions of a near-zero cross-entropy minimum, so each λ̂ is that of a fixed chain length, the same "
            "for every model, rather than a plateau value."
        )
    if summary.get("calibration_certified") is False:
        shift = []
        for model in dict.fromkeys(r["model"] for r in summary.get("calibration_rows", [])):
            own = next((r for r in summary["calibration_rows"] if r["model"] == model and r["stage"] == "adaptive"), None)
            common = next((r for r in summary["calibration_rows"] if r["model"] == model and r["stage"] == "common"), None)
            if own and common and _finite(own["llc"]) and _finite(common["llc"]):
                shift.append(f"{own['llc']:.1f} at its own ε = {own['step_size']:.2g} and {common['llc']:.1f} at the "
                             f"common ε = {common['step_size']:.2g} for the {model} model")
        lines.append(
            "- The recommended setting was not certified on every calibration model"
            + (f" ({'; '.join(shift)})" if shift else "")
            + ", so no value above is *the* LLC of its network: the absolute values belong to this one setting and "
            "chain length, and only the comparison between models, all measured with it, is the result."
        )
    return "\n".join(lines)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def calibration_table(rows: list[dict[str, Any]]) -> str:
    """The calibration runs as a table: each model at its own adaptive setting and at the common one."""
    if not rows:
        return ""
    table = [{
        "stage": r["stage"], "model": r["model"], "eps": f"{r['step_size']:.3g}", "gamma": f"{r['localization']:g}",
        "steps": f"{r['num_burnin_steps']} + {r['num_draws']}",
        "llc": f"{r['llc']:.1f} ± {r['mcse']:.1f}" if _finite(r["llc"]) else "–",
        "verdict": "certified" if r["certified"] else "fails " + ", ".join(r["failed"]),
    } for r in rows]
    return "Calibration runs (`adaptive`: each model's own warm-up; `common`: the recommended setting):\n\n" + markdown_table(
        table, [("stage", "stage"), ("model", "model"), ("eps", "ε"), ("gamma", "γ"), ("steps", "burn-in + draws"),
                ("llc", "λ̂ ± MCSE"), ("verdict", "verdict")])


def epsilon_robustness(rows: list[dict[str, Any]]) -> str:
    """Does the momentum model's λ̂ sit below the baseline's at each model's own adaptive setting as
    well as at the common one, not only at the setting chosen?"""
    by_stage = {}
    for r in rows:
        if _finite(r["llc"]):
            by_stage.setdefault(r["stage"], {})[r["model"]] = r
    ratios = {stage: v["momentum 0.9"]["llc"] / v["baseline"]["llc"] for stage, v in by_stage.items()
              if {"momentum 0.9", "baseline"} <= set(v) and v["baseline"]["llc"] > 0}
    if "common" not in ratios or "adaptive" not in ratios:
        return ""
    own = by_stage["adaptive"]
    return (f"- On seed 0's calibration runs the momentum-0.9 model's λ̂ is {ratios['common']:.2f}× the baseline's at the "
            f"common setting and {ratios['adaptive']:.2f}× when each model runs at its own adaptive setting (ε = "
            f"{own['baseline']['step_size']:.2g} and {own['momentum 0.9']['step_size']:.2g}): "
            + ("the ordering does not hinge on the one setting chosen." if max(ratios.values()) < 1 else
               "the ordering depends on the setting."))


def fit_text(records: list[dict[str, Any]]) -> str:
    """Whether every model fitted its training set by the end of training (the paper trains to convergence)."""
    worst_acc = min(r["train_acc"] for r in records)
    worst_loss = max(r["train_loss"] for r in records)
    ok = [r for r in records if r["train_acc"] >= FAILED_TRAIN_ACC]
    failed = len(records) - len(ok)
    text = (f"{failed} of {len(records)} trainings failed (train accuracy below {100 * FAILED_TRAIN_ACC:.0f}%: "
            "diverged or collapsed); they have no minimum to measure and are left out. " if failed else "")
    worst_acc, worst_loss = min(r["train_acc"] for r in ok), max(r["train_loss"] for r in ok)
    if worst_acc == 1.0:
        return text + (f"Every other model fits the training set (train accuracy 100%, train loss ≤ {worst_loss:.1e}; "
                       "cross-entropy reaches zero only in the limit): the paper's \"trained to convergence\".")
    short = [r for r in ok if r["train_acc"] < 1.0]
    which = sorted({f"{k} {r[k]:g}" for r in short for k in BASELINE if r[k] != BASELINE[k]}) or ["baseline"]
    return text + (f"Every other model ends at train accuracy ≥ {100 * worst_acc:.1f}% (train loss ≤ {worst_loss:.2g}); "
                   f"{len(short)} stop short of 100% ({', '.join(which)}: the gradient noise of that setting keeps "
                   "them from the last few images), and are kept.")


def section(summary: dict[str, Any], rows: dict[str, list[dict[str, Any]]], figure_name: str) -> str:
    """The Markdown section for docs/results/training_heuristics.md."""
    plan, setting = summary["plan"], summary["setting"]
    table_rows = []
    for knob, group in rows.items():
        for r in group:
            base = r["value"] == BASELINE[knob]
            table_rows.append({
                "knob": KNOB_LABEL[knob], "value": f"{r['value']:g}" + (" (baseline)" if base else ""),
                "llc": f"{r['llc_mean']:.1f} ± {r['llc_sem']:.1f}", "sd": f"{r['llc_sd']:.1f}", "mcse": f"{r['llc_mcse']:.1f}",
                "acc": f"{100 * r['test_acc']:.2f} ± {100 * r['test_acc_sd']:.2f}",
                "loss": f"{r['train_loss']:.1e}", "tacc": f"{100 * r['train_acc']:.1f}",
                "healthy": f"{r['healthy']}/{r['seeds']}" + (f" ({r['diverged']} failed in training)" if r["diverged"] else ""),
            })
    table = markdown_table(table_rows, [
        ("knob", "knob"), ("value", "value"), ("llc", "λ̂ mean ± s.e. (seeds)"), ("sd", "sd over seeds"),
        ("mcse", "sampler MCSE"), ("acc", "test acc. % (± sd)"), ("loss", "train loss"), ("tacc", "train acc. %"),
        ("healthy", "healthy runs"),
    ])
    dir_rows = []
    for knob, d in summary["directions"].items():
        dir_rows.append({
            "knob": KNOB_LABEL[knob], "pair": f"{d['weak']:g} → {d['strong']:g}",
            "dllc": f"{d['llc_delta']:+.1f} ± {d['llc_delta_sem']:.1f}",
            "seeds": ", ".join(f"{v:+.1f}" for v in d["llc_delta_per_seed"]),
            "held": "yes" if d["llc_lower"] and d["llc_lower_every_seed"] else ("on average" if d["llc_lower"] else "no"),
            "mono": "yes" if d["llc_monotone"] else "no",
            "dacc": f"{100 * d['test_acc_delta']:+.2f} ± {100 * d['test_acc_delta_sem']:.2f}",
            "acc": "yes" if d["test_acc_higher"] else "no",
        })
    directions = markdown_table(dir_rows, [
        ("knob", "knob"), ("pair", "weak → strong"), ("dllc", "Δλ̂ (paired mean ± s.e.)"), ("seeds", "Δλ̂ per seed"),
        ("held", "λ̂ lower?"), ("mono", "monotone over 3 values?"), ("dacc", "Δ test acc. (points)"),
        ("acc", "test acc. higher?"),
    ])
    return SECTION.format(
        title=TITLE, table=table, directions=directions, figure=figure_name,
        steps=plan["train_steps"], seeds=len(plan["seeds"]), chains=plan["num_chains"], burnin=plan["num_burnin"],
        draws=plan["num_draws"], eps=setting["step_size"], gamma=setting["localization"], nbeta=NBETA,
        sampler_batch=SAMPLER_BATCH, n_train=N_TRAIN, n_test=1797 - N_TRAIN, weights=summary["num_weights"],
        calibration=summary["calibration_rule"], reading=summary.get("reading", ""), fit=fit_text(summary["records"]),
        calibration_table=calibration_table(summary.get("calibration_rows", [])),
        cal_chains=CALIBRATION_CHAINS, cal_steps=CALIBRATION_MAX_STEPS,
    )


SECTION = """## {title}

**Claim** (Lau et al., arXiv 2308.12108, ResNet18 on CIFAR-10): the LLC at the end of training is
lower when the training heuristics regularise more strongly — a larger SGD learning rate, a smaller
batch, momentum — and test accuracy is higher alongside.

**Protocol.** A small residual CNN (`DigitsResNet` in the experiment: stem conv, one residual block
at 8×8 with 8 channels, a stride-2 conv, one residual block at 4×4 with 16 channels, global average
pooling, linear head; {weights} weights; no BatchNorm, a zero-initialised residual scale instead)
trained with plain SGD (a linear learning-rate warm-up over the first 200 steps, as ResNets usually
are: without it, learning rate 0.2 diverged on one seed of a trial run; with it, 0.2 still collapsed
to a constant output on one of three seeds, so the sweep stops at 0.15), no weight decay, on scikit-learn's `load_digits` (fixed stratified split:
{n_train} training, {n_test} test images). Baseline: learning rate 0.05, batch 32, no momentum; each
sweep changes one knob. Every model trains for the **same number of SGD steps, {steps}**: same
epochs would give the batch-8 model 16× the updates of the batch-128 one, confounding the batch size
with the length of training. {fit} {seeds} seeds per setting; a seed
fixes the initial weights and the batch order, so models differing in one knob start from the same
weights and the comparison is paired.

**Sampler.** λ̂ at the final weights, on the training data with the cross-entropy loss, SGLD,
nβ = n / log n = {nbeta:.1f} (the paper's), **one setting for every model**: ε = {eps:.3g},
γ = {gamma:g}, {chains} chains × ({burnin} burn-in + {draws} draws), minibatch {sampler_batch}. The
setting was chosen before the sweep by `lh.calibrate` on the baseline and the momentum-0.9 model of
seed 0 (the library's adaptive warm-up on each, {cal_chains} chains, at most {cal_steps} steps per chain; then the
smallest ε and γ and the longest chains of the two, verified on both); its rule:
{calibration}

{calibration_table}

{table}

"λ̂ mean ± s.e." is over seeds (standard error of the mean); "sampler MCSE" is the Monte Carlo
error of one estimate (root mean square over seeds). "healthy runs" counts estimates that passed
every health check of the library.

**Directions** (weakest vs strongest regulariser of each sweep, paired by seed):

{directions}

![λ̂ and test accuracy against each training knob]({figure})

*Top: λ̂ (mean ± sd over seeds; grey dots: single seeds); bottom: test accuracy (mean ± sd). Each
column changes one knob, the others stay at the baseline (lr 0.05, batch 32, no momentum).*

{reading}
"""


# ---------------------------------------------------------------- main


def train_and_score(config: dict[str, float], seed: int, steps: int, train_data, test_data, start: float):
    """Train one model; its record (knobs, seed, steps, train and test loss and accuracy)."""
    model = train(config["lr"], config["batch"], config["momentum"], steps, seed, train_data)
    train_loss, train_acc = evaluate(model, train_data)
    test_loss, test_acc = evaluate(model, test_data)
    print(f"trained {config} seed {seed}, {steps} steps: train loss {train_loss:.2e} acc {train_acc:.3f}, "
          f"test acc {test_acc:.3f} ({time.perf_counter() - start:.0f}s)", flush=True)
    record = {**config, "seed": seed, "steps": steps, "train_loss": train_loss, "train_acc": train_acc,
              "test_loss": test_loss, "test_acc": test_acc}
    return model, record


def main(argv=None) -> dict[str, Any]:
    run, _ = parse(NAME, __doc__.splitlines()[0], argv)
    plan = QUICK if run.quick else FULL
    train_data, test_data = digits()
    start = time.perf_counter()
    jobs = [(config, seed, plan.train_steps) for config in configs(plan.sweeps) for seed in plan.seeds]
    if plan.control_steps:
        jobs += [(dict(BASELINE), seed, plan.control_steps) for seed in plan.seeds]
    models, all_records = [], []
    for config, seed, steps in jobs:
        model, record = train_and_score(config, seed, steps, train_data, test_data, start)
        models.append(model)
        all_records.append(record)

    if plan.calibrate:
        strongest = {**BASELINE, "momentum": plan.sweeps["momentum"][-1]}
        pick = lambda c: next(m for m, r in zip(models, all_records)  # noqa: E731
                              if r["seed"] == plan.seeds[0] and r["steps"] == plan.train_steps
                              and all(r[k] == c[k] for k in BASELINE))
        setting, rule, cal_rows = choose_setting({"baseline": pick(BASELINE), "momentum 0.9": pick(strongest)}, train_data)
        certified = all(r["certified"] for r in cal_rows if r["stage"] == "common")
    else:
        setting, rule, cal_rows = dict(QUICK_SETTING), "not run: --quick reuses the committed full run's setting.", []
        certified = None
    print(f"sampler setting: {setting} ({time.perf_counter() - start:.0f}s)", flush=True)

    for model, record in zip(models, all_records):
        if not (math.isfinite(record["train_loss"]) and record["train_acc"] >= FAILED_TRAIN_ACC):
            record.update(llc=float("nan"), llc_mcse=float("nan"), healthy=False, failed=["training failed"])
            print(f"skipped {record}: training failed", flush=True)
            continue
        result = measure(model, train_data, setting, plan, record["seed"])
        record.update(llc=result.llc_mean, llc_mcse=result.llc_mcse, healthy=bool(result.healthy),
                      failed=[c.name for c in result.checks if not c.ok],
                      mala_accept=next((float(c.value) for c in result.checks if c.name == "mala_accept"), None))
        print(f"λ̂ {record['lr']}, {record['batch']}, {record['momentum']}, seed {record['seed']}, {record['steps']} steps: "
              f"{result.llc_mean:.1f} ± {result.llc_mcse:.1f} {record['failed'] or 'healthy'} "
              f"({time.perf_counter() - start:.0f}s)", flush=True)
    records = [r for r in all_records if r["steps"] == plan.train_steps]
    control = [r for r in all_records if r["steps"] != plan.train_steps]

    rows = knob_rows(records, plan)
    summary: dict[str, Any] = {
        "plan": {"train_steps": plan.train_steps, "seeds": list(plan.seeds), "num_chains": plan.num_chains,
                 "num_burnin": setting.get("num_burnin_steps", plan.num_burnin),
                 "num_draws": setting.get("num_draws", plan.num_draws)},
        "setting": {**setting, "nbeta": NBETA, "batch_size": SAMPLER_BATCH},
        "calibration_rule": rule,
        "calibration_rows": cal_rows,
        "calibration_certified": certified,
        "num_weights": sum(p.numel() for p in DigitsResNet().parameters()),
        "knobs": {k: {"values": [r["value"] for r in g], "llc_mean": [r["llc_mean"] for r in g],
                      "llc_sem": [r["llc_sem"] for r in g], "test_acc": [r["test_acc"] for r in g],
                      "train_loss": [r["train_loss"] for r in g]} for k, g in rows.items()},
        "directions": {k: direction(records, k, v, plan.seeds) for k, v in plan.sweeps.items()},
        "records": records,
        "control": control_summary(records, control) if control else None,
    }
    fig_path = run.figure_path(NAME)
    figure(rows, fig_path)
    summary["reading"] = reading(summary)
    (run.out / f"{NAME}.json").write_text(json.dumps(summary, indent=1, default=float))
    path = run.write_section(section(summary, rows, f"figures/{fig_path.name}"))
    for knob, d in summary["directions"].items():
        print(f"{knob}: Δλ̂ = {d['llc_delta']:+.1f} ± {d['llc_delta_sem']:.1f} per seed {d['llc_delta_per_seed']}, "
              f"Δacc = {d['test_acc_delta']:+.4f}")
    print(f"wrote {path} and {fig_path} in {run.elapsed():.0f}s")
    return summary


if __name__ == "__main__":
    main()
