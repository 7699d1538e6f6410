"""How `perceiver.optimize` measures (see `perceiver.optimization`): a candidate's outputs against eager's, the
memory it keeps, and the state it leaves (random number generators, the model's gradients and buffers) as found."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn


def _tensors(out: Any) -> list[Tensor]:
    """The floating tensors of an output (tensor, dict, dataclass with fields, tuple), in a fixed order."""
    if isinstance(out, Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _tensors(out[k])]
    if isinstance(out, list | tuple):
        return [t for v in out for t in _tensors(v)]
    if hasattr(out, "__dataclass_fields__"):
        return [t for k in out.__dataclass_fields__ for t in _tensors(getattr(out, k))]
    return []


def _has_dropout(model: nn.Module) -> bool:
    """Whether `model` drops anything in training mode (an `nn.Dropout` or a float `dropout` attribute > 0)."""
    for m in model.modules():
        p = m.p if isinstance(m, nn.Dropout) else getattr(m, "dropout", 0.0)
        if isinstance(p, float | int) and not isinstance(p, bool) and p > 0:
            return True
    return False


def _trim_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc's `malloc_trim`; nothing elsewhere). Without it, memory an
    earlier candidate freed stays resident for reuse (glibc raises its mmap threshold after freeing a large block), and
    a later candidate's packed weights fill it without growing the resident set: they would read as keeping ~0 MB."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _held_bytes(device: str) -> int | None:
    """Memory the process holds now, after a garbage collection: PyTorch's allocated device memory on CUDA, else the
    resident set size after `_trim_heap` (Linux `/proc/self/statm`, elsewhere psutil if it is installed); None where
    neither reads."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    if device != "cpu":
        return None
    _trim_heap()
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss


def _reason(e: Exception) -> str:
    """Why a candidate was skipped: the exception's type and the first line of its message."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _rel_error(got: Any, expected: Any) -> float:
    g, e = _tensors(got), _tensors(expected)
    if len(g) != len(e) or any(a.shape != b.shape for a, b in zip(g, e)):
        return float("inf")
    g, e = [t.detach().float() for t in g], [t.detach().float() for t in e]
    errs = [float((a - b).abs().max() / b.abs().max().clamp_min(1e-6)) for a, b in zip(g, e)]
    return max(errs, default=0.0)


@contextlib.contextmanager
def _kept_state(model: nn.Module) -> Iterator[None]:
    """Leave the random number generators (`optimize` seeds them so that candidates draw the same dropout masks),
    `model`'s gradients (cleared after each timed training step) and its buffers (BatchNorm statistics, which timed
    training steps move towards the example batch) as they were."""
    grads = [(p, p.grad) for p in model.parameters()]
    for p, _ in grads:  # else backward would add the timed steps' gradients into them
        p.grad = None
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    cuda = sorted({t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        for p, g in grads:
            if p.grad is not g:
                p.grad = g
        with torch.no_grad():
            for b, saved in buffers:
                if not torch.equal(b, saved):
                    with torch.inference_mode(b.is_inference()):  # an inference tensor is written in inference mode
                        b.copy_(saved)
