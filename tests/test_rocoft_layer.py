"""RoCoFT layer against a dense float64 autograd reference."""

import itertools

import pytest
import torch
from torch import nn

from rocoft import RoCoFTConfig, RoCoFTLayer, apply_rocoft, count_parameters, merge_rocoft, select_indices


def rocoft_linear(base: nn.Linear, axis: str, index, **config) -> RoCoFTLayer:
    """``base`` adapted through the public path (apply_rocoft) with the given indices (``config.index_fn``)."""
    index = torch.as_tensor(index, dtype=torch.long)
    size = dict(rank=max(1, index.numel())) if axis != "entry" else dict(p=0.5)
    cfg = RoCoFTConfig(axis=axis, target_modules=["0"], **size, **config)
    cfg.index_fn = lambda name, weight: index
    return apply_rocoft(nn.Sequential(base), cfg)[0]


def dense_reference(layer: nn.Linear, x: torch.Tensor, grad_y: torch.Tensor):
    """Gradients of a plain float64 linear layer with every entry trainable."""
    w = layer.weight.detach().double().clone().requires_grad_(True)
    b = None if layer.bias is None else layer.bias.detach().double().clone().requires_grad_(True)
    xd = x.detach().double().clone().requires_grad_(True)
    y = nn.functional.linear(xd, w, b)
    y.backward(grad_y.double())
    return y, xd.grad, w.grad, None if b is None else b.grad


CASES = list(itertools.product(
    ["row", "column"], [(5, 7), (16, 4), (3, 3)], [(6,), (2, 5)], [True, False], ["one", "full", "random"]))


@pytest.mark.parametrize("axis,shape,lead,bias,which", CASES)
def test_gradients_equal_dense_slice(axis, shape, lead, bias, which):
    torch.manual_seed(0)
    d_out, d_in = shape
    layer = nn.Linear(d_in, d_out, bias=bias).double()
    size = d_out if axis == "row" else d_in
    if which == "one":
        index = torch.tensor([size - 1])
    elif which == "full":
        index = torch.arange(size)
    else:
        index = select_indices(size, max(1, size // 2), "random", generator=torch.Generator().manual_seed(3))
    x = torch.randn(*lead, d_in, dtype=torch.float64, requires_grad=True)
    grad_y = torch.randn(*lead, d_out, dtype=torch.float64)
    y_ref, gx_ref, gw_ref, gb_ref = dense_reference(layer, x, grad_y)

    ro = rocoft_linear(layer, axis, index)
    if bias:
        layer.bias.requires_grad_(True)
    y = ro(x)
    y.backward(grad_y)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, gx_ref, rtol=0, atol=1e-12)
    expected = gw_ref.index_select(0 if axis == "row" else 1, index)
    torch.testing.assert_close(ro.slice().weight.grad, expected, rtol=0, atol=1e-12)
    assert layer.weight.grad is None
    if bias:
        torch.testing.assert_close(layer.bias.grad, gb_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("axis", ["row", "column"])
def test_float32_outputs_match_plain_linear(axis):
    torch.manual_seed(1)
    layer = nn.Linear(12, 9)
    ref = nn.Linear(12, 9)
    ref.load_state_dict(layer.state_dict())
    ro = rocoft_linear(layer, axis, torch.tensor([0, 2, 5]))
    x = torch.randn(4, 3, 12)
    assert torch.equal(ro(x), ref(x))


@pytest.mark.parametrize("axis", ["row", "column"])
def test_frozen_entries_bit_identical_after_steps_with_weight_decay(axis):
    torch.manual_seed(2)
    layer = nn.Linear(10, 8)
    before = layer.weight.detach().clone()
    index = torch.tensor([1, 6])
    ro = rocoft_linear(layer, axis, index)
    layer.bias.requires_grad_(True)
    params = [p for p in ro.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1, weight_decay=0.5)
    for _ in range(3):
        opt.zero_grad()
        ro(torch.randn(5, 10)).pow(2).sum().backward()
        opt.step()
    ro(torch.randn(1, 10))  # the next forward writes the updated slice into the weight
    after = layer.weight.detach()
    dim = 0 if axis == "row" else 1
    frozen = torch.ones(after.shape[dim], dtype=torch.bool)
    frozen[index] = False
    sel = (slice(None),) * dim + (frozen,)
    assert torch.equal(after[sel], before[sel])
    trained = (slice(None),) * dim + (index,)
    assert not torch.equal(after[trained], before[trained])
    assert torch.equal(after[trained], ro.slice().weight.detach())
    # only the slice and the bias are in the optimizer: no state of the full matrix
    assert {p.numel() for p in params} == {ro.slice().weight.numel(), 8}


def test_half_precision_base_keeps_fp32_master():
    layer = nn.Linear(6, 4).to(torch.bfloat16)
    ro = rocoft_linear(layer, "row", torch.tensor([0]))
    assert ro.slice().weight.dtype == torch.float32
    y = ro(torch.randn(2, 6, dtype=torch.bfloat16))
    y.float().sum().backward()
    assert ro.slice().weight.grad.dtype == torch.float32 and y.dtype == torch.bfloat16


@pytest.mark.parametrize("bad", [[], [0, 0], [9], [-1]])
def test_bad_indices_rejected(bad):
    with pytest.raises(ValueError):
        rocoft_linear(nn.Linear(4, 9), "row", torch.tensor(bad, dtype=torch.long))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.up_proj, self.head = nn.Linear(6, 6), nn.Linear(6, 10), nn.Linear(10, 2)

    def forward(self, x):
        return self.head(torch.relu(self.up_proj(self.q_proj(x))))


@pytest.mark.parametrize("bias,expected_bias", [("none", 0), ("targeted", 16), ("all", 18)])
def test_apply_counts_merge(bias, expected_bias):
    torch.manual_seed(0)
    model = Block()
    x = torch.randn(3, 6)
    cfg = RoCoFTConfig(axis="row", rank=2, target_modules=["q_proj", "up_proj"], bias=bias)
    apply_rocoft(model, cfg)
    counts = count_parameters(model)
    assert counts["trainable"] == 2 * 6 + 2 * 6 + expected_bias
    assert counts["total"] == sum(p.numel() for p in Block().parameters())
    y = model(x)
    merged = merge_rocoft(model)
    assert not any(isinstance(m, RoCoFTLayer) for m in merged.modules())
    assert torch.equal(merged(x), y)


def test_rank_larger_than_dimension_is_a_clear_error():
    with pytest.raises(ValueError, match="rank 7 exceeds"):
        apply_rocoft(Block(), RoCoFTConfig(axis="row", rank=7, target_modules=["q_proj"]))
