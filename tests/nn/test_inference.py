"""optimize_for_inference: same outputs, weights cast once across autocast calls, rebuilt when weights change."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import perceiver
from perceiver.nn import inference
from perceiver.nn.inference import CastCachingLinear, clear_cast_cache, optimize_for_inference

BF16 = torch.bfloat16


class CountWeightCasts(TorchDispatchMode):
    """Counts bf16 casts of the weights of `model`'s Linear layers."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.weights = {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Linear)}
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        casts = (torch.ops.aten.to.dtype, torch.ops.aten._to_copy.default)
        if func in casts and args[0].data_ptr() in self.weights and BF16 in (*args[1:2], kwargs.get("dtype")):
            self.casts += 1
        return func(*args, **kwargs)


def tiny_mlm() -> nn.Module:
    kw = dict(num_latents=8, latent_dim=32, d_model=16, num_self_attends_per_block=2, max_seq_len=24)
    return perceiver.create_model("language-perceiver", **kw).eval()


def run(model, ids, autocast=True):
    with torch.autocast("cpu", BF16, enabled=autocast):
        return model(ids).logits


def test_same_outputs_and_state_dict_weights_cast_once():
    torch.manual_seed(0)
    model = tiny_mlm()
    ids = torch.randint(6, 262, (2, 24))
    keys = list(model.state_dict())
    with torch.inference_mode():
        ref_bf16, ref_fp32 = run(model, ids), run(model, ids, autocast=False)
        with CountWeightCasts(model) as plain:
            run(model, ids)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert plain.casts > len(linears) // 2  # autocast recasts every Linear weight it uses on every call
        assert optimize_for_inference(model) is model
        assert list(model.state_dict()) == keys
        assert all(type(m) is CastCachingLinear for m in linears)
        assert torch.equal(run(model, ids), ref_bf16)  # first call fills the cache
        with CountWeightCasts(model) as cached:
            out = run(model, ids)
        assert cached.casts == 0  # no Linear weight was cast again
        assert torch.equal(out, ref_bf16)
        assert torch.equal(run(model, ids, autocast=False), ref_fp32)  # fp32 calls use the fp32 weights
    with torch.no_grad():  # the copies made under inference_mode serve plain no_grad calls too
        assert torch.equal(run(model, ids), ref_bf16)


def test_cache_follows_in_place_updates_and_replacement():
    torch.manual_seed(0)
    layer = optimize_for_inference(nn.Sequential(nn.Linear(8, 4)))[0]
    plain = nn.Linear(8, 4)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(3, 8)

    def both():
        with torch.no_grad(), torch.autocast("cpu", BF16):
            return layer(x), plain(x)

    a, b = both()
    assert torch.equal(a, b) and a.dtype == BF16
    w = layer.cast_weights(BF16)[0]
    assert layer.cast_weights(BF16)[0] is w  # cached
    with torch.no_grad():  # an optimizer-style in-place update moves the version counter
        layer.weight.add_(1.0)
        plain.weight.add_(1.0)
    a, b = both()
    assert torch.equal(a, b)
    assert layer.cast_weights(BF16)[0] is not w
    layer.load_state_dict({"weight": torch.randn(4, 8), "bias": torch.randn(4)})
    plain.load_state_dict(layer.state_dict())
    assert torch.equal(*both())
    layer.bias = nn.Parameter(torch.zeros(4))  # replaced parameter
    plain.bias = nn.Parameter(torch.zeros(4))
    assert torch.equal(*both())
    layer.weight.data.mul_(2)  # .data bypasses the version counter: documented, clear_cast_cache refreshes
    plain.weight.data.mul_(2)
    clear_cast_cache(layer)
    assert torch.equal(*both())


def test_training_is_untouched_and_switch_off():
    torch.manual_seed(0)
    layer = optimize_for_inference(nn.Sequential(nn.Linear(8, 4)))[0]
    x = torch.randn(3, 8)
    with torch.no_grad(), torch.autocast("cpu", BF16):
        layer(x)
    assert BF16 in layer._cast_cache
    with torch.autocast("cpu", BF16):  # gradients flow to the fp32 weight, not to a cached copy
        layer(x).float().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    layer.weight.requires_grad_(False)  # frozen weight: the cache serves even with grad mode on
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", BF16):
        out = layer(xg)
    assert out.dtype == BF16
    out.float().sum().backward()
    assert xg.grad is not None
    model = nn.Sequential(layer)
    optimize_for_inference(model, enabled=False)
    assert type(layer) is nn.Linear and "_cast_cache" not in layer.__dict__


@pytest.mark.parametrize("name", ["vision-perceiver-learned", "language-perceiver"])
def test_presets_unchanged_under_bf16(name):
    torch.manual_seed(0)
    if name == "language-perceiver":
        model, x = tiny_mlm(), torch.randint(6, 262, (1, 24))
    else:
        kw = dict(image_size=16, num_latents=8, latent_dim=32, num_blocks=1, num_self_attends_per_block=1)
        model = perceiver.create_model(name, **kw, num_labels=5).eval()
        x = torch.randn(1, 3, 16, 16)
    with torch.inference_mode(), torch.autocast("cpu", BF16):
        ref = model(x).logits
        optimize_for_inference(model)
        model(x)
        assert torch.equal(model(x).logits, ref)


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(not inference._ONEDNN_FP32, reason="this PyTorch has no oneDNN Linear")
def test_fp32_cpu_linears_run_on_onednn():
    """fp32 CPU Linears outside autocast run their GEMMs in oneDNN, forward and (with autograd) both gradients, to
    fp32 accuracy against fp64; under autocast or switched off they are `F.linear`. Every Linear of the models is
    this `Linear`."""
    torch.manual_seed(0)
    layer = inference.Linear(64, 48)
    x = torch.randn(2, 5, 64, requires_grad=True)
    grad = torch.randn(2, 5, 48)
    ref = [t.detach().double().requires_grad_() for t in (x, layer.weight, layer.bias)]
    exact = F.linear(*ref)
    exact.backward(grad.double())
    with torch.no_grad(), CountOps() as counter:
        fast = layer(x)
    assert counter.ops == {"mkldnn._linear_pointwise"}
    torch.testing.assert_close(fast.double(), exact, atol=1e-5, rtol=0)
    with CountOps() as counter:  # autograd records: forward and both gradient GEMMs in oneDNN
        out = layer(x)
        out.backward(grad)
    assert "mkldnn._linear_pointwise" in counter.ops and not {"aten.addmm", "aten.mm"} & counter.ops
    torch.testing.assert_close(out.double(), exact, atol=1e-5, rtol=0)
    for got, want in zip((x.grad, layer.weight.grad, layer.bias.grad), (r.grad for r in ref)):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    with torch.no_grad(), torch.autocast("cpu", BF16), CountOps() as counter:
        assert layer(x).dtype == BF16
    assert "mkldnn._linear_pointwise" not in counter.ops
    previous = inference.use_onednn_fp32_linear(False)
    try:
        assert previous is True
        with CountOps() as counter:
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=0, rtol=0)
        assert "mkldnn._linear_pointwise" not in counter.ops
    finally:
        inference.use_onednn_fp32_linear(previous)
    model = tiny_mlm()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is inference.Linear for m in linears)
    optimize_for_inference(model)
    assert all(type(m) is CastCachingLinear for m in linears)
    optimize_for_inference(model, enabled=False)
    assert all(type(m) is inference.Linear for m in linears)
