"""CPU kernels that are not part of the default path: used only when `perceiver.optimize` measures that they pay.

`OneDNNLinear` runs an fp32 `nn.Linear` through oneDNN's GEMM on packed copies of the weight
(`torch.ops.mkldnn._reorder_linear_weight` / `_linear_pointwise`, private ops of PyTorch's CPU build): the forward
in inference, and in a training step the forward and the input gradient (`dy @ W`, on a packed `W.T`); the weight
gradient stays with MKL. PyTorch's own fp32 Linear on x86 is MKL's BLAS, and Inductor's freezing also emits MKL's
packed GEMM for fp32 weights, so nothing else in PyTorch reaches this kernel for fp32 Linears. Whether it is faster
depends on the CPU and the shapes (2 threads, GFLOP/s, MKL `F.linear` against oneDNN packed):

- AMD EPYC family 25 model 17 (Zen 4, AVX-512), 2026-12-05: tokens x 1024 x 1024 (the latent Transformers'
  Linears): forward 189-190 against 207-221, input gradient 177-195 against 217-226, weight gradient MKL 187-196
  (oneDNN no faster); 128 x 1024 x 4096 (the resampler's MLP, few tokens): forward 161 against 225 (1.4x).
  language-perceiver MLM forward 0.83 s against 0.97 s frozen-compiled (2026-12-04, one after the other), but timed
  in turns by `optimize` (2026-12-05) 773 ms against frozen 685 and eager 800; since the attention runs its key
  and value projections through its `k_proj` / `v_proj` modules (2026-12-06), timed in turns: 643-674 ms against
  eager 721-803 and frozen 804 (1.12-1.19x eager), the GEMMs at 205 GFLOP/s (MKL at this 256-row shape: 162-197);
  the vision-perceiver-learned training step (batch 2) only 1.04-1.07x eager (14.4 against 15.1 s, fresh processes), as
  its MLP's `fc2` runs through `gelu_linear` and its weight gradients through MKL.
- Intel Xeon family 6 model 167: MKL 309 against oneDNN 276 GFLOP/s at 4096^3, so there it loses.

Hence it is a candidate of `optimize` (`onednn-linear`, inference and training), never a default. For another dtype
or device, inside a CPU autocast region and under `torch.compile` (whose tracing cannot run oneDNN's private ops) it
runs the plain `F.linear`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["OneDNNLinear", "onednn_available", "use_onednn_linear"]


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's CPU Linear (x86 and aarch64 CPU builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _pack(weight: Tensor) -> Tensor:
    """`weight` `(out, in)` reordered into oneDNN's blocked layout for `_linear_pointwise`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def _onednn_linear(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """`x @ W.T + bias` through oneDNN, `W` given packed (see `_pack`). `(..., in) -> (..., out)`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """`F.linear` whose forward and input gradient run oneDNN's GEMM on packed `W` and `W.T`; the weight gradient
    (`dy.T @ x`, where oneDNN measured no faster) stays with MKL."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, packed: Tensor, packed_t: Tensor | None
    ) -> Tensor:
        ctx.save_for_backward(x, packed_t)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, packed, None if bias is None else bias.detach())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, packed_t = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _onednn_linear(dy, packed_t, None)  # dy @ W = dy @ (W.T).T
        dy2 = dy.reshape(-1, dy.shape[-1])
        if ctx.needs_input_grad[1]:
            gw = dy2.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = dy2.sum(0)
        return gx, gw, gb, None, None


class OneDNNLinear(nn.Linear):
    """An `nn.Linear` sharing `linear`'s weight and bias, whose fp32 CPU GEMMs run through oneDNN on packed copies of
    the weight. `(..., in_features) -> (..., out_features)`.

    Inference runs the forward GEMM on `W` packed; a training step (autograd recording) also runs the input gradient
    `dy @ W` on a packed `W.T`, and the weight gradient with MKL (`dy.T @ x`). The packed copies follow the weight:
    they are rebuilt when it changes (an optimiser step, `load_state_dict`, any in-place write, also through
    `.data`), once per change however often the layer is called (weight-shared blocks pack once per step).
    """

    def __init__(self, linear: nn.Linear) -> None:
        if not onednn_available():
            raise RuntimeError("OneDNNLinear needs a PyTorch CPU build with oneDNN (torch.backends.mkldnn)")
        if not _plain_fp32_cpu(linear.weight):
            raise ValueError(
                "OneDNNLinear packs dense fp32 CPU weights, got a "
                f"{type(linear.weight.data).__name__} of {linear.weight.dtype} on {linear.weight.device}"
            )
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        # "w" / "wt" -> (the weight's storage and version, a strided sample of its values, the packed copy)
        self._packed: dict[str, tuple[tuple[int, int], Tensor, Tensor]] = {}

    def _packed_weight(self, kind: str) -> Tensor:
        weight = self.weight.detach()
        # inference tensors (weights made under `torch.inference_mode()`) have no version counter: the sample decides
        key = (weight.data_ptr(), -1 if weight.is_inference() else self.weight._version)
        # writes through `.data` (EMA updates, older optimisers) do not bump `_version`: a sample of 64 values catches
        # them, as any real update changes nearly every value
        sample = weight.reshape(-1)[:: max(1, weight.numel() // 64)]
        cached = self._packed.get(kind)
        if cached is None or cached[0] != key or not torch.equal(cached[1], sample):
            cached = (key, sample.clone(), _pack(weight if kind == "w" else weight.t().contiguous()))
            self._packed[kind] = cached
        return cached[2]

    def forward(self, x: Tensor) -> Tensor:
        plain = x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() < 2 or torch.is_autocast_enabled("cpu")
        plain = plain or torch.compiler.is_compiling()  # traced (a compiled OptimizedModel): Inductor's own GEMMs
        if plain or self.weight.dtype != torch.float32 or self.weight.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            packed = self._packed_weight("w")
            packed_t = self._packed_weight("wt") if x.requires_grad else None  # only the input gradient needs it
            return _OneDNNLinearFunction.apply(x, self.weight, self.bias, packed, packed_t)
        bias = None if self.bias is None else self.bias.detach()
        return _onednn_linear(x, self._packed_weight("w"), bias)


def _plain_fp32_cpu(weight: Tensor) -> bool:
    """A dense fp32 CPU tensor (not a subclass such as FSDP2's sharded `DTensor`, which oneDNN cannot pack)."""
    return type(weight.data) is torch.Tensor and weight.dtype == torch.float32 and weight.device.type == "cpu"


def use_onednn_linear(model: nn.Module) -> nn.Module:
    """A copy of `model` whose `nn.Linear` modules are `OneDNNLinear`, sharing every parameter and buffer with
    `model` (only the packed weights are new memory); `model` itself is not changed. Linears whose weight is not a
    dense fp32 CPU tensor (another dtype or device, a sharded `DTensor`) stay `nn.Linear`."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    twin = copy.deepcopy(model, memo)
    for module in list(twin.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and _plain_fp32_cpu(child.weight):
                setattr(module, name, OneDNNLinear(child))
    return twin
