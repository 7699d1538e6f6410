"""What the hardware offers, read when asked (never at import): native bf16, CPU flags, usable cores.

Training configs say `precision: auto` and `threads: auto`; `perceiver fit` resolves them here at start and prints
the choice, so one config trains on a CPU without bf16 units, on one with them, and on a GPU without edits:

- `resolve_precision("auto")`: `bf16-mixed` on a CUDA GPU that supports bf16 and on CPUs with native bf16 arithmetic
  (x86 `avx512_bf16` or AMX `amx_bf16`, Arm `bf16`); `32-true` otherwise (on a CPU without them, bf16 matmuls are
  emulated: measured five times slower than fp32 on an AVX-512 Xeon).
- `resolve_threads("auto", processes)`: the cores this process may run on, shared by the processes of a run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch

__all__ = ["Resolved", "cpu_flags", "cpu_model_name", "has_native_bf16", "resolve_precision", "resolve_threads"]

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX-512 BF16, Intel AMX, Arm BF16


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:  # not Linux
        return ""


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (`flags` on x86, `Features` on Arm) from /proc/cpuinfo; empty where unavailable."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model_name() -> str:
    """The CPU's model name (`model name` in /proc/cpuinfo), or the platform's processor string."""
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    import platform

    return platform.processor() or platform.machine()


def has_native_bf16(device: str = "cpu", flags: Iterable[str] | None = None) -> bool:
    """Whether `device` ("cpu" or "cuda") computes in bf16 natively. `flags` replaces the CPU's own (for tests)."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device != "cpu":
        return False
    return bool(NATIVE_BF16_FLAGS & set(cpu_flags() if flags is None else flags))


@dataclass(frozen=True)
class Resolved:
    """A setting as resolved: the value and why."""

    value: str | int
    reason: str


def _device_of(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return accelerator


def resolve_precision(
    precision: str | int | None,
    accelerator: str = "auto",
    flags: Iterable[str] | None = None,
    cuda_bf16: bool | None = None,
) -> Resolved:
    """Lightning precision for `precision` ("auto" or any Lightning value, kept as is) on `accelerator`.

    `flags` (CPU flags) and `cuda_bf16` (whether the GPU supports bf16) replace what the machine reports (for tests).
    """
    if precision not in ("auto", None):
        return Resolved(str(precision), "as configured")
    device = _device_of(accelerator)
    if device == "cuda":
        if cuda_bf16 is None and not torch.cuda.is_available():
            return Resolved("32-true", f"no CUDA GPU found (torch {torch.__version__}) for accelerator {accelerator!r}")
        bf16 = has_native_bf16("cuda") if cuda_bf16 is None else cuda_bf16
        if bf16:
            return Resolved("bf16-mixed", "the GPU supports bf16")
        return Resolved("32-true", "the GPU has no bf16 support")
    if device == "cpu":
        have = sorted(NATIVE_BF16_FLAGS & set(cpu_flags() if flags is None else flags))
        if have:
            return Resolved("bf16-mixed", f"the CPU has native bf16 ({', '.join(have)})")
        return Resolved("32-true", "the CPU has no native bf16 (no avx512_bf16 / amx_bf16 / bf16 flag)")
    return Resolved("32-true", f"no bf16 rule for accelerator {accelerator!r}")


def resolve_threads(threads: str | int | None, processes: int = 1, cores: int | None = None) -> Resolved | None:
    """CPU threads per process: an int as is, "auto" = usable cores // processes (at least 1), None = torch's choice.

    `cores` replaces the number of cores this process may use (for tests).
    """
    if threads is None:
        return None
    if threads != "auto":
        value = int(threads)
        if value < 1:
            raise ValueError(f"expected threads >= 1 or 'auto', got {threads!r}")
        return Resolved(value, "as configured")
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    value = max(1, cores // max(1, processes))
    return Resolved(value, f"{cores} usable core(s) shared by {processes} process(es)")
