"""lambdahat.cache: the key changes whenever the result could, is the same in every process, and a
bad cache file is a miss with a warning, never a crash (issue 14, defect 1).

The trajectory-level reproductions (a second run with another factory, loss or predicate
recomputes; a new partial of the same loss hits the cache) are in test_trajectory.py; these pin
the description each case rests on.
"""

import functools
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lambdahat import cache
from lambdahat.settings import Settings


def _loss(output, target, scale=1.0):
    return scale * ((output - target) ** 2).mean()


class Scaled:
    def __init__(self, scale):
        self.scale = scale

    def __call__(self, output, target):
        return self.scale * _loss(output, target)


def _net(act=nn.Tanh, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), act(), nn.Linear(4, 2))


def test_losses_are_told_apart_by_their_configuration():
    fp = cache.fingerprint
    assert fp(nn.MSELoss()) == fp(nn.MSELoss())
    assert fp(nn.MSELoss()) != fp(nn.MSELoss(reduction="sum"))
    assert fp(nn.CrossEntropyLoss(weight=torch.ones(3))) != fp(nn.CrossEntropyLoss(weight=torch.arange(3.0)))
    assert fp(nn.MSELoss()) != fp(nn.L1Loss())


def test_functions_by_code_constants_names_defaults_and_closure():
    fp = cache.fingerprint
    assert fp(lambda o, t: ((o - t) ** 2).mean()) == fp(lambda o, t: ((o - t) ** 2).mean())  # the same code
    assert fp(lambda o, t: ((o - t) ** 2).mean()) != fp(lambda o, t: ((o - t) ** 2).sum())  # names
    assert fp(lambda o, t: ((o - t) ** 2).mean()) != fp(lambda o, t: ((o - t) ** 3).mean())  # constants

    def scaled(scale):
        return lambda o, t: scale * _loss(o, t)

    assert fp(scaled(1.0)) == fp(scaled(1.0)) and fp(scaled(1.0)) != fp(scaled(2.0))  # closure cells
    assert fp(functools.partial(_loss, scale=2.0)) == fp(functools.partial(_loss, scale=2.0))
    assert fp(functools.partial(_loss, scale=2.0)) != fp(functools.partial(_loss, scale=3.0))
    assert fp(Scaled(2.0)) == fp(Scaled(2.0)) and fp(Scaled(2.0)) != fp(Scaled(3.0))
    assert fp(lambda name, p: name.startswith("0.")) != fp(lambda name, p: name.startswith("2."))
    assert fp(torch.tanh) != fp(torch.relu)


def test_descriptions_hold_no_memory_address():
    loader = DataLoader(TensorDataset(torch.zeros(4, 3)), batch_size=2, shuffle=True)
    for obj in (functools.partial(_loss, scale=2.0), Scaled(2.0), lambda o, t: o, _net(), loader, Scaled(2.0).__call__,
                torch.Generator(), object()):
        assert "0x" not in json.dumps(cache.describe(obj)), obj


def test_a_model_factory_by_architecture_not_initial_weights():
    def copying(template):
        return lambda: template

    fp = functools.partial(cache.fingerprint, weights=False)
    assert fp(copying(_net(seed=0))) == fp(copying(_net(seed=1)))  # weights are overwritten by each checkpoint
    assert fp(copying(_net(nn.Tanh))) != fp(copying(_net(nn.ReLU)))
    assert fp(functools.partial(_net, act=nn.Tanh)) != fp(functools.partial(_net, act=nn.ReLU))
    wider = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    assert fp(copying(_net())) != fp(copying(wider))
    # with weights (a loss module, say), the values count
    assert cache.fingerprint(_net(seed=0)) != cache.fingerprint(_net(seed=1))


def test_non_persistent_buffers_count_even_without_weights():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    a.register_buffer("mask", torch.ones(2), persistent=False)
    b.register_buffer("mask", torch.zeros(2), persistent=False)  # not in the checkpoint: kept from the factory
    assert cache.fingerprint(a, weights=False) != cache.fingerprint(b, weights=False)


def test_data_by_contents():
    x = torch.randn(8, 3)
    y = x.clone()
    y[0, 0] += 1
    fp = cache.fingerprint
    assert fp((x, x)) == fp((x.clone(), x.clone())) and fp((x, x)) != fp((x, y))
    assert fp(TensorDataset(x)) != fp(TensorDataset(y))
    assert fp(DataLoader(TensorDataset(x), batch_size=2)) != fp(DataLoader(TensorDataset(x), batch_size=4))
    assert fp(DataLoader(TensorDataset(x), batch_size=2)) == fp(DataLoader(TensorDataset(x.clone()), batch_size=2))


def test_cycles_end():
    class Node:
        pass

    node = Node()
    node.me = node
    assert cache.describe(node)["state"]["dict"][0][1] == {"ref": 0}


def test_the_key_is_the_same_in_another_process(tmp_path):
    """A partial, a callable object, a lambda, a module and a DataLoader hash alike in two processes."""
    script = tmp_path / "key.py"
    script.write_text(
        "import functools, torch\n"
        "from torch import nn\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "from lambdahat import cache\n"
        "class Scaled:\n"
        "    def __init__(self, s): self.s = s\n"
        "    def __call__(self, o, t): return self.s * ((o - t) ** 2).mean()\n"
        "def loss(o, t, scale=1.0): return scale * ((o - t) ** 2).mean()\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(8, 3)\n"
        "print(cache.cache_key({'seed': 0}, data=DataLoader(TensorDataset(x, x), batch_size=4), "
        "loss_fn=functools.partial(loss, scale=2.0), make_model=Scaled(nn.MSELoss()), "
        "sampled_params=lambda n, p: n.startswith('0.')))\n"
    )
    keys = {subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(keys) == 1 and len(keys.pop().strip()) == 64


def test_settings_key_fills_in_defaults():
    def key(**given):
        return cache.cache_key(Settings.from_mapping(given).to_dict(), data=None, loss_fn=None, make_model=None)

    assert key() == key(seed=0, sampler="auto") and key() != key(seed=1)


# --- entries ----------------------------------------------------------------------------------


def _parse(record):
    return record["row"]["x"]


def test_entries_round_trip_and_bad_files_are_misses_with_a_warning(tmp_path):
    path = cache.entry_path(tmp_path, 5, "a" * 64, "b" * 64)
    assert path.name.startswith("step_000000000005_aaaaaaaaaa_bbbbbbbbbb")
    assert cache.read_entry(path, "a" * 64, "b" * 64, _parse) is None  # no file: a silent miss
    cache.write_entry(path, "a" * 64, "b" * 64, row={"x": float("nan"), "y": [1, 2]})
    assert json.loads(path.read_text())["row"] == {"x": None, "y": [1, 2]}  # strict JSON: NaN as null
    assert cache.read_entry(path, "a" * 64, "b" * 64, _parse) is None  # (x is None)
    cache.write_entry(path, "a" * 64, "b" * 64, row={"x": 1.5})
    assert cache.read_entry(path, "a" * 64, "b" * 64, _parse) == 1.5
    assert cache.read_entry(path, "a" * 64, "c" * 64, _parse) is None  # another key, same file prefix: silent

    for text in ("[1, 2]", "{not json", '{"row": {"x": 1}}', json.dumps({"checkpoint_sha256": "a" * 64,
                                                                          "settings_key": "b" * 64, "row": 3})):
        path.write_text(text)
        with pytest.warns(UserWarning, match=path.name):
            assert cache.read_entry(path, "a" * 64, "b" * 64, _parse) is None


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "entry.json"

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        cache.write_entry(path, "a", "b", row={})
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"step_1.json.{int(dead.stdout)}.tmp"
    live = tmp_path / f"step_2.json.{os.getpid()}.tmp"
    stale.write_text("{")
    live.write_text("{")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.remove_stale_temporaries(tmp_path)
    assert not stale.exists() and live.exists()
