"""What every benchmark records about the machine it ran on: CPU model, the flags that decide kernels, the load, and
the measured matmul peak of each backend (the denominator of MFU)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from perceiver.nn.cpu_kernels import onednn_available

#: results live per machine, `results/<vendor>-<family>-<model>/`, so that a run on a new CPU adds its figures beside
#: the others instead of replacing them (a kernel choice right on one CPU was wrong on the other)
RESULTS_ROOT = Path(__file__).resolve().parent / "results"

FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "bf16", "sve")


def run_record(script: str) -> dict:
    """When, at which commit and by which command a benchmark ran: `{"date", "commit", "command"}`."""
    try:
        git = ["git", "rev-parse", "--short", "HEAD"]  # of this checkout, wherever the script is run from
        commit = subprocess.run(git, capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
        commit = commit or "unknown"
    except OSError:
        commit = "unknown"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "command": " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]]),
    }


def matmul_peaks(
    threads: int = 2, n: int = 4096, reps: int = 4, budget_s: float = 3.0, sizes: dict[str, int] | None = None
) -> dict[str, float]:
    """Best GFLOP/s of an n^3 product per backend: `aten fp32` (`a @ b`: MKL's BLAS on x86), `oneDNN fp32`
    (`torch.ops.mkldnn._linear_pointwise`, the kernel of `optimize()`'s `onednn-linear`; Inductor's freezing emits
    MKL's packed GEMM for fp32 Linears on x86) and `aten bf16` (oneDNN).

    A backend without a fast kernel here (bf16 on a CPU without native bf16 ran 1.2 GFLOP/s on an AVX2-only EPYC: a
    4096^3 product takes two minutes) is measured at the largest power-of-two size up to `n` whose product is projected
    to take at most `budget_s`; `sizes`, if given, receives the size used per backend."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)

    def runner(name: str, size: int) -> Callable[[], torch.Tensor]:
        a, b = torch.randn(size, size), torch.randn(size, size)
        if name == "aten bf16":
            a, b = a.bfloat16(), b.bfloat16()
        if name == "oneDNN fp32":
            return lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
        return lambda: a @ b

    names = ["aten fp32", "aten bf16"]
    if onednn_available():
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


def fma_ceiling(threads: int = 2, seconds: float = 0.5, reps: int = 3) -> dict | None:
    """The fp32 arithmetic ceiling of `threads` cores: `fma_peak.c` (independent register FMAs, the widest vectors the
    CPU has) built with the C compiler found here and run `reps` times for about `seconds` each.

    `{"gflops": best GFLOP/s, "vector_bytes", "compiler"}`, or None where no C compiler is found or it fails. No GEMM
    can exceed it, so it bounds what any implementation of the same FLOPs can reach (the reports' "Why")."""
    from perceiver.hardware import cpu_flags

    compiler = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)
    if compiler is None:
        return None
    flags = cpu_flags()
    vec = 64 if "avx512f" in flags else 32 if "avx2" in flags or "avx" in flags else 16
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "fma_peak"
        source = Path(__file__).resolve().parent / "fma_peak.c"
        build = [compiler, "-O2", "-march=native", f"-DVEC={vec}", "-pthread", str(source), "-o", str(exe)]
        if subprocess.run(build, capture_output=True).returncode != 0:
            return None

        def run(iterations: int) -> tuple[float, float]:
            start = time.perf_counter()
            out = subprocess.run([str(exe), str(threads), str(iterations)], capture_output=True, text=True, check=True)
            return float(out.stdout.split()[0]), time.perf_counter() - start

        _, took = run(10_000_000)
        iterations = max(10_000_000, int(10_000_000 * seconds / max(took, 1e-3)))
        best = max(run(iterations)[0] for _ in range(reps))
    return {"gflops": best, "vector_bytes": vec, "compiler": compiler}


def finish(info: dict, threads: int = 2) -> dict:
    """At the end of a run: the load, and the FMA ceiling and matmul peaks again where they were measured at the start.
    A shared VM's speed drifts (on the Zen 4 EPYC the ceiling read 231-234 GFLOP/s in one hour and 188-225 in the
    next; in another run the ceiling held while the bf16 GEMM peak read 263 instead of ~390), which timing forms in
    turns cancels out of their ratios but not out of absolute times; `describe` reports the drift."""
    info["load_average_at_end"] = os.getloadavg()
    if "fma_ceiling_gflops" in info:
        ceiling = fma_ceiling(threads)
        if ceiling is not None:
            info["fma_ceiling_gflops_end"] = ceiling["gflops"]
    if "matmul_peak_gflops" in info:  # GEMMs also feel what registers do not, e.g. a neighbour's memory traffic
        info["matmul_peak_gflops_end"] = matmul_peaks(threads, sizes={})
    return info


def native_bf16() -> bool:
    """Whether the bench scripts run their bf16-autocast rows: only where the CPU computes bf16 natively. Elsewhere
    bf16 is emulated (1.2 GFLOP/s on an AVX2-only EPYC), a case takes hours and says nothing a user would choose."""
    from perceiver.hardware import has_native_bf16

    return has_native_bf16("cpu")


_IDENT_KEYS = ("vendor_id", "cpu family", "model", "CPU implementer", "CPU part")  # x86; Arm


def cpu_ident() -> dict[str, str]:
    """`vendor_id`, `cpu family` and `model` (x86) or `CPU implementer` and `CPU part` (Arm) of the first CPU in
    /proc/cpuinfo (empty where there is none)."""
    ident: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in _IDENT_KEYS and key.strip() not in ident:
                    ident[key.strip()] = value.strip()
    except OSError:
        pass
    return ident


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def _brand() -> str:
    """The CPU's brand string where /proc/cpuinfo has no id (macOS: `sysctl machdep.cpu.brand_string`), else ''."""
    if platform.system() != "Darwin":
        return ""
    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def machine_slug() -> str:
    """The folder of this CPU's results: `intel-6-167`, `amd-25-1` (x86: vendor, family, model), `arm-0x41-0xd40`
    (Arm Linux: implementer, part), `arm64-apple-m2-pro` (macOS: the brand string); `platform.machine()` only where
    none of these is known. Two CPUs that choose different kernels must not share a folder."""
    ident = cpu_ident()
    if ident.get("vendor_id") and "cpu family" in ident:
        vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(ident["vendor_id"]) or _slug(ident["vendor_id"])
        return f"{vendor}-{ident['cpu family']}-{ident.get('model', '0')}"
    if "CPU implementer" in ident and "CPU part" in ident:
        return f"arm-{ident['CPU implementer']}-{ident['CPU part']}".lower()
    arch = (platform.machine() or "unknown").lower()
    brand = _brand()
    return f"{arch}-{_slug(brand)}" if brand else arch


def results_dir(override: Path | str | None = None) -> Path:
    """`benchmarks/results/<machine_slug()>`: where this machine's benchmark results go; `override` (a script's
    `--results-dir`) instead where given, e.g. a scratch folder for a trial run that must not replace the committed
    results of a CPU with the same id."""
    return Path(override) if override is not None else RESULTS_ROOT / machine_slug()


def add_results_dir_argument(parser: argparse.ArgumentParser) -> None:
    """`--results-dir DIR` on a bench script's argparse parser (read it back with `results_dir(args.results_dir)`)."""
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help=f"folder for the results files (default: {results_dir().relative_to(RESULTS_ROOT.parent.parent)}/, "
        "this CPU's folder, which the README's speed table is generated from); give a scratch folder for trial runs",
    )


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` all or nothing: into a temporary file beside it, then renamed over it, so that an
    interrupted run (Ctrl-C, a full disk, a failing report) leaves the previous file or none, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_results(path: Path) -> dict:
    """The results file `path` (a script's OUT.json) for `--report-only`; SystemExit naming the file and the run that
    writes it when it is missing or not JSON."""
    if not path.is_file():
        raise SystemExit(
            f"error: no results at {path}; run the script without --report-only first (same --results-dir)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {path} is not a results file (expected JSON: {e})") from None


def write_results(folder: Path, stem: str, data: dict, render: Callable[[dict], str] | None = None) -> str:
    """`folder/stem.json` from `data` and, where `render` is given, `folder/stem.md` from `render(data)`, each written
    whole (`atomic_write`). The .json goes first, so that a report that fails to render leaves the measurements (to
    re-render with the script's `--report-only` where it has one). Returns the report text ('' without `render`)."""
    atomic_write(folder / f"{stem}.json", json.dumps(data, indent=2) + "\n")
    if render is None:
        return ""
    text = render(data)
    atomic_write(folder / f"{stem}.md", text)
    return text


def check_same_function(what: str, ours: torch.Tensor, peer: torch.Tensor, rtol: float = 1e-4) -> float:
    """Max abs difference of ours' and the peer's outputs (tensors) on the same input, checked before timing: a
    benchmark of two models that compute different functions (a converter or weight-loading regression) would
    report a meaningless speed-up. Raises RuntimeError beyond `rtol` x max(1, max |peer|)."""
    ours, peer = ours.detach().float(), peer.detach().float()
    if ours.shape != peer.shape:
        raise RuntimeError(f"{what}: expected ours and the peer to give outputs of one shape, got {tuple(ours.shape)} "
                           f"and {tuple(peer.shape)}")  # fmt: skip
    diff, scale = float((ours - peer).abs().max()), max(1.0, float(peer.abs().max()))
    if not diff <= rtol * scale:  # NaN fails too
        raise RuntimeError(
            f"{what}: expected the same outputs from the same weights (max abs diff <= {rtol:g} x {scale:.3g}), "
            f"got {diff:.3g}; not timing two models that compute different functions"
        )
    return diff


def machine(threads: int = 2, peaks: bool = True) -> dict:
    from perceiver.hardware import cpu_flags, cpu_model_name

    flags = cpu_flags()
    ident = cpu_ident()
    info: dict[str, Any] = {
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
    ceiling = fma_ceiling(threads)  # the bound of any kernel (benchmarks/bounds.py), read with or without the peaks
    if ceiling is not None:
        info["fma_ceiling_gflops"] = ceiling["gflops"]
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
    ceiling = info.get("fma_ceiling_gflops")
    fp32 = max((v for k, v in peaks.items() if "fp32" in k), default=None)
    bound = (
        f"fp32 FMA ceiling of {info['threads']} cores (`fma_peak.c`: register FMAs, no memory): {ceiling:.0f} GFLOP/s"
        + (
            "."
            if not fp32
            else f"; the fastest fp32 GEMM above reaches {100 * fp32 / ceiling:.0f}% of it."
            if fp32 <= ceiling
            else f" (below the fastest fp32 GEMM above, {fp32:.0f}: other work shared the cores while it was read, so "
            "it bounds nothing in this run)."
        )
        if ceiling
        else ""
    )
    drift = drift_text(info)
    parts = [
        f"Machine: {info['cpu']} [{info.get('cpu_id', '')}] ({', '.join(info['flags']) or 'no AVX-512 / bf16 flags'}), "
        f"{info['cores']} cores, {info['threads']} threads; torch {info['torch']}, Python {info['python']}.",
        f"Load average (1 min): {load}.",
        f"Measured matmul peak (4096^3, best of 4), GFLOP/s: {peak}." if peak else "",
        bound,
        drift,
    ]
    return " ".join(p for p in parts if p)


def drift_text(info: dict) -> str:
    """The machine's drift over a run, from the FMA ceiling and matmul peaks at its start and end ("" where none was
    read at both)."""
    readings = [("ceiling", info.get("fma_ceiling_gflops"), info.get("fma_ceiling_gflops_end"))]
    end_peaks = info.get("matmul_peak_gflops_end", {})
    readings += [(k, v, end_peaks.get(k)) for k, v in info.get("matmul_peak_gflops", {}).items()]
    pairs: list[tuple[str, float, float]] = [(k, a, b) for k, a, b in readings if a and b]  # read at both ends
    if not pairs:
        return ""
    changes = {k: b / a - 1 for k, a, b in pairs}
    text = "At the end of the run, GFLOP/s: " + ", ".join(
        f"{k} {b:.0f} ({100 * changes[k]:+.0f}%)" for k, a, b in pairs
    )
    if max(abs(c) for c in changes.values()) > 0.1:
        return f"{text}: the machine's speed drifted during the run; ratios of forms timed in turns hold, absolute times less so."
    return text + "."


#: how `time_by_kind` files an op by its name: the weight products (a Linear's forward and its two backward products),
#: attention (fused SDPA kernels, and the batched products and softmax of attention written out), everything else
_WEIGHT_GEMMS = {"aten::mm", "aten::addmm"}  # eager forms only: compiled ones are not profiled
_ATTENTION = {"aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_softmax_backward_data"}


def op_kind(name: str) -> str:
    """'weight GEMM', 'attention' or 'other' for a profiler op name (see `time_by_kind`)."""
    if name in _WEIGHT_GEMMS:
        return "weight GEMM"
    if name in _ATTENTION or "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    return "other"


def time_by_kind(fn: Callable[[], object], runs: int = 2, warmup: int = 1) -> dict[str, float]:
    """Milliseconds per call of `fn` spent in weight GEMMs, attention and everything else, from the profiler's self
    CPU time (each op's wall time on the calling thread, its intra-op threads included, children excluded), mean of
    `runs` profiled calls after `warmup` unprofiled ones. Profiling adds overhead to every op, most to the many small
    ones of 'other', so the sum exceeds an unprofiled call: use it for where the time goes, not for how long."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    out = {"weight GEMM": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        out[op_kind(event.key)] += event.self_cpu_time_total / 1e3 / runs
    return out


def bound_text(
    name: str,
    target: float,
    ours: dict[str, float],
    ours_s: float,
    peer: dict[str, float],
    peer_s: float,
    same_gemms: bool = False,
) -> str:
    """A measured reading of a speed target: how much of the time it leaves is taken by the work ours cannot shed (its
    weight GEMMs and the fastest attention kernel this PyTorch has). The profiles (`time_by_kind`, ms) are scaled to
    each side's unprofiled median (`ours_s`, `peer_s`, seconds), which removes the profiler's overhead on average;
    as that overhead falls mostly on the many small ops of 'other', the scaled GEMM and attention times are if anything
    too low, so a budget they exceed is exceeded by at least that much.
    `same_gemms`: both run the same weight products (same shapes), so ours' share is the faster of the two measured
    (the same GEMMs read 170-220 ms in four profiles of one process on an AVX2 EPYC: the rest is the machine)."""
    o = {k: v * 1e3 * ours_s / sum(ours.values()) for k, v in ours.items()}
    p = {k: v * 1e3 * peer_s / sum(peer.values()) for k, v in peer.items()}
    budget = 1e3 * peer_s / target
    fixed = (min(o["weight GEMM"], p["weight GEMM"]) if same_gemms else o["weight GEMM"]) + o["attention"]
    return (
        f"{name}: {target}x needs ours <= {budget:.0f} ms (peer {1e3 * peer_s:.0f}, ours {1e3 * ours_s:.0f}). "
        f"Where the time goes (ms, profiled and scaled to the unprofiled medians): weight GEMMs ours "
        f"{o['weight GEMM']:.0f} / peer {p['weight GEMM']:.0f}, attention {o['attention']:.0f} / "
        f"{p['attention']:.0f}, everything else {o['other']:.0f} / {p['other']:.0f}. "
        + (
            "The same GEMMs at the faster of the two readings and our attention "
            if same_gemms
            else "Our GEMMs and attention alone "
        )
        + f"take {fixed:.0f} ms, {100 * fixed / budget:.0f}% of that budget"
        + (
            f", which leaves {budget - fixed:.0f} ms for everything else (now {o['other']:.0f})."
            if fixed < budget
            else ": out of reach without GEMM or attention kernels faster than the ones PyTorch runs for both."
        )
    )


def paired(a: dict, b: dict) -> bool:
    """Whether rows `a` and `b` were timed in turns in the same processes (their runs pair up one to one)."""
    both = a.get("latency_method") == b.get("latency_method") == "paired"
    return both and a.get("paired_with") == b.get("paired_with") and len(a["times_s"]) == len(b["times_s"])


def speedup(peer: dict, ours: dict) -> float:
    """peer / ours latency: the median of the per-run ratios where the rows are paired, else the ratio of medians."""
    if paired(peer, ours):
        return statistics.median(p / o for p, o in zip(peer["times_s"], ours["times_s"]))
    return peer["median_s"] / ours["median_s"]


def main() -> None:
    """`python benchmarks/machine.py [--results-dir DIR]`: this machine's description, matmul peaks and FMA ceiling,
    printed and written to machine.{md,json} in this CPU's results folder."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--threads", type=int, default=2, help="threads of the matmul peaks and the FMA ceiling")
    add_results_dir_argument(parser)
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads: expected at least 1, got {args.threads}")
    info = machine(args.threads)
    text = describe(info)
    print(text)
    record = run_record("machine.py")
    folder = results_dir(args.results_dir)
    write_results(
        folder, "machine", {"machine": info, **record}, lambda _: f"# This machine\n\n{record['date']}\n\n{text}\n"
    )
    print(f"wrote {folder}/machine.{{json,md}}")


if __name__ == "__main__":
    main()
