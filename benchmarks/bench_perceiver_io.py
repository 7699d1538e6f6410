"""Perceiver IO, ours vs transformers with the same weights: latency, peak memory and model FLOP/s.

Cases (issue 3, point 10):
- `language-perceiver` masked LM at 2048 bytes, batch 1 inference, fp32 and bf16 autocast;
- `vision-perceiver-learned` at 224 x 224, batch 1 inference fp32 and bf16 autocast, and one training step at batch 2
  in fp32 (forward + backward + AdamW step), with the checkpoint's attention dropout (transformers' default 0.1) and
  without it (DeepMind's training setting); the no-dropout step with ours under `set_grad_checkpointing()`
  (transformers' Perceiver has no gradient checkpointing, so its row is its plain step); and the no-dropout step of
  both under bf16 autocast (only where the CPU has native bf16; `ours-opt` then picks among the candidates that keep
  the caller's autocast).
Implementations: `ours` (the default eager path), `ours-opt` (ours after `perceiver.optimize(model, inputs)`, which
times eager / torch.compile / Inductor freezing / SDPA's math backend on this machine and keeps the fastest; fp32 only,
so the arithmetic stays that of the case), `hf` (transformers, eager) and `hf-compile` (transformers under
`torch.compile`, with Inductor freezing for inference: the best compiled form for it too).
A transformers model at the published size is built once from a fixed seed and saved with `save_pretrained`; both
implementations load that folder (`transformers...from_pretrained` / `perceiver.from_pretrained`), with
torch.set_num_threads(2). Latency (`--latency auto`, the default: paired for inference, fresh for training steps):
paired: the eager implementations of a case share one process and the optimized / compiled ones another
(`PAIRED_GROUPS`), each timed in turns with the order reversing every run, so drift in a shared VM's speed (20% and
more between processes here) hits a pair alike; speed-ups within a group are medians of the per-run ratios. fresh:
each in its own process (a training step's multi-GB activations beside another model's slowed transformers' vision
step from 19.7 to 26.8 s on the Zen 4 EPYC, a bias in our favour). Either way latency = median of `--repeats` timed runs after `--warmup` runs, pooled over `--rounds`.
Peak memory always comes from a fresh subprocess per (implementation, case): VmHWM minus the RSS after model
construction (weights touched, malloc_trim, high-water mark reset via /proc/self/clear_refs). Model FLOPs are counted with
torch.utils.flop_counter.FlopCounterMode on transformers' forward (plain matmuls; the CPU flash-attention kernel ours
uses has no FLOP formula) and divided by the median latency and this machine's matmul peak (best of a few
4096^3 matmuls per dtype, measured here).

    .venv/bin/python benchmarks/bench_perceiver_io.py [--cases mlm-fp32,...] [--repeats 5] [--workdir DIR]
    .venv/bin/python benchmarks/bench_perceiver_io.py --quick --results-dir /tmp/trial   # a smoke run

Writes benchmarks/results/<machine>/perceiver_io.md and perceiver_io.json (`--results-dir`: that folder instead).
Before timing, each paired process checks that ours and transformers give the same fp32 inference outputs (max abs
diff <= 1e-4 relative). `--quick`: mlm-fp32, eager forms, 2 runs: a smoke run, left out of the README's table.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import (
    add_results_dir_argument,
    atomic_write,
    check_same_function,
    finish,
    machine,
    matmul_peaks,
    native_bf16,
    read_results,
    results_dir,
    run_record,
    time_by_kind,
    write_results,
)  # benchmarks/: the script's folder
from perceiver_io_report import IMPL_NAMES, render  # the report (perceiver_io.md) of the results

ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
# case -> (model, mode, autocast dtype or None, batch, dropout override or None)
CASES = {
    "mlm-fp32": ("mlm", "infer", None, 1, None),
    "mlm-bf16": ("mlm", "infer", "bfloat16", 1, None),
    "vision-fp32": ("vision", "infer", None, 1, None),
    "vision-bf16": ("vision", "infer", "bfloat16", 1, None),
    "vision-train-fp32": ("vision", "train", None, 2, None),
    "vision-train-fp32-nodrop": ("vision", "train", None, 2, 0.0),
    # ours with set_grad_checkpointing(); transformers' Perceiver has no gradient checkpointing: its plain step
    "vision-train-fp32-nodrop-ckpt": ("vision", "train", None, 2, 0.0),
    # both under the same bf16 autocast (what `precision: auto` trains in on a CPU with native bf16)
    "vision-train-bf16-nodrop": ("vision", "train", "bfloat16", 2, 0.0),
}
# --latency paired: the eager forms share one process, the compiled ones another. With the compiled forms beside it
# (their frozen constants and Inductor buffers in the same heap), transformers' eager vision forward ran 15-50% slower
# than alone (4.6-6.1 against 3.8-4.7 s) on the AVX2 EPYC, a bias in our favour; the groups avoid it.
PAIRED_GROUPS = (("ours", "hf"), ("ours-opt", "hf-compile"))
HF_HEADS = {"mlm": "PerceiverForMaskedLM", "vision": "PerceiverForImageClassificationLearned"}
PRESETS = {"mlm": "language-perceiver", "vision": "vision-perceiver-learned"}


def hf_config(model: str):
    from transformers import PerceiverConfig

    if model == "mlm":  # deepmind/language-perceiver
        return PerceiverConfig(qk_channels=256, v_channels=1280, architectures=[HF_HEADS[model]])
    # deepmind/vision-perceiver-learned
    return PerceiverConfig(
        num_latents=512, d_latents=1024, d_model=512, num_blocks=8, num_self_attends_per_block=6,
        num_self_attention_heads=8, num_cross_attention_heads=1, image_size=224, num_labels=1000,
        architectures=[HF_HEADS[model]],
    )  # fmt: skip


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def make_inputs(model: str, batch: int) -> dict:
    """The forward's keyword inputs: 2048 random bytes (all valid) for the MLM, a random 224x224 image for vision."""
    import torch

    if model == "mlm":
        ids = torch.randint(0, 262, (batch, 2048))
        return {"inputs": ids, "attention_mask": torch.ones_like(ids)}
    return {"inputs": torch.randn(batch, 3, 224, 224)}


# ---------------------------------------------------------------- worker: one (implementation, case) per process


def load(impl: str, model: str, folder: Path):
    if impl == "hf":
        import transformers

        return getattr(transformers, HF_HEADS[model]).from_pretrained(folder)
    import perceiver
    import perceiver.interop  # noqa: F401  (registers the converters)

    return perceiver.from_pretrained(folder)


def prepare(impl: str, model, mode: str, inputs: dict):
    """The callable timed for `impl`: compiled (hf-compile) or chosen by `perceiver.optimize` (ours-opt)."""
    import torch

    if impl == "hf-compile":
        model.train(mode == "train")
        if mode == "train":
            return torch.compile(model), None
        from perceiver.optimization import compile_frozen  # options={"freezing": True} alone does not freeze

        return compile_frozen(model), None
    if impl == "ours-opt":
        import perceiver

        model.train(mode == "train")
        # training: eager, SDPA's math backend, written-out attention and oneDNN Linears (compiling the full
        # training graph costs minutes per candidate here)
        candidates = ("eager", "sdpa-math", "matmul-attention", "onednn-linear") if mode == "train" else None
        # inference: 5 timed calls per candidate (with 2 the choice between forms within a few % of each other was
        # left to the machine's drift); training: 2 (a step takes ~15 s)
        repeats = 2 if mode == "train" else 5
        fast = perceiver.optimize(
            model, (), inputs, training=mode == "train", candidates=candidates, warmup=1, repeats=repeats, verbose=False
        )
        return fast, str(fast.report)
    return model, None


def build(impl: str, case: str, folder: Path):
    """Load `impl` for `case` and return (model, run, optimize report): `run()` is one timed call (a training step:
    forward, backward, AdamW step; inference: the forward under inference mode, or `run(contextlib.nullcontext)`)."""
    import torch

    model_name, mode, dtype, batch, _ = CASES[case]
    model = load(impl, model_name, folder)
    with torch.no_grad():  # page in every weight (safetensors may be memory-mapped) before the baseline
        sum(float(t.float().sum()) for t in model.state_dict().values())
    torch.manual_seed(0)  # the same inputs for every implementation
    inputs = make_inputs(model_name, batch)
    labels = torch.randint(0, 1000, (batch,))
    if mode == "train" and case.endswith("-ckpt") and hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing()
    with torch.autocast("cpu", torch.bfloat16, enabled=dtype is not None):  # optimize times under the case's autocast
        model, optimize_report = prepare(impl, model, mode, inputs)
    if mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def run(grad_mode=None):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(model(**inputs).logits.float(), labels)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def run(grad_mode=torch.inference_mode):  # FlopCounterMode's module tracker needs grad mode (nullcontext)
            with grad_mode(), torch.autocast("cpu", torch.bfloat16, enabled=dtype is not None):
                return model(**inputs).logits

    return model, run, optimize_report


def trim() -> None:
    """Return the heap's free memory to the OS (glibc `malloc_trim`)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def timed(run) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - t0, time.process_time() - c0


def count_and_profile(run, mode: str) -> tuple[int, dict]:
    """Model FLOPs of one call (FlopCounterMode) and its profiler time by kind (`machine.time_by_kind`)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run() if mode == "train" else run(contextlib.nullcontext)
    profile_ms = time_by_kind(run, runs=1 if mode == "train" else 2, warmup=0)  # warm since the timed runs
    return counter.get_total_flops(), profile_ms


def worker(args: argparse.Namespace) -> dict:
    """One implementation in a fresh process: latency and the peak memory of its runs."""
    import torch

    torch.set_num_threads(2)
    mode = CASES[args.case][1]
    model, run, optimize_report = build(args.impl, args.case, Path(args.ckpt))
    trim()
    base = status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    for _ in range(args.warmup):
        run()
    times, cpu_times = zip(*(timed(run) for _ in range(args.repeats)))
    peak = status_mb("VmHWM")
    flops, profile_ms = 0, None
    if args.count_flops and args.impl in ("hf", "ours"):
        flops, profile_ms = count_and_profile(run, mode)
    return {
        "case": args.case,
        "impl": args.impl,
        "times_s": list(times),
        "median_s": statistics.median(times),
        "cpu_times_s": list(cpu_times),
        "rss_after_construction_mb": base,
        "peak_rss_mb": peak,
        "peak_delta_mb": peak - base,
        "counted_flops": flops,
        "params": sum(p.numel() for p in model.parameters()),
        "optimize_report": optimize_report,
        "profile_ms": profile_ms,
    }


def paired_worker(args: argparse.Namespace) -> list[dict]:
    """Every implementation of `args.impls` in one process, timed in turns (the order reverses every run), so that
    drift in the machine's speed hits all alike and each run gives paired ratios. Latency only: the peaks come from
    the fresh memory processes."""
    import torch

    torch.set_num_threads(2)
    mode = CASES[args.case][1]
    impls = [m for m in args.impls.split(",") if m]
    built = {impl: build(impl, args.case, Path(args.ckpt)) for impl in impls}
    if mode == "infer" and CASES[args.case][2] is None:  # same weights, same fp32 outputs: checked before timing
        for ours, hf in (("ours", "hf"), ("ours-opt", "hf-compile")):
            if ours in built and hf in built:
                got, ref = built[ours][1](), built[hf][1]()
                check_same_function(f"{args.case}: {ours} vs {hf}", got, ref)
    for impl in impls:
        for _ in range(args.warmup):
            built[impl][1]()
    times: dict[str, list[tuple[float, float]]] = {impl: [] for impl in impls}
    for i in range(args.repeats):
        for impl in impls if i % 2 == 0 else impls[::-1]:
            trim()  # each form starts from a trimmed heap, as in its own process
            times[impl].append(timed(built[impl][1]))
    rows = []
    for impl, (model, run, optimize_report) in built.items():
        flops, profile_ms = count_and_profile(run, mode) if args.count_flops and impl in ("hf", "ours") else (0, None)
        wall, cpu = zip(*times[impl])
        rows.append({
            "case": args.case, "impl": impl, "latency_method": "paired", "times_s": list(wall),
            "median_s": statistics.median(wall), "cpu_times_s": list(cpu), "counted_flops": flops,
            "params": sum(p.numel() for p in model.parameters()), "optimize_report": optimize_report,
            "profile_ms": profile_ms,
        })  # fmt: skip
    return rows


# ---------------------------------------------------------------- driver


def make_checkpoints(workdir: Path, models: set[str]) -> dict[str, Path]:
    """transformers models at the published sizes, random (seed 0), saved once; plus a no-dropout config copy."""
    import torch
    import transformers

    import perceiver
    import perceiver.interop  # noqa: F401  (registers the converters)

    folders = {}
    for name in sorted(models):
        folder = workdir / name
        if not (folder / "model.safetensors").exists():
            torch.manual_seed(0)
            config = hf_config(name)
            getattr(transformers, HF_HEADS[name])(config).save_pretrained(folder)
            # The benchmarked architecture is exactly our preset (conversion on the meta device, no memory).
            with torch.device("meta"):
                theirs = getattr(transformers, HF_HEADS[name])(config)
                ours = perceiver.pretrained.HF_CONVERTERS[HF_HEADS[name]](config.to_dict(), theirs.state_dict())
                preset = perceiver.create_model(PRESETS[name])
            shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in (ours, preset)]
            assert shapes[0] == shapes[1], f"{name}: transformers config does not give the {PRESETS[name]} preset"
        folders[name] = folder
        nodrop = workdir / f"{name}-nodrop"
        nodrop.mkdir(exist_ok=True)
        config = json.loads((folder / "config.json").read_text())
        (nodrop / "config.json").write_text(json.dumps({**config, "attention_probs_dropout_prob": 0.0}))
        if not (nodrop / "model.safetensors").exists():
            (nodrop / "model.safetensors").symlink_to(folder / "model.safetensors")
        folders[f"{name}-nodrop"] = nodrop
    return folders


def machine_info() -> dict:
    import transformers

    return machine(2, peaks=False) | {"transformers": transformers.__version__}  # matmul peaks: per row, see run_case


def run_case(case: str, impl: str, folder: Path, args, memory: bool = False, count_flops: bool = True,
             paired: bool = False):  # fmt: skip
    """One fresh worker process. `memory=True`: glibc returns every freed block >= 64 KB to the OS
    (MALLOC_MMAP_THRESHOLD_), so VmHWM follows the live tensors instead of heap fragmentation; one timed run.
    `paired=True`: `impl` lists implementations (comma-separated), which one paired worker times in turns; it returns
    a row for each."""
    cmd = [sys.executable, __file__, "--paired-worker" if paired else "--worker", "--case", case, "--ckpt", str(folder)]
    cmd += ["--impls" if paired else "--impl", impl]
    repeats = args.repeats if CASES[case][1] == "infer" else args.train_repeats
    cmd += ["--repeats", str(1 if memory else repeats), "--warmup", str(args.warmup)]
    env = {**os.environ, **ENV, **({"MALLOC_MMAP_THRESHOLD_": "65536"} if memory else {})}
    out = subprocess.run(cmd + ["--count-flops"] * (count_flops and not memory), capture_output=True, text=True,
                         env=env, timeout=args.timeout)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{case}/{impl} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def pool(timed: list[dict], memory: list[dict]) -> dict:
    """One row from several rounds: timings pooled; peak memory = median over the memory processes (the fresh
    timing processes' heap-fragmented peaks are kept as `default_malloc_peak_delta_mb`). Counted FLOPs and the
    profile come from the first round that measured them."""
    row = dict(timed[0])
    for key in ("counted_flops", "profile_ms"):
        row[key] = next((r[key] for r in timed if r.get(key)), row.get(key))
    row["times_s"] = [t for r in timed for t in r["times_s"]]
    row["cpu_times_s"] = [t for r in timed for t in r["cpu_times_s"]]
    row["median_s"] = statistics.median(row["times_s"])
    row["default_malloc_peak_delta_mb"] = [r["peak_delta_mb"] for r in timed if "peak_delta_mb" in r]
    row["peak_delta_mb_rounds"] = [r["peak_delta_mb"] for r in memory]
    row["peak_delta_mb"] = statistics.median(row["peak_delta_mb_rounds"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=None, help="default: all, the bf16 ones only where the CPU has native bf16")
    parser.add_argument("--impls", default="ours,ours-opt,hf,hf-compile", help="implementations (see the docstring)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per inference case")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed steps per training case")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1, help="timing processes per (case, impl), timings pooled")
    parser.add_argument("--latency", choices=("auto", "paired", "fresh"), default="auto",
                        help="paired: all implementations of a case in one process, timed in turns (drift cancels "
                        "in the per-run ratios); fresh: each in its own process; auto: paired for inference, fresh "
                        "for training steps")  # fmt: skip
    parser.add_argument("--merge", action="store_true", help="replace only these cases' rows in the saved .json")
    parser.add_argument("--workdir", default=None, help="where checkpoints go (default: a temporary folder)")
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--paired-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the saved .json")
    parser.add_argument("--quick", action="store_true", help="mlm-fp32, ours and hf, 2 runs (smoke run)")
    add_results_dir_argument(parser)
    args = parser.parse_args()
    if args.quick:
        args.cases, args.impls, args.repeats, args.train_repeats, args.warmup = "mlm-fp32", "ours,hf", 2, 1, 1
    for name in ("repeats", "train_repeats", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup: expected 0 or more, got {args.warmup}")
    results = results_dir(args.results_dir)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.paired_worker:
        print(json.dumps(paired_worker(args)))
        return
    if args.report_only:
        data = read_results(results / "perceiver_io.json")
        atomic_write(results / "perceiver_io.md", render(data))
        return

    os.environ.update(ENV)
    if args.cases is None:
        args.cases = ",".join(c for c in CASES if CASES[c][2] is None or native_bf16())
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {list(CASES)}")
    impls = [m.strip() for m in args.impls.split(",") if m.strip()]
    if not impls or set(impls) - set(IMPL_NAMES):
        raise SystemExit(f"--impls: expected some of {','.join(IMPL_NAMES)}, got {args.impls!r}")
    info = machine_info() | {k: v for k, v in run_record("bench_perceiver_io.py").items() if k != "command"}

    sizes: dict[str, int] = {}
    peaks = matmul_peaks(2, sizes=sizes)
    info["matmul_peak_sizes"] = sizes
    by_backend = {
        "float32": {k.split()[0].lower(): v for k, v in peaks.items() if k.endswith("fp32")},
        "bfloat16": {k.split()[0].lower(): v for k, v in peaks.items() if k.endswith("bf16")},
    }
    info["matmul_peak_by_backend_gflops"] = by_backend
    info["matmul_peak_gflops"] = {d: max(v.values()) for d, v in by_backend.items()}
    print(f"matmul peak GFLOP/s: {info['matmul_peak_gflops']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_perceiver_io_") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        folders = make_checkpoints(workdir, {CASES[c][0] for c in cases})
        rows = []
        for i, case in enumerate(cases):
            model, _, _, _, dropout = CASES[case]
            folder = folders[f"{model}-nodrop" if dropout == 0.0 else model]
            timed: dict[str, list[dict]] = {impl: [] for impl in impls}
            memory: dict[str, list[dict]] = {impl: [] for impl in impls}
            latency = args.latency if args.latency != "auto" else ("fresh" if CASES[case][1] == "train" else "paired")
            for r in range(args.rounds):
                order = impls if (i + r) % 2 == 0 else impls[::-1]  # alternate who goes first (drifting load)
                if latency == "paired":
                    for group in PAIRED_GROUPS:
                        if members := ",".join(impl for impl in order if impl in group):
                            for row in run_case(case, members, folder, args, count_flops=r == 0, paired=True):
                                timed[row["impl"]].append(row | {"paired_with": members})
                for impl in order:
                    if latency == "fresh":
                        timed[impl].append(run_case(case, impl, folder, args) | {"latency_method": "fresh"})
                    memory[impl].append(run_case(case, impl, folder, args, memory=True))
                    print(f"{case:26s} {impl:10s} round {r}: runs {[round(t, 2) for t in timed[impl][-1]['times_s']]}"
                          f" s, peak {memory[impl][-1]['peak_delta_mb']:.0f} MB", flush=True)  # fmt: skip
            rows += [
                pool(timed[impl], memory[impl]) | {"matmul_peak_gflops": info["matmul_peak_gflops"]} for impl in impls
            ]
    finish(info)  # the load and the FMA ceiling at the end (the machine's drift)
    for row in rows:  # each row keeps the load of its own run (--merge mixes runs)
        row["load_average"] = [info["load_average_at_start"][0], info["load_average_at_end"][0]]
    command = "python benchmarks/bench_perceiver_io.py " + " ".join(sys.argv[1:])
    json_file = results / "perceiver_io.json"
    if args.merge and json_file.exists():
        old = json.loads(json_file.read_text())
        before = [old["machine"][k][0] for k in ("load_average_at_start", "load_average_at_end")]
        rows = [{"load_average": before} | r for r in old["rows"] if r["case"] not in cases] + rows
        rows.sort(key=lambda r: list(CASES).index(r["case"]))
        info = {**info, "earlier_runs": old.get("earlier_runs", []) + [old["machine"] | {"command": old["command"]}]}
        command = f"{old['command']}; then {command}"
    data = {"machine": info, "command": command, "quick": args.quick, "rows": rows}
    print(write_results(results, "perceiver_io", data, render))


if __name__ == "__main__":
    main()
