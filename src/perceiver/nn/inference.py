"""`optimize_for_inference(model)`: keep autocast's reduced-precision weight copies between forward calls.

Under `torch.autocast`, every `nn.Linear` call casts its fp32 weight and bias to the autocast dtype; autocast's own
cache of those casts lives for one autocast region, so a model run as `with torch.autocast(...): model(x)` recasts all
its weights on every call. For language-perceiver (201M weights in its Linears) keeping the copies took a bf16 forward
from 0.237 to 0.208 s on this project's 2-core CPU (benchmarks/bench_perceiver_io.py, +377 MB for the copies); for
vision-perceiver-learned (62M weights, 478 GFLOP) the difference was below the run-to-run spread.

`optimize_for_inference(model)` turns every plain `nn.Linear` of `model` into a `CastCachingLinear` (same
parameters, same state dict, same results), which keeps its cast copies while gradients cannot reach the weight
(`torch.no_grad()` / `torch.inference_mode()`, or a frozen weight). A copy is rebuilt when the weight or bias changes
in place (its version counter moves: optimizer steps, `load_state_dict`, `copy_` under `no_grad`) or is replaced
(`.to()`, a new Parameter). Writes through `.data` bypass the version counter; call `clear_cast_cache(model)` after
them. It is opt-in, like Intel's `ipex.optimize`, because the copies cost memory: half the fp32 weights for bf16.
Outside autocast, or while the weight takes gradients, a `CastCachingLinear` is exactly `nn.Linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def grad_reaches(*modules: nn.Module) -> bool:
    """Whether autograd records this call and any parameter of `modules` requires a gradient."""
    return torch.is_grad_enabled() and any(p.requires_grad for m in modules for p in m.parameters())


def parameters_key(*modules: nn.Module) -> tuple:
    """Identity and version of every parameter of `modules`: changes when any is replaced or changed in place."""
    return tuple((p.data_ptr(), p._version, p.device, p.dtype) for m in modules for p in m.parameters())


def autocast_key(device_type: str) -> tuple[bool, torch.dtype | None]:
    """Whether autocast is on for `device_type`, and its dtype: results computed under it depend on both."""
    enabled = torch.is_autocast_enabled(device_type)
    return enabled, torch.get_autocast_dtype(device_type) if enabled else None


class CastCachingLinear(nn.Linear):
    """`nn.Linear` that reuses its autocast-dtype copies of weight and bias between calls (see module docstring).

    `forward(x (..., in_features))` -> `(..., out_features)`, numerically identical to `nn.Linear` under the same
    autocast state. Made by `optimize_for_inference`, which swaps the class of existing `nn.Linear` modules.
    """

    _cast_cache: dict[torch.dtype, tuple[tuple, Tensor, Tensor | None]]

    def cast_weights(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """`(weight, bias)` in `dtype`, from the cache when neither changed since they were cast."""
        w, b = self.weight, self.bias
        key = (w.data_ptr(), w._version, w.device, None if b is None else (b.data_ptr(), b._version))
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
        return F.linear(x, self.weight, self.bias)


def optimize_for_inference(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Swap every plain `nn.Linear` of `model` for `CastCachingLinear` (in place; returns `model`).

    `enabled=False` swaps them back and frees the copies. Parameters, state dict and outputs are unchanged; bf16
    autocast inference skips the per-call weight casts (see the module docstring for memory and invalidation).
    """
    for module in model.modules():
        if enabled and type(module) is nn.Linear:
            module.__class__ = CastCachingLinear
        elif not enabled and type(module) is CastCachingLinear:
            module.__dict__.pop("_cast_cache", None)
            module.__class__ = nn.Linear
    return model


def clear_cast_cache(model: nn.Module) -> None:
    """Drop the cast copies of every `CastCachingLinear` in `model` (they are rebuilt on the next autocast call)."""
    for module in model.modules():
        if isinstance(module, CastCachingLinear):
            module.__dict__.pop("_cast_cache", None)
