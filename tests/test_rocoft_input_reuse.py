"""Rows rebuild their input in backward from what its producer saved: exact, and x is not kept."""

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from rocoft import RoCoFTConfig, RoCoFTLayer, apply_rocoft
from test_rocoft_layer import rocoft_linear

PRODUCERS = {  # name -> (x from leaves a, b; the rebuild op the row layer should pick)
    "swiglu": (lambda a, b: F.silu(a) * b, "mul"),
    "gelu_new_python": (lambda a, b: (0.5 * a) * (1.0 + torch.tanh(a * b)), "mul"),  # GPT-J style, a python mul
    "gelu": (lambda a, b: F.gelu(a), "gelu:none"),
    "gelu_tanh": (lambda a, b: F.gelu(a, approximate="tanh"), "gelu:tanh"),
    "silu": (lambda a, b: F.silu(a), "silu"),
}


def _leaves(dtype, lead=(2, 5), d_in=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*lead, d_in, generator=g, dtype=dtype).requires_grad_(True)
    b = torch.randn(*lead, d_in, generator=g, dtype=dtype).requires_grad_(True)
    return a, b


@pytest.mark.parametrize("producer", sorted(PRODUCERS))
def test_rebuilt_input_gives_dense_float64_gradients(producer):
    make, op = PRODUCERS[producer]
    torch.manual_seed(0)
    layer = nn.Linear(7, 6, dtype=torch.float64)
    index = torch.tensor([1, 4])
    grad_y = torch.randn(2, 5, 6, dtype=torch.float64)

    # dense reference: every weight entry trainable, float64 autograd
    a_ref, b_ref = _leaves(torch.float64)
    w = layer.weight.detach().clone().requires_grad_(True)
    F.linear(make(a_ref, b_ref), w, layer.bias.detach()).backward(grad_y)

    a, b = _leaves(torch.float64)
    ro = rocoft_linear(layer, "row", index)
    y = ro(make(a, b))
    assert y.grad_fn.rebuild == op
    y.backward(grad_y)
    torch.testing.assert_close(ro.slice().weight.grad, w.grad[index], rtol=0, atol=1e-12)
    torch.testing.assert_close(a.grad, a_ref.grad, rtol=0, atol=1e-12)
    if b_ref.grad is not None:
        torch.testing.assert_close(b.grad, b_ref.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("producer", ["swiglu", "gelu_tanh"])
def test_rebuilt_input_is_bit_identical_to_keeping_it(producer, dtype):
    make, _ = PRODUCERS[producer]
    grads = []
    for reuse in (True, False):
        torch.manual_seed(0)
        layer = nn.Linear(7, 6, dtype=dtype)
        a, b = _leaves(dtype)
        ro = rocoft_linear(layer, "row", [0, 3, 5], reuse_saved_inputs=reuse)
        y = ro(make(a, b))
        assert (y.grad_fn.rebuild is not None) == reuse
        (y.float() ** 2).sum().backward()
        grads.append((ro.slice().weight.grad, a.grad))
    assert all(torch.equal(g1, g2) for g1, g2 in zip(*grads))


@pytest.mark.parametrize("reuse", [True, False])
def test_rebuilt_input_is_not_kept_alive(reuse):
    a, b = _leaves(torch.float32)
    ro = rocoft_linear(nn.Linear(7, 6), "row", [2], reuse_saved_inputs=reuse)
    x = F.silu(a) * b
    storage = weakref.ref(x.untyped_storage())
    y = ro(x)
    del x
    gc.collect()
    assert (storage() is None) == reuse  # with reuse, nothing holds x: its memory is free until backward
    y.sum().backward()
    assert ro.slice().weight.grad.shape == (1, 7)


def test_fallbacks_keep_the_input():
    a, b = _leaves(torch.float32)
    frozen = torch.randn(7)
    col = rocoft_linear(nn.Linear(7, 6), "column", [1, 2])
    row = rocoft_linear(nn.Linear(7, 6), "row", [1, 2])
    assert col(F.silu(a) * b).grad_fn.rebuild is None  # columns keep x[:, C] only
    assert row(frozen * a).grad_fn.rebuild is None  # a frozen factor is not saved by its mul
    assert row(a).grad_fn.rebuild is None  # a leaf has no producer
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        assert row(F.silu(a) * b).grad_fn.rebuild is None  # e.g. activation checkpointing's hooks


def test_rebuild_under_checkpoint_and_after_inplace_change():
    torch.manual_seed(0)
    layer = nn.Linear(7, 6)
    ro = rocoft_linear(layer, "row", [0, 5])
    a, b = _leaves(torch.float32)
    y = checkpoint(lambda a_, b_: ro(F.silu(a_) * b_), a, b, use_reentrant=False)
    y.sum().backward()
    got = ro.slice().weight.grad.clone()
    w = layer.weight.detach().clone().requires_grad_(True)
    a2, b2 = _leaves(torch.float32)
    F.linear(F.silu(a2) * b2, w, layer.bias.detach()).sum().backward()
    torch.testing.assert_close(got, w.grad[[0, 5]])

    a, b = _leaves(torch.float32)
    h = F.silu(a)
    y = rocoft_linear(nn.Linear(7, 6), "row", [0])(h * b)
    with torch.no_grad():
        b.add_(1.0)  # a saved factor changed in place: autograd must refuse, as it would for x itself
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_tiny_llama_gradients_identical_and_down_proj_rebuilds():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=50, max_position_embeddings=64)
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    grads, ops = [], []
    for reuse in (True, False):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        apply_rocoft(model, RoCoFTConfig(axis="row", rank=2, reuse_saved_inputs=reuse))
        seen = {}
        for name, m in model.named_modules():
            if isinstance(m, RoCoFTLayer):
                m.register_forward_hook(lambda mod, i, out, name=name: seen.__setitem__(name, out.grad_fn.rebuild))
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        ops.append(seen)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])
    rebuilt = {n for n, op in ops[0].items() if op is not None}
    assert rebuilt == {f"model.layers.{i}.mlp.down_proj" for i in range(2)}
    assert all(op == "mul" for n, op in ops[0].items() if n in rebuilt)
    assert all(op is None for op in ops[1].values())


@pytest.mark.parametrize("override,expected", [([], True), (["method.reuse_saved_inputs=false"], False)])
def test_method_config_reaches_the_layers(override, expected):
    from conftest import compose_config

    from rocoft.methods import build_method

    cfg = compose_config(["model=tiny_decoder", "method=rocoft_row_r3", *override])
    method = build_method(cfg.method, cfg.model, "causal_lm", 0)
    assert method.config().reuse_saved_inputs is expected
