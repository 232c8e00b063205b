"""Weight restrictions of transformers by component name, for the weight-refined LLC.

``component(model, "layer 1 head 2")`` returns the ``sampled_params`` of
:func:`lambdahat.estimate_llc` that let only that component's weights move (Wang et al.,
arXiv 2410.02984): ``{parameter name: boolean mask of its shape}``. Component names:

- ``"embed"``: the token embedding and, where it is learned, the position embedding.
- ``"unembed"``: the output projection to the vocabulary (its weight, and its bias if any); not the
  final LayerNorm, which is a parameter of its own (``sampled_params`` takes names too).
- ``"layer L"``: every parameter of block L (attention, MLP and the block's LayerNorms).
- ``"layer L attn"`` (or ``attention``): the attention module's parameters, all heads and the output bias.
- ``"layer L mlp"``: the MLP module's parameters.
- ``"layer L head H"``: every weight that the output of query head H depends on: its query slice,
  its slice of the output projection, and the key and value slice it reads. With grouped-query
  attention that key/value slice is shared by the other query heads of its group.
- ``"layer L kv group G"``: key/value head G and all the query heads that read it (their query and
  output slices): the union of those heads' restrictions. Without grouped-query attention a
  group is one head.

A list of names gives the union. The output bias of an attention module (``b_O``, ``c_proj.bias``,
``dense.bias``) is shared by all its heads, so it is in ``attn`` and ``layer`` but in no head.

Layouts (read from the ``transformers`` 5.24 and TransformerLens 3.9 sources):

- **Per-head tensors** (TransformerLens ``HookedTransformer``, :class:`lambdahat.models.TinyTransformer`):
  ``blocks.L.attn.W_Q``/``W_K``/``W_V`` are (heads, d_model, d_head), ``W_O`` (heads, d_head,
  d_model), ``b_Q``/``b_K``/``b_V`` (heads, d_head); a head is index H of the first dimension.
  TransformerLens's grouped-query attention stores ``_W_K``/``_W_V``/``_b_K``/``_b_V`` with
  n_key_value_heads first and expands them with ``torch.repeat_interleave``, so query head H reads
  key/value head H // (n_heads / n_key_value_heads).
- **GPT-2** (``GPT2LMHeadModel``): ``h.L.attn.c_attn`` is a Conv1D whose weight is (in, out) =
  (d, 3d); its output splits into q, k, v of width d each (``split(split_size, dim=2)``) and each
  into heads of d_head consecutive features, so head H is columns i·d + H·d_head … + d_head for
  i = 0, 1, 2 (weight and bias). ``c_proj`` (Conv1D, (d, d)) reads the heads' concatenation:
  head H is rows H·d_head … + d_head.
- **GPT-NeoX / Pythia** (``GPTNeoXForCausalLM``): ``layers.L.attention.query_key_value`` is an
  ``nn.Linear`` (out 3d, in d) whose output is viewed as (heads, 3·d_head) and then chunked into
  q, k, v: the heads are interleaved, head H is output rows 3·d_head·H … + 3·d_head (q first,
  then k, then v), not three blocks of d as in GPT-2. ``attention.dense`` (``nn.Linear``) reads
  the concatenation: head H is input columns H·d_head … + d_head.
- **Llama / Qwen2 / Mistral** (separate ``self_attn.q_proj``/``k_proj``/``v_proj``/``o_proj``,
  ``nn.Linear``, weight (out, in)): query head H is rows H·head_dim … of ``q_proj`` (and its bias,
  Qwen2), key/value head G rows G·head_dim … of ``k_proj``/``v_proj``, and head H columns
  H·head_dim … of ``o_proj``. ``repeat_kv`` expands key/value head G to query heads
  G·n_rep … (G+1)·n_rep − 1, n_rep = num_attention_heads / num_key_value_heads.

**Tied embeddings.** Where the unembedding is the embedding matrix itself (GPT-2, and any model
with ``tie_word_embeddings``), torch lists the one tensor once, under the embedding's name
(``transformer.wte.weight``; ``lm_head.weight`` is not in ``named_parameters()``). A weight
restriction cannot move it in one role and not the other: ``"unembed"`` then selects that shared
matrix (found by identity, not by name), and ``"embed"`` selects it too, with the position
embedding. Sampling either moves the input and the output map together;
:func:`describe` says ``unembed tied to embed``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["component", "components", "head_mask", "union", "describe", "KINDS"]

KINDS = ("head", "kv_group", "layer", "attn", "mlp", "embed", "unembed")
_FORMS = "'embed', 'unembed', 'layer L', 'layer L attn', 'layer L mlp', 'layer L head H', 'layer L kv group G'"

Slice = tuple[str, int, int, int]  # (parameter name, dimension, start, stop)


@dataclass
class _Arch:
    """What :func:`component` needs to know about a model, read from its parameters and config."""

    layout: str
    params: dict[str, Tensor]
    layers: list[str]  # the name prefix of each block, e.g. "transformer.h.0."
    attn: str
    mlp: str
    n_heads: int
    n_kv: int
    d_head: int
    query: Callable[[str, int], list[Slice]]  # (attention prefix, head) → the head's query and output slices
    kv: Callable[[str, int], list[Slice]]  # (attention prefix, group) → the key/value slices
    embed: list[str] = field(default_factory=list)
    unembed: list[str] = field(default_factory=list)

    @property
    def tied(self) -> bool:
        return any(name in self.embed for name in self.unembed)

    def summary(self) -> str:
        groups = f" in {self.n_kv} key/value groups" if self.n_kv != self.n_heads else ""
        mlp = "" if any(n.startswith(self.layers[0] + self.mlp + ".") for n in self.params) else ", no MLP"
        ends = [e for e, names in (("embed", self.embed), ("unembed", self.unembed)) if names]
        tied = " (unembed tied to embed: one shared matrix)" if self.tied else ""
        return (f"{self.layout} layout: layers 0..{len(self.layers) - 1}, heads 0..{self.n_heads - 1}{groups}{mlp}; "
                f"{', '.join(ends) or 'no embed or unembed found'}{tied}")


def describe(model: nn.Module) -> str:
    """One line: the layout found, the layers, heads and key/value groups, and the ends (embed, unembed, tied)."""
    return _arch(model).summary()


def component(model: nn.Module, spec: str | Sequence[str]) -> dict[str, Tensor]:
    """``sampled_params`` (``{parameter name: boolean mask}``) for one named component, or the
    union of a list of them. Names and layouts: see the module docstring.

        result = lh.estimate_llc(model, tokens, lh.losses.next_token,
                                 sampled_params=lh.component(model, "layer 0 head 1"))
    """
    arch = _arch(model)
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError(f"spec: an empty list names no component; write one or more of {_FORMS}.")
        return union(*(_component(arch, s) for s in spec))
    return _component(arch, spec)


def components(model: nn.Module, kind: str | Sequence[str] = "head") -> dict[str, dict[str, Tensor]]:
    """Every component of one kind (or of several), by name: ``{"layer 0 head 0": masks, …}``.

    ``kind``: one of ``"head"``, ``"kv_group"``, ``"layer"``, ``"attn"``, ``"mlp"``, ``"embed"``,
    ``"unembed"``, or a list of them.
    """
    arch = _arch(model)
    kinds = [kind] if isinstance(kind, str) else list(kind)
    out: dict[str, dict[str, Tensor]] = {}
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"kind {k!r} is not a component kind; use one of {', '.join(KINDS)}.")
        layers = range(len(arch.layers))
        if k in ("embed", "unembed"):
            names = [k]
        elif k == "head":
            names = [f"layer {L} head {h}" for L in layers for h in range(arch.n_heads)]
        elif k == "kv_group":
            names = [f"layer {L} kv group {g}" for L in layers for g in range(arch.n_kv)]
        else:
            names = [f"layer {L}" + ("" if k == "layer" else f" {k}") for L in layers]
        out.update((name, _component(arch, name)) for name in names)
    return out


def head_mask(model: nn.Module, layer: int, head: int) -> dict[str, Tensor]:
    """``sampled_params`` for one attention head: ``component(model, f"layer {layer} head {head}")``.

    The head's query, key, value and output weights (and biases): its weight-refined LLC (Wang et
    al., arXiv 2410.02984). With grouped key/value heads the head's shared key/value slice is included.
    """
    return component(model, f"layer {int(layer)} head {int(head)}")


def union(*masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The union of ``sampled_params`` mask dicts: a weight is selected if any of them selects it."""
    out: dict[str, Tensor] = {}
    for m in masks:
        for name, mask in m.items():
            out[name] = out[name] | mask if name in out else mask.clone()
    return out


# --- naming -------------------------------------------------------------------------------------

_SPEC = re.compile(r"^layer\s*(\d+)(?:\s+(head|kv\s*group|kv_group|attn|attention|mlp)(?:\s*(\d+))?)?$")


def _component(arch: _Arch, spec: str) -> dict[str, Tensor]:
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a component name such as 'layer 0 head 1', got {type(spec).__name__}.")
    text = " ".join(spec.lower().split())
    if text in ("embed", "unembed"):
        names = arch.embed if text == "embed" else arch.unembed
        if not names:
            raise ValueError(f"spec {spec!r}: this model has no {text} parameter ({arch.summary()}).")
        return {n: torch.ones_like(arch.params[n], dtype=torch.bool) for n in names}
    found = _SPEC.match(text)
    if not found:
        raise ValueError(f"spec {spec!r} is not a component name; write one of {_FORMS} ({arch.summary()}).")
    layer, part, index = int(found.group(1)), found.group(2), found.group(3)
    if not 0 <= layer < len(arch.layers):
        raise ValueError(f"spec {spec!r}: layer {layer} out of range; this model has layers 0..{len(arch.layers) - 1}.")
    part = {"attention": "attn", "kv group": "kv_group", "kvgroup": "kv_group"}.get(part, part)
    if (part in ("head", "kv_group")) != (index is not None):
        raise ValueError(f"spec {spec!r} is not a component name; write one of {_FORMS} ({arch.summary()}).")
    prefix = arch.layers[layer]
    if part is None or part in ("attn", "mlp"):
        sub = prefix + ("" if part is None else (arch.attn if part == "attn" else arch.mlp) + ".")
        names = [n for n in arch.params if n.startswith(sub)]
        if not names:
            here = sorted({n[len(prefix):].split(".")[0] for n in arch.params if n.startswith(prefix)})
            raise ValueError(f"spec {spec!r}: layer {layer} has no {part} (no parameter under {sub!r}); "
                             f"its modules are {', '.join(here)} ({arch.summary()}).")
        return {n: torch.ones_like(arch.params[n], dtype=torch.bool) for n in names}
    index = int(index)
    attn = prefix + arch.attn + "."
    rep = arch.n_heads // arch.n_kv
    if part == "head":
        if not 0 <= index < arch.n_heads:
            raise ValueError(f"spec {spec!r}: head {index} out of range; layer {layer} has heads 0..{arch.n_heads - 1}.")
        slices = arch.query(attn, index) + arch.kv(attn, index // rep)
    else:
        if not 0 <= index < arch.n_kv:
            raise ValueError(f"spec {spec!r}: kv group {index} out of range; layer {layer} has key/value groups "
                             f"0..{arch.n_kv - 1} (heads 0..{arch.n_heads - 1}, {rep} per group).")
        slices = arch.kv(attn, index) + [s for h in range(index * rep, (index + 1) * rep) for s in arch.query(attn, h)]
    return _masks(arch.params, slices)


def _masks(params: dict[str, Tensor], slices: list[Slice]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, dim, start, stop in slices:
        if name not in params:  # an absent bias
            continue
        mask = out.setdefault(name, torch.zeros_like(params[name], dtype=torch.bool))
        mask.narrow(dim, start, stop - start).fill_(True)
    return out


# --- layouts ------------------------------------------------------------------------------------

_ANCHORS = {  # layout → the name of each block's first attention weight; groups: outer prefix, block list, layer
    "per-head": re.compile(r"^(?P<outer>(?:.*\.)?)(?P<list>blocks\.)(?P<L>\d+)\.attn\.W_Q$"),
    "GPT-2": re.compile(r"^(?P<outer>(?:.*\.)?)(?P<list>h\.)(?P<L>\d+)\.attn\.c_attn\.weight$"),
    "GPT-NeoX": re.compile(r"^(?P<outer>(?:.*\.)?)(?P<list>layers\.)(?P<L>\d+)\.attention\.query_key_value\.weight$"),
    "q/k/v/o": re.compile(r"^(?P<outer>(?:.*\.)?)(?P<list>layers\.)(?P<L>\d+)\.self_attn\.q_proj\.weight$"),
}


def _arch(model: nn.Module) -> _Arch:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    params = dict(model.named_parameters())
    for layout, anchor in _ANCHORS.items():
        hits = [m for m in map(anchor.match, params) if m]
        if hits:
            break
    else:
        raise ValueError(
            "model: found no attention weights in this model, so it has no components by name (looked for "
            "blocks.L.attn.W_Q, GPT-2's h.L.attn.c_attn, GPT-NeoX's layers.L.attention.query_key_value and "
            f"layers.L.self_attn.q_proj; parameter names look like {list(params)[:4]}); pass sampled_params "
            "as parameter names or build the masks yourself as {parameter name: boolean mask}."
        )
    base = hits[0].group("outer") + hits[0].group("list")
    numbers = sorted(int(m.group("L")) for m in hits if m.group("outer") + m.group("list") == base)
    if numbers != list(range(len(numbers))):
        raise ValueError(f"model: the blocks under {base!r} are numbered {numbers}, not 0..{len(numbers) - 1}.")
    layers = [f"{base}{L}." for L in numbers]
    outer = hits[0].group("outer")
    return _LAYOUTS[layout](model, params, layers, outer)


def _config_heads(model: nn.Module) -> tuple[int, int]:
    config = getattr(model, "config", None)
    n_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if n_heads is None:
        raise ValueError("model: no config.num_attention_heads, so the heads cannot be told apart; build the masks yourself.")
    return int(n_heads), int(getattr(config, "num_key_value_heads", None) or n_heads)


def _per_head(model: nn.Module, params: dict[str, Tensor], layers: list[str], outer: str) -> _Arch:
    first = layers[0] + "attn."
    n_heads, d_head = params[first + "W_Q"].shape[0], params[first + "W_Q"].shape[2]
    kv_names = [n for n in ("W_K", "W_V", "b_K", "b_V", "_W_K", "_W_V", "_b_K", "_b_V") if first + n in params]
    n_kv = params[first + kv_names[0]].shape[0] if kv_names else n_heads

    def query(attn: str, h: int) -> list[Slice]:
        return [(attn + n, 0, h, h + 1) for n in ("W_Q", "b_Q", "W_O")]

    def kv(attn: str, g: int) -> list[Slice]:
        return [(attn + n, 0, g, g + 1) for n in kv_names]

    ends = re.compile(rf"^{re.escape(outer)}(embed\.(W_E|weight)|pos_embed(\.W_pos)?)$")
    unends = re.compile(rf"^{re.escape(outer)}unembed\.(W_U|b_U|weight|bias)$")
    return _Arch("per-head", params, layers, "attn", "mlp", n_heads, n_kv, d_head, query, kv,
                 [n for n in params if ends.match(n)], [n for n in params if unends.match(n)])


def _gpt2(model: nn.Module, params: dict[str, Tensor], layers: list[str], outer: str) -> _Arch:
    n_heads, _ = _config_heads(model)
    d = params[layers[0] + "attn.c_attn.weight"].shape[0]
    dh = d // n_heads

    def cols(h: int, parts: Sequence[int]) -> list[tuple[int, int]]:
        return [(i * d + h * dh, i * d + (h + 1) * dh) for i in parts]

    def query(attn: str, h: int) -> list[Slice]:
        return ([(attn + "c_attn.weight", 1, a, b) for a, b in cols(h, [0])] + [(attn + "c_attn.bias", 0, a, b) for a, b in cols(h, [0])]
                + [(attn + "c_proj.weight", 0, h * dh, (h + 1) * dh)])

    def kv(attn: str, h: int) -> list[Slice]:
        return [(attn + "c_attn.weight", 1, a, b) for a, b in cols(h, [1, 2])] + [(attn + "c_attn.bias", 0, a, b) for a, b in cols(h, [1, 2])]

    embed, unembed = _hf_ends(model, params)
    embed += [n for n in params if n == f"{outer}wpe.weight"]
    return _Arch("GPT-2", params, layers, "attn", "mlp", n_heads, n_heads, dh, query, kv, embed, unembed)


def _neox(model: nn.Module, params: dict[str, Tensor], layers: list[str], outer: str) -> _Arch:
    n_heads, _ = _config_heads(model)
    dh = params[layers[0] + "attention.query_key_value.weight"].shape[0] // (3 * n_heads)

    def part(attn: str, h: int, i: int) -> list[Slice]:  # i = 0, 1, 2: q, k, v of head h
        a, b = (3 * h + i) * dh, (3 * h + i + 1) * dh
        return [(attn + "query_key_value.weight", 0, a, b), (attn + "query_key_value.bias", 0, a, b)]

    def query(attn: str, h: int) -> list[Slice]:
        return part(attn, h, 0) + [(attn + "dense.weight", 1, h * dh, (h + 1) * dh)]

    def kv(attn: str, h: int) -> list[Slice]:
        return part(attn, h, 1) + part(attn, h, 2)

    embed, unembed = _hf_ends(model, params)
    return _Arch("GPT-NeoX", params, layers, "attention", "mlp", n_heads, n_heads, dh, query, kv, embed, unembed)


def _proj(model: nn.Module, params: dict[str, Tensor], layers: list[str], outer: str) -> _Arch:
    n_heads, n_kv = _config_heads(model)
    first = layers[0] + "self_attn."
    dh = params[first + "q_proj.weight"].shape[0] // n_heads
    if n_heads % n_kv or params[first + "k_proj.weight"].shape[0] != n_kv * dh:
        raise ValueError(f"model: {n_heads} query heads and {n_kv} key/value heads of width {dh} do not fit "
                         f"k_proj's {params[first + 'k_proj.weight'].shape[0]} outputs.")

    def rows(attn: str, proj: str, h: int) -> list[Slice]:
        return [(f"{attn}{proj}.{kind}", 0, h * dh, (h + 1) * dh) for kind in ("weight", "bias")]

    def query(attn: str, h: int) -> list[Slice]:
        return rows(attn, "q_proj", h) + [(attn + "o_proj.weight", 1, h * dh, (h + 1) * dh)]

    def kv(attn: str, g: int) -> list[Slice]:
        return rows(attn, "k_proj", g) + rows(attn, "v_proj", g)

    embed, unembed = _hf_ends(model, params)
    return _Arch("q/k/v/o", params, layers, "self_attn", "mlp", n_heads, n_kv, dh, query, kv, embed, unembed)


def _hf_ends(model: nn.Module, params: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """The names of the input and output embeddings' parameters, found by identity: a tied
    ``lm_head.weight`` is listed under the embedding's name."""
    name_of = {id(p): n for n, p in params.items()}

    def names(get: str) -> list[str]:
        module = getattr(model, get, lambda: None)()
        return [name_of[id(p)] for p in module.parameters()] if isinstance(module, nn.Module) else []

    return names("get_input_embeddings"), names("get_output_embeddings")


_LAYOUTS = {"per-head": _per_head, "GPT-2": _gpt2, "GPT-NeoX": _neox, "q/k/v/o": _proj}
