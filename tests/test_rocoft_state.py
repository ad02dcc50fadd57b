"""The trained values stay right through copies, casts, full state dicts, peft unload/delete, shared and
tied modules, heads, strided weights and in-place edits of activations."""

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from torch import nn

from rocoft import RoCoFTConfig, RoCoFTLayer, apply_rocoft
from test_rocoft_layer import rocoft_linear

warnings.filterwarnings("ignore", category=UserWarning)


def trained_weight(layer: RoCoFTLayer) -> torch.Tensor:
    """The weight the layer should compute with: the base weight with the trained values at the index."""
    full = layer.base_layer.weight.detach().clone()
    layer.slice().scatter(full, layer.slice().weight.detach())
    return full


def stepped_layer(axis="row"):
    torch.manual_seed(0)
    layer = rocoft_linear(nn.Linear(6, 5), axis, [0, 3])
    opt = torch.optim.SGD(layer.slice().parameters(), lr=1.0)
    x = torch.randn(4, 6)
    for _ in range(2):
        layer(x).pow(2).sum().backward()
        opt.step()  # the base weight is written at the next forward only
        opt.zero_grad()
    return layer, x


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_copies_taken_between_step_and_forward_use_the_trained_values(how):
    layer, x = stepped_layer()
    expected = F.linear(x, torch.cat([layer.slice().weight.detach()[:1], layer.base_layer.weight[1:3].detach(),
                                      layer.slice().weight.detach()[1:], layer.base_layer.weight[4:].detach()]),
                        layer.base_layer.bias)
    if how == "deepcopy":
        clone = copy.deepcopy(layer)
    else:
        buf = io.BytesIO()
        torch.save(layer, buf)
        clone = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    torch.testing.assert_close(clone(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_half_precision_casts_keep_the_float32_master_and_resync():
    layer, x = stepped_layer()
    master = layer.slice().weight.detach().clone()
    layer.half()
    assert layer.slice().weight.dtype == torch.float32 and layer.base_layer.weight.dtype == torch.float16
    assert torch.equal(layer.slice().weight.detach(), master)
    with torch.no_grad():
        layer.slice().weight.add_(1e-4)  # below fp16 resolution near 1, kept by the master
    assert torch.equal(layer.slice().weight.detach(), master + 1e-4)
    layer.double()
    assert layer.slice().weight.dtype == torch.float64  # casting up is allowed
    y = layer(x.double())
    torch.testing.assert_close(y, F.linear(x.double(), trained_weight(layer), layer.base_layer.bias))


def test_swap_on_conversion_resyncs():
    layer, x = stepped_layer("column")
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        layer.double()
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
    torch.testing.assert_close(layer(x.double()), F.linear(x.double(), trained_weight(layer), layer.base_layer.bias))


def test_full_state_dict_round_trip_keeps_the_pretrained_values():
    layer, x = stepped_layer()
    torch.manual_seed(0)
    pretrained = nn.Linear(6, 5)  # the same init as stepped_layer's base
    state = layer.state_dict()
    fresh = rocoft_linear(copy.deepcopy(pretrained), "row", [1, 2])  # other indices before the load
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
    assert torch.equal(fresh.slice().index, torch.tensor([0, 3]))
    assert torch.equal(fresh.slice().origin, pretrained.weight.detach()[[0, 3]])  # not the trained values
    fresh.slice().restore(fresh.base_layer.weight)
    assert torch.equal(fresh.base_layer.weight, pretrained.weight)


def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))


def peft_train(model, x):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(x).pow(2).sum().backward()
    opt.step()
    opt.zero_grad()
    model(x)


def test_peft_full_state_dict_unload_and_delete_adapter():
    x = torch.randn(3, 6)
    base_out = make_net()(x)
    w0 = make_net()[0].weight.detach()
    cfg = lambda **k: RoCoFTConfig(axis="row", target_modules=["0"], **k)  # noqa: E731

    pm = get_peft_model(make_net(), cfg(rank=2))
    peft_train(pm, x)
    tuned = pm(x).detach()
    delta = pm.base_model.model[0].get_delta_weight("default")
    assert delta.abs().sum() > 0
    other = get_peft_model(make_net(), cfg(rank=2))
    other.load_state_dict(pm.state_dict())  # a full state dict: base weights hold the trained values
    torch.testing.assert_close(other(x), tuned, rtol=0, atol=0)
    torch.testing.assert_close(other.base_model.model[0].get_delta_weight("default"), delta, rtol=0, atol=0)
    with other.disable_adapter():
        torch.testing.assert_close(other(x), base_out, rtol=0, atol=0)

    plain = pm.unload()
    assert torch.equal(plain[0].weight, w0)
    torch.testing.assert_close(plain(x), base_out, rtol=0, atol=0)

    pm = get_peft_model(make_net(), cfg(rank=2))
    pm.add_adapter("b", cfg(rank=2, selection="random", seed=5))
    peft_train(pm, x)  # trains and writes "default"
    pm.set_adapter("b")
    only_b = pm(x).detach()
    pm.set_adapter("default")
    pm(x)
    pm.delete_adapter("default")
    torch.testing.assert_close(pm(x), only_b, rtol=0, atol=0)


class Dup(nn.Module):
    def __init__(self, tied=False):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4) if tied else self.a
        if tied:
            self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_a_layer_registered_twice_trains_through_both_uses():
    torch.manual_seed(0)
    m = Dup().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    w = m.a.weight.detach().clone().requires_grad_(True)
    F.linear(torch.tanh(F.linear(x, w, m.a.bias)), w, m.a.bias).pow(2).sum().backward()
    apply_rocoft(m, RoCoFTConfig(axis="row", rank=2, target_modules=["a", "b"]))
    assert m.a is m.b and isinstance(m.a, RoCoFTLayer)
    m(x).pow(2).sum().backward()
    torch.testing.assert_close(m.a.slice().weight.grad, w.grad[:2], rtol=0, atol=1e-12)
    pm = get_peft_model(Dup(), RoCoFTConfig(axis="row", rank=2, target_modules=["a"]))
    assert pm.base_model.model.a is pm.base_model.model.b


def test_tied_weights_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="tied weights"):
        apply_rocoft(Dup(tied=True), RoCoFTConfig(axis="row", rank=1, target_modules=["a", "b"]))
    with pytest.raises(ValueError, match="tied weights"):
        get_peft_model(Dup(tied=True), RoCoFTConfig(axis="row", rank=1, target_modules=["a"]))


def head_model():
    m = nn.Sequential()
    m.body, m.classifier = nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    return m


def test_linear_layers_inside_a_fully_trained_head_are_not_wrapped():
    m = apply_rocoft(head_model(), RoCoFTConfig(axis="row", rank=1, target_modules=["body.0", "classifier.0"],
                                                modules_to_save=["classifier"]))
    assert isinstance(m.body[0], RoCoFTLayer) and type(m.classifier[0]) is nn.Linear
    assert all(p.requires_grad for p in m.classifier.parameters())
    pm = get_peft_model(head_model(), RoCoFTConfig(axis="row", rank=1, target_modules=["body.0", "classifier.0"],
                                                   modules_to_save=["classifier"]))
    inner = pm.base_model.model
    assert type(inner.body[0]).__name__ == "RoCoFTLayer"
    assert type(inner.classifier.modules_to_save["default"][0]) is nn.Linear


def test_entries_of_a_strided_weight():
    torch.manual_seed(0)
    base = nn.Linear(5, 4)
    base.weight = nn.Parameter(torch.randn(5, 4).t())  # a transposed (non-contiguous) weight
    x = torch.randn(3, 5)
    w = base.weight.detach().clone().requires_grad_(True)
    F.linear(x, w, base.bias.detach()).pow(2).sum().backward()
    layer = rocoft_linear(base, "entry", [1, 6, 13])
    layer(x).pow(2).sum().backward()
    torch.testing.assert_close(layer.slice().weight.grad, w.grad.reshape(-1)[[1, 6, 13]])
    with torch.no_grad():
        layer.slice().weight.add_(1.0)
    layer(x)
    assert torch.equal(layer.base_layer.weight.reshape(-1)[[1, 6, 13]], layer.slice().weight.detach())


def test_an_input_changed_in_place_after_its_producer_is_kept_not_rebuilt():
    torch.manual_seed(0)
    layer = rocoft_linear(nn.Linear(4, 3, dtype=torch.float64), "row", [0, 2])
    a = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    x = F.silu(a) * b
    with torch.no_grad():
        x.clamp_(-0.1, 0.1)
    y = layer(x)
    assert y.grad_fn.rebuild is None
    y.pow(2).sum().backward()
    w = layer.base_layer.weight.detach().clone().requires_grad_(True)
    F.linear(x.detach(), w, layer.base_layer.bias.detach()).pow(2).sum().backward()
    torch.testing.assert_close(layer.slice().weight.grad, w.grad[[0, 2]], rtol=0, atol=1e-12)
