"""gelu_linear: the plain composition's outputs and gradients, with one hidden tensor saved instead of two."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perceiver.nn import MLP
from perceiver.nn.activation import gelu_linear


def _leaves(dtype: torch.dtype, bias: bool = True):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 12, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(7, 12, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(7, generator=g, dtype=dtype, requires_grad=True) if bias else None
    return h, w, b


@pytest.mark.parametrize("bias", [True, False])
def test_equals_plain_composition_fp64(bias):
    h, w, b = _leaves(torch.float64, bias)
    grad = torch.randn(2, 5, 7, dtype=torch.float64)
    ours = gelu_linear(h, w, b)
    ours_grads = torch.autograd.grad(ours, [t for t in (h, w, b) if t is not None], grad)
    plain = F.linear(F.gelu(h), w, b)
    plain_grads = torch.autograd.grad(plain, [t for t in (h, w, b) if t is not None], grad)
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-14)
    for a, e in zip(ours_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-12)


def test_gradcheck():
    h, w, b = _leaves(torch.float64)
    assert torch.autograd.gradcheck(gelu_linear, (h, w, b))


def _saved_numels(fn) -> int:
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(sizes)


def test_saves_one_hidden_tensor_instead_of_two():
    h, w, b = _leaves(torch.float32)
    hidden = h.numel()
    ours = _saved_numels(lambda: gelu_linear(h, w, b))
    plain = _saved_numels(lambda: F.linear(F.gelu(h), w, b))
    assert plain - ours == hidden


def test_autocast_bf16_grads_in_input_dtypes():
    h, w, b = _leaves(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = gelu_linear(h, w, b)
    ours.float().square().sum().backward()
    ours_grads = [t.grad.clone() for t in (h, w, b)]
    for t in (h, w, b):
        t.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.linear(F.gelu(h), w, b)
    plain.float().square().sum().backward()
    assert ours.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(ours, plain)
    for a, t in zip(ours_grads, (h, w, b), strict=True):
        assert a.dtype == t.dtype == torch.float32
        torch.testing.assert_close(a, t.grad, rtol=2e-2, atol=2e-2)


def test_no_grad_and_frozen_inputs_use_the_plain_ops():
    h, w, b = _leaves(torch.float32)
    with torch.no_grad():
        out = gelu_linear(h, w, b)
    assert out.grad_fn is None
    frozen = gelu_linear(h.detach(), w.detach(), b.detach())
    assert frozen.grad_fn is None
    torch.testing.assert_close(out, frozen)


def test_mlp_training_step_equals_eval_forward_and_compiles():
    torch.manual_seed(0)
    mlp = MLP(12, widening_factor=3)
    x = torch.randn(2, 4, 12, requires_grad=True)
    mlp.eval()
    expected = mlp(x)
    mlp.train()
    got = mlp(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    compiled = torch.compile(mlp, fullgraph=True, backend="eager")
    compiled(x).sum().backward()
    assert x.grad is not None and mlp.fc1.weight.grad is not None
