"""Speed: this library's `Linear` (fp32 GEMMs on CPU in oneDNN, gradients included) and
`optimize_for_inference(model)`, which keeps autocast's reduced-precision weight copies between forward calls.

Under `torch.autocast`, every `nn.Linear` call casts its fp32 weight and bias to the autocast dtype; autocast's own
cache of those casts lives for one autocast region, so a model run as `with torch.autocast(...): model(x)` recasts all
its weights on every call. For language-perceiver (201M weights in its Linears) keeping the copies took a bf16 forward
from 0.222 to 0.201 s on this project's 2-core CPU (benchmarks/bench_perceiver_io.py, +377 MB for the copies); for
vision-perceiver-learned (62M weights, 478 GFLOP) the difference was below the run-to-run spread.

`optimize_for_inference(model)` turns every plain `nn.Linear` (or `Linear`) of `model` into a `CastCachingLinear` (same
parameters, same state dict, same results), which keeps its cast copies while gradients cannot reach the weight
(`torch.no_grad()` / `torch.inference_mode()`, or a frozen weight). A copy is rebuilt when the weight or bias changes
in place (its version counter moves: optimizer steps, `load_state_dict`, `copy_` under `no_grad`) or is replaced
(`.to()`, a new Parameter). Writes through `.data` bypass the version counter; call `clear_cast_cache(model)` after
them. It is opt-in, like Intel's `ipex.optimize`, because the copies cost memory: half the fp32 weights for bf16.
Outside autocast, or while the weight takes gradients, a `CastCachingLinear` is exactly `Linear`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def autograd_records(*tensors: Tensor | None) -> bool:
    """Whether autograd records an op on `tensors` (grad mode on and one of them requires grad; None is skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def grad_reaches(*modules: nn.Module) -> bool:
    """Whether autograd records this call and any parameter of `modules` requires a gradient."""
    return autograd_records(*(p for m in modules for p in m.parameters()))


def _onednn_linear_available() -> bool:
    """Whether this PyTorch has oneDNN's fused Linear (`torch.ops.mkldnn._linear_pointwise`, the op Inductor emits for
    CPU Linears) and it computes `F.linear` on a small case."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        x, w, b = torch.randn(3, 5), torch.randn(4, 5), torch.randn(4)
        with torch.no_grad():
            out = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        return bool(torch.allclose(out, F.linear(x, w, b), atol=1e-5))
    except (AttributeError, RuntimeError):  # op missing or not built for this CPU
        return False


_ONEDNN_FP32 = _onednn_linear_available()


def use_onednn_fp32_linear(enabled: bool = True) -> bool:
    """Route fp32 CPU GEMMs of this library's Linears through oneDNN (default: on where available); returns the
    previous setting. False gives `F.linear` (BLAS) everywhere. Raises if enabling where oneDNN's Linear is missing."""
    global _ONEDNN_FP32
    if enabled and not _onednn_linear_available():
        raise RuntimeError("oneDNN's Linear (torch.ops.mkldnn._linear_pointwise) is not available in this PyTorch")
    previous, _ONEDNN_FP32 = _ONEDNN_FP32, bool(enabled)
    return previous


def _onednn(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`x @ weight.T + bias` in oneDNN's fp32 kernel (also for transposed views)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """`F.linear` whose three GEMMs (forward, input gradient, weight gradient) run in oneDNN; saves what `F.linear`
    saves (input and weight). First-order gradients only (`once_differentiable`)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_2d = grad.reshape(-1, grad.shape[-1])  # (N, out)
        grad_x = _onednn(grad, weight.t()) if ctx.needs_input_grad[0] else None  # (..., in)
        grad_w = _onednn(grad_2d.t(), x.reshape(-1, x.shape[-1]).t()) if ctx.needs_input_grad[1] else None
        grad_b = grad_2d.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)`: `(..., in) -> (..., out)`; fp32 on CPU outside autocast runs its GEMMs in
    oneDNN instead of the BLAS `addmm` behind `F.linear` (gradients too, first order).

    PyTorch runs fp32 CPU matmuls in MKL's BLAS, which on this project's AMD EPYC (AVX-512) reaches 181 GFLOP/s on a
    4096^3 product where oneDNN's fp32 kernel reaches 393 (2.1-2.3x on the Perceiver IO Linear shapes; both fp32,
    errors against fp64 of the same order). bf16 (autocast) already goes through oneDNN and keeps `F.linear`, as do
    tensor subclasses (e.g. DTensor) and other devices. `use_onednn_fp32_linear(False)` switches it off, e.g. for
    double backward.
    """
    if (
        _ONEDNN_FP32
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and type(x) is Tensor
        and type(weight) in (Tensor, nn.Parameter)
        and not torch.is_autocast_enabled("cpu")
    ):
        if autograd_records(x, weight, bias):
            return _OneDNNLinearFunction.apply(x, weight, bias)
        return _onednn(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, state dict and init) whose forward is `linear` above: oneDNN GEMMs for fp32 on
    CPU. Every Linear of this library's models is one. `(..., in_features) -> (..., out_features)`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def parameters_key(*modules: nn.Module) -> tuple:
    """Identity and version of every parameter of `modules`: changes when any is replaced or changed in place."""
    return tuple((p.data_ptr(), p._version, p.device, p.dtype) for m in modules for p in m.parameters())


def autocast_key(device_type: str) -> tuple[bool, torch.dtype | None]:
    """Whether autocast is on for `device_type`, and its dtype: results computed under it depend on both."""
    enabled = torch.is_autocast_enabled(device_type)
    return enabled, torch.get_autocast_dtype(device_type) if enabled else None


class CastCachingLinear(Linear):
    """`nn.Linear` that reuses its autocast-dtype copies of weight and bias between calls (see module docstring).

    `forward(x (..., in_features))` -> `(..., out_features)`, numerically identical to `nn.Linear` under the same
    autocast state. Made by `optimize_for_inference`, which swaps the class of existing `nn.Linear` modules.
    """

    _cast_cache: dict[torch.dtype, tuple[tuple, Tensor, Tensor | None]]

    def cast_weights(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """`(weight, bias)` in `dtype`, from the cache when neither changed since they were cast."""
        w, b = self.weight, self.bias
        key = parameters_key(self)
        cache = self.__dict__.setdefault("_cast_cache", {})
        hit = cache.get(dtype)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        # Normal (not inference) tensors, so that they may also serve a no_grad call made outside inference_mode.
        with torch.inference_mode(False), torch.no_grad():
            cw = w.to(dtype)
            cb = None if b is None else b.to(dtype)
        cache[dtype] = (key, cw, cb)
        return cw, cb

    def forward(self, x: Tensor) -> Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device) and not grad_reaches(self):
            dtype = torch.get_autocast_dtype(device)
            if self.weight.dtype != dtype and self.weight.is_floating_point():
                w, b = self.cast_weights(dtype)
                return F.linear(x, w, b)  # autocast casts x; w and b already have its dtype
        return linear(x, self.weight, self.bias)


def optimize_for_inference(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Swap every plain `nn.Linear` / `Linear` of `model` for `CastCachingLinear` (in place; returns `model`).

    `enabled=False` swaps them back and frees the copies. Parameters, state dict and outputs are unchanged; bf16
    autocast inference skips the per-call weight casts (see the module docstring for memory and invalidation).
    """
    for module in model.modules():
        if enabled and type(module) in (nn.Linear, Linear):
            module.__dict__["_class_before_cast_caching"] = type(module)
            module.__class__ = CastCachingLinear
        elif not enabled and type(module) is CastCachingLinear:
            module.__dict__.pop("_cast_cache", None)
            module.__class__ = module.__dict__.pop("_class_before_cast_caching", Linear)
    return model


def clear_cast_cache(model: nn.Module) -> None:
    """Drop the cast copies of every `CastCachingLinear` in `model` (they are rebuilt on the next autocast call)."""
    for module in model.modules():
        if isinstance(module, CastCachingLinear):
            module.__dict__.pop("_cast_cache", None)
