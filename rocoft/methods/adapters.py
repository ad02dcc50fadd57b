"""Bottleneck adapters and attention prefixes, written in the suite (peft 0.21 has neither a Houlsby adapter nor
a MAM adapter, and AdapterHub ``adapters`` does not support this transformers version):

* **Adapter^S** (``houlsby_adapter``; Houlsby et al. 2019, "Parameter-efficient transfer learning for NLP"):
  ``h <- h + up(gelu(down(h)))`` on the output projection of the self-attention and of the feed-forward block
  of every layer, before the residual add and LayerNorm; the layers' LayerNorms train too (paper Sec. 2.1).
  Near-identity initialisation as in the paper's code (google-research/adapter-bert): down and up weights from a
  normal with std 1e-3 truncated at 2 std, zero biases, so the model starts close to (not exactly at) the base.
* **MAM adapter** (``mam_adapter``; He et al. 2022, "Towards a unified view of parameter-efficient transfer
  learning", Sec. 4.5): prefix tuning on every self-attention (``prefix_length`` trained key and value vectors
  per layer, l=30 in the paper) plus a *scaled parallel adapter* on the feed-forward block:
  ``ffn(x) + s * up(relu(down(x)))`` with ``x`` the block's input and s=4. The parallel adapter starts at zero
  (LoRA-style: down Kaiming-uniform, up zero), so only the prefix changes the outputs at initialisation.

The modules are attached where each model family's layers have them (:data:`SITES`, matched by name) and run
through forward hooks, so the base model's parameter names and code stay as they are. The added modules are
children of the hooked module (``...attention.output.dense.adapter.down.weight``); their names are the saved
artifact's keys. ``rank`` is the bottleneck size. PROPETL (:mod:`.propetl`) reuses these pieces.
"""

from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from .base import Method, freeze, is_norm, require_trainable

# Where each family's layers have the modules the methods hook, as regexes on module names:
# attn_out / ffn_out: the projections back to the residual stream (sequential adapters go on their output);
# ffn_in: a module whose input is the feed-forward block's input (the parallel adapter reads it);
# self_attn: the self-attention taking ``past_key_values`` (prefixes; None: the family has no such hook);
# query / value: the attention projections LoRA adapts; norms: the LayerNorms after each sub-layer.
_BERT_LIKE = {"attn_out": r"\.attention\.output\.dense$", "ffn_out": r"\.\d+\.output\.dense$",
              "ffn_in": r"\.intermediate\.dense$", "self_attn": r"\.attention\.self$",
              "query": r"\.attention\.self\.query$", "value": r"\.attention\.self\.value$",
              "norms": r"\.output\.LayerNorm$"}
SITES = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    # DeBERTa's disentangled attention takes no past keys / values: no prefix
    "deberta-v2": {**_BERT_LIKE, "self_attn": None, "query": r"\.attention\.self\.query_proj$",
                   "value": r"\.attention\.self\.value_proj$"},
    "bart": {"attn_out": r"\.self_attn\.out_proj$", "ffn_out": r"\.fc2$", "ffn_in": r"\.fc1$", "self_attn": None,
             "query": r"\.self_attn\.q_proj$", "value": r"\.self_attn\.v_proj$",
             "norms": r"\.(self_attn_layer_norm|final_layer_norm)$"},
    "llama": {"attn_out": r"\.self_attn\.o_proj$", "ffn_out": r"\.mlp\.down_proj$", "ffn_in": r"\.mlp\.gate_proj$",
              "self_attn": None, "query": r"\.self_attn\.q_proj$", "value": r"\.self_attn\.v_proj$",
              "norms": r"\.(input_layernorm|post_attention_layernorm)$"},
}


def find_sites(model: nn.Module, method: Method, site: str) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` at ``site`` (a key of :data:`SITES`) for the method's model family, in order."""
    family = str(method.model_cfg.family)
    pattern = SITES.get(family, {}).get(site)
    if pattern is None:
        supported = sorted(f for f, s in SITES.items() if s.get(site))
        raise UserError(f"method={method.name} does not support model family {family} ({method.model_cfg.name}): "
                        f"it needs the {site} modules, which the suite locates for: {', '.join(supported)}.")
    found = [(n, m) for n, m in model.named_modules() if re.search(pattern, n)]
    if not found:
        raise UserError(f"method={method.name}: no module of {method.model_cfg.name} matches {pattern!r} ({site}).")
    return found


def trunc_normal(weight: torch.Tensor, std: float) -> None:
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class Bottleneck(nn.Module):
    """``up(act(down(h)))``: d -> r -> d. ``masks`` (down, up), if given, multiply the two weights (PROPETL)."""

    def __init__(self, d: int, r: int, act: str = "gelu", init: str = "houlsby"):
        super().__init__()
        self.down, self.up, self.act = nn.Linear(d, r), nn.Linear(r, d), act
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.bias)
        if init == "houlsby":      # adapter-bert: truncated normal, std 1e-3 (near-identity)
            trunc_normal(self.down.weight, 1e-3)
            trunc_normal(self.up.weight, 1e-3)
        elif init == "lora":       # He et al. / PROPETL: Kaiming-uniform down, zero up (exactly identity)
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.up.weight)
        else:
            raise ValueError(f"unknown adapter init {init!r}")

    def forward(self, h, masks=None):
        down_w, up_w = self.down.weight, self.up.weight
        if masks is not None:
            down_w, up_w = down_w * masks[0], up_w * masks[1]
        z = F.linear(h, down_w, self.down.bias)
        z = F.gelu(z) if self.act == "gelu" else F.relu(z)
        return F.linear(z, up_w, self.up.bias)


class PrefixVectors(nn.Module):
    """``length`` trained key and value vectors of one self-attention layer: a (length, 2 d) tensor."""

    def __init__(self, length: int, d: int):
        super().__init__()
        self.kv = nn.Parameter(torch.empty(length, 2 * d))
        nn.init.normal_(self.kv, std=0.02)

    def forward(self):
        return self.kv


class PrefixCache:
    """What a BERT-like self-attention calls as its key/value cache: ``update`` prepends the prefix to the
    layer's keys and values (a stand-in for transformers' Cache, seen only by that one module)."""

    def __init__(self, prefix: torch.Tensor, heads: int):
        self.prefix, self.heads = prefix, heads

    def update(self, keys, values, layer_idx=None, *args, **kwargs):
        batch, length = keys.shape[0], self.prefix.shape[0]
        kv = self.prefix.to(keys.dtype).view(length, 2, self.heads, -1).permute(1, 2, 0, 3)  # 2, heads, P, head_dim
        k, v = (t.unsqueeze(0).expand(batch, -1, -1, -1) for t in kv)
        return torch.cat([k, keys], dim=2), torch.cat([v, values], dim=2)


def _prefix_pre_hook(module, args, kwargs, *, site):
    """Give the self-attention the prefix as its cache and let every query attend to the prefix positions."""
    prefix = site()
    kwargs["past_key_values"] = PrefixCache(prefix, module.num_attention_heads)
    mask = kwargs.get("attention_mask")
    if mask is not None:  # (batch, 1, queries, keys), bool (True = attend) or additive float (0 = attend)
        pad = torch.full((*mask.shape[:-1], prefix.shape[0]), mask.dtype == torch.bool or 0, dtype=mask.dtype,
                         device=mask.device)
        kwargs["attention_mask"] = torch.cat([pad, mask], dim=-1)
    return args, kwargs


def _sequential_hook(module, args, output, *, site):
    return output + site(output)


def _remember_input(module, args, *, store):
    store["x"] = args[0]


def _parallel_hook(module, args, output, *, site, store, scale):
    return output + scale * site(store.pop("x"))


def attach(module: nn.Module, name: str, site: nn.Module) -> nn.Module:
    module.add_module(name, site)
    return site


def add_sequential(module: nn.Module, site: nn.Module) -> None:
    """``module``'s output h becomes ``h + site(h)``."""
    module.register_forward_hook(partial(_sequential_hook, site=attach(module, "adapter", site)))


def add_parallel(ffn_in: nn.Module, ffn_out: nn.Module, site: nn.Module, scale: float) -> None:
    """``ffn_out``'s output becomes ``out + scale * site(x)``, x = the input of ``ffn_in`` in the same layer."""
    store: dict = {}
    ffn_in.register_forward_pre_hook(partial(_remember_input, store=store))
    ffn_out.register_forward_hook(partial(_parallel_hook, site=attach(ffn_out, "parallel_adapter", site),
                                          store=store, scale=scale))


def add_prefix(self_attn: nn.Module, site: nn.Module) -> None:
    """``self_attn`` attends over ``site()`` (length, 2 d: keys then values) before the sequence's own keys."""
    self_attn.register_forward_pre_hook(partial(_prefix_pre_hook, site=attach(self_attn, "prefix", site)),
                                        with_kwargs=True)


def hidden_size(model: nn.Module) -> int:
    config = model.config
    return int(getattr(config, "hidden_size", None) or config.d_model)


class AddedModulesMethod(Method):
    """A method that adds trained modules to a frozen model (:meth:`attach`); the task head trains too.
    Its artifact is the trained tensors; loading attaches fresh modules to the base and fills them."""

    def attach(self, model: nn.Module) -> None:
        raise NotImplementedError

    def apply(self, model, **_):
        freeze(model)
        self.attach(model)
        self.train_heads(model)
        require_trainable(model, self)
        return model

    def load(self, base, directory):
        model = self.apply(base)
        state = load_file(str(Path(directory) / "trainable.safetensors"))
        result = model.load_state_dict(state, strict=False)
        missing = {n for n, p in model.named_parameters() if p.requires_grad} - set(state)
        if result.unexpected_keys or missing:
            raise UserError(f"{directory} does not fit method={self.name} on this model: unexpected "
                            f"{result.unexpected_keys[:3]}, missing {sorted(missing)[:3]}")
        return model

    def merged(self, model):
        return None  # the added modules are not folded into the weights


class HoulsbyAdapter(AddedModulesMethod):
    """Adapter^S: a bottleneck adapter after the attention output and the feed-forward output of every layer."""

    def __init__(self, name: str, *, rank: int, train_layer_norms: bool = True, **context):
        super().__init__(name, rank=rank, **context)
        self.train_layer_norms = train_layer_norms

    def attach(self, model):
        d = hidden_size(model)
        for _, module in find_sites(model, self, "attn_out") + find_sites(model, self, "ffn_out"):
            add_sequential(module, Bottleneck(d, int(self.rank), act="gelu", init="houlsby"))
        if self.train_layer_norms:
            for _, module in find_sites(model, self, "norms"):
                if is_norm(module):
                    module.requires_grad_(True)


class MAMAdapter(AddedModulesMethod):
    """MAM adapter: prefix tuning on every self-attention + a scaled parallel adapter on every feed-forward."""

    def __init__(self, name: str, *, rank: int, prefix_length: int = 30, scale: float = 4.0, **context):
        super().__init__(name, rank=rank, **context)
        self.prefix_length, self.scale = int(prefix_length), float(scale)

    def attach(self, model):
        d = hidden_size(model)
        ffn_in, ffn_out = find_sites(model, self, "ffn_in"), find_sites(model, self, "ffn_out")
        attention = find_sites(model, self, "self_attn")
        for (_, m_in), (_, m_out) in zip(ffn_in, ffn_out, strict=True):
            add_parallel(m_in, m_out, Bottleneck(d, int(self.rank), act="relu", init="lora"), self.scale)
        for _, module in attention:
            add_prefix(module, PrefixVectors(self.prefix_length, d))


__all__ = ["SITES", "AddedModulesMethod", "Bottleneck", "HoulsbyAdapter", "MAMAdapter", "PrefixVectors",
           "add_parallel", "add_prefix", "add_sequential", "find_sites", "hidden_size"]
