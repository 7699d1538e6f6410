"""What every benchmark records about the machine it ran on: CPU model, the flags that decide kernels, the load, and
the measured matmul peak of each backend (the denominator of MFU)."""

from __future__ import annotations

import os
import platform
import time

import torch

FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "bf16", "sve")


def matmul_peaks(threads: int = 2, n: int = 4096, reps: int = 4) -> dict[str, float]:
    """Best GFLOP/s of an n^3 product per backend: `aten fp32` (`a @ b`: MKL's BLAS on x86), `oneDNN fp32`
    (`torch.ops.mkldnn._linear_pointwise`, what Inductor's freezing emits for CPU Linears) and `aten bf16` (oneDNN)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    runs = {"aten fp32": lambda: a32 @ b32, "aten bf16": lambda: a16 @ b16}
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        runs["oneDNN fp32"] = lambda: torch.ops.mkldnn._linear_pointwise(a32, b32, None, "none", [], "")
    out = {}
    with torch.no_grad():
        for name, run in runs.items():
            run()
            best = float("inf")
            for _ in range(reps):
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            out[name] = 2 * n**3 / best / 1e9
    torch.set_num_threads(previous)
    return out


def machine(threads: int = 2, peaks: bool = True) -> dict:
    from perceiver.hardware import cpu_flags, cpu_model_name

    flags = cpu_flags()
    ident = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("vendor_id", "cpu family", "model") and key.strip() not in ident:
                    ident[key.strip()] = value.strip()
    except OSError:
        pass
    info = {
        "cpu": cpu_model_name(),
        "cpu_id": " ".join(f"{k} {v}" for k, v in ident.items()),
        "flags": [f for f in FLAGS_THAT_MATTER if f in flags],
        "cores": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }
    if peaks:
        info["matmul_peak_gflops"] = matmul_peaks(threads)
    return info


def describe(info: dict) -> str:
    """One paragraph for a results file."""
    peaks = info.get("matmul_peak_gflops", {})
    peak = ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
    end = info.get("load_average_at_end")
    load = f"{info['load_average_at_start'][0]:.1f}" + (f" at start, {end[0]:.1f} at end" if end else " at start")
    return (
        f"Machine: {info['cpu']} [{info.get('cpu_id', '')}] ({', '.join(info['flags']) or 'no AVX-512 / bf16 flags'}), "
        f"{info['cores']} cores, "
        f"{info['threads']} threads; torch {info['torch']}, Python {info['python']}. Load average (1 min): {load}. "
        f"Measured matmul peak (4096^3, best of 4), GFLOP/s: {peak}."
    )
