"""The measuring tools of `benchmarks/`: the FMA ceiling the reports bound the targets with, and the FLOP formula
for PyTorch's fused CPU attention that `bounds.py` adds to FlopCounterMode."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bounds  # noqa: E402
import machine  # noqa: E402


@pytest.mark.skipif(not any(shutil.which(c) for c in ("cc", "gcc", "clang")), reason="no C compiler here")
def test_fma_ceiling_builds_and_runs():
    # No comparison with a GEMM reading here: on a shared machine a neighbour's load can slow the ceiling's run below
    # a GEMM's (67 against 96 GFLOP/s with four jobs on two cores); `describe` says so in the report instead
    # (tests/test_bench_audit.py).
    ceiling = machine.fma_ceiling(threads=1, seconds=0.1, reps=3)
    assert ceiling is not None and ceiling["vector_bytes"] in (16, 32, 64)
    assert ceiling["gflops"] > 0
    assert machine.matmul_peaks(threads=1, n=256, reps=1)["aten fp32"] > 0


def test_fused_cpu_attention_is_counted_and_causal_blocks_are_not():
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))  # equal head widths: the fused kernel, not matmuls
    full = 2 * 2 * 8 * 8 * (4 + 4)  # q @ k^T and p @ v, 2 heads
    assert bounds.count_gflop(lambda: F.scaled_dot_product_attention(q, k, v)) * 1e9 == full
    causal = bounds.count_gflop(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)) * 1e9
    assert causal == full * 36 // 64  # rows see 1..8 of the 8 keys
    q.requires_grad_()
    step = bounds.count_gflop(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) * 1e9
    assert step == full + 2 * full + full // 2  # forward; backward: dV, dP, dQ, dK and the recomputed scores


def test_drift_text_reports_a_machine_that_slowed_during_the_run():
    assert machine.drift_text({"fma_ceiling_gflops": 200.0}) == ""  # no reading at the end
    calm = machine.drift_text({"fma_ceiling_gflops": 200.0, "fma_ceiling_gflops_end": 196.0})
    assert calm == "At the end of the run, GFLOP/s: ceiling 196 (-2%)."
    slowed = machine.drift_text(
        {
            "fma_ceiling_gflops": 200.0,
            "fma_ceiling_gflops_end": 198.0,  # registers held ...
            "matmul_peak_gflops": {"aten fp32": 180.0, "aten bf16": 400.0},
            "matmul_peak_gflops_end": {"aten fp32": 178.0, "aten bf16": 260.0},  # ... while a GEMM slowed
        }
    )
    assert "aten bf16 260 (-35%)" in slowed and "drifted" in slowed
