"""`perceiver.nn.cpu_kernels`: oneDNN's packed fp32 Linear gives `nn.Linear`'s outputs, falls back where it cannot
apply (autograd, other dtypes, autocast), and `use_onednn_linear` leaves the original model untouched."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY, flat, inputs, tiny
from torch import nn

from perceiver.nn import MLP
from perceiver.nn.cpu_kernels import OneDNNLinear, onednn_available, use_onednn_linear

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 24), (2, 7, 24), (2, 3, 4, 24)])
def test_equals_nn_linear(shape, bias):
    torch.manual_seed(0)
    linear = nn.Linear(24, 40, bias=bias)
    fast = OneDNNLinear(linear)
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), linear(x), atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), linear(x), atol=1e-5, rtol=1e-5)


def test_gradients_and_autocast_take_the_plain_path():
    torch.manual_seed(0)
    linear = nn.Linear(8, 6)
    fast = OneDNNLinear(linear)
    assert fast.weight is linear.weight and fast.bias is linear.bias
    x = torch.randn(3, 8, requires_grad=True)
    fast(x).square().sum().backward()
    expected = linear.weight.grad.clone()
    linear.weight.grad = None
    linear(x).square().sum().backward()
    torch.testing.assert_close(linear.weight.grad, expected)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        assert fast(torch.randn(3, 8)).dtype == torch.bfloat16  # the caller's autocast arithmetic, as nn.Linear


def test_packs_only_fp32_cpu_weights():
    with pytest.raises(ValueError, match=r"packs fp32 CPU weights, got torch.float64"):
        OneDNNLinear(nn.Linear(4, 4).double())


@pytest.mark.parametrize("name", sorted(TINY))
def test_swapped_model_equals_the_model(name):
    model = tiny(name).eval()
    x = inputs(name)
    linears = sum(type(m) is nn.Linear for m in model.modules())
    fast = use_onednn_linear(model)
    assert sum(type(m) is nn.Linear for m in model.modules()) == linears  # the original keeps its modules
    assert sum(isinstance(m, OneDNNLinear) for m in fast.modules()) == linears > 0
    assert {id(p) for p in fast.parameters()} == {id(p) for p in model.parameters()}  # shared, not copied
    with torch.no_grad():
        for got, expected in zip(flat(fast(*x)), flat(model(*x)), strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("activation", ["gelu", "geglu"])
def test_mlp_in_eval_runs_both_linears_through_their_modules(activation):
    mlp = use_onednn_linear(MLP(16, 2, activation=activation).eval())
    called = []
    for name in ("fc1", "fc2"):
        getattr(mlp, name).register_forward_hook(lambda *_, name=name: called.append(name))
    with torch.no_grad():
        mlp(torch.randn(2, 3, 16))
    assert called == ["fc1", "fc2"]


def test_private_ops_live_only_in_cpu_kernels():
    """The default path is plain PyTorch (the portable-core contract): oneDNN / MKL / `torch._C` calls only here."""
    import re
    from pathlib import Path

    import perceiver

    root = Path(perceiver.__file__).parent
    private = re.compile(r"torch\.ops\.(mkldnn|mkl)\b|torch\._C\._")
    found = [
        f"{path.relative_to(root)}:{n}"
        for path in sorted(root.rglob("*.py"))
        if path.name != "cpu_kernels.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert found == []
