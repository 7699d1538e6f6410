"""Paired, in-process timing of ours and transformers (eager and frozen-compiled) on one Perceiver IO case.

    .venv/bin/python benchmarks/bench_paired.py --case vision --runs 8

`bench_perceiver_io.py` times each implementation in its own fresh process (so that peak memory is its own), and on
a shared VM the machine's speed drifts between those processes by 20% and more. Here all four forms live in one
process and are timed in turns (the order reverses every run), so a slow minute hits them alike, and each run gives
a paired ratio. The caveat is the reverse one: the forms share one heap, and transformers' eager form, whose
vision forward allocates (1, 50176, 1024) keys and values, ran at half its fresh-process speed in one run here, so read the
compiled pair (frozen weights, Inductor's planned buffers) as the cleaner figure. Latency only; no memory.

Checkpoints are those `bench_perceiver_io.py` writes (`--workdir`, random weights at the published sizes, seed 0).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("vision", "mlm"), default="vision")
    parser.add_argument("--workdir", default="/tmp/bpio", help="bench_perceiver_io.py's checkpoint folder")
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    import transformers
    from bench_perceiver_io import load, make_inputs  # benchmarks/: the script's folder (same loaders and inputs)

    from perceiver.optimization import compile_frozen

    torch.set_num_threads(2)
    torch.manual_seed(0)
    folder = Path(args.workdir) / args.case
    if not (folder / "model.safetensors").exists():
        raise SystemExit(f"no checkpoint in {folder}: run bench_perceiver_io.py --workdir {args.workdir} first")
    hf = load("hf", args.case, folder).eval()
    ours = load("ours", args.case, folder).eval()
    inputs = make_inputs(args.case, 1)
    forms = {
        "ours": ours,
        "transformers": hf,
        "ours compiled": compile_frozen(ours),
        "transformers compiled": compile_frozen(hf),
    }
    times: dict[str, list[float]] = {name: [] for name in forms}
    with torch.inference_mode():
        for model in forms.values():  # compile and warm up
            model(**inputs)
            model(**inputs)
        for run in range(args.runs):
            for name in list(forms) if run % 2 == 0 else list(forms)[::-1]:
                t0 = time.perf_counter()
                forms[name](**inputs)
                times[name].append(time.perf_counter() - t0)
    print(
        f"case {args.case}, {args.runs} runs in turns, torch {torch.__version__}, transformers {transformers.__version__}"
    )
    for name, ts in times.items():
        print(f"{name:>22}: median {statistics.median(ts):.3f} s, min {min(ts):.3f} s")
    for peer, mine in (
        ("transformers", "ours"),
        ("transformers compiled", "ours compiled"),
        ("transformers compiled", "ours"),
    ):
        ratios = [p / m for p, m in zip(times[peer], times[mine])]
        print(
            f"{peer} / {mine}: paired median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
