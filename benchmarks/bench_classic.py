"""Classic Perceiver inference: ours vs perceiver-pytorch, same weights, side by side in one run.

    .venv/bin/python benchmarks/bench_classic.py                 # writes benchmarks/results/<machine>/classic.{md,json}
    .venv/bin/python benchmarks/bench_classic.py --runs 5 --profile
    .venv/bin/python benchmarks/bench_classic.py --quick --results-dir /tmp/trial   # a smoke run, not for the report

The model is the README snippet's (depth 6, 256 latents of 512, 1 cross head of 64, 8 latent heads of 64). Cases:
batch 1 at 224x224 and batch 8 at 64x64, fp32 and (where the CPU has native bf16) bf16 autocast, under `torch.inference_mode`, 2 threads.

Implementations: ours (the default eager path), ours after `perceiver.optimize(model, (x,))` (eager, torch.compile,
Inductor freezing timed on this machine, fp32 only), perceiver-pytorch eager and perceiver-pytorch under
`torch.compile` with Inductor freezing (its best compiled form).

Latency: all live in this process and are timed in turns (the order rotates every run) so that load from other
processes on the machine hits them alike; we report the median over `--runs` after `--warmup` runs. Before timing,
ours' output is checked against perceiver-pytorch's (same weights: max abs diff <= 1e-4 relative in fp32).
`--quick`: the 224x224 fp32 case only, eager forms only (no `optimize()`, no compiled peer), 3 runs: a smoke run,
marked as such in the .json (`benchmarks/tables.py` leaves it out of the README).

Peak memory: CPU torch has no memory statistics, so each (model, case) runs in a fresh subprocess that builds the
model, resets the kernel's RSS high-water mark (`/proc/self/clear_refs`, value 5), runs the forward passes and reads
`VmHWM` from `/proc/self/status`. We report the peak increase over the RSS after model construction: activations,
workspaces and caches of the forward, not the weights (which are the same for both).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from machine import (  # benchmarks/: the script's folder
    add_results_dir_argument,
    check_same_function,
    describe,
    finish,
    machine,
    native_bf16,
    results_dir,
    run_record,
    write_results,
)

SNIPPET = dict(
    input_channels=3,
    input_axis=2,
    num_freq_bands=6,
    max_freq=10.0,
    depth=6,
    num_latents=256,
    latent_dim=512,
    cross_heads=1,
    latent_heads=8,
    cross_dim_head=64,
    latent_dim_head=64,
    num_classes=1000,
    attn_dropout=0.0,
    ff_dropout=0.0,
)
CASES = [("b1-224x224", 1, 224), ("b8-64x64", 8, 64)]
PRECISIONS = ["fp32", "bf16"]

THREADS = 2


def build_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """perceiver-pytorch's snippet model (seed 0) and ours with the same weights, both in eval mode."""
    import perceiver_pytorch

    from perceiver import Perceiver

    torch.manual_seed(0)
    peer = perceiver_pytorch.Perceiver(**SNIPPET).eval()
    ours = Perceiver.from_perceiver_pytorch(peer.state_dict(), **SNIPPET).eval()
    return ours, peer


def make_input(batch: int, size: int) -> torch.Tensor:
    return torch.randn(batch, size, size, 3, generator=torch.Generator().manual_seed(1))


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def run(model: torch.nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    with torch.inference_mode(), autocast(precision):
        return model(x)


# ----------------------------------------------------------------------------- memory (one subprocess per case)


def _status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def memory_worker(impl: str, batch: int, size: int, precision: str, runs: int) -> dict:
    torch.set_num_threads(THREADS)
    ours, peer = build_models()
    model = ours if impl == "ours" else peer
    del ours, peer
    gc.collect()
    x = make_input(batch, size)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        method = "VmHWM after clear_refs reset"
    except OSError:
        method = "ru_maxrss (no reset possible: includes construction peak)"
    baseline_kb = _status_kb("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(runs):
        run(model, x, precision)
    peak_kb = _status_kb("VmHWM") if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "impl": impl,
        "baseline_rss_mb": baseline_kb / 1024,
        "peak_rss_mb": peak_kb / 1024,
        "peak_increase_mb": (peak_kb - baseline_kb) / 1024,
        "ru_maxrss_increase_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before) / 1024,
        "method": method,
    }


def measure_memory(impl: str, batch: int, size: int, precision: str, runs: int) -> dict:
    spec = json.dumps({"impl": impl, "batch": batch, "size": size, "precision": precision, "runs": runs})
    out = subprocess.run(
        [sys.executable, __file__, "--memory-worker", spec], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- latency (interleaved, in process)


def measure_latency(models: dict, x: torch.Tensor, precision: str, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        for model in models.values():
            run(model, x, precision)
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for i in range(runs):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            start = time.perf_counter()
            run(models[name], x, precision)
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "times_s": t} for name, t in times.items()}


def profile(ours, peer, x: torch.Tensor, precision: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name, model in (("ours", ours), ("peer", peer)):
        run(model, x, precision)
        with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True) as prof:
            run(model, x, precision)
        print(f"\n=== profile: {name} {tuple(x.shape)} {precision} ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


# ----------------------------------------------------------------------------- report


def machine_info(peaks: bool = True) -> dict:
    from importlib.metadata import version

    return machine(THREADS, peaks=peaks) | {
        "perceiver_pytorch": version("perceiver-pytorch"),
        "platform": platform.platform(),
    }


NAMES = {
    "ours": "ours (eager default)",
    "ours-opt": "ours after optimize()",
    "peer": "perceiver-pytorch (eager)",
    "peer-compile": "perceiver-pytorch (torch.compile)",
}


def write_report(results: dict) -> str:
    """The .md report of `results` (the .json's contents)."""

    info = results["machine"]
    lines = [
        "# Classic Perceiver: ours vs perceiver-pytorch (inference)",
        "",
        f"Date: {results['date']} · commit `{results['commit']}`",
        f"Command: `{results['command']}`",
        "",
        describe(info) + f" perceiver-pytorch {info['perceiver_pytorch']}.",
        "",
        "Model: the README snippet (depth 6, 256 x 512 latents, cross 1 x 64, latent 8 x 64, 1000 classes); ours is "
        "built from perceiver-pytorch's state dict with `Perceiver.from_perceiver_pytorch` (same weights). "
        f"Latency: median of {results['runs']} runs in rotating turns after {results['warmup']} warm-up runs, "
        "`torch.inference_mode`, bf16 = `torch.autocast('cpu', dtype=torch.bfloat16)`. "
        "Peak memory (eager rows): increase of the peak RSS over the RSS after model construction, one fresh process "
        "per (model, case), high-water mark reset with `/proc/self/clear_refs` before the forward passes.",
        "",
        "| case | precision | implementation | median ms | min ms | vs perceiver-pytorch eager | vs its faster form "
        "| peak +MB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["rows"]:
        lat = r["latency"]
        peer = lat["peer"]["median_s"]
        best_peer = min(lat[k]["median_s"] for k in ("peer", "peer-compile") if k in lat)
        for impl in NAMES:
            if impl not in lat:
                continue
            t = lat[impl]
            chosen = f" ({r['chosen']})" if impl == "ours-opt" else ""
            mem = r["memory"].get(impl, {}).get("peak_increase_mb")
            lines.append(
                f"| {r['case']} | {r['precision']} | {NAMES[impl]}{chosen} | {1e3 * t['median_s']:.0f} | "
                f"{1e3 * t['min_s']:.0f} | {peer / t['median_s']:.2f}x | {best_peer / t['median_s']:.2f}x | "
                f"{'' if mem is None else f'{mem:.0f}'} |"
            )
    target = results["target"]
    opt = (
        f", after optimize() {target['speedup_opt']:.2f}x ({target['speedup_opt_vs_best']:.2f}x its faster form)"
        if "speedup_opt" in target
        else " (optimize() not run)"
    )
    lines += [
        "",
        "vs perceiver-pytorch eager = its median / this row's median; vs its faster form = the faster of "
        "perceiver-pytorch eager and compiled / this row. Max abs difference ours vs perceiver-pytorch: "
        + ", ".join(f"{r['case']} {r['precision']} {r['max_abs_diff']:.1e}" for r in results["rows"])
        + ".",
        "",
        f"Target (issue 12): classic seed snippet (224x224, batch 1, fp32) ours >= 2.5x perceiver-pytorch: eager "
        f"{target['speedup']:.2f}x{opt} -> **{'met' if target['met'] else 'missed'}**; "
        f"peak memory ratio (eager) {target['mem_ratio']:.2f}.",
        "",
    ]
    if results.get("quick"):
        lines += ["**A `--quick` smoke run: too few runs for the report.**", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="timed runs per model and case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per model and case")
    parser.add_argument("--memory-runs", type=int, default=2, help="forward passes in each memory subprocess")
    parser.add_argument("--quick", action="store_true", help="224x224 fp32, eager forms, 3 runs (smoke run)")
    add_results_dir_argument(parser)
    parser.add_argument(
        "--out", type=Path, default=None, help="output path without suffix (default: RESULTS_DIR/classic)"
    )
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table at 224x224")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_worker:
        spec = json.loads(args.memory_worker)
        print(json.dumps(memory_worker(spec["impl"], spec["batch"], spec["size"], spec["precision"], spec["runs"])))
        return
    if args.quick:
        args.runs, args.warmup, args.memory_runs = 3, 1, 1
    for name in ("runs", "memory_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup: expected 0 or more, got {args.warmup}")
    out = args.out or results_dir(args.results_dir) / "classic"

    torch.set_num_threads(THREADS)
    import perceiver
    from perceiver.optimization import compile_frozen

    info = machine_info(peaks=not args.quick)  # a smoke run skips the matmul peaks (a minute)
    ours, peer = build_models()
    rows = []
    for case, batch, size in CASES[:1] if args.quick else CASES:
        x = make_input(batch, size)
        for precision in (p for p in PRECISIONS if p != "bf16" or (native_bf16() and not args.quick)):
            got, ref = run(ours, x, precision), run(peer, x, precision)
            if precision == "fp32":  # bf16 rounds differently in each: its difference is reported, not checked
                check_same_function(f"{case} fp32: ours vs perceiver-pytorch", got, ref)
            diff = (got.float() - ref.float()).abs().max().item()
            torch._dynamo.reset()
            models = {"ours": ours, "peer": peer}
            chosen = "-"
            if precision == "fp32" and not args.quick:  # optimize() and compiled peers: fp32 rows (fp32 arithmetic)
                with torch.inference_mode():
                    fast = perceiver.optimize(ours, (x,), repeats=3, verbose=False)
                chosen = fast.report.chosen
                models["ours-opt"] = fast
                models["peer-compile"] = compile_frozen(peer)  # options={"freezing": True} alone does not freeze
            lat = measure_latency(models, x, precision, args.runs, args.warmup)
            mem = {impl: measure_memory(impl, batch, size, precision, args.memory_runs) for impl in ("ours", "peer")}
            row = {
                "case": case,
                "batch": batch,
                "size": size,
                "precision": precision,
                "chosen": chosen,
                "ours_s": lat["ours"]["median_s"],
                "peer_s": lat["peer"]["median_s"],
                "speedup": lat["peer"]["median_s"] / lat["ours"]["median_s"],
                "ours_mem_mb": mem["ours"]["peak_increase_mb"],
                "peer_mem_mb": mem["peer"]["peak_increase_mb"],
                "mem_ratio": mem["ours"]["peak_increase_mb"] / mem["peer"]["peak_increase_mb"],
                "max_abs_diff": diff,
                "latency": lat,
                "memory": mem,
            }
            rows.append(row)
            print(
                f"{case:11s} {precision}: "
                + ", ".join(f"{k} {1e3 * v['median_s']:.1f} ms" for k, v in lat.items())
                + f"; peak +{row['ours_mem_mb']:.0f} MB vs +{row['peer_mem_mb']:.0f} MB; max abs diff {diff:.1e}",
                flush=True,
            )
    if args.profile:
        profile(ours, peer, make_input(1, 224), "fp32")

    head = next(r for r in rows if r["case"] == "b1-224x224" and r["precision"] == "fp32")
    lat = head["latency"]
    target = {"speedup": head["speedup"], "mem_ratio": head["mem_ratio"]}
    if "ours-opt" in lat:
        best_peer = min(lat["peer"]["median_s"], lat["peer-compile"]["median_s"])
        target["speedup_opt"] = lat["peer"]["median_s"] / lat["ours-opt"]["median_s"]
        target["speedup_opt_vs_best"] = best_peer / lat["ours-opt"]["median_s"]
    target["met"] = target["speedup"] >= 2.5
    finish(info)  # the load and the FMA ceiling at the end (the machine's drift)
    results = {
        **run_record("bench_classic.py"),
        "quick": args.quick,
        "runs": args.runs,
        "warmup": args.warmup,
        "machine": info,
        "target": target,
        "rows": rows,
    }
    print(write_results(out.parent, out.name, results, write_report))


if __name__ == "__main__":
    main()
