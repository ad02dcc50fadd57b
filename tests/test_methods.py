"""Every method on every model family it supports: two optimizer steps, the right parameters move,
nothing else does, and the saved artifact reloads to the same outputs."""


import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF, compose_config
from rocoft.core import rocoft_layers
from rocoft.errors import UserError
from rocoft.methods import build_method
from rocoft.models import build_model

FAMILIES = {"tiny_encoder": "classification", "tiny_decoder": "causal_lm", "tiny_seq2seq": "seq2seq"}
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml")
                 if "defaults:" not in p.read_text())  # rank-pinned variants are the same methods
# combinations that peft / transformers cannot run; each must fail with a clear message
UNSUPPORTED = {("bitfit", "tiny_decoder")}  # LLaMA has no biases
# prefixes need a self-attention that takes past keys / values (BERT, RoBERTa)
UNSUPPORTED |= {(m, f) for m in ("mam_adapter", "propetl_prefix") for f in ("tiny_decoder", "tiny_seq2seq")}


def batch(kind):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 3000, (4, 10), generator=g)
    b = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if kind == "classification":
        b["labels"] = torch.tensor([0, 1, 0, 1])
    elif kind == "causal_lm":
        b["labels"] = ids.clone()
    else:
        b["labels"] = torch.randint(1000, 3000, (4, 6), generator=g)
    return b


def inputs(kind):
    """The batch without labels (a reloaded AdaLoRA adapter cannot compute its training loss)."""
    b = batch(kind)
    labels = b.pop("labels")
    if kind == "seq2seq":
        b["decoder_input_ids"] = labels
    return b


def fresh(model_name, kind):
    cfg = compose_config([f"model={model_name}"])
    torch.manual_seed(0)
    return build_model(cfg.model, kind, 2 if kind == "classification" else None), cfg


@pytest.mark.parametrize("model_name", sorted(FAMILIES))
@pytest.mark.parametrize("method_name", METHODS)
def test_method_on_family(tmp_path, method_name, model_name):
    kind = FAMILIES[model_name]
    base, cfg = fresh(model_name, kind)
    cfg = compose_config([f"model={model_name}", f"method={method_name}", "rank=2"])
    method = build_method(cfg.method, cfg.model, kind, seed=0)
    if (method_name, model_name) in UNSUPPORTED:
        with pytest.raises(UserError, match=method_name):
            method.apply(base, total_steps=3)(**batch(kind))
        return
    model = method.apply(base, total_steps=3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    opt = method.optimizer(model, OmegaConf.create({"lr": 1e-2, "weight_decay": 0.0, "adam_betas": [0.9, 0.999],
                                                    "adam_eps": 1e-8})) or torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(1, 4):
        loss = model(**batch(kind)).loss
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        method.after_step(model, step)
        opt.zero_grad()
    in_place = {n + ".base_layer.weight" for n, _ in rocoft_layers(model)}
    for n, p in model.named_parameters():
        if n in trainable:
            if ".lora_E." in n:  # AdaLoRA's budget allocator may mask a layer's singular values to zero
                continue
            assert not torch.equal(p, before[n]), f"{n} should have trained"
        elif n not in in_place:
            assert torch.equal(p, before[n]), f"{n} is frozen but changed"
    model.eval()
    with torch.no_grad():
        y = model(**inputs(kind)).logits
    method.save(model, tmp_path / "artifact")
    reloaded_base, _ = fresh(model_name, kind)
    reloaded = method.load(reloaded_base, tmp_path / "artifact").eval()
    with torch.no_grad():
        y2 = reloaded(**inputs(kind)).logits
    if method_name == "adalora":  # peft resizes a reloaded AdaLoRA to its allocated ranks: other summation order
        torch.testing.assert_close(y2, y, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(y2, y)



def test_method_configs_are_constructor_arguments():
    """A method YAML is its class's keyword arguments: an unknown key or a missing _target_ is one clear error."""
    cfg = compose_config(["model=tiny_encoder", "method=lora", "rank=4"])
    method = build_method(cfg.method, cfg.model, "classification", seed=0)
    assert type(method).__name__ == "PeftMethod" and method.rank == 4 and method.heads == ["classifier", "pooler"]
    assert method.peft_config(10).r == 4 and method.peft_config(10).target_modules == set(cfg.model.target_modules)
    lora = OmegaConf.to_container(cfg.method, resolve=True)
    with pytest.raises(UserError, match="does not fit PeftMethod.*lora_rank"):
        build_method({**lora, "lora_rank": 3}, cfg.model, "classification", seed=0)
    with pytest.raises(UserError, match="no _target_"):
        build_method({k: v for k, v in lora.items() if k != "_target_"}, cfg.model, "classification", seed=0)
    with pytest.raises(UserError, match="unknown peft_type 'LORAX'"):
        build_method({**lora, "peft_type": "LORAX"}, cfg.model, "classification", seed=0)
    rows = compose_config(["model=tiny_encoder", "method=rocoft_random"])
    assert build_method(rows.method, rows.model, "classification", seed=0).rank is None  # entries: p, not a rank


def test_rocoft_targets_come_from_method_then_model_config():
    """method.target_modules wins, else model.target_modules; both reach the RoCoFT config and the injection."""
    cfg = compose_config(["model=tiny_encoder", "method=rocoft_row", "rank=1"])
    method = build_method(cfg.method, cfg.model, "classification", seed=0)
    assert method.config().target_modules == list(cfg.model.target_modules)
    only_query = compose_config(["model=tiny_encoder", "method=rocoft_row", "rank=1",
                                 "method.target_modules=[query]"])
    method = build_method(only_query.method, only_query.model, "classification", seed=0)
    assert method.config().target_modules == ["query"]
    model, _ = fresh("tiny_encoder", "classification")
    adapted = {n.rsplit(".", 1)[-1] for n, _ in rocoft_layers(method.apply(model))}
    assert adapted == {"query"}
