"""How far the fp32 speed targets are from what this CPU can do at all: ours' FLOPs at the cores' FMA ceiling.

    .venv/bin/python benchmarks/bounds.py      # writes benchmarks/results/<machine>/bounds.{md,json}
    .venv/bin/python benchmarks/bounds.py --results-dir /tmp/my-run    # reads and writes that folder instead

For each fp32 target of the speed issues, the peer's time comes from this machine's results files
(`perceiver_io.json`, `ar.json`: run those benchmarks first) and sets a budget (peer time / target). Ours' FLOPs are
counted here with `FlopCounterMode` on the same model and inputs (with a formula for PyTorch's fused CPU attention,
which the counter does not know: for causal attention, only the unmasked blocks). Divided by the fp32 FMA ceiling
measured now (`fma_peak.c`: register FMAs, no memory traffic; nothing runs faster) and by the fastest fp32 GEMM
(4096^3), they give the least time ours could take: if that is near or above the budget, no kernel work closes the
target on this machine; only fewer FLOPs (another algorithm) or another arithmetic (bf16) would.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from machine import (
    add_results_dir_argument,
    atomic_write,
    describe,
    machine,
    results_dir,
    run_record,
)  # benchmarks/: the script's folder
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

THREADS = 2


def _unmasked_fraction(n: int, m: int, is_causal: bool) -> float:
    """Share of the (n, m) scores a causal kernel computes (query i sees keys <= i, top-left, as SDPA's
    `is_causal`); 1 without a causal mask."""
    if not is_causal:
        return 1.0
    return sum(min(i + 1, m) for i in range(n)) / (n * m)


def _sdpa_cpu(query, key, value, dropout_p=0.0, is_causal=False, *args, out_shape=None, **kwargs) -> int:
    return int(sdpa_flop_count(query, key, value) * _unmasked_fraction(query[-2], key[-2], is_causal))


def _sdpa_cpu_backward(grad_out, query, key, value, out, lse, dropout_p, is_causal, *args, out_shape=None, **kw) -> int:
    return int(
        sdpa_backward_flop_count(grad_out, query, key, value) * _unmasked_fraction(query[-2], key[-2], is_causal)
    )


CPU_SDPA = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
}


def count_gflop(fn) -> float:
    """GFLOP of `fn()` (matmuls, convolutions and fused attention)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def ours_cases() -> dict[str, float]:
    """GFLOP ours computes in each benchmarked case (the bench scripts' models and inputs)."""
    import bench_ar

    import perceiver

    torch.manual_seed(0)
    out = {}
    mlm = perceiver.create_model("language-perceiver").eval()
    ids = torch.randint(0, 262, (1, 2048))
    out["mlm-fp32"] = count_gflop(lambda: mlm(ids, attention_mask=torch.ones_like(ids)))
    vision = perceiver.create_model(  # no dropout, as the bench case (vision-train-fp32-nodrop)
        "vision-perceiver-learned",
        **{f"{p}.{k}": 0.0 for p in ("encoder", "decoder") for k in ("attn_dropout", "ff_dropout")},
    )
    out["vision-fp32"] = count_gflop(lambda: vision.eval()(torch.randn(1, 3, 224, 224)))
    vision.train()
    pixels, labels = torch.randn(2, 3, 224, 224), torch.randint(0, 1000, (2,))
    out["vision-train-fp32"] = count_gflop(lambda: vision(pixels, labels=labels).loss.backward())
    ar, _ = bench_ar.build_ar()
    x = bench_ar.tokens(bench_ar.TRAIN_BATCH, bench_ar.AR["max_seq_len"])
    out["ar-train"] = count_gflop(lambda: ar.train()(x, labels=x).loss.backward())
    resampler, _ = bench_ar.build_resampler()
    media = torch.randn(2, 1, 256, bench_ar.RESAMPLER["dim"])
    out["resampler"] = count_gflop(lambda: resampler(media))
    return out


def _row(rows: list[dict], case: str, impl: str) -> dict:
    row = next((r for r in rows if r["case"] == case and r["impl"] == impl), None)
    if row is None:
        sys.exit(f"expected a row of case {case!r}, implementation {impl!r} in perceiver_io.json: run "
                 f"`bench_perceiver_io.py --cases {case} --impls {impl} --merge` first")  # fmt: skip
    return row


def targets(folder: Path) -> list[dict]:
    """The fp32 targets with the peer time they are measured against and ours' measured time (seconds)."""
    rows = json.loads((folder / "perceiver_io.json").read_text())["rows"]
    ar = json.loads((folder / "ar.json").read_text())
    out = []
    for case, label in (("mlm-fp32", "language-perceiver MLM forward"), ("vision-fp32", "vision-learned forward")):
        hf = min(_row(rows, case, impl)["median_s"] for impl in ("hf", "hf-compile"))
        out.append(
            dict(
                target=f"{label}, eager vs transformers eager",
                case=case,
                x=1.3,
                peer=_row(rows, case, "hf")["median_s"],
                ours=_row(rows, case, "ours")["median_s"],
            )
        )
        out.append(
            dict(
                target=f"{label}, after optimize() vs the faster transformers form",
                case=case,
                x=1.2,
                peer=hf,
                ours=_row(rows, case, "ours-opt")["median_s"],
            )
        )
    train = "vision-train-fp32-nodrop"
    out.append(
        dict(
            target="vision-learned training step (batch 2), after optimize() vs transformers",
            case="vision-train-fp32",
            x=1.5,
            peer=_row(rows, train, "hf")["median_s"],
            ours=_row(rows, train, "ours-opt")["median_s"],
        )
    )
    t, r = ar["train"], ar["resampler"]
    out.append(
        dict(
            target="Perceiver AR training step (context 2048, batch 2), vs perceiver-ar-pytorch",
            case="ar-train",
            x=1.5,
            peer=min(t[n]["median_s"] for n in ("peer", "peer-compile") if "median_s" in t.get(n, {})),
            ours=min(t[n]["median_s"] for n in ("ours", "ours-opt")),
        )
    )
    out.append(
        dict(
            target="Perceiver Resampler forward, vs flamingo-pytorch",
            case="resampler",
            x=1.5,
            peer=r[r["opt_best_peer"]]["median_s"],
            ours=min(r[n]["median_s"] for n in ("ours", "ours-opt")),
        )
    )
    return out


def best_readings(folder: Path, info: dict) -> tuple[float, float]:
    """The FMA ceiling and the fastest fp32 GEMM: the best of the readings now (`info`) and of those this machine's
    results files recorded (start and end of each run). Both are properties of the hardware; a lower reading is other
    work on a shared host (on the Zen 4 EPYC the ceiling read 162-234 GFLOP/s within two hours), so the best is kept."""
    machines = [info]
    for name in ("perceiver_io.json", "ar.json", "classic.json", "krasserm.json", "machine.json"):
        if (folder / name).is_file():
            data = json.loads((folder / name).read_text())
            machines.append(data.get("machine", {}))
            machines += [{"matmul_peak_gflops": {"fp32": r["matmul_peak_gflops"].get("float32", 0)}} for r in
                         data.get("rows", []) if "matmul_peak_gflops" in r]  # fmt: skip
    ceilings = [m[k] for m in machines for k in ("fma_ceiling_gflops", "fma_ceiling_gflops_end") if m.get(k)]
    gemms = [
        v
        for m in machines
        for peaks in (m.get("matmul_peak_gflops", {}), m.get("matmul_peak_gflops_end", {}))
        for k, v in peaks.items()
        if "fp32" in k or k == "float32"
    ]
    return max(ceilings), max(gemms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_results_dir_argument(parser)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    folder = results_dir(args.results_dir)
    missing = [n for n in ("perceiver_io.json", "ar.json") if not (folder / n).is_file()]
    if missing:
        sys.exit(f"expected {missing} in {folder}: run bench_perceiver_io.py and bench_ar.py on this machine first")
    quick = [n for n in ("perceiver_io.json", "ar.json") if json.loads((folder / n).read_text()).get("quick")]
    if quick:
        sys.exit(f"expected full runs' results in {folder}, got --quick smoke runs' {quick}: rerun without --quick")
    info = machine(THREADS)
    if info.get("fma_ceiling_gflops") is None:
        sys.exit("no C compiler found to build benchmarks/fma_peak.c (set CC)")
    ceiling, gemm = best_readings(folder, info)
    flops = ours_cases()
    rows = []
    for t in targets(folder):
        budget = t["peer"] / t["x"]
        g = flops[t["case"]]
        rows.append({**t, "budget_s": budget, "ours_gflop": g, "at_ceiling_s": g / ceiling, "at_gemm_peak_s": g / gemm})
    record = {**run_record("bounds.py"), "machine": info, "ours_gflop": flops, "rows": rows}
    atomic_write(folder / "bounds.json", json.dumps(record, indent=2) + "\n")
    lines = [
        "# The fp32 targets against this CPU's arithmetic ceiling",
        "",
        f"Date: {record['date']} · commit `{record['commit']}` · command: `{record['command']}`",
        "",
        describe(info),
        "",
        "Peer and ours: medians from this machine's `perceiver_io.json` / `ar.json` (their dates and loads there). "
        "Budget = peer / target. Ours' GFLOP: counted now on the same model and inputs (FlopCounterMode, with the "
        "fused CPU attention; causal blocks it skips are not counted). 'At the ceiling': those FLOPs at the fp32 FMA "
        f"ceiling ({ceiling:.0f} GFLOP/s, the best reading now and in this machine's results files), the least time "
        f"any kernel could take; 'at the GEMM peak': at the fastest fp32 4096^3 GEMM read likewise ({gemm:.0f} GFLOP/s). The model's other work (normalisation, softmax, "
        "activations, memory traffic) comes on top of both. A budget is as fast as the peer ran in that run: in a "
        "slower hour of a shared machine both libraries slow down (their files' machine lines give each run's "
        "peaks), and the share of the ceiling a target needs falls with the peer's speed.",
        "",
        "| target | peer s | budget s | ours s (measured) | ours GFLOP | at the FMA ceiling: s (% of budget) "
        "| at the GEMM peak: s (% of budget) | GFLOP/s the target needs (% of the ceiling) "
        "| GFLOP/s ours runs at (% of the ceiling) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        need, now = r["ours_gflop"] / r["budget_s"], r["ours_gflop"] / r["ours"]
        lines.append(
            f"| {r['target']}: {r['x']}x | {r['peer']:.3f} | {r['budget_s']:.3f} | {r['ours']:.3f} | "
            f"{r['ours_gflop']:.1f} | {r['at_ceiling_s']:.3f} ({100 * r['at_ceiling_s'] / r['budget_s']:.0f}%) | "
            f"{r['at_gemm_peak_s']:.3f} ({100 * r['at_gemm_peak_s'] / r['budget_s']:.0f}%) | "
            f"{need:.0f} ({100 * need / ceiling:.0f}%) | {now:.0f} ({100 * now / ceiling:.0f}%) |"
        )
    atomic_write(folder / "bounds.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
