"""Investigation (lead for the ESS check): how far off are ESS estimators when a weak slow signal
sits under white minibatch noise, as in the draws of a noisy regression?

    python benchmarks/investigations/ess_white_over_slow.py

Synthetic chains, 4 × 18,000 draws: x_t = s_t + e_t with e_t white (sd 7, the minibatch noise of a
draw) and s_t an AR(1) of stationary sd σ and correlation time τ (the slow motion of the chain).
The exact ESS of the mean is M·N·var(x) / (σ_e² + σ² (1 + φ)/(1 − φ)), φ = exp(−1/τ). Five seeds
per case; printed: the exact ESS, lambdahat's (Geyer's initial monotone sequence on split chains,
:func:`lambdahat.diagnostics.ess` with ``method="mean"``), batch means with 10 batches per chain,
and an AR(p) spectral estimate at frequency 0 with p chosen by AIC (as R's coda does), p ≤ 200.
"""

from __future__ import annotations

import math

import numpy as np

from lambdahat import diagnostics

M, N, WHITE = 4, 18_000, 7.0
CASES = [(1.5, 600), (0.7, 600), (1.5, 2000), (0.0, 1)]


def chains(rng: np.random.Generator, sd_slow: float, tau: float) -> np.ndarray:
    phi = math.exp(-1 / tau)
    slow = np.zeros((M, N))
    slow[:, 0] = rng.normal(size=M) * sd_slow
    kicks = rng.normal(size=(M, N)) * sd_slow * math.sqrt(1 - phi**2)
    for t in range(1, N):
        slow[:, t] = phi * slow[:, t - 1] + kicks[:, t]
    return slow + rng.normal(size=(M, N)) * WHITE


def exact_ess(sd_slow: float, tau: float) -> float:
    phi = math.exp(-1 / tau)
    return M * N * (WHITE**2 + sd_slow**2) / (WHITE**2 + sd_slow**2 * (1 + phi) / (1 - phi))


def batch_means_ess(a: np.ndarray, batches: int = 10) -> float:
    size = a.shape[1] // batches
    means = a[:, : batches * size].reshape(a.shape[0], batches, size).mean(axis=2)
    return a.size * a.var(ddof=1) / (size * means.var(ddof=1))


def ar_ess(a: np.ndarray, max_order: int = 200) -> float:
    """Per chain: Yule–Walker AR(p) by Levinson–Durbin, p by AIC; σ²/(1 − Σφ)² is the spectrum at 0."""
    spectra = []
    for x in a - a.mean(axis=1, keepdims=True):
        n = x.size
        f = np.fft.rfft(x, n=2 * n)
        acov = np.fft.irfft(f * np.conj(f))[: max_order + 1] / n
        phi, sigma = np.zeros(0), acov[0]
        best = (n * math.log(sigma), phi, sigma)
        for k in range(1, max_order + 1):
            reflection = (acov[k] - phi @ acov[k - 1:0:-1]) / sigma
            phi = np.concatenate([phi - reflection * phi[::-1], [reflection]])
            sigma *= 1 - reflection**2
            if n * math.log(sigma) + 2 * k < best[0]:
                best = (n * math.log(sigma) + 2 * k, phi.copy(), sigma)
        spectra.append(best[2] / (1 - best[1].sum()) ** 2)
    return a.size * a.var(ddof=1) / float(np.mean(spectra))


def main() -> None:
    rng = np.random.default_rng(0)
    for sd_slow, tau in CASES:
        rows = np.array([(diagnostics.ess(a, "mean"), batch_means_ess(a), ar_ess(a))
                         for a in (chains(rng, sd_slow, tau) for _ in range(5))])
        print(f"slow sd {sd_slow}, τ {tau}: exact ESS {exact_ess(sd_slow, tau):.0f}; "
              f"Geyer {rows[:, 0].round().astype(int).tolist()}; batch means {rows[:, 1].round().astype(int).tolist()}; "
              f"AR {rows[:, 2].round().astype(int).tolist()}", flush=True)


if __name__ == "__main__":
    main()
