"""What every benchmark records about the machine it ran on: CPU model, the flags that decide kernels, the load, and
the measured matmul peak of each backend (the denominator of MFU)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

#: results live per machine, `results/<vendor>-<family>-<model>/`, so that a run on a new CPU adds its figures beside
#: the others instead of replacing them (a kernel choice right on one CPU was wrong on the other)
RESULTS_ROOT = Path(__file__).resolve().parent / "results"

FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "bf16", "sve")


def matmul_peaks(
    threads: int = 2, n: int = 4096, reps: int = 4, budget_s: float = 3.0, sizes: dict[str, int] | None = None
) -> dict[str, float]:
    """Best GFLOP/s of an n^3 product per backend: `aten fp32` (`a @ b`: MKL's BLAS on x86), `oneDNN fp32`
    (`torch.ops.mkldnn._linear_pointwise`, what Inductor's freezing emits for CPU Linears) and `aten bf16` (oneDNN).

    A backend without a fast kernel here (bf16 on a CPU without native bf16 ran 1.2 GFLOP/s on an AVX2-only EPYC: a
    4096^3 product takes two minutes) is measured at the largest power-of-two size up to `n` whose product is projected
    to take at most `budget_s`; `sizes`, if given, receives the size used per backend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)

    def runner(name: str, size: int):
        a, b = torch.randn(size, size), torch.randn(size, size)
        if name == "aten bf16":
            a, b = a.bfloat16(), b.bfloat16()
        if name == "oneDNN fp32":
            return lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
        return lambda: a @ b

    names = ["aten fp32", "aten bf16"]
    if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        names.append("oneDNN fp32")
    out = {}
    with torch.no_grad():
        for name in names:
            size = min(n, 256)
            while True:
                run = runner(name, size)
                run()
                start = time.perf_counter()
                run()
                if size >= n or (time.perf_counter() - start) * 8 > budget_s:  # doubling the size costs 8x the time
                    break
                size *= 2
            run()
            best = float("inf")
            for _ in range(reps):
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            out[name] = 2 * size**3 / best / 1e9
            if sizes is not None:
                sizes[name] = size
    torch.set_num_threads(previous)
    return out


def native_bf16() -> bool:
    """Whether the bench scripts run their bf16-autocast rows: only where the CPU computes bf16 natively. Elsewhere
    bf16 is emulated (1.2 GFLOP/s on an AVX2-only EPYC), a case takes hours and says nothing a user would choose."""
    from perceiver.hardware import has_native_bf16

    return has_native_bf16("cpu")


def cpu_ident() -> dict[str, str]:
    """`vendor_id`, `cpu family` and `model` of the first CPU in /proc/cpuinfo (empty where there is none)."""
    ident: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("vendor_id", "cpu family", "model") and key.strip() not in ident:
                    ident[key.strip()] = value.strip()
    except OSError:
        pass
    return ident


def machine_slug() -> str:
    """`intel-6-167`, `amd-25-1`, ...: the folder of this CPU's results (`platform.machine()` off x86 Linux)."""
    ident = cpu_ident()
    vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(ident.get("vendor_id", ""), "")
    if not vendor or "cpu family" not in ident:
        return (platform.machine() or "unknown").lower()
    return f"{vendor}-{ident['cpu family']}-{ident.get('model', '0')}"


def results_dir() -> Path:
    """`benchmarks/results/<machine_slug()>`: where this machine's benchmark results go."""
    return RESULTS_ROOT / machine_slug()


def machine(threads: int = 2, peaks: bool = True) -> dict:
    from perceiver.hardware import cpu_flags, cpu_model_name

    flags = cpu_flags()
    ident = cpu_ident()
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
        sizes: dict[str, int] = {}
        info["matmul_peak_gflops"] = matmul_peaks(threads, sizes=sizes)
        info["matmul_peak_sizes"] = sizes
    return info


def describe(info: dict) -> str:
    """One paragraph for a results file."""
    peaks = info.get("matmul_peak_gflops", {})
    sizes = info.get("matmul_peak_sizes", {})
    peak = ", ".join(
        f"{k} {v:.0f}" + (f" (at {sizes[k]}^3: too slow here for 4096^3)" if sizes.get(k, 4096) != 4096 else "")
        for k, v in peaks.items()
    )
    end = info.get("load_average_at_end")
    load = f"{info['load_average_at_start'][0]:.1f}" + (f" at start, {end[0]:.1f} at end" if end else " at start")
    return (
        f"Machine: {info['cpu']} [{info.get('cpu_id', '')}] ({', '.join(info['flags']) or 'no AVX-512 / bf16 flags'}), "
        f"{info['cores']} cores, "
        f"{info['threads']} threads; torch {info['torch']}, Python {info['python']}. Load average (1 min): {load}. "
        f"Measured matmul peak (4096^3, best of 4), GFLOP/s: {peak}."
    )
