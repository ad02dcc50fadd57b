"""RoCoFT through peft: get_peft_model, save_pretrained, PeftModel.from_pretrained, merge, adapter swap."""

import copy
import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification

from rocoft import RoCoFTConfig, RoCoFTLayer, RoCoFTSlice, apply_rocoft, load_adapter, rocoft_layers, save_adapter


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
    core = apply_rocoft(tiny_bert(), RoCoFTConfig(axis="row", rank=3, selection="random", seed=7))
    peft_model = get_peft_model(tiny_bert(), RoCoFTConfig(axis="row", rank=3, selection="random", seed=7))
    core_idx = {n: m.slice().index.tolist() for n, m in rocoft_layers(core)}
    peft_idx = {n.removeprefix("base_model.model."): m.rocoft_slices["default"].index.tolist()
                for n, m in peft_model.named_modules() if isinstance(m, RoCoFTLayer)}
    assert core_idx == peft_idx and len(core_idx) == 12


def test_plain_regex_target_modules_match_as_for_lora():
    regex = r"bert\.encoder\.layer\.\d+\.attention\.self\.(query|value)"
    peft_model = get_peft_model(tiny_bert(), RoCoFTConfig(axis="row", rank=1, target_modules=regex))
    names = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if isinstance(m, RoCoFTLayer)}
    expected = {f"bert.encoder.layer.{i}.attention.self.{p}" for i in range(2) for p in ("query", "value")}
    assert names == expected
    assert {n for n, _ in rocoft_layers(apply_rocoft(tiny_bert(), RoCoFTConfig(axis="row", rank=1,
                                                                               target_modules=regex)))} == expected
    # a string matches the whole name: "query" alone is no suffix match (as in peft), a list entry is
    with pytest.raises(ValueError, match="matched no"):
        apply_rocoft(tiny_bert(), RoCoFTConfig(axis="row", rank=1, target_modules="query"))
    assert len(rocoft_layers(apply_rocoft(tiny_bert(), RoCoFTConfig(axis="row", rank=1,
                                                                    target_modules=["query"])))) == 2
    assert len(rocoft_layers(apply_rocoft(tiny_bert(), RoCoFTConfig(axis="row", rank=1,
                                                                    target_modules=["re:.*\\.key"])))) == 2


def test_init_weights_false_starts_away_from_the_pretrained_values():
    pristine = tiny_bert()
    with torch.no_grad():
        y0 = pristine(input_ids=X).logits
        model = get_peft_model(copy.deepcopy(pristine), RoCoFTConfig(axis="column", rank=2, init_weights=False))
        y = model(input_ids=X).logits
        assert not torch.allclose(y, y0, atol=1e-5)
        with model.disable_adapter():
            assert torch.equal(model(input_ids=X).logits, y0)
        model.merge_adapter()
        torch.testing.assert_close(model(input_ids=X).logits, y, rtol=1e-5, atol=1e-6)
        model.unmerge_adapter()
        base = {k.replace("base_layer.", ""): v for k, v in model.base_model.model.state_dict().items()
                if "rocoft_slices" not in k}
        assert base.keys() == pristine.state_dict().keys()
        assert all(torch.equal(base[k], v) for k, v in pristine.state_dict().items())  # pristine after unmerge
        again = get_peft_model(copy.deepcopy(pristine), RoCoFTConfig(axis="column", rank=2, init_weights=False))
        assert torch.equal(again(input_ids=X).logits, y)  # seeded: the same start every time


def test_autocast_adapter_dtype_false_keeps_the_base_dtype():
    base = tiny_bert().to(torch.bfloat16)
    up = get_peft_model(copy.deepcopy(base), RoCoFTConfig(axis="row", rank=1))
    kept = get_peft_model(copy.deepcopy(base), RoCoFTConfig(axis="row", rank=1), autocast_adapter_dtype=False)
    assert {m.weight.dtype for m in up.modules() if isinstance(m, RoCoFTSlice)} == {torch.float32}
    assert {m.weight.dtype for m in kept.modules() if isinstance(m, RoCoFTSlice)} == {torch.bfloat16}
    assert {m.weight.dtype for m in apply_rocoft(copy.deepcopy(base), RoCoFTConfig(axis="row", rank=1)).modules()
            if isinstance(m, RoCoFTSlice)} == {torch.float32}
    kept(input_ids=X).logits.float().sum().backward()
    assert all(m.weight.grad.dtype == torch.bfloat16 for m in kept.modules() if isinstance(m, RoCoFTSlice))


@pytest.mark.parametrize("kwargs", [dict(axis="row", rank=2), dict(axis="entry", p=0.1)])
def test_low_cpu_mem_usage_loading(tmp_path, kwargs):
    pristine = tiny_bert()
    model = train(get_peft_model(copy.deepcopy(pristine), RoCoFTConfig(modules_to_save=["classifier"], **kwargs)))
    model.save_pretrained(tmp_path / "a")
    with torch.no_grad():
        y = model(input_ids=X).logits
        loaded = PeftModel.from_pretrained(copy.deepcopy(pristine), tmp_path / "a", low_cpu_mem_usage=True).eval()
        assert torch.equal(loaded(input_ids=X).logits, y)
        assert not any(p.is_meta for p in loaded.parameters())
        other = PeftModel.from_pretrained(copy.deepcopy(pristine), tmp_path / "a", adapter_name="x").eval()
        other.load_adapter(tmp_path / "a", adapter_name="y", low_cpu_mem_usage=True)
        other.set_adapter("y")
        assert torch.equal(other(input_ids=X).logits, y)


def test_several_adapters_and_their_limits():
    pristine = tiny_bert()
    model = get_peft_model(copy.deepcopy(pristine), RoCoFTConfig(axis="row", rank=2, init_weights=False))
    model.add_adapter("b", RoCoFTConfig(axis="column", rank=2, seed=3, init_weights=False))
    with torch.no_grad():
        y0 = pristine(input_ids=X).logits
        ya = model(input_ids=X).logits
        model.set_adapter("b")
        yb = model(input_ids=X).logits
        model.set_adapter("default")
        assert torch.equal(model(input_ids=X).logits, ya) and not torch.equal(ya, yb)
        layer = next(m for m in model.modules() if isinstance(m, RoCoFTLayer))
        assert layer.slice() is layer.rocoft_slices["default"] and layer.slice("b") is layer.rocoft_slices["b"]
        # the active adapter's values live in the weight: two at once is a clear error, nothing changes
        with pytest.raises(ValueError, match="one adapter per layer can be active"):
            layer.set_adapter(["default", "b"])
        layer.set_adapter("default")
        assert torch.equal(model(input_ids=X).logits, ya)
        model.base_model.merge_adapter(["default"])
        with pytest.raises(ValueError, match="one adapter at a time"):
            model.base_model.merge_adapter(["b"])
        model.base_model.unmerge_adapter()
        model.delete_adapter("default")
        assert torch.equal(model(input_ids=X).logits, yb)
        with model.disable_adapter():
            assert torch.equal(model(input_ids=X).logits, y0)
    # the base layer's bias is shared: only one adapter may train it (peft's rule for LoRA too)
    biased = get_peft_model(copy.deepcopy(pristine), RoCoFTConfig(axis="row", rank=1, bias="rocoft_only"))
    with pytest.raises(ValueError, match="only 1 adapter with bias"):
        biased.add_adapter("other", RoCoFTConfig(axis="row", rank=1, bias="all"))
    # apply_rocoft adapts a base once; a second adapter goes through peft
    adapted = apply_rocoft(copy.deepcopy(pristine), RoCoFTConfig(axis="row", rank=1))
    with pytest.raises(ValueError, match="already has RoCoFT layers"):
        apply_rocoft(adapted, RoCoFTConfig(axis="row", rank=1))


def test_adapter_files_of_the_previous_version_still_load(tmp_path):
    """The previous version wrote the same peft names: values, indices, head and biases under base_model.model."""
    from safetensors.torch import save_file

    pristine = tiny_bert()
    config = RoCoFTConfig(axis="row", rank=2, bias="rocoft_only", modules_to_save=["classifier"])
    trained = train(apply_rocoft(copy.deepcopy(pristine), config))
    state = {}
    for name, p in trained.named_parameters():  # the old key scheme, written by hand
        if p.requires_grad:
            state["base_model.model." + name.replace(".rocoft_slices.default.", ".rocoft_slices.")] = p.detach()
    for name, layer in rocoft_layers(trained):
        state[f"base_model.model.{name}.rocoft_slices.index"] = layer.slice().index
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "adapter_model.safetensors"))
    config.save_pretrained(str(tmp_path))
    save_adapter(trained, config, tmp_path / "new")
    assert set(load_file(tmp_path / "new" / "adapter_model.safetensors")) == set(state)  # the same names
    with torch.no_grad():
        y = trained(input_ids=X).logits
        assert torch.equal(load_adapter(copy.deepcopy(pristine), tmp_path).eval()(input_ids=X).logits, y)
        assert torch.equal(PeftModel.from_pretrained(copy.deepcopy(pristine), tmp_path).eval()(input_ids=X).logits, y)
