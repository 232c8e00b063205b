"""Models users have and data from files: factories, checkpoints, Hugging Face folders,
TransformerLens, head masks, tensors and text. Every model is built in-process; nothing downloads."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import lambdahat as lh
from lambdahat import datafiles, models

QUICK = dict(step_size=1e-5, nbeta=30.0, num_chains=2, num_draws=4, num_burnin_steps=0, batch_size=4, progress=False)


def test_load_factory_from_module_and_file(tmp_path):
    model = models.load_factory("lambdahat.models:tiny_transformer", d_model=16, n_heads=2, seq_len=8)
    assert isinstance(model, models.TinyTransformer) and model.seq_len == 8
    file = tmp_path / "my_models.py"
    file.write_text("from torch import nn\ndef make(width=3):\n    return nn.Linear(2, width)\n")
    assert models.load_factory(f"{file}:make", width=5).out_features == 5
    with pytest.raises(ValueError, match="package.module:function"):
        models.load_factory("lambdahat.models.tiny_transformer")
    with pytest.raises(ValueError, match="has no callable"):
        models.load_factory("lambdahat.models:nothing_here")
    with pytest.raises(ValueError, match="cannot import"):
        models.load_factory("no_such_package_xyz:make")
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        models.load_factory("builtins:dict")


def test_load_weights_from_training_loop_checkpoints(tmp_path):
    source = nn.Linear(3, 2)
    torch.save({"model": source.state_dict(), "step": 100, "optimizer": {}}, tmp_path / "a.pt")
    torch.save(source.state_dict(), tmp_path / "b.pt")
    for name in ("a.pt", "b.pt"):
        target = models.load_weights(nn.Linear(3, 2), tmp_path / name)
        assert torch.equal(target.weight, source.weight)
    with pytest.raises(RuntimeError, match="size mismatch|Missing|Unexpected"):
        models.load_weights(nn.Linear(4, 2), tmp_path / "b.pt")  # strict: no silent partial load
    with pytest.raises(ValueError, match="does not exist"):
        models.load_weights(nn.Linear(3, 2), tmp_path / "missing.pt")


def test_tiny_transformer_head_mask_and_head_llc():
    torch.manual_seed(0)
    model = models.tiny_transformer(d_model=16, n_heads=4, seq_len=16)
    mask = models.head_mask(model, layer=1, head=2)
    assert set(mask) == {f"blocks.1.attn.{p}" for p in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")}
    assert mask["blocks.1.attn.W_Q"][2].all() and not mask["blocks.1.attn.W_Q"][[0, 1, 3]].any()
    assert sum(int(m.sum()) for m in mask.values()) == 4 * 16 * 4 + 3 * 4
    tokens = datafiles.token_windows(datafiles.byte_tokens(datafiles.python_docs_text()[:20000]), 16)
    r = lh.estimate_llc(model, tokens, lh.losses.next_token, sampled_params=mask, **QUICK)
    assert r.config["num_params"] == 4 * 16 * 4 + 3 * 4 and np.isfinite(r.llc_mean)
    with pytest.raises(ValueError, match="out of range"):
        models.head_mask(model, layer=0, head=4)
    with pytest.raises(ValueError, match="found no attention weights"):
        models.head_mask(nn.Linear(2, 2), layer=0, head=0)


def test_hugging_face_models_from_a_local_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=256, n_positions=32, n_embd=16, n_layer=2, n_head=4))
    gpt2.save_pretrained(tmp_path / "gpt2")
    model, tokenizer = models.load_hf(tmp_path / "gpt2")
    assert tokenizer is None
    mask = models.head_mask(model, layer=1, head=3)
    assert int(mask["transformer.h.1.attn.c_attn.weight"].sum()) == 16 * 3 * 4
    assert int(mask["transformer.h.1.attn.c_proj.weight"].sum()) == 4 * 16
    tokens = datafiles.token_windows(datafiles.byte_tokens("def f(x):\n    return x + 1\n" * 40), 16)
    r = lh.estimate_llc(model, tokens, lh.losses.next_token, sampled_params=mask, **QUICK)
    assert np.isfinite(r.llc_mean) and r.config["num_params"] == 16 * 3 * 4 + 3 * 4 + 4 * 16

    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=256, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32))
    mask = models.head_mask(llama, layer=0, head=3)  # kv head 1 is shared by query heads 2 and 3
    q, k = mask["model.layers.0.self_attn.q_proj.weight"], mask["model.layers.0.self_attn.k_proj.weight"]
    assert q[12:16].all() and not q[:12].any() and k[4:8].all() and not k[:4].any()
    assert mask["model.layers.0.self_attn.o_proj.weight"][:, 12:16].all()
    with pytest.raises(ValueError, match="no config.json"):
        models.load_hf(tmp_path)


def test_transformer_lens_hooked_transformer():
    """TransformerLens 3 is in the dev extra (``transformer_lens>=3,<4``: version 4 removed
    HookedTransformer), so this runs in CI; more layouts in tests/test_restrictions.py."""
    transformer_lens = pytest.importorskip("transformer_lens", reason="needs the dev extra: pip install -e '.[dev]'")
    try:
        config_class, hooked = transformer_lens.HookedTransformerConfig, transformer_lens.HookedTransformer
    except (AttributeError, ImportError):  # 4.x raises ImportError for the removed names
        pytest.skip("TransformerLens ≥ 4 has no HookedTransformer; the dev extra pins transformer_lens<4")
    cfg = config_class(n_layers=2, d_model=16, n_ctx=16, d_head=4, n_heads=4, d_vocab=256, attn_only=True, act_fn=None, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.x announces that 4.0 removes HookedTransformer
        model = hooked(cfg)
    mask = models.head_mask(model, layer=0, head=1)
    assert mask.keys() == lh.component(model, "layer 0 head 1").keys()
    assert mask["blocks.0.attn.W_Q"][1].all() and int(mask["blocks.0.attn.W_O"].sum()) == 4 * 16
    tokens = datafiles.token_windows(datafiles.byte_tokens(datafiles.python_docs_text()[:8000]), 16)
    r = lh.estimate_llc(model, tokens, lh.losses.next_token, sampled_params=mask, **QUICK)
    assert np.isfinite(r.llc_mean)


def test_load_data_tensors_and_text(tmp_path):
    x, y = torch.randn(10, 3), torch.randn(10, 1)
    torch.save({"inputs": x, "targets": y}, tmp_path / "d.pt")
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    torch.save((x, y), tmp_path / "t.pt")
    for name in ("d.pt", "d.npz", "t.pt"):
        a, b = datafiles.load_data(tmp_path / name)
        assert torch.equal(a, x) and torch.equal(b, y)
    (tmp_path / "corpus.txt").write_text("héllo world " * 10)
    windows = datafiles.load_data(tmp_path / "corpus.txt", seq_len=7)
    assert windows.shape[1] == 8 and windows.dtype == torch.long
    assert bytes(windows.reshape(-1).tolist()).decode("utf-8", errors="ignore").startswith("héllo")
    fake_tokenizer = lambda text: {"input_ids": [ord(c) % 50 for c in text]}  # noqa: E731
    windows = datafiles.load_data(tmp_path / "corpus.txt", seq_len=4, tokenizer=fake_tokenizer)
    assert windows.max() < 50 and windows.shape == (len("héllo world " * 10) // 5, 5)
    torch.save({"a": x, "b": y, "c": y}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="inputs/targets or x/y"):
        datafiles.load_data(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="fewer than one window"):
        datafiles.load_data(tmp_path / "corpus.txt", seq_len=1000)
