"""The one setting of a :func:`lambdahat.trajectory` run, checked before any work: estimate_llc keyword
arguments resolved from a dict, a :class:`~lambdahat.settings.Settings` or a calibration
(:func:`resolve_settings`), or, for ``settings="auto"`` and whatever is left ``"auto"``, calibrated
once on the first, middle and last checkpoint and kept in the cache (:func:`calibrated`).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import cache as _cache
from .checkpoints import checkpoint_identity, load_checkpoint
from .settings import Settings

__all__ = ["resolve_settings", "as_settings", "calibrated"]

_SETTING_NAMES = frozenset(f.name for f in dataclasses.fields(Settings))
#: estimate_llc arguments that are not sampling settings but belong to the problem (in the key too).
_PROBLEM_KEYS = frozenset({"sampled_params"}) - _SETTING_NAMES
_NOT_SETTINGS = ("model", "data", "loss_fn", "executor", "progress")
_CALIBRATION_CHAIN = ("num_chains", "num_burnin_steps", "batch_size", "seed")


def resolve_settings(settings: Any) -> dict[str, Any]:
    """estimate_llc keyword arguments from a dict or :class:`~lambdahat.settings.Settings`, or from
    a calibration (an object with ``.recommended``, such as a
    :class:`~lambdahat.calibrate.CalibrationResult`: its recommended setting, over the chains,
    burn-in, batch size and seed of its runs where it records them). Unknown keys and bad values
    are an error (values are checked by :class:`~lambdahat.settings.Settings`)."""
    if settings is None:
        return {}
    if hasattr(settings, "recommended"):
        if settings.recommended is None:
            raise ValueError("the calibration recommended no setting (see its .rule); pass a settings dict instead.")
        runs = getattr(settings, "settings", None) or {}
        chain = {k: runs[k] for k in _CALIBRATION_CHAIN if k in runs.keys() and runs[k] is not None}
        settings = {**chain, **dict(settings.recommended.items())}
    if not (isinstance(settings, (Mapping, Settings))):
        raise TypeError(f"settings must be a dict of estimate_llc arguments, a calibration or 'auto', "
                        f"got {type(settings).__name__}.")
    out = {k: v for k, v in settings.items() if k != "nbeta_default"}  # a recommended dict's note, not an argument
    unknown = sorted(set(out) - _SETTING_NAMES - _PROBLEM_KEYS)
    if unknown:
        hint = " (executor and progress are trajectory()'s own arguments)" if set(unknown) & set(_NOT_SETTINGS) else ""
        raise ValueError(f"settings has unknown key(s) {unknown}{hint}; estimate_llc takes "
                         f"{sorted(_SETTING_NAMES | _PROBLEM_KEYS)}.")
    checked = as_settings(out)
    sampled = out.get("sampled_params")
    if not (sampled is None or callable(sampled) or isinstance(sampled, (str, Mapping))
            or (isinstance(sampled, (list, tuple)) and all(isinstance(v, str) for v in sampled))):
        raise TypeError(f"sampled_params must be parameter names, a predicate (name, tensor) -> bool or a mapping of "
                        f"masks, got {type(sampled).__name__}.")
    return {k: (getattr(checked, k) if k in _SETTING_NAMES else v) for k, v in out.items()}


def as_settings(settings: Mapping[str, Any]) -> Settings:
    """The full Settings (defaults filled in) of the setting keys of ``settings``."""
    return Settings.from_mapping({k: v for k, v in settings.items() if k in _SETTING_NAMES}, where="settings")


def calibrated(items: list, make_model: Callable, data: Any, loss_fn: Any, cache: Path | None,
               progress: bool, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """One setting for all, from :func:`lambdahat.calibrate.calibrate` on the first, middle and last
    checkpoint with the ``given`` settings kept; kept in ``cache`` (keyed by those checkpoints, the
    problem and the given settings) for reruns. The ``nbeta`` check's second run at 4nβ is off
    unless ``nbeta_check=True`` is given."""
    given = dict(given or {})
    from . import __version__

    calibration = importlib.import_module(".calibrate", __package__)  # the module: lambdahat.calibrate is the function

    chosen = [items[i] for i in sorted({0, len(items) // 2, len(items) - 1})]
    identity = _cache.fingerprint([checkpoint_identity(source) for _, source in chosen])
    key = _cache.cache_key({k: v for k, v in given.items() if k != "sampled_params"}, data=data, loss_fn=loss_fn,
                           make_model=make_model, sampled_params=given.get("sampled_params"),
                           extra={"calibrate": "first, middle, last", "seed": 0, "lambdahat": __version__})
    path = cache / f"calibration_{identity[:10]}_{key[:10]}.json" if cache is not None else None
    if path is not None:
        hit = _cache.read_entry(path, identity, key, lambda record: resolve_settings(record["settings"]))
        if hit is not None:
            return hit
    models = {f"step {step}": load_checkpoint(make_model, step, source) for step, source in chosen}
    result = calibration.calibrate(models, data, loss_fn, progress=progress, verify=False, **{"seed": 0, **given})
    settings = {**resolve_settings(result), **({"sampled_params": given["sampled_params"]} if "sampled_params" in given else {})}
    # checkpoints are compared at one nβ, where the nβ check's second run (twice the time) changes nothing
    # the comparison rests on: it runs per checkpoint only when asked for
    settings["nbeta_check"] = given.get("nbeta_check") is True
    if path is not None:
        _cache.write_entry(path, identity, key, settings=settings)
    return settings
