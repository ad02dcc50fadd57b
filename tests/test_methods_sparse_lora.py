"""MoSLoRA, LoRA-XS, SFT and Diff pruning (rocoft.methods.lora_variants / sparse): parameter counts at
RoBERTa-base shape against each method's formula, zero update at the start, only the method's tensors
train, save / reload, SFT's drop-and-regrow rule and budget, Diff pruning's L0 penalty and projection."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from transformers import RobertaConfig, RobertaForSequenceClassification

from conftest import compose_config
from rocoft.methods import build_method
from rocoft.methods.sparse import DiffPruningLinear, SparseDeltaLinear
from rocoft.models import build_model

METHODS = ["moslora", "lora_xs", "sft", "diff_pruning"]
TRAIN_CFG = OmegaConf.create({"lr": 1e-2, "weight_decay": 0.0, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8})
# which tensors of a wrapped layer each method trains (the task head trains too)
TRAINED = {"moslora": {"lora_A", "lora_M", "lora_B"}, "lora_xs": {"lora_M"}, "sft": {"values", "indices"},
           "diff_pruning": {"diff", "log_alpha"}}


def method_for(name, model="tiny_encoder", rank=2, extra=()):
    cfg = compose_config([f"model={model}", f"method={name}", f"rank={rank}", *extra])
    return build_method(cfg.method, cfg.model, "classification", seed=0), cfg


def tiny(cfg):
    torch.manual_seed(0)
    return build_model(cfg.model, "classification", 2)


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 3000, (4, 10), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 0, 1])}


def logits(model):
    model.eval()
    with torch.no_grad():
        b = batch()
        b.pop("labels")
        return model(**b).logits


def train_steps(model, method, steps, total=None):
    opt = method.optimizer(model, TRAIN_CFG) or torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(1, steps + 1):
        model(**batch()).loss.backward()
        opt.step()
        method.after_step(model, step)
        opt.zero_grad()
    return opt


# ---- counts and shapes at RoBERTa-base shape (random init, no download)
def roberta_base_shape():
    torch.manual_seed(0)
    config = RobertaConfig(num_hidden_layers=2, num_labels=2)  # RoBERTa-base's layers; 2 of its 12, for speed
    return RobertaForSequenceClassification(config), config


def expected_counts(name, r, h, f, L):
    """(trainable without the head, added) over the query, key, value, attention output, FFN in and FFN out
    matrices of L layers (hidden h, FFN f), from each paper's definition."""
    shapes = [(h, h)] * 4 + [(f, h), (h, f)]  # (d_out, d_in)
    per_matrix = {  # (trainable, added) per adapted matrix
        "moslora": lambda o, i: (r * (i + o) + r * r,) * 2,
        "lora_xs": lambda o, i: (r * r, r * (i + o) + r * r),
        "sft": lambda o, i: (r * (i + o),) * 2,
        "diff_pruning": lambda o, i: (2 * o * i,) * 2,
    }[name]
    return (L * sum(per_matrix(o, i)[0] for o, i in shapes), L * sum(per_matrix(o, i)[1] for o, i in shapes))


@pytest.mark.parametrize("name", METHODS)
def test_counts_and_shapes_at_roberta_base_shape(name):
    r = 8
    method, _ = method_for(name, model="roberta_base", rank=r)
    model, config = roberta_base_shape()
    base_total = sum(p.numel() for p in model.parameters())
    h, f, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    assert (h, f) == (768, 3072)
    trainable, added = expected_counts(name, r, h, f, L)
    head = h * h + h + h * 2 + 2  # RobertaClassificationHead: dense + out_proj
    model = method.apply(model, total_steps=10)
    report = method.parameter_report(model, base_total)
    assert report == {"trainable": trainable + head, "trainable_without_head": trainable, "total": base_total,
                      "additional": added, "trainable_percent": pytest.approx(100 * (trainable + head) / base_total)}
    wrappers = method.wrappers(model)
    assert len(wrappers) == 6 * L
    for wname, w in wrappers:
        o, i = w.base.weight.shape
        if name in ("moslora", "lora_xs"):
            assert (w.lora_A.shape, w.lora_M.shape, w.lora_B.shape) == ((r, i), (r, r), (o, r))
        elif name == "sft":
            assert w.indices.shape == w.values.shape == (r * (i + o),)
            assert len(set(w.indices.tolist())) == r * (i + o)
            assert 0 <= int(w.indices.min()) and int(w.indices.max()) < o * i
        else:
            assert w.diff.shape == w.log_alpha.shape == (o, i)
    if name == "lora_xs":  # B A is the best rank-r approximation of W: ||W - B A||_F^2 = the tail of S^2
        for _, w in wrappers[:2]:
            W = w.base.weight.double()
            tail = torch.linalg.svdvals(W)[r:].pow(2).sum()
            err = (W - w.lora_B.double() @ w.lora_A.double()).pow(2).sum()
            torch.testing.assert_close(err, tail, rtol=1e-4, atol=1e-6)


# ---- the model is unchanged at the start and changes after one step
@pytest.mark.parametrize("name", METHODS)
def test_zero_update_at_start_then_one_step_changes_outputs(name):
    extra = ["method.init_std=0"] if name == "lora_xs" else []
    method, cfg = method_for(name, extra=extra)
    model = tiny(cfg)
    before = logits(model)
    model = method.apply(model, total_steps=10)
    assert torch.equal(logits(model), before)
    for n, p in model.named_parameters():  # the head frozen for this step: the change must come from the method
        if n.startswith(("classifier.", "bert.pooler.")):
            p.requires_grad_(False)
    opt = method.optimizer(model, TRAIN_CFG) or torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(**batch()).loss.backward()
    opt.step()
    method.after_step(model, 1)
    assert not torch.allclose(logits(model), before, atol=1e-6)


def test_lora_xs_default_start_is_the_papers_small_gaussian():
    method, cfg = method_for("lora_xs")
    model = tiny(cfg)
    before = logits(model)
    model = method.apply(model)
    stds = torch.cat([w.lora_M.detach().reshape(-1) for _, w in method.wrappers(model)])
    assert 0 < stds.abs().max() < 1e-4  # N(0, 1e-5^2)
    torch.testing.assert_close(logits(model), before, rtol=0, atol=1e-4)


# ---- only the method's tensors train; save, reload on a fresh base, same outputs
@pytest.mark.parametrize("name", METHODS)
def test_only_documented_tensors_train_and_the_artifact_reloads(tmp_path, name):
    extra = {"sft": ["method.regrow_every=3", "method.accumulation_steps=2"]}.get(name, [])
    method, cfg = method_for(name, extra=extra)
    model = method.apply(tiny(cfg), total_steps=6)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, method, 6)  # SFT regrows at steps 2 and 5; Diff pruning projects at step 6
    after = model.state_dict()
    wrapped = {n + "." for n, _ in method.wrappers(model)}
    for key, value in after.items():
        owner, _, leaf = key.rpartition(".")
        head = key.startswith(("classifier.", "bert.pooler."))
        documented = owner + "." in wrapped and leaf in TRAINED[name]
        if name == "diff_pruning" and leaf == "mask":
            continue  # set by the projection (checked in its own test)
        changed = key not in start or not torch.equal(value, start[key])
        assert changed == (documented or head), f"{key}: changed={changed}"
    y = logits(model)
    method.save(model, tmp_path / "adapter")
    fresh = tiny(cfg)
    reloaded = method.load(fresh, tmp_path / "adapter")
    assert torch.equal(logits(reloaded), y)
    assert not any(p.requires_grad for p in reloaded.parameters())
    merged = method.merged(model)
    assert not method.wrappers(merged)
    torch.testing.assert_close(logits(merged), y, rtol=1e-5, atol=1e-5)


# ---- SFT: the schedule, the drop / regrow rule, the budget and the optimizer state
def test_sft_schedule():
    method, _ = method_for("sft", extra=["method.regrow_every=100", "method.accumulation_steps=5"])
    method.total_steps = 300
    updates = [s for s in range(1, 301) if method.is_update_step(s)]
    assert updates == [5, 105, 205]
    assert method.drop_rate(5) == 1.0 and method.drop_rate(105) == pytest.approx(0.2 * (1 - 105 / 300))
    reading = [t for t in range(1, 301)
               if method.next_update(t) - t < 5 and method.is_update_step(method.next_update(t))]
    assert reading == [*range(1, 6), *range(101, 106), *range(201, 206)]


def test_sft_regrow_rule_against_brute_force():
    """Drop the n smallest |values|; regrow the n candidates of largest |summed gradient| that are not still
    trained; a dropped entry that is regrown keeps its slot and value; new entries start at zero."""
    method, _ = method_for("sft")
    layer = SparseDeltaLinear(torch.nn.Linear(5, 4), torch.tensor([0, 3, 7, 8, 12, 19]))
    with torch.no_grad():
        layer.values.copy_(torch.tensor([0.5, -0.01, 0.2, 0.03, -0.9, 0.02]))
    candidates = torch.tensor([7, 3, 11, 15, 2, 19])
    grad_sum = torch.tensor([9.0, 5.0, -4.0, 3.0, 0.5, 0.1])
    acc = {"candidates": candidates, "sum": grad_sum, "sum_sq": grad_sum ** 2, "n": 2}
    method.regrow(layer, acc, 3)
    # brute force: dropped = slots of the 3 smallest |values| = positions 3 (0.01), 19 (0.02), 8 (0.03);
    # still trained = {0, 7, 12}; free candidates by |sum|: 3 (5), 11 (4), 15 (3) -> 3 was dropped: it stays
    # with its value; 11 and 15 take the slots of 19 and 8 (smallest |value| first), at zero.
    pairs = dict(zip(layer.indices.tolist(), layer.values.tolist()))
    assert pairs == pytest.approx({0: 0.5, 3: -0.01, 7: 0.2, 11: 0.0, 12: -0.9, 15: 0.0})
    assert len(layer.indices) == 6


def test_sft_budget_and_optimizer_state_after_regrowth():
    method, cfg = method_for("sft", extra=["method.regrow_every=3", "method.accumulation_steps=2"])
    model = method.apply(tiny(cfg), total_steps=6)
    initial = {n: w.indices.clone() for n, w in method.wrappers(model)}
    opt = train_steps(model, method, 6)
    changed = 0
    for name, w in method.wrappers(model):
        k = w.values.numel()
        assert w.indices.numel() == k and len(set(w.indices.tolist())) == k
        state = opt.state[w.values]
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape == (k,)
        changed += int((w.indices.sort()[0] != initial[name].sort()[0]).any())
    assert changed == len(initial)  # the first update (rate 1) reselected by gradient everywhere
    # the trained entries are the only ones the weights differ in
    for _, w in method.wrappers(model):
        diff = (w.delta_weight() != 0).reshape(-1).nonzero().flatten()
        assert set(diff.tolist()) <= set(w.indices.tolist())


def test_sft_regrown_entries_start_at_the_window_mean_gradient():
    """The new entries' AdamW moments are set so that the bias-corrected moments equal the window's means."""
    method, cfg = method_for("sft", extra=["method.regrow_every=4", "method.accumulation_steps=2"])
    model = method.apply(tiny(cfg), total_steps=10)
    name, layer = method.wrappers(model)[0]
    seen = []
    inner = layer.grad_hook
    opt = method.optimizer(model, TRAIN_CFG)
    model.train()
    for step in range(1, 7):
        if layer.grad_hook is not None:  # record the dense gradients the window reads
            hook = layer.grad_hook
            layer.grad_hook = lambda g, hook=hook: [seen.append((step, g.detach().reshape(-1).clone())), hook(g)][-1]
        before = layer.indices.clone()
        model(**batch()).loss.backward()
        opt.step()
        method.after_step(model, step)
        opt.zero_grad()
    assert inner is not None and {s for s, _ in seen} == {1, 2, 5, 6}
    # the update at step 6 (rate 0.2 * (1 - 6/10)): entries new since step 5
    new_slots = (layer.indices != before).nonzero().flatten()
    assert len(new_slots) > 0
    grads = torch.stack([g for s, g in seen if s in (5, 6)])
    mean, mean_sq = grads.mean(0)[layer.indices[new_slots]], grads.pow(2).mean(0)[layer.indices[new_slots]]
    state = opt.state[layer.values]
    t = float(state["step"])
    torch.testing.assert_close(state["exp_avg"][new_slots] / (1 - 0.9 ** t), mean)
    torch.testing.assert_close(state["exp_avg_sq"][new_slots] / (1 - 0.999 ** t), mean_sq)
    assert torch.equal(layer.values[new_slots].detach(), torch.zeros(len(new_slots)))


# ---- Diff pruning: the L0 penalty and the magnitude projection
def test_diff_pruning_penalty_is_the_expected_l0_norm():
    method, cfg = method_for("diff_pruning")
    model = method.apply(tiny(cfg), total_steps=5)
    layers = [w for _, w in method.wrappers(model)]
    with torch.no_grad():
        for i, w in enumerate(layers):
            w.log_alpha.normal_(generator=torch.Generator().manual_seed(i))
    model.train()
    torch.manual_seed(1)
    with_penalty = model(**batch()).loss
    expected = sum((1 / (1 + torch.exp(-(w.log_alpha.double() - math.log(1.5 / 1.5))))).sum() for w in layers)
    torch.manual_seed(1)
    plain = model.__class__.forward(model, **batch()).loss  # the forward without the method's hook
    torch.testing.assert_close(with_penalty.double() - plain.double(), 1.25e-7 * expected, rtol=1e-4, atol=1e-9)


def test_diff_pruning_projection_meets_the_target_sparsity():
    rank = 2
    method, cfg = method_for("diff_pruning", rank=rank)
    model = method.apply(tiny(cfg), total_steps=4)
    layers = [w for _, w in method.wrappers(model)]
    opt = method.optimizer(model, TRAIN_CFG)
    model.train()
    for step in range(1, 5):
        model(**batch()).loss.backward()
        opt.step()
        if step == 4:  # the reference before the projection: z * w with the deterministic gate, in float64
            reference = [w.diff.double() * (torch.sigmoid(w.log_alpha.double()) * 3 - 1.5).clamp(0, 1) for w in layers]
            assert all(w.mask is None for w in layers)
        method.after_step(model, step)  # the 4th step projects (project_at = 1.0)
        opt.zero_grad()
    for w, ref in zip(layers, reference):
        o, i = w.base.weight.shape
        target = rank * (i + o)
        assert int(w.mask.sum()) == target and int((w.diff != 0).sum()) <= target
        kept = w.mask.reshape(-1).bool()
        assert ref.abs().reshape(-1)[kept].min() >= ref.abs().reshape(-1)[~kept].max()
    assert isinstance(layers[0], DiffPruningLinear)
