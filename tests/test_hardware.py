"""Precision and thread resolution from the hardware (fake CPU flags / GPU capabilities)."""

from __future__ import annotations

import pytest
import torch

from perceiver.hardware import cpu_flags, has_native_bf16, resolve_precision, resolve_threads

XEON_NO_BF16 = {"avx2", "avx512f", "avx512bw", "avx512_vnni", "fma"}
ZEN4 = XEON_NO_BF16 | {"avx512_bf16"}
SAPPHIRE_RAPIDS = XEON_NO_BF16 | {"amx_bf16", "amx_tile", "avx512_bf16"}
GRAVITON3 = {"fp", "asimd", "sve", "bf16", "i8mm"}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(XEON_NO_BF16, "32-true"), (ZEN4, "bf16-mixed"), (SAPPHIRE_RAPIDS, "bf16-mixed"), (GRAVITON3, "bf16-mixed"),
     (set(), "32-true")],
)  # fmt: skip
def test_auto_precision_on_cpus(flags, expected):
    resolved = resolve_precision("auto", "cpu", flags=flags)
    assert resolved.value == expected
    assert resolved.reason.startswith("the CPU has native bf16" if expected == "bf16-mixed" else "the CPU has no")
    assert has_native_bf16("cpu", flags) == (expected == "bf16-mixed")


def test_auto_precision_on_gpus():
    assert resolve_precision("auto", "gpu", cuda_bf16=True).value == "bf16-mixed"
    assert resolve_precision("auto", "cuda", cuda_bf16=False).value == "32-true"


def test_explicit_precision_is_kept():
    assert resolve_precision("16-mixed", "cpu", flags=XEON_NO_BF16).value == "16-mixed"
    assert resolve_precision("bf16-mixed", "cpu", flags=XEON_NO_BF16).reason == "as configured"


def test_threads():
    assert resolve_threads(None) is None
    assert resolve_threads(3).value == 3
    assert resolve_threads("auto", processes=2, cores=2).value == 1
    assert resolve_threads("auto", processes=1, cores=8).value == 8
    assert resolve_threads("auto", processes=16, cores=8).value == 1
    with pytest.raises(ValueError, match="expected threads >= 1 or 'auto', got 0"):
        resolve_threads(0)


def test_this_machine_reports_flags():
    flags = cpu_flags()
    assert isinstance(flags, frozenset)
    assert resolve_precision("auto", "cpu").value in ("bf16-mixed", "32-true")


def test_a_gpu_accelerator_without_a_gpu_says_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    resolved = resolve_precision("auto", "gpu")
    assert resolved.value == "32-true" and "no CUDA GPU found" in resolved.reason
