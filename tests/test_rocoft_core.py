"""Selection strategies, calibration, the random-entry ablation, counts, compile, checkpointing, state dicts."""

import copy

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from rocoft import (RoCoFTConfig, RoCoFTLayer, apply_rocoft, calibrate_input_norms, count_parameters,
                    rocoft_layers, select_indices, wanda_scores)
from test_rocoft_layer import rocoft_linear


def test_selection_strategies_on_a_hand_built_example():
    # |W| = [[1, 4], [3, 0], [2, 2]] with input norms ||X_1|| = 1, ||X_2|| = 0.5
    w = torch.tensor([[1.0, -4.0], [3.0, 0.0], [-2.0, 2.0]])
    norm = torch.tensor([1.0, 0.5])
    rows = wanda_scores(w, norm, "row")  # [1 + 2, 3 + 0, 2 + 1] = [3, 3, 3] -> ties
    cols = wanda_scores(w, norm, "column")  # [1 + 3 + 2, (4 + 0 + 2) * 0.5] = [6, 3]
    assert rows.tolist() == [3.0, 3.0, 3.0] and cols.tolist() == [6.0, 3.0]
    scores = torch.tensor([0.5, 9.0, 1.0, 7.0, 3.0])
    assert select_indices(5, 2, "first").tolist() == [0, 1]
    assert select_indices(5, 2, "max", scores=scores).tolist() == [1, 3]
    assert select_indices(5, 2, "min", scores=scores).tolist() == [0, 2]
    assert select_indices(5, 3, "mixed", scores=scores).tolist() == [0, 1, 3]  # 2 highest + 1 lowest
    assert select_indices(5, 2, "max", scores=rows.new_tensor([3.0, 3.0, 3.0, 1, 1])).tolist() == [0, 1]
    g = torch.Generator().manual_seed(0)
    r = select_indices(100, 5, "random", generator=g)
    assert r.tolist() == sorted(set(r.tolist())) and len(r) == 5 and r.tolist() != list(range(5))
    with pytest.raises(ValueError, match="between 1 and"):
        select_indices(4, 5, "first")
    with pytest.raises(ValueError, match="calibration"):
        select_indices(4, 2, "max")


def tiny_bert(layers=2):
    cfg = AutoConfig.for_model("bert", vocab_size=100, hidden_size=32, num_hidden_layers=layers,
                               num_attention_heads=4, intermediate_size=64, num_labels=2)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def test_calibration_hooks_see_each_layers_real_input():
    model = tiny_bert()
    batches = [{"input_ids": torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(i))}
               for i in range(2)]
    names = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.key",
             "bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.attention.self.value"]
    norms = calibrate_input_norms(model, names, batches)
    with torch.no_grad():  # manual forward, eval mode: the real inputs of those layers
        emb = torch.cat([model.bert.embeddings(input_ids=b["input_ids"]).reshape(-1, 32) for b in batches])
        layer0 = model.bert.encoder.layer[0]
        att = layer0.attention(emb.reshape(4, 6, 32))[0]
        inter = layer0.intermediate(att)
        out0 = layer0.output(inter, att)
    expected = {names[0]: emb.norm(dim=0), names[1]: emb.norm(dim=0),  # key sees the embeddings, not query's output
                names[2]: inter.reshape(-1, 64).norm(dim=0), names[3]: out0.reshape(-1, 32).norm(dim=0)}
    for n in names:
        torch.testing.assert_close(norms[n].float(), expected[n], rtol=1e-5, atol=1e-5)


def test_wanda_selection_picks_the_highest_scoring_rows():
    model = tiny_bert()
    batches = [{"input_ids": torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))}]
    target = "bert.encoder.layer.0.attention.self.query"
    w = model.get_submodule(target).weight.detach().clone()
    norm = calibrate_input_norms(model, [target], batches)[target]
    expected = torch.topk(wanda_scores(w, norm, "row"), 3).indices.sort().values
    apply_rocoft(model, RoCoFTConfig(axis="row", rank=3, selection="max", target_modules=[target]),
                 calibration_batches=batches)
    assert model.get_submodule(target).slice().index.tolist() == expected.tolist()


def test_random_entry_ablation_trains_exactly_the_sampled_entries():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30))
    w0 = model[0].weight.detach().clone()
    apply_rocoft(model, RoCoFTConfig(axis="entry", p=0.1, target_modules=["0"], seed=3))
    layer = model[0]
    idx = layer.slice().index
    assert 0.05 < idx.numel() / 600 < 0.15
    x = torch.randn(8, 20, dtype=torch.float32)
    ref_w = w0.clone().double().requires_grad_(True)
    nn.functional.linear(x.double(), ref_w, layer.base_layer.bias.double()).pow(2).sum().backward()
    model(x).pow(2).sum().backward()
    torch.testing.assert_close(layer.slice().weight.grad.double(), ref_w.grad.reshape(-1)[idx], rtol=1e-5, atol=1e-5)
    opt = torch.optim.AdamW([layer.slice().weight], lr=0.1, weight_decay=0.5)
    assert count_parameters(model)["trainable"] == idx.numel()
    for _ in range(3):
        opt.step()
        opt.zero_grad()
        model(x).pow(2).sum().backward()
    model(x)
    changed = (layer.base_layer.weight.detach() != w0).reshape(-1).nonzero().flatten()
    assert set(changed.tolist()) <= set(idx.tolist()) and len(changed) > 0.9 * len(idx)
    with pytest.raises(ValueError, match="probability p"):
        RoCoFTConfig(axis="entry", p=1.5)


@pytest.mark.parametrize("rank,expected", [(1, 82_944), (3, 248_832)])
def test_trainable_counts_match_the_paper_at_roberta_base_shape(rank, expected):
    cfg = AutoConfig.for_model("roberta", num_labels=2)  # roberta-base shape, random init
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(cfg)
    apply_rocoft(model, RoCoFTConfig(axis="row", rank=rank))
    assert count_parameters(model)["trainable"] == expected  # paper: 0.083M / 0.249M, head excluded
    assert len(rocoft_layers(model)) == 12 * 6


def test_core_state_dict_reloads_onto_a_fresh_base_with_other_indices():
    trained = apply_rocoft(tiny_bert(), RoCoFTConfig(axis="column", rank=2, selection="random", seed=1,
                                                     modules_to_save=["classifier"]))
    opt = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=0.05)
    ids = torch.randint(0, 100, (3, 5))
    for _ in range(2):
        trained(input_ids=ids, labels=torch.tensor([0, 1, 0])).loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        y = trained(input_ids=ids).logits
    adapter = {k: v for k, v in trained.state_dict().items() if ".rocoft_slices." in k or k.startswith("classifier")}
    fresh = apply_rocoft(tiny_bert(), RoCoFTConfig(axis="column", rank=2, selection="random", seed=99,
                                                   modules_to_save=["classifier"]))
    fresh.load_state_dict(adapter, strict=False)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, y)
    pristine = tiny_bert()
    for (n, m), (_, m0) in zip(rocoft_layers(fresh), rocoft_layers(apply_rocoft(pristine, RoCoFTConfig(
            axis="column", rank=2, selection="random", seed=99)))):
        # origins were re-read from the pristine base at the loaded indices
        torch.testing.assert_close(m.slice().origin, m0.base_layer.weight.index_select(1, m.slice().index))


def test_bf16_base_trains_fp32_master_and_leaves_frozen_rows_identical():
    model = tiny_bert().to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_rocoft(model, RoCoFTConfig(axis="row", rank=2))
    layers = rocoft_layers(model)
    assert all(m.slice().weight.dtype == torch.float32 for _, m in layers)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1)
    ids = torch.randint(0, 100, (2, 5))
    for _ in range(2):
        model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    model(input_ids=ids)
    for name, m in layers:
        w0, w1 = before[name + ".weight"], m.base_layer.weight
        keep = torch.ones(w0.shape[0], dtype=torch.bool)
        keep[m.slice().index] = False
        assert torch.equal(w0[keep], w1[keep]) and not torch.equal(w0, w1)
        assert torch.equal(w1[m.slice().index], m.slice().weight.detach().to(torch.bfloat16))


def grads_after_steps(model, fn, steps=3):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(0, 100, (2, 5), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        fn(ids).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        opt.step()
        opt.zero_grad()
    return grads


@pytest.mark.parametrize("axis", ["row", "column"])
def test_torch_compile_and_checkpointing_match_eager(axis):
    cfg = RoCoFTConfig(axis=axis, rank=2)
    eager = apply_rocoft(tiny_bert(), cfg).train()
    ref = grads_after_steps(eager, lambda ids: eager(input_ids=ids).logits.pow(2).sum())
    compiled_model = apply_rocoft(tiny_bert(), cfg).train()
    compiled = torch.compile(compiled_model, backend="aot_eager")
    got = grads_after_steps(compiled_model, lambda ids: compiled(input_ids=ids).logits.pow(2).sum())
    for a, b in zip(ref, got):  # the third step's grads depend on the in-place updates of the first two
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    ckpt = apply_rocoft(tiny_bert(), cfg).train()
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    got = grads_after_steps(ckpt, lambda ids: ckpt(input_ids=ids).logits.pow(2).sum())
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_deepcopy_keeps_load_hooks_on_the_copy():
    model = apply_rocoft(tiny_bert(1), RoCoFTConfig(axis="row", rank=1, selection="random"))
    clone = copy.deepcopy(model)
    sd = {k: v for k, v in model.state_dict().items() if ".rocoft_slices." in k}
    clone.load_state_dict(sd, strict=False)
    assert all(isinstance(m, RoCoFTLayer) for _, m in rocoft_layers(clone))


@pytest.mark.parametrize("axis", ["row", "column"])
def test_under_bf16_autocast_grads_match_a_dense_layer_under_the_same_autocast(axis):
    torch.manual_seed(0)
    dense = nn.Linear(24, 16)
    ro = rocoft_linear(copy.deepcopy(dense), axis, torch.tensor([1, 5, 7]))
    x = torch.randn(3, 4, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, y = dense(x), ro(x)
    assert y.dtype == y_ref.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    y_ref.float().pow(2).sum().backward()
    y.float().pow(2).sum().backward()
    dim = 0 if axis == "row" else 1
    expected = dense.weight.grad.index_select(dim, ro.slice().index)
    torch.testing.assert_close(ro.slice().weight.grad, expected, rtol=2e-2, atol=2e-2)
    assert ro.slice().weight.grad.dtype == torch.float32


def test_fp16_base_weights_train_with_fp32_master():
    layer = nn.Linear(8, 6).to(torch.float16)
    ro = rocoft_linear(layer, "column", torch.tensor([2]))
    y = ro(torch.randn(5, 8, dtype=torch.float16))
    y.float().sum().backward()
    assert y.dtype == torch.float16 and ro.slice().weight.grad.dtype == torch.float32
    assert torch.isfinite(ro.slice().weight.grad).all()
