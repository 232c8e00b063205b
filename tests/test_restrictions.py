"""Component restrictions (lambdahat.restrictions) on every transformer layout, built from small configs.

For each architecture: mask shapes, counts against the config's arithmetic, and that a head's mask
is exactly the part of its layer's attention parameters that the head's output depends on: the
gradient of a random function of that head's output is zero outside the mask and non-zero on it,
perturbing the masked weights changes that head (and, with grouped-query attention, the heads
sharing its key/value group) and no other, and perturbing the rest of the attention block leaves it
unchanged. A head's output is its term z_h W_O,h in the attention output; the test checks that
these terms sum to the module's output first, so the decomposition itself is verified.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

import lambdahat as lh
from lambdahat import restrictions
from lambdahat.models import TinyTransformer, head_mask

D, H, DH, LAYERS, V, CTX, MLP = 16, 4, 4, 2, 50, 16, 32

# architecture → (kv heads, q/k/v bias, output bias, MLP weights, LayerNorm weights per layer,
#                 learned positions, unembed bias, tied)
SPEC = {
    "tiny": (H, 1, 1, 2 * D * MLP + MLP + D, 4 * D, CTX, 1, False),
    "transformer_lens": (H, 1, 1, 2 * D * MLP + MLP + D, 4 * D, CTX, 1, False),
    "transformer_lens_gqa": (2, 1, 1, 2 * D * MLP + MLP + D, 4 * D, CTX, 1, False),
    "gpt2": (H, 1, 1, 2 * D * 4 * D + 4 * D + D, 4 * D, CTX, 0, True),
    "gpt_neox": (H, 1, 1, 2 * D * MLP + MLP + D, 4 * D, 0, 0, False),
    "llama": (2, 0, 0, 3 * D * MLP, 2 * D, 0, 0, False),
    "qwen2": (2, 1, 0, 3 * D * MLP, 2 * D, 0, 0, True),
    "mistral": (1, 0, 0, 3 * D * MLP, 2 * D, 0, 0, False),  # multi-query: one key/value head for all
}


def _build(arch):
    torch.manual_seed(0)
    if arch == "tiny":
        return TinyTransformer(vocab_size=V, d_model=D, n_layers=LAYERS, n_heads=H, seq_len=CTX, attention_only=False, d_mlp=MLP).double()
    if arch.startswith("transformer_lens"):
        transformer_lens = pytest.importorskip("transformer_lens", reason="TransformerLens 3 is in the dev extra")
        kv = {"n_key_value_heads": 2} if arch.endswith("gqa") else {}
        cfg = transformer_lens.HookedTransformerConfig(n_layers=LAYERS, d_model=D, n_ctx=CTX, d_head=DH, n_heads=H, d_vocab=V,
                                                       d_mlp=MLP, act_fn="gelu", seed=0, dtype=torch.float64, **kv)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.x warns that 4.0 removes HookedTransformer
            return transformer_lens.HookedTransformer(cfg)
    t = pytest.importorskip("transformers")
    common = dict(vocab_size=V, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=H, intermediate_size=MLP,
                  max_position_embeddings=CTX, attn_implementation="eager")
    if arch == "gpt2":
        model = t.GPT2LMHeadModel(t.GPT2Config(vocab_size=V, n_positions=CTX, n_embd=D, n_layer=LAYERS, n_head=H,
                                               bos_token_id=0, eos_token_id=0, attn_implementation="eager"))
    elif arch == "gpt_neox":
        model = t.GPTNeoXForCausalLM(t.GPTNeoXConfig(**common))
    else:
        cls = {"llama": (t.LlamaForCausalLM, t.LlamaConfig), "qwen2": (t.Qwen2ForCausalLM, t.Qwen2Config),
               "mistral": (t.MistralForCausalLM, t.MistralConfig)}[arch]
        model = cls[0](cls[1](num_key_value_heads=SPEC[arch][0], tie_word_embeddings=SPEC[arch][7], **common))
    return model.double().eval()


def _tokens(n=3, t=10):
    return torch.randint(0, V, (n, t), generator=torch.Generator().manual_seed(1))


def _head_terms(model, arch, layer, tokens):
    """(B, T, heads, d) per-head terms of layer ``layer``'s attention output, checked to sum to it."""
    got = {}
    if arch == "tiny":
        attn = model.blocks[layer].attn
        handle = attn.register_forward_hook(lambda m, args, out: got.update(x=args[0], mask=args[1], out=out))
        model(tokens)
        handle.remove()
        x = got["x"]
        q = torch.einsum("btd,hde->bhte", x, attn.W_Q) + attn.b_Q[:, None]
        k = torch.einsum("btd,hde->bhte", x, attn.W_K) + attn.b_K[:, None]
        v = torch.einsum("btd,hde->bhte", x, attn.W_V) + attn.b_V[:, None]
        pattern = (torch.einsum("bhte,bhse->bhts", q, k) / DH**0.5).masked_fill(~got["mask"], float("-inf")).softmax(-1)
        terms = torch.einsum("bhte,hed->bthd", torch.einsum("bhts,bhse->bhte", pattern, v), attn.W_O)
        bias = attn.b_O
    elif arch.startswith("transformer_lens"):
        attn = model.blocks[layer].attn
        handles = [attn.hook_z.register_forward_hook(lambda m, args, out: got.update(z=out)),
                   attn.register_forward_hook(lambda m, args, out: got.update(out=out))]
        model(tokens)
        terms, bias = torch.einsum("bthe,hed->bthd", got["z"], attn.W_O), attn.b_O
    else:
        o = {"gpt2": lambda: model.transformer.h[layer].attn.c_proj,
             "gpt_neox": lambda: model.gpt_neox.layers[layer].attention.dense}.get(arch, lambda: model.model.layers[layer].self_attn.o_proj)()
        handles = [o.register_forward_pre_hook(lambda m, args: got.update(z=args[0])),
                   o.register_forward_hook(lambda m, args, out: got.update(out=out))]
        model(tokens)
        w = o.weight if arch == "gpt2" else o.weight.T  # Conv1D is (in, out), nn.Linear (out, in)
        z = got["z"].unflatten(-1, (H, DH))
        terms = torch.einsum("bthe,hed->bthd", z, w.reshape(H, DH, D))
        bias = o.bias if o.bias is not None else torch.zeros(D, dtype=z.dtype)
    if arch != "tiny":
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(terms.sum(2) + bias, got["out"], rtol=1e-10, atol=1e-12)
    return terms


def _count(masks):
    return sum(int(m.sum()) for m in masks.values())


@pytest.mark.parametrize("arch", sorted(SPEC))
def test_masks_have_the_parameters_shapes_and_the_configs_counts(arch):
    model = _build(arch)
    kv, b, ob, mlp, ln, pos, ub, tied = SPEC[arch]
    rep = H // kv
    params = dict(model.named_parameters())
    head = 4 * D * DH + 3 * DH * b
    group = rep * (2 * D * DH + DH * b) + 2 * (D * DH + DH * b)
    attn = H * (2 * D * DH + DH * b) + kv * 2 * (D * DH + DH * b) + D * ob
    expected = {"layer 1 head 3": head, "layer 0 kv group 0": group, "layer 1 attn": attn, "layer 1 mlp": mlp,
                "layer 1": attn + mlp + ln, "embed": V * D + pos * D, "unembed": V * D + V * ub}
    for spec, count in expected.items():
        masks = lh.component(model, spec)
        assert all(m.dtype == torch.bool and m.shape == params[n].shape for n, m in masks.items()), spec
        assert _count(masks) == count, spec
    # the heads cover the attention block except its shared output bias, each weight once unless shared
    heads = restrictions.components(model, "head")
    assert len(heads) == LAYERS * H
    layer1 = [m for name, m in heads.items() if name.startswith("layer 1 ")]
    assert _count(restrictions.union(*layer1)) == attn - D * ob
    assert sum(map(_count, layer1)) == attn - D * ob + (rep - 1) * kv * 2 * (D * DH + DH * b)  # k/v counted per reader
    assert _count(restrictions.union(*restrictions.components(model, "kv_group").values())) == LAYERS * (attn - D * ob)
    assert _count(lh.component(model, ["layer 0 attn", "layer 0 mlp"])) == attn + mlp
    assert head_mask(model, 1, 3).keys() == lh.component(model, "layer 1 head 3").keys()
    assert ("tied" in restrictions.describe(model)) == tied


@pytest.mark.parametrize("arch", sorted(SPEC))
def test_a_heads_mask_is_exactly_what_its_output_depends_on(arch):
    """Within layer 1's attention parameters (everything upstream of the layer feeds every head)."""
    model, layer, head = _build(arch), 1, 2  # head 2 reads key/value group 1 (2 // 2), not 0 (2 % 2)
    kv = SPEC[arch][0]
    group = [h for h in range(H) if h // (H // kv) == head // (H // kv)]
    mask = lh.component(model, f"layer {layer} head {head}")
    attn = lh.component(model, f"layer {layer} attn")
    params = dict(model.named_parameters())
    tokens = _tokens()

    terms = _head_terms(model, arch, layer, tokens)
    r = torch.randn(terms[..., head, :].shape, generator=torch.Generator().manual_seed(2), dtype=terms.dtype)
    grads = torch.autograd.grad((terms[..., head, :] * r).sum(), [params[n] for n in attn], allow_unused=True)
    grads = [torch.zeros_like(params[n]) if g is None else g for n, g in zip(attn, grads)]  # the output bias
    for name, g in zip(attn, grads):
        m = mask.get(name, torch.zeros_like(g, dtype=torch.bool))
        assert not g[~m].any(), f"{name}: gradient outside the mask"
        # a key bias adds q·b_K to every score of a query: with absolute positions the softmax ignores
        # it, so its gradient is zero there; every other selected weight moves the head's output
        exempt = _key_bias_entries(arch, name, m)
        assert (g[m & ~exempt] != 0).all(), f"{name}: a masked weight the head's output does not depend on"

    def perturbed(select):
        other = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, p in other.named_parameters():
                if name in attn:
                    chosen = select(name)
                    p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype) * chosen)
        with torch.no_grad():
            return _head_terms(other, arch, layer, tokens)

    terms = terms.detach()
    inside = perturbed(lambda n: mask.get(n, torch.zeros_like(params[n], dtype=torch.bool)))
    changed = [h for h in range(H) if not torch.allclose(inside[..., h, :], terms[..., h, :], rtol=0, atol=1e-13)]
    assert changed == group  # the head, and the heads that read its key/value group
    outside = perturbed(lambda n: ~mask.get(n, torch.zeros_like(params[n], dtype=torch.bool)))
    torch.testing.assert_close(outside[..., head, :], terms[..., head, :], rtol=0, atol=1e-13)
    assert not torch.allclose(outside, terms)  # the rest of the block did move


def _key_bias_entries(arch, name, selected):
    """The key-bias entries among ``selected``: their gradient is zero where keys carry no position."""
    if arch in ("tiny",) or arch.startswith("transformer_lens"):
        return selected if name.endswith("b_K") else torch.zeros_like(selected)
    if arch == "gpt2" and name.endswith("c_attn.bias"):
        exempt = torch.zeros_like(selected)
        exempt[D : 2 * D] = selected[D : 2 * D]  # the key third of the fused q, k, v
        return exempt
    if arch == "gpt_neox" and name.endswith("query_key_value.bias"):
        # partial rotary (rotary_pct 0.25): the unrotated key dimensions are position-free
        exempt = torch.zeros_like(selected).view(H, 3, DH)
        exempt[:, 1] = True
        return exempt.reshape(-1) & selected
    return torch.zeros_like(selected)


def test_gpt_neox_heads_are_interleaved_and_gpt2_heads_are_not():
    """The fused layouts, entry by entry: NeoX's query_key_value rows are (head, q|k|v, d_head);
    GPT-2's c_attn columns are (q|k|v, head, d_head)."""
    neox = lh.component(_build("gpt_neox"), "layer 0 head 1")["gpt_neox.layers.0.attention.query_key_value.weight"]
    assert neox[:, 0].nonzero().flatten().tolist() == list(range(3 * DH, 6 * DH))
    gpt2 = lh.component(_build("gpt2"), "layer 0 head 1")["transformer.h.0.attn.c_attn.weight"]
    assert gpt2[0].nonzero().flatten().tolist() == [i * D + DH + j for i in range(3) for j in range(DH)]


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_tied_embeddings_are_one_matrix_in_both_roles(arch):
    model = _build(arch)
    shared = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight is shared
    unembed, embed = lh.component(model, "unembed"), lh.component(model, "embed")
    (name,) = unembed
    assert dict(model.named_parameters())[name] is shared and name in embed and unembed[name].all()
    assert "unembed tied to embed" in restrictions.describe(model)
    assert "tied" not in restrictions.describe(_build("gpt_neox"))


def test_bad_names_say_what_exists():
    model = _build("llama")
    for spec, message in [("layer 2", r"layer 2 out of range; this model has layers 0\.\.1"),
                          ("layer 0 head 4", r"head 4 out of range; layer 0 has heads 0\.\.3"),
                          ("layer 0 kv group 2", r"kv group 2 out of range; .* groups 0\.\.1"),
                          ("layer 0 neuron 3", r"spec 'layer 0 neuron 3' is not a component name; write one of 'embed'"),
                          ("head 1", "not a component name"), ("layer 1 head", "not a component name")]:
        with pytest.raises(ValueError, match=message):
            lh.component(model, spec)
    with pytest.raises(ValueError, match="layer 0 has no mlp .* its modules are attn, ln1"):
        lh.component(TinyTransformer(d_model=16, n_heads=4, seq_len=8), "layer 0 mlp")
    with pytest.raises(ValueError, match="kind 'neuron' is not a component kind; use one of head"):
        lh.components(model, "neuron")
    with pytest.raises(ValueError, match="found no attention weights"):
        lh.component(torch.nn.Linear(2, 2), "layer 0")
    with pytest.raises(ValueError, match="empty list"):
        lh.component(model, [])


def test_weight_refined_llc_of_a_key_value_group():
    """A short run with every setting fixed: only the group's weights move, the model is left as it was."""
    model = _build("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = lh.component(model, "layer 1 kv group 1")
    tokens = torch.randint(0, V, (32, 9), generator=torch.Generator().manual_seed(4))
    settings = dict(step_size=1e-4, localization=10.0, nbeta=30.0, num_chains=2, num_draws=20, num_burnin_steps=5,
                    batch_size=8, seed=0, progress=False)
    result = lh.estimate_llc(model, tokens, lh.losses.next_token, sampled_params=masks, **settings)
    assert result.config["num_params"] == 2 * (2 * D * DH) + 2 * D * DH == _count(masks)
    assert np.isfinite(result.llc_mean)
    again = lh.estimate_llc(model, tokens, lh.losses.next_token, sampled_params=masks, **settings)
    np.testing.assert_array_equal(result.trace["loss"], again.trace["loss"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
