"""Data from files: tensors in ``.pt``/``.npz``, and text as windows of token ids.

Text is tokenised with the model's own tokenizer when it has one (any callable returning token
ids, e.g. a Hugging Face tokenizer), else byte-level (ids 0–255, for a vocabulary of 256).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["load_data", "byte_tokens", "token_windows"]

_PAIR_KEYS = (("inputs", "targets"), ("x", "y"), ("X", "y"))


def load_data(path: str | Path, *, tokenizer: Any | None = None, seq_len: int = 64) -> Tensor | tuple[Tensor, ...]:
    """Load data for :func:`lambdahat.estimate_llc` from a file.

    - ``.pt``/``.pth``: a tensor, a tuple/list of tensors, or a dict with keys ``inputs``/``targets``
      (or ``x``/``y``) — loaded with ``weights_only=True``.
    - ``.npz``: the same keys, or a single array.
    - anything else is read as UTF-8 text and cut into non-overlapping windows of ``seq_len + 1``
      token ids, shaped (N, seq_len + 1), for :func:`lambdahat.losses.next_token`.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {str(path)!r} does not exist.")
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}.")
    if path.suffix in (".pt", ".pth"):
        from .models import safe_torch_load

        return _as_tensors(safe_torch_load(path, f"data file {str(path)!r}"), path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as arrays:
                loaded = {k: torch.from_numpy(arrays[k]) for k in arrays.files}
        except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"data file {str(path)!r} is not a readable .npz archive of numeric arrays "
                             f"({type(err).__name__}); write one with numpy.savez(path, x=..., y=...).") from None
        return _as_tensors(loaded, path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"data file {str(path)!r} is neither .pt/.pth/.npz tensors nor UTF-8 text; save tensors with torch.save "
            "or numpy.savez."
        ) from None
    tokens = _tokenize(text, tokenizer)
    return token_windows(tokens, seq_len)


def _as_tensors(obj: Any, path: Path) -> Tensor | tuple[Tensor, ...]:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (tuple, list)) and obj and all(isinstance(t, Tensor) for t in obj):
        return tuple(obj)
    if isinstance(obj, dict):
        for a, b in _PAIR_KEYS:
            if a in obj and b in obj:
                return obj[a], obj[b]
        if len(obj) == 1:
            return next(iter(obj.values()))
    raise ValueError(
        f"{str(path)!r}: expected a tensor, a tuple of tensors, or a dict with keys inputs/targets or x/y; "
        f"got {type(obj).__name__}{' with keys ' + str(sorted(obj)) if isinstance(obj, dict) else ''}."
    )


def _tokenize(text: str, tokenizer: Any | None) -> Tensor:
    if tokenizer is None:
        return byte_tokens(text)
    encoded = tokenizer(text)
    ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)


def byte_tokens(text: str) -> Tensor:
    """The UTF-8 bytes of ``text`` as token ids 0–255."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def token_windows(tokens: Tensor, seq_len: int) -> Tensor:
    """Non-overlapping windows of ``seq_len + 1`` ids, shaped (N, seq_len + 1); the remainder is dropped."""
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}.")
    n = len(tokens) // (seq_len + 1)
    if n == 0:
        raise ValueError(f"the text has {len(tokens)} tokens, fewer than one window of seq_len + 1 = {seq_len + 1}.")
    return tokens[: n * (seq_len + 1)].reshape(n, seq_len + 1)


def python_docs_text() -> str:
    """An offline English text corpus that ships with CPython: the pydoc topic help texts."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))
