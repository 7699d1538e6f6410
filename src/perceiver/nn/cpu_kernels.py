"""CPU kernels that are not part of the default path: used only when `perceiver.optimize` measures that they pay.

`OneDNNLinear` runs an inference `nn.Linear` through oneDNN's fp32 GEMM on a weight pre-packed once
(`torch.ops.mkldnn._reorder_linear_weight` / `_linear_pointwise`, private ops of PyTorch's CPU build). PyTorch's own
fp32 Linear on x86 is MKL's BLAS, and Inductor's freezing also emits MKL's packed GEMM for fp32 weights, so nothing
else in PyTorch reaches this kernel for fp32 Linears. Whether it is faster depends on the CPU (2 threads, same
shapes as the Perceiver IO latent Transformers):

- AMD EPYC family 25 model 17 (Zen 4, AVX-512): oneDNN packed 199-220 GFLOP/s against MKL's 154-182 (1.2-1.35x);
  language-perceiver MLM forward 0.83 s against 0.97 s frozen-compiled and 1.00 s eager, in one process.
- Intel Xeon family 6 model 167: MKL 309 against oneDNN 276 GFLOP/s at 4096^3, so there it loses.

Hence it is a candidate of `optimize` (`onednn-linear`), never a default. It computes fp32 inference only: when
autograd records, for another dtype and inside a CPU autocast region, it runs the plain `F.linear` instead.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OneDNNLinear", "onednn_available", "use_onednn_linear"]


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's CPU Linear (x86 and aarch64 CPU builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class OneDNNLinear(nn.Linear):
    """An `nn.Linear` sharing `linear`'s weight and bias, whose fp32 inference runs oneDNN's GEMM on a copy of the
    weight packed once at construction. `(..., in_features) -> (..., out_features)`.

    The packed copy keeps the weight it was built with (like a frozen graph): after changing the weight, build again.
    """

    def __init__(self, linear: nn.Linear) -> None:
        if not onednn_available():
            raise RuntimeError("OneDNNLinear needs a PyTorch CPU build with oneDNN (torch.backends.mkldnn)")
        if linear.weight.device.type != "cpu" or linear.weight.dtype != torch.float32:
            raise ValueError(
                f"OneDNNLinear packs fp32 CPU weights, got {linear.weight.dtype} on {linear.weight.device}"
            )
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.register_buffer("packed_weight", packed, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        records = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        plain = x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() < 2 or torch.is_autocast_enabled("cpu")
        if records or plain:
            return F.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, bias, "none", [], "")


def use_onednn_linear(model: nn.Module) -> nn.Module:
    """A copy of `model` whose `nn.Linear` modules are `OneDNNLinear`, sharing every parameter and buffer with
    `model` (only the packed weights are new memory); `model` itself is not changed."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    twin = copy.deepcopy(model, memo)
    for module in list(twin.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu":
                setattr(module, name, OneDNNLinear(child))
    return twin
