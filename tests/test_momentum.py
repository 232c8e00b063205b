"""The adaptive engine's SGHMC: its acceptance diagnostic, its friction rule, and its noise scaling.

``sampler="auto"`` (the default) samples with SGHMC whose friction α the warm-up sets from the
measured minibatch noise. At α = 1 SGHMC is SGLD, so its recorded acceptance must be SGLD's; the
noise bias scales as 1/α; and α is the smallest in [MIN_FRICTION, 1] that keeps that bias within
its share of λ̂.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import lambdahat as lh
from lambdahat import noise
from lambdahat.samplers import SamplerConfig
from tests._harness import small_dln


def test_sghmc_at_friction_one_is_sgld_and_records_the_same_acceptance():
    task = small_dln()
    common = dict(step_size=1e-4, num_burnin_steps=0, num_draws=60, num_chains=2, seed=3, progress=False,
                  batch_size=100)
    sgld = lh.estimate_llc(task.model, task.data, task.loss_fn, sampler=SamplerConfig("sgld", acceptance_every=5),
                           **common)
    sghmc = lh.estimate_llc(task.model, task.data, task.loss_fn,
                            sampler=SamplerConfig("sghmc", friction=1.0, acceptance_every=5), **common)
    np.testing.assert_allclose(sghmc.trace["loss"], sgld.trace["loss"], rtol=1e-4)
    a, b = sghmc.trace["mala_accept"], sgld.trace["mala_accept"]
    checked = np.isfinite(b)
    assert checked.any() and (np.isfinite(a) == checked).all()  # the same steps are checked
    np.testing.assert_allclose(a[checked], b[checked], rtol=1e-3, atol=1e-5)


def test_noise_bias_scales_inversely_with_friction():
    assert noise.noise_bias(1e-4, 100.0, 2.0, friction=0.1) == pytest.approx(10 * noise.noise_bias(1e-4, 100.0, 2.0))


def test_friction_is_the_smallest_the_noise_allows():
    llc = 50.0
    allowed = noise.NOISE_BIAS * llc
    assert noise.choose_friction(0.0, llc) == noise.MIN_FRICTION  # no noise (full batch, noise-free teacher at w*)
    assert noise.choose_friction(allowed * 0.3, llc) == pytest.approx(0.3)  # its bias, SGLD's / α, is then allowed
    assert noise.choose_friction(allowed * 1e-4, llc) == noise.MIN_FRICTION
    assert noise.choose_friction(allowed * 5, llc) == 1.0  # even SGLD exceeds it: the step size is capped instead
    assert noise.choose_friction(allowed, math.nan) == 1.0


def test_auto_sampler_resolves_to_sgld_for_a_given_step_and_reproduces_from_settings():
    task = small_dln()
    fixed = lh.estimate_llc(task.model, task.data, task.loss_fn, step_size=1e-4, num_burnin_steps=10, num_draws=20,
                            num_chains=2, progress=False)
    assert fixed.settings.sampler == "sgld"
    adapted = lh.estimate_llc(task.model, task.data, task.loss_fn, max_steps=3000, num_chains=2, progress=False)
    ran = adapted.settings.sampler
    assert ran.name == "sghmc" and noise.MIN_FRICTION <= ran.options["friction"] <= 1.0
    assert adapted.config["sampler_options"]["friction"] == ran.options["friction"]
    again = lh.estimate_llc(task.model, task.data, task.loss_fn, **adapted.settings, progress=False)
    assert again.settings.sampler == ran and again.adaptation is None
