"""RoCoFT through peft: get_peft_model, save_pretrained, PeftModel.from_pretrained, merge, adapter swap."""

import copy
import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification

from rocoft import RoCoFTConfig, RoCoFTLayer


def tiny_bert(seed=0):
    cfg = AutoConfig.for_model("bert", vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, num_labels=2)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


X = torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 1])


def train(model, steps=3, lr=0.05):
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    for _ in range(steps):
        model(input_ids=X, labels=Y).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.mark.parametrize("kwargs", [dict(axis="row", rank=2), dict(axis="column", rank=3, bias="targeted"),
                                    dict(axis="row", rank=1, selection="random", seed=4),
                                    dict(axis="entry", p=0.1)])
def test_save_load_merge_roundtrip(tmp_path, kwargs):
    base = tiny_bert()
    pristine = copy.deepcopy(base)
    model = train(get_peft_model(base, RoCoFTConfig(modules_to_save=["classifier"], **kwargs)))
    with torch.no_grad():
        y = model(input_ids=X).logits
        if kwargs.get("bias", "none") == "none":  # a trained bias is changed in place, as in peft's LoRA
            with model.disable_adapter():
                assert torch.equal(model(input_ids=X).logits, pristine(input_ids=X).logits)
        assert torch.equal(model(input_ids=X).logits, y)  # re-enabled: the adapter is back in place
    assert not torch.equal(y, pristine(input_ids=X).logits)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_index = sum(v.numel() for k, v in saved.items() if k.endswith(".index"))
    n_values = sum(v.numel() for k, v in saved.items() if not k.endswith(".index"))
    assert n_values == trained  # the file holds the trained values (and indices), no base weights
    assert n_index == sum(m.rocoft_slices["default"].index.numel() for m in model.modules()
                          if isinstance(m, RoCoFTLayer))
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "ROCOFT"

    loaded = PeftModel.from_pretrained(copy.deepcopy(pristine), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=X).logits, y)
    merged = loaded.merge_and_unload()
    assert type(merged) is type(pristine)
    assert not any(isinstance(m, RoCoFTLayer) for m in merged.modules())
    assert set(merged.state_dict()) == set(pristine.state_dict())
    with torch.no_grad():
        assert torch.equal(merged(input_ids=X).logits, y)


def test_adapter_file_scales_with_trained_parameters(tmp_path):
    sizes = {}
    for r in (1, 8):
        model = get_peft_model(tiny_bert(), RoCoFTConfig(axis="row", rank=r))
        model.save_pretrained(tmp_path / str(r))
        sizes[r] = (tmp_path / str(r) / "adapter_model.safetensors").stat().st_size
    values_1 = 2 * (4 * 32 + 32 + 64) * 4  # fp32 bytes of 1 row over q,k,v,o,ffn-in,ffn-out, 2 layers
    assert sizes[8] - sizes[1] == pytest.approx(7 * values_1 + 7 * 12 * 8, rel=0.05)
    full = sum(p.numel() for p in tiny_bert().parameters()) * 4
    assert sizes[8] < 0.2 * full


def test_two_adapters_swap_in_place(tmp_path):
    pristine = tiny_bert()
    a = train(get_peft_model(copy.deepcopy(pristine), RoCoFTConfig(axis="row", rank=2)))
    b = train(get_peft_model(copy.deepcopy(pristine), RoCoFTConfig(axis="column", rank=2, selection="random")),
              lr=0.1)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    with torch.no_grad():
        ya, yb, y0 = a(input_ids=X).logits, b(input_ids=X).logits, pristine(input_ids=X).logits
        model = PeftModel.from_pretrained(copy.deepcopy(pristine), tmp_path / "a", adapter_name="a").eval()
        model.load_adapter(tmp_path / "b", adapter_name="b")
        assert torch.equal(model(input_ids=X).logits, ya)
        model.set_adapter("b")
        assert torch.equal(model(input_ids=X).logits, yb)
        model.set_adapter("a")
        assert torch.equal(model(input_ids=X).logits, ya)
        with model.disable_adapter():
            assert torch.equal(model(input_ids=X).logits, y0)


def test_same_rows_as_apply_rocoft():
    from rocoft import apply_rocoft, rocoft_layers

    core = apply_rocoft(tiny_bert(), RoCoFTConfig(axis="row", rank=3, selection="random", seed=7))
    peft_model = get_peft_model(tiny_bert(), RoCoFTConfig(axis="row", rank=3, selection="random", seed=7))
    core_idx = {n: m.rocoft.index.tolist() for n, m in rocoft_layers(core)}
    peft_idx = {n.removeprefix("base_model.model."): m.rocoft_slices["default"].index.tolist()
                for n, m in peft_model.named_modules() if isinstance(m, RoCoFTLayer)}
    assert core_idx == peft_idx and len(core_idx) == 12
