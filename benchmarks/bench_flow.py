"""Memory and latency of a full 368 x 496 optical flow forward: ours (chunked decoding) vs transformers (one shot).

Both run the published `optical-flow-perceiver` size with the same random weights (a transformers model built
from a fixed seed, saved once; ours is converted from that state dict). Every (implementation, case) runs in a fresh
subprocess: peak memory = VmHWM (peak RSS) minus the RSS after model construction and input creation (the
high-water mark is reset via /proc/self/clear_refs before the first forward). Latency = median of the timed
forwards of `--rounds` interleaved subprocesses per case, each `--repeats` forwards after one warm-up. Batch 1,
fp32, torch.set_num_threads(2); bf16 autocast (where the CPU has native bf16) and a one-shot decode for ours as extra rows.

    .venv/bin/python benchmarks/bench_flow.py [--rounds 2] [--repeats 2] [--timeout 1800] [--results-dir DIR]
    .venv/bin/python benchmarks/bench_flow.py --quick --results-dir /tmp/trial   # a smoke run, not for the report

Writes benchmarks/results/<machine>/flow.md and flow.json (`--results-dir`: that folder instead), after checking
that every fp32 case's logits equal transformers' (max abs diff <= 1e-4 relative: the same weights and function;
the subprocesses time first, so the check comes after timing but before any result is written). `--quick`: one
round of one timed forward, the fp32 chunked and transformers' cases only (still the published size: minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import (  # benchmarks/: the script's folder
    add_results_dir_argument,
    check_same_function,
    describe,
    machine,
    native_bf16,
    results_dir,
    run_record,
    write_results,
)

SIZE = (368, 496)
# (name, implementation, query_chunk_size (0 = one shot), autocast dtype)
CASES = [
    ("ours, chunked 8192, fp32", "ours", 8192, None),
    ("ours, chunked 8192, bf16 autocast", "ours", 8192, "bfloat16"),
    ("ours, one shot, fp32", "ours", 0, None),
    ("transformers, one shot, fp32", "hf", 0, None),
]


def hf_config():
    from transformers import PerceiverConfig

    # The published optical flow model (transformers' conversion script / DeepMind's colab).
    return PerceiverConfig(
        num_latents=2048,
        d_latents=512,
        d_model=322,
        num_blocks=1,
        num_self_attends_per_block=24,
        num_self_attention_heads=16,
        num_cross_attention_heads=1,
        train_size=list(SIZE),
        attention_probs_dropout_prob=0.0,
        architectures=["PerceiverForOpticalFlow"],
    )


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_case(impl: str, chunk: int, autocast: str | None, weights: str, out: str, repeats: int) -> None:
    """Child process: build, measure, write a JSON line to `out` and the logits to `out + '.pt'`."""
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(2)
    sd = load_file(weights)
    cfg = hf_config()
    if impl == "hf":
        from transformers import PerceiverForOpticalFlow

        model = PerceiverForOpticalFlow(cfg)
        model.load_state_dict(sd)

        def forward(x):
            return model(inputs=x).logits
    else:
        from perceiver.interop.hf_flow import convert_optical_flow

        # flow_scale_factor=1: transformers' units, so the outputs can be compared.
        model = convert_optical_flow(cfg.to_dict(), sd, flow_scale_factor=1.0)

        def forward(x):
            return model(x, query_chunk_size=chunk).logits

    del sd
    model.eval()
    x = torch.randn(1, 2, 27, *SIZE, generator=torch.Generator().manual_seed(1))
    import gc

    gc.collect()
    base = rss_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    times = []
    ctx = torch.autocast("cpu", dtype=getattr(torch, autocast)) if autocast else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), ctx:
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            logits = forward(x)
            if i:
                times.append(time.perf_counter() - t0)
            if i == 0:
                print(f"warm-up {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    peak = rss_mb("VmHWM")
    torch.save(logits.float(), out + ".pt")
    result = dict(
        rss_after_construction_mb=round(base, 1),
        peak_rss_mb=round(peak, 1),
        peak_minus_construction_mb=round(peak - base, 1),
        latency_s=round(statistics.median(times), 2),
        latencies_s=[round(t, 2) for t in times],
    )
    Path(out).write_text(json.dumps(result))


def machine_info(peaks: bool = True) -> dict:
    """The shared machine record (`machine.py`: CPU, id, flags, matmul peak per backend) plus transformers' version."""
    import transformers

    return machine(2, peaks=peaks) | {"transformers": transformers.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="timed forwards per subprocess (after 1 warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="fresh subprocesses per case, interleaved")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per subprocess")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 forward, 2 cases (smoke run)")
    add_results_dir_argument(parser)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--autocast", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.case, args.chunk, args.autocast, args.weights, args.out, args.repeats)
        return
    if args.quick:
        args.rounds, args.repeats = 1, 1
    for name in ("rounds", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected at least 1, got {getattr(args, name)}")
    tmp = Path(tempfile.mkdtemp(prefix="bench_flow_"))
    try:  # the weights (160 MB) and every case's logits: removed however the run ends
        measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(args: argparse.Namespace, tmp: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import PerceiverForOpticalFlow

    record = run_record("bench_flow.py")
    info = machine_info(peaks=not args.quick)  # before the runs: the load at their start
    torch.manual_seed(0)
    weights = str(tmp / "weights.safetensors")
    hf = PerceiverForOpticalFlow(hf_config())
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, weights)
    n_params = sum(p.numel() for p in hf.parameters())
    del hf

    # Rounds interleave the cases, so that load from other processes on a shared machine hits all of them alike.
    cases = [c for c in CASES if c[3] is None or native_bf16()]
    if args.quick:
        cases = [c for c in cases if c[0] in ("ours, chunked 8192, fp32", "transformers, one shot, fp32")]
    runs: dict[str, list[dict]] = {name: [] for name, *_ in cases}
    for rnd in range(args.rounds):
        for k, (name, impl, chunk, autocast) in enumerate(cases):
            out = str(tmp / f"{k}.json")
            cmd = [sys.executable, __file__, "--case", impl, "--chunk", str(chunk), "--weights", weights, "--out", out]
            cmd += ["--repeats", str(args.repeats)] + (["--autocast", autocast] if autocast else [])
            print(f"== round {rnd + 1}: {name}", flush=True)
            load = os.getloadavg()[0]
            try:
                proc = subprocess.run(cmd, timeout=args.timeout, capture_output=True, text=True)
                status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode}): {proc.stderr[-500:]}"
            except subprocess.TimeoutExpired:
                status = f"timed out after {args.timeout:.0f}s"
            run = dict(status=status, load_avg_1min=round(load, 1))
            if status == "ok":
                run |= json.loads(Path(out).read_text())
            print(run, flush=True)
            runs[name].append(run)

    rows = []
    for name, impl, chunk, autocast in cases:
        ok = [r for r in runs[name] if r["status"] == "ok"]
        row = dict(case=name, implementation=impl, query_chunk_size=chunk or None, autocast=autocast)
        row["status"] = "ok" if ok else runs[name][-1]["status"]
        if ok:
            row["rss_after_construction_mb"] = max(r["rss_after_construction_mb"] for r in ok)
            row["peak_minus_construction_mb"] = max(r["peak_minus_construction_mb"] for r in ok)
            row["latencies_s"] = [t for r in ok for t in r["latencies_s"]]
            row["latency_s"] = round(statistics.median(row["latencies_s"]), 2)
        row["runs"] = runs[name]
        rows.append(row)

    ref = next((r for r in rows if r["implementation"] == "hf" and r["status"] == "ok"), None)
    ref_logits = torch.load(str(tmp / f"{rows.index(ref)}.json.pt")) if ref else None
    for i, row in enumerate(rows):
        if row["status"] != "ok" or ref is None:
            continue
        row["peak_ratio_vs_transformers"] = round(
            row["peak_minus_construction_mb"] / ref["peak_minus_construction_mb"], 3
        )
        row["latency_ratio_vs_transformers"] = round(row["latency_s"] / ref["latency_s"], 3)
        logits = torch.load(str(tmp / f"{i}.json.pt"))
        if row["autocast"] is None:  # same weights, same fp32 function: no results of models that differ
            check_same_function(f"optical flow, {row['case']} vs transformers", logits, ref_logits)
        row["max_abs_diff_vs_transformers"] = float((logits - ref_logits).abs().max())

    info["load_average_at_end"] = os.getloadavg()
    report = dict(
        machine=info,
        **record,
        quick=args.quick,
        image_size=SIZE,
        batch=1,
        params=n_params,
        repeats=args.repeats,
        rounds=args.rounds,
        transformers_logits_max_abs=None if ref_logits is None else float(ref_logits.abs().max()),
        rows=rows,
    )
    print(write_results(results_dir(args.results_dir), "flow", report, render))


def render(report: dict) -> str:

    m = report["machine"]
    lines = [
        "# Optical flow: full 368 x 496 forward, ours (chunked decoding) vs transformers",
        "",
        f"- {describe(m)} transformers {m['transformers']}.",
        (
            f"- date: {report['date']} · commit `{report.get('commit', '?')}` · command"
            if "date" in report
            else "- command"
        )
        + f": `{report['command']}`",
        f"- model: optical-flow-perceiver size ({report['params'] / 1e6:.1f} M parameters), same random weights in "
        "both (transformers' init with seed 0, converted to ours), batch 1, input (1, 2, 27, 368, 496)",
        "- peak = VmHWM - RSS after model construction (max over runs), a fresh subprocess per run; latency = median "
        f"of all timed forwards ({report['rounds']} interleaved rounds x {report['repeats']} forwards after 1 warm-up "
        "each). 1-min load average over the runs: "
        f"{max(r.get('load_avg_1min', 0.0) for row in report['rows'] for r in row['runs']):.1f} at most (the benchmark's own 2 threads make "
        "~2; more means other jobs shared the cores and latencies are indicative; peaks are not affected).",
        "- max abs diff: on the final logits (transformers' units); with transformers' random init they are small "
        f"(max |logit| = {report.get('transformers_logits_max_abs') or float('nan'):.1e}), so this column checks "
        "that both runs used the same weights; numerical parity is tested on perturbed weights in "
        "tests/interop/test_hf_flow.py.",
        "",
        "| case | peak MB | peak vs transformers | latency s | latency vs transformers | max abs diff vs transformers |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {r['status']} | | | | |")
            continue
        diff = r.get("max_abs_diff_vs_transformers")
        lines.append(
            f"| {r['case']} | {r['peak_minus_construction_mb']:.0f} | {r.get('peak_ratio_vs_transformers', '-')} "
            f"| {r['latency_s']:.1f} | {r.get('latency_ratio_vs_transformers', '-')} "
            f"| {'-' if diff is None else f'{diff:.1e}'} |"
        )
    if report.get("quick"):
        lines += ["", "**A `--quick` smoke run: too few runs for the report.**"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
