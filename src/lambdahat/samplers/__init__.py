"""Samplers of the localised tempered posterior, one module each.

Every sampler is built the same way, ``build(loss_and_grad, w_star, ...) -> Sampler``, and used as
``state = sampler.init(w)`` then ``state, info = sampler.step(state, batch, generator)``.
``loss_and_grad(w, batch) -> (loss, grad)`` is the flat batch-mean loss and its gradient;
``info.loss`` is the batch loss at the state *before* the step (free: it is computed for the
gradient anyway, and unbiased for L_n(w_t)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from . import sgld

__all__ = ["Sampler", "SAMPLERS", "sgld"]


class Sampler(NamedTuple):
    init: Callable[[Any], Any]
    step: Callable[[Any, Any, Any], tuple[Any, Any]]


SAMPLERS = {"sgld": sgld.build}
