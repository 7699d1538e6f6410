"""`linear(gelu(h))` whose backward recomputes the GELU: autograd keeps one `(..., hidden)` tensor per feed-forward
instead of two.

    h (..., hidden) --GELU--> g (..., hidden) --Linear(weight (out, hidden), bias (out,))--> y (..., out)

Plain autograd saves both `h` (for GELU's backward) and `g` (for the Linear's weight gradient). `gelu_linear` saves
`h` and recomputes `g = gelu(h)` in backward, one elementwise pass over the hidden activations. For a pre-LN
Transformer at 4x widening that is 4 of the ~17 activations per position and width saved per layer. The gradients
are those of the plain composition (the same ops in the same order). Under autocast the backward computes in the
dtype of the incoming gradient, as autocast's forward did, and returns each gradient in its input's dtype.

`torch.compile` traces the function (its partitioner makes the same choice on its own). The layers call it only in
training (in eval they run `fc2(gelu(h))` through the module), and without grad the plain composition runs, so
export and ONNX of an eval model see only `gelu` and `linear`.

`gelu_then(h, fc2)` is what the layers call: `gelu_linear` on the module's weight where `fc2` is an `nn.Linear` (or a
subclass: its forward is `F.linear(x, weight, bias)`), else the module itself, so a layer that wraps or replaces the
Linear (peft's LoRA, a quantised Linear) is never bypassed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _GeluLinear(torch.autograd.Function):
    @staticmethod
    def forward(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor | None], output: Tensor) -> None:
        h, weight, bias = inputs
        ctx.save_for_backward(h, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        h, weight = ctx.saved_tensors
        dtype = grad.dtype
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_g = (grad @ weight.to(dtype)).to(h.dtype)
            grad_h = torch.ops.aten.gelu_backward(grad_g, h)
        if ctx.needs_input_grad[1]:
            g = F.gelu(h).to(dtype)
            grad_w = (grad.reshape(-1, grad.shape[-1]).mT @ g.reshape(-1, g.shape[-1])).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0).to(ctx.bias_dtype)
        return grad_h, grad_w, grad_b


def gelu_linear(h: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(F.gelu(h), weight, bias)`: h `(..., hidden)`, weight `(out, hidden)`, bias `(out,)` -> `(..., out)`.

    When autograd records (grad enabled and an input requires grad), only `h` is saved and the GELU is recomputed in
    backward; with nothing to record, the plain composition runs.
    """
    records = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    if records:
        return _GeluLinear.apply(h, weight, bias)
    return F.linear(F.gelu(h), weight, bias)


def is_dense(module: nn.Module, kind: type[nn.Module] = nn.Linear) -> bool:
    """Whether `module` is a `kind` (or a subclass: `F.linear` / the conv of its `.weight`) holding a dense weight, so
    that fast paths may compute with `module.weight` itself. Not for a module that wraps or replaces it (peft's LoRA
    layers) nor for a weight of a tensor subclass (torchao's quantised `Int8Tensor`, which folding would dequantise or
    fail on): those are called as modules."""
    if not isinstance(module, kind):
        return False
    return type(module.weight) in (Tensor, nn.Parameter)  # a Parameter of a subclass has the subclass's type


def gelu_then(h: Tensor, fc: nn.Module) -> Tensor:
    """`fc(gelu(h))`, `(..., hidden) -> (..., out)`: through `gelu_linear` (GELU recomputed in backward) where `fc` is
    a dense `nn.Linear` (`is_dense`), else through `fc` itself (a module that wraps or replaces the Linear, such as
    peft's LoRA layers, computes something else than `F.linear` of its `.weight`)."""
    if isinstance(fc, nn.Linear) and is_dense(fc):
        return gelu_linear(h, fc.weight, fc.bias)
    return fc(F.gelu(h))
