"""Adapter^S, MAM adapter and PROPETL (rocoft/methods/adapters.py, propetl.py): counts against each paper's
formula at RoBERTa-base shape, the prefix against a hand-written attention, PROPETL's masks and sharing, the
initial outputs, which parameters train, save / reload (their real runs: test_methods_baseline_runs.py)."""

import re

import pytest
import torch
import transformers
from omegaconf import OmegaConf

from conftest import compose_config
from rocoft.methods import build_method
from rocoft.methods.adapters import PrefixVectors, add_prefix
from rocoft.methods.propetl import BinaryMask
from rocoft.models import build_model

METHODS = ["houlsby_adapter", "mam_adapter", "propetl_adapter", "propetl_prefix", "propetl_lora"]
# the parameters each method trains besides the task head (regex on the parameter name)
TRAINED = {"houlsby_adapter": r"\.adapter\.(down|up)\.|\.output\.LayerNorm\.",
           "mam_adapter": r"\.parallel_adapter\.(down|up)\.|\.prefix\.kv$",
           "propetl_adapter": r"\.adapter\.(prototype\.(down|up)\.|(down|up)_mask\.scores$)",
           "propetl_prefix": r"\.prefix\.(prototype\.kv|mask\.scores)$",
           "propetl_lora": r"\.propetl_lora\.(prototype\.[AB]|[AB]_mask\.scores)$"}
HEAD = r"^(classifier|bert\.pooler)\."


def roberta_base_shape():
    """RoBERTa-base's layer shapes (d=768, L=12, 12 heads, FFN 3072), random init; a small vocabulary keeps it
    quick (the methods never touch the embeddings)."""
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model("roberta", vocab_size=1000, num_labels=2)
    return transformers.AutoModelForSequenceClassification.from_config(config)


def expected_added(method, d, L, r):
    """Each method's added parameters, from its paper's architecture (Table 3's APs)."""
    adapter = 2 * d * r + r + d                 # down (d x r + r) and up (r x d + d)
    return {"houlsby_adapter": 2 * L * adapter,                       # after attention and after FFN
            "mam_adapter": L * adapter + L * 30 * 2 * d,              # parallel FFN adapter + l=30 keys/values
            "propetl_adapter": adapter + L * 2 * d * r,               # one prototype + a score per weight per layer
            "propetl_prefix": r * 2 * d + L * r * 2 * d,              # prototype prefix + its mask per layer
            "propetl_lora": 2 * (2 * d * r) + 2 * L * (2 * d * r)}[method]  # query and value prototypes + masks


@pytest.mark.parametrize("method_name", METHODS)
def test_counts_and_shapes_at_roberta_base_shape(method_name):
    d, L, r = 768, 12, 8
    cfg = compose_config(["model=roberta_base", f"method={method_name}", f"rank={r}"])
    model = roberta_base_shape()
    base_total = sum(p.numel() for p in model.parameters())
    method = build_method(cfg.method, cfg.model, "classification", seed=0)
    model = method.apply(model)
    report = method.parameter_report(model, base_total)
    head = (d * d + d) + (2 * d + 2)  # RobertaClassificationHead: dense + out_proj
    norms = 2 * L * 2 * d if method_name == "houlsby_adapter" else 0  # Houlsby trains the layers' LayerNorms
    assert report["additional"] == expected_added(method_name, d, L, r)
    assert report["trainable"] == expected_added(method_name, d, L, r) + norms + head
    assert report["trainable_without_head"] == report["trainable"] - head
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {n for n in trained if re.search(TRAINED[method_name], n) or n.startswith("classifier.")}
    shapes = {n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1]: tuple(p.shape) for n, p in model.named_parameters()
              if re.search(TRAINED[method_name], n)}
    if method_name in ("houlsby_adapter", "mam_adapter", "propetl_adapter"):
        assert shapes["down.weight"] == (r, d) and shapes["up.weight"] == (d, r)
    if method_name == "mam_adapter":
        assert shapes["prefix.kv"] == (30, 2 * d)


@pytest.mark.parametrize("method_name,sites,shared", [("propetl_adapter", "adapter", "prototype"),
                                                      ("propetl_prefix", "prefix", "prototype"),
                                                      ("propetl_lora", "propetl_lora", "prototype")])
def test_propetl_one_prototype_and_one_mask_per_layer(method_name, sites, shared):
    L = 12
    cfg = compose_config(["model=roberta_base", f"method={method_name}", "rank=8"])
    model = build_method(cfg.method, cfg.model, "classification", seed=0).apply(roberta_base_shape())
    site_modules = [m for n, m in model.named_modules() if n.endswith("." + sites)]
    kinds = 2 if method_name == "propetl_lora" else 1  # LoRA: one prototype for query, one for value
    assert len(site_modules) == kinds * L
    prototypes = {id(getattr(m, shared)) for m in site_modules}
    assert len(prototypes) == kinds  # the same module object in every layer
    proto_params = [n for n, _ in model.named_parameters() if ".prototype." in n]
    assert len(proto_params) == kinds * (4 if method_name == "propetl_adapter" else 2 if method_name == "propetl_lora"
                                         else 1)  # named once, not once per layer
    masks = [m for m in model.modules() if isinstance(m, BinaryMask)]
    assert len(masks) == kinds * L * (1 if method_name == "propetl_prefix" else 2)
    assert len({id(m.scores) for m in masks}) == len(masks)  # every layer its own scores


def test_binary_mask_keeps_the_top_fraction_and_passes_the_gradient_straight_through():
    torch.manual_seed(0)
    mask = BinaryMask((6, 5), keep=0.3)
    m = mask()
    assert set(m.detach().unique().tolist()) <= {0.0, 1.0} and int(m.sum()) == 9  # int(0.3 * 30)
    top = mask.scores.detach().abs().flatten().argsort(descending=True)[:9]
    assert m.detach().flatten()[top].eq(1).all()
    w = torch.randn(6, 5)
    (m * w).sum().backward()
    torch.testing.assert_close(mask.scores.grad, w * mask.scores.detach().sign())


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_prefix_attention_equals_a_hand_written_reference(mask_dtype):
    """One BERT self-attention with a prefix vs. softmax([q K_p^T, q K^T] / sqrt(d_h) + mask) [V_p; V] in float64,
    with padded key positions masked (bool: True = attend; float: additive 0 / -inf)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=16, num_attention_heads=4, attention_probs_dropout_prob=0.0)
    model = transformers.BertModel(config).eval()
    attention = model.encoder.layer[0].attention.self
    site = PrefixVectors(3, 16)
    torch.nn.init.normal_(site.kv)
    add_prefix(attention, site)
    x = torch.randn(2, 5, 16)
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[1, 3:] = False
    mask = keep[:, None, None, :].expand(2, 1, 5, 5)
    if mask_dtype != torch.bool:
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    out = attention(x, attention_mask=mask)[0]

    def heads(t):  # (batch, length, 16) -> (batch, 4, length, 4)
        return t.view(t.shape[0], t.shape[1], 4, 4).transpose(1, 2)

    lin = {n: (getattr(attention, n).weight.double(), getattr(attention, n).bias.double())
           for n in ("query", "key", "value")}
    xd = x.double()
    q, k, v = (heads(xd @ w.T + b) for w, b in (lin["query"], lin["key"], lin["value"]))
    kp, vp = (heads(t.unsqueeze(0).expand(2, -1, -1)) for t in site.kv.detach().double().split(16, dim=1))
    scores = torch.cat([q @ kp.transpose(-1, -2), q @ k.transpose(-1, -2)], dim=-1) / 2.0
    scores[:, :, :, 3:] = scores[:, :, :, 3:].masked_fill(~keep[:, None, None, :], float("-inf"))
    ref = (scores.softmax(-1) @ torch.cat([vp, v], dim=2)).transpose(1, 2).reshape(2, 5, 16)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


def tiny(method_name, rank=4):
    cfg = compose_config(["model=tiny_encoder", f"method={method_name}", f"rank={rank}"])
    torch.manual_seed(0)
    base = build_model(cfg.model, "classification", 2)
    return base, build_method(cfg.method, cfg.model, "classification", seed=0)


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 3000, (4, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(**batch()).logits


@pytest.mark.parametrize("method_name", METHODS)
def test_initial_outputs_then_one_step_changes_them_and_only_the_documented_parameters(method_name):
    base, method = tiny(method_name)
    y_base = logits(base)
    model = method.apply(base)
    y0 = logits(model)
    if method_name in ("propetl_adapter", "propetl_lora"):  # zero up-projection / zero B: exactly the base
        assert torch.equal(y0, y_base)
    elif method_name == "houlsby_adapter":  # near-identity (std 1e-3 weights), exact once the up-projections are 0
        assert 0 < (y0 - y_base).abs().max() < 1e-3
        saved = {n: p.detach().clone() for n, p in model.named_parameters() if ".adapter.up." in n}
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ".adapter.up." in n:
                    p.zero_()
        assert torch.equal(logits(model), y_base)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in saved:
                    p.copy_(saved[n])
    else:  # prefixes take part of every query's attention from the start (prefix tuning is not an identity)
        assert not torch.allclose(y0, y_base, atol=1e-6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = method.optimizer(model, OmegaConf.create({"lr": 1e-2, "weight_decay": 0.0})) or torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        model(**batch(), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
        if _ == 0:
            assert not torch.equal(logits(model), y0)
            model.train()
    documented = re.compile(TRAINED[method_name] + "|" + HEAD)
    for n, p in model.named_parameters():
        if documented.search(n):
            assert not torch.equal(p, before[n]), f"{n} should have trained"
        else:
            assert torch.equal(p, before[n]), f"{n} is not the method's and changed"


@pytest.mark.parametrize("method_name", ["propetl_adapter", "propetl_prefix", "propetl_lora"])
def test_propetl_mask_lr_group_and_reload_keeps_the_prototype_shared(tmp_path, method_name):
    base, method = tiny(method_name)
    model = method.apply(base)
    opt = method.optimizer(model, OmegaConf.create({"lr": 1e-2, "weight_decay": 0.1}))
    scores = {id(m.scores) for m in model.modules() if isinstance(m, BinaryMask)}
    [group] = [g for g in opt.param_groups if g["lr"] == method.mask_lr]
    assert {id(p) for p in group["params"]} == scores and group["weight_decay"] == 0.0
    model.train()
    for _ in range(2):
        model(**batch(), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    y = logits(model)
    method.save(model, tmp_path / "artifact")
    fresh, _ = tiny(method_name)
    reloaded = method.load(fresh, tmp_path / "artifact")
    assert torch.equal(logits(reloaded), y)
    protos = {id(m.prototype) for m in reloaded.modules() if hasattr(m, "prototype")}
    assert len(protos) == (2 if method_name == "propetl_lora" else 1)


def test_prefix_methods_refuse_families_without_a_prefix_hook():
    from rocoft.errors import UserError

    cfg = compose_config(["model=deberta_v3_base", "method=mam_adapter", "rank=4"])
    method = build_method(cfg.method, cfg.model, "classification", seed=0)
    with pytest.raises(UserError, match="mam_adapter does not support model family deberta-v2.*bert, roberta"):
        method.apply(build_model(compose_config(["model=tiny_encoder"]).model, "classification", 2))
