"""The models users have: a factory by name, state-dict checkpoints, local Hugging Face causal
LMs, TransformerLens models, and a built-in tiny transformer. ``head_mask`` (one attention head's
``sampled_params``) lives in :mod:`lambdahat.restrictions` with the other components and is
re-exported here.

Nothing here downloads anything: Hugging Face models load from a local directory only.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .restrictions import head_mask

__all__ = ["load_factory", "load_weights", "load_hf", "head_mask", "tiny_transformer", "TinyTransformer"]


def load_factory(spec: str, **kwargs: Any) -> nn.Module:
    """Build a model from ``"package.module:function"`` or ``"path/to/file.py:function"``.

    ``function(**kwargs)`` must return an ``nn.Module``; a class works too.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model factory must look like 'package.module:function' or 'file.py:function', got {spec!r}.")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"model factory file {str(path)!r} does not exist.")
        loader_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"model factory: cannot import {module_name!r} ({err}); is it on PYTHONPATH?") from err
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ValueError(f"model factory: {module_name!r} has no callable {attr!r}.")
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module.")
    return model


def load_weights(model: nn.Module, checkpoint: str | Path | Mapping[str, Tensor]) -> nn.Module:
    """Load a checkpoint into ``model`` (in place) and return it.

    ``checkpoint``: a state dict, or a ``.pt``/``.pth`` file holding one (directly or under the key
    ``"model"``, ``"state_dict"`` or ``"model_state_dict"``, as training loops usually save), or a
    ``.safetensors`` file. Files are read with ``weights_only=True``: a checkpoint cannot run code.
    Keys must match exactly (strict loading): a checkpoint of another architecture is an error
    naming the missing, unexpected and mis-shaped entries, not a silent partial load.
    """
    state = checkpoint
    where = "checkpoint"
    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint)
        where = f"checkpoint {str(path)!r}"
        if not path.is_file():
            raise ValueError(f"{where} does not exist.")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                state = load_file(str(path))
            except Exception as err:  # safetensors raises its own error type for a corrupt header
                raise ValueError(f"{where} is not a readable .safetensors file ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0][:200]}).") from None
        else:
            state = safe_torch_load(path, where)
    if isinstance(state, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping):
        raise ValueError(f"{where} must hold a state dict (name → tensor), got {type(state).__name__}.")
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise ValueError(f"{where}: entries {_few(not_tensors)} are not tensors; a state dict maps names to tensors.")
    _check_architecture(model, state, where)
    device = next(model.parameters(), torch.empty(0)).device
    model.load_state_dict({k: v.to(device) for k, v in state.items()})
    return model


def safe_torch_load(path: Path, where: str) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors that never suggest unpickling code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            raise ValueError(
                f"{where} holds a Python object of type {found.group(1)}, which lambdahat does not unpickle (files are "
                "read with weights_only=True, so that loading one cannot run code); save tensors only, e.g. "
                "torch.save(model.state_dict(), path)."
            ) from None
        raise ValueError(
            f"{where} is not a file written by torch.save, or it is truncated or corrupted ({type(err).__name__}); "
            "save it again with torch.save(model.state_dict(), path)."
        ) from None


def _check_architecture(model: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [f"{k} {tuple(state[k].shape)} vs the model's {tuple(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"Missing {len(missing)} entries ({_few(missing)})")
    if unexpected:
        problems.append(f"Unexpected {len(unexpected)} entries ({_few(unexpected)})")
    if mis_shaped:
        problems.append(f"size mismatch in {len(mis_shaped)} entries ({_few(mis_shaped)})")
    if problems:
        raise CheckpointMismatchError(
            f"{where} does not fit the model: {'; '.join(problems)}; build the architecture the checkpoint was "
            "saved from (e.g. the same --model and --model-kwargs)."
        )


class CheckpointMismatchError(ValueError, RuntimeError):
    """A checkpoint of another architecture. A ValueError, and a RuntimeError as torch's
    ``load_state_dict`` raises for the same mistake."""


def _few(items: list[str], k: int = 3) -> str:
    return ", ".join(items[:k]) + (f", … {len(items) - k} more" if len(items) > k else "")


def load_hf(directory: str | Path, dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """A Hugging Face causal LM and its tokenizer (None if the folder has none) from a local folder.

    ``local_files_only``: nothing is downloaded. Use with :func:`lambdahat.losses.next_token`.
    """
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise ImportError("loading a Hugging Face model needs `pip install transformers`.") from err
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise ValueError(f"{str(path)!r} is not a Hugging Face model folder (no config.json); save one with save_pretrained.")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    tokenizer = None
    if any((path / name).is_file() for name in _TOKENIZER_FILES):
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError):
            tokenizer = None
        if tokenizer is not None and len(tokenizer) == 0:  # a stub with no vocabulary
            tokenizer = None
    return model, tokenizer


_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model")


class TinyTransformer(nn.Module):
    """A small decoder-only transformer with per-head weight tensors (TransformerLens naming).

    tokens (B, T) → logits (B, T, vocab). Pre-LayerNorm blocks of causal multi-head attention
    (and, unless ``attention_only``, a ReLU MLP), learned positions, untied unembedding. The
    two-layer attention-only variant is the model of Hoogland et al., arXiv 2402.02364.
    """

    def __init__(self, vocab_size: int = 256, d_model: int = 32, n_layers: int = 2, n_heads: int = 4,
                 seq_len: int = 64, attention_only: bool = True, d_mlp: int | None = None):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers),
                            ("n_heads", n_heads), ("seq_len", seq_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TinyTransformer: {name} must be a positive integer, got {value!r}.")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}).")
        d_head = d_model // n_heads
        self.n_heads, self.d_head, self.seq_len = n_heads, d_head, seq_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Parameter(torch.randn(seq_len, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            _Block(d_model, n_heads, d_head, None if attention_only else (d_mlp or 4 * d_model)) for _ in range(n_layers)
        )
        self.ln_final = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, vocab_size)
        self.register_buffer("causal", torch.tril(torch.ones(seq_len, seq_len, dtype=torch.bool)), persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[-1]
        if t > self.seq_len:
            raise ValueError(f"sequence of length {t} is longer than the model's seq_len {self.seq_len}.")
        x = self.embed(tokens) + self.pos_embed[:t]
        for block in self.blocks:
            x = block(x, self.causal[:t, :t])
        return self.unembed(self.ln_final(x))


class _Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_head: int):
        super().__init__()
        scale = 1 / math.sqrt(d_model)
        self.W_Q = nn.Parameter(torch.randn(n_heads, d_model, d_head) * scale)
        self.W_K = nn.Parameter(torch.randn(n_heads, d_model, d_head) * scale)
        self.W_V = nn.Parameter(torch.randn(n_heads, d_model, d_head) * scale)
        self.W_O = nn.Parameter(torch.randn(n_heads, d_head, d_model) / math.sqrt(n_heads * d_head))
        self.b_Q = nn.Parameter(torch.zeros(n_heads, d_head))
        self.b_K = nn.Parameter(torch.zeros(n_heads, d_head))
        self.b_V = nn.Parameter(torch.zeros(n_heads, d_head))
        self.b_O = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Tensor, causal: Tensor) -> Tensor:
        q = torch.einsum("btd,hde->bhte", x, self.W_Q) + self.b_Q[:, None]
        k = torch.einsum("btd,hde->bhte", x, self.W_K) + self.b_K[:, None]
        v = torch.einsum("btd,hde->bhte", x, self.W_V) + self.b_V[:, None]
        scores = torch.einsum("bhte,bhse->bhts", q, k) / math.sqrt(q.shape[-1])
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        z = torch.einsum("bhts,bhse->bhte", pattern, v)
        return torch.einsum("bhte,hed->btd", z, self.W_O) + self.b_O


class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_head: int, d_mlp: int | None):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = _Attention(d_model, n_heads, d_head)
        if d_mlp is not None:
            self.ln2 = nn.LayerNorm(d_model)
            self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.ReLU(), nn.Linear(d_mlp, d_model))
        else:
            self.mlp = None

    def forward(self, x: Tensor, causal: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x), causal)
        if self.mlp is not None:
            x = x + self.mlp(self.ln2(x))
        return x


def tiny_transformer(**kwargs: Any) -> TinyTransformer:
    """Factory for :class:`TinyTransformer` (for ``--model lambdahat.models:tiny_transformer``)."""
    return TinyTransformer(**kwargs)
