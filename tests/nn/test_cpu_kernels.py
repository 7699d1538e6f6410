"""`perceiver.nn.cpu_kernels`: oneDNN's packed fp32 Linear gives `nn.Linear`'s outputs, falls back where it cannot
apply (other dtypes, autocast), gives its gradients in training, follows weight updates, and `use_onednn_linear` leaves the original model untouched."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY, flat, inputs, tiny
from torch import nn

from perceiver.nn import MLP, MultiHeadAttention
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


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 24), (2, 7, 24)])
def test_training_gradients_equal_nn_linear(shape, bias):
    torch.manual_seed(0)
    linear = nn.Linear(24, 40, bias=bias)
    fast = OneDNNLinear(linear)
    x = torch.randn(shape, requires_grad=True)
    dy = torch.randn(*shape[:-1], 40)
    out = fast(x)
    assert "OneDNNLinearFunction" in out.grad_fn.name()  # the oneDNN training path, not F.linear's
    grads = torch.autograd.grad(out, [x, *linear.parameters()], dy)
    expected = torch.autograd.grad(linear(x), [x, *linear.parameters()], dy)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_frozen_input_or_weight_gets_only_the_gradients_asked_for():
    linear = nn.Linear(8, 6)
    fast = OneDNNLinear(linear)
    x = torch.randn(3, 8, requires_grad=True)
    linear.requires_grad_(False)
    (gx,) = torch.autograd.grad(fast(x).sum(), x)
    torch.testing.assert_close(gx, linear.weight.sum(0).expand(3, 8))
    linear.requires_grad_(True)
    fast(torch.randn(3, 8)).sum().backward()
    assert linear.weight.grad is not None and linear.bias.grad is not None


def test_packed_weights_follow_optimiser_steps_and_loaded_weights():
    torch.manual_seed(0)
    linear = nn.Linear(16, 12)
    fast = OneDNNLinear(linear)
    opt = torch.optim.SGD(linear.parameters(), lr=0.5)
    x = torch.randn(4, 16)
    for _ in range(2):  # each step writes the weight in place; the next forward and backward must see it
        opt.zero_grad()
        fast(x.requires_grad_()).square().sum().backward()
        expected_gx = torch.autograd.grad(linear(x).square().sum(), x)[0]
        torch.testing.assert_close(x.grad, expected_gx, atol=1e-5, rtol=1e-5)
        x.grad = None
        opt.step()
        with torch.no_grad():
            torch.testing.assert_close(fast(x), linear(x), atol=1e-5, rtol=1e-5)
    linear.load_state_dict({"weight": torch.zeros(12, 16), "bias": torch.ones(12)})
    with torch.no_grad():
        torch.testing.assert_close(fast(x), torch.ones(4, 12))
    linear.weight.data.copy_(torch.full((12, 16), 0.5))  # `.data` writes leave `_version` as it was
    with torch.no_grad():
        torch.testing.assert_close(fast(x), x.sum(-1, keepdim=True).expand(4, 12) * 0.5 + 1)


def test_autocast_takes_the_plain_path():
    fast = OneDNNLinear(nn.Linear(8, 6))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        assert fast(torch.randn(3, 8)).dtype == torch.bfloat16  # the caller's autocast arithmetic, as nn.Linear


def test_packs_only_fp32_cpu_weights():
    with pytest.raises(ValueError, match=r"packs dense fp32 CPU weights, got a Tensor of torch.float64"):
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


@pytest.mark.parametrize("name", sorted(TINY))
def test_swapped_model_training_step_has_the_models_gradients(name):
    torch.manual_seed(0)
    model = tiny(name).train()
    for m in model.modules():  # dropout masks would differ between the two steps
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    x = inputs(name)
    fast = use_onednn_linear(model)
    torch.manual_seed(1)
    sum(t.float().square().mean() for t in flat(fast(*x))).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    sum(t.float().square().mean() for t in flat(model(*x))).backward()
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys() and got
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("activation", ["gelu", "geglu"])
def test_mlp_in_eval_runs_both_linears_through_their_modules(activation):
    mlp = use_onednn_linear(MLP(16, 2, activation=activation).eval())
    called = []
    for name in ("fc1", "fc2"):
        getattr(mlp, name).register_forward_hook(lambda *_, name=name: called.append(name))
    with torch.no_grad():
        mlp(torch.randn(2, 3, 16))
    assert called == ["fc1", "fc2"]


@pytest.mark.parametrize("cross", [False, True])
def test_attention_runs_its_unfolded_projections_through_their_modules(cross):
    """Without a folded LayerNorm the key and value projections go through `k_proj` / `v_proj`, so a swapped-in
    Linear kernel runs all four projections (before, keys and values ran `F.linear` on the weights: MKL)."""
    attn = use_onednn_linear(MultiHeadAttention(16, 8 if cross else 16, num_heads=2).eval())
    called = []
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        getattr(attn, name).register_forward_hook(lambda *_, name=name: called.append(name))
    with torch.no_grad():
        attn(torch.randn(2, 3, 16), torch.randn(2, 5, 8) if cross else None)
    assert sorted(called) == ["k_proj", "o_proj", "q_proj", "v_proj"]


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
