"""int8 inference: ours after `perceiver.optimize(allow_int8=True)` vs transformers with the same int8 quantisation.

    .venv/bin/python benchmarks/bench_quant.py            # writes benchmarks/results/<machine>/quant.{md,json}
    .venv/bin/python benchmarks/bench_quant.py --quick --results-dir /tmp/trial   # language-perceiver only, fewer runs

Cases (batch 1, 2 threads, random weights of the published sizes, the same in both libraries: transformers' model
saved and loaded by ours with `perceiver.from_pretrained`): the language perceiver's masked-LM forward on 2048 bytes
and vision-perceiver-learned on a 224x224 image. Forms, timed in turns in one process (median):

- `hf`: transformers eager, fp32; `hf-int8`: transformers with torchao's `Int8DynamicActivationInt8WeightConfig`
  (the quantisation ours uses) under `torch.compile`, its fastest int8 form here;
- `ours`: ours eager, fp32; `ours-opt`: ours after `perceiver.optimize(model, ..., allow_int8=True)`, which times
  every inference candidate (fp32: compile, Inductor freezing, oneDNN Linear; int8: eager and compiled) and keeps
  the fastest;
- `onnx` / `onnx-int8`: ours exported with `perceiver.export.export_onnx` (fp32 / `quantize="int8"`: onnxruntime's
  dynamic int8 quantisation), run by onnxruntime's CPU provider with 2 intra-op threads.

Before timing, ours' fp32 output is checked against transformers' (same weights: max abs diff <= 1e-4 relative).
Accuracy against each library's own fp32 output: the max abs difference over the max abs value, and (MLM) the share
of positions whose top-1 byte is unchanged / (vision) whether the top-1 class is. Random weights: a trained model's
accuracy must be checked on its task; these say only how far int8 moves the outputs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from machine import (  # benchmarks/: the script's folder
    add_results_dir_argument,
    check_same_function,
    describe,
    finish,
    machine,
    results_dir,
    run_record,
    write_results,
)

THREADS = 2
HEADS = {"mlm": "PerceiverForMaskedLM", "vision": "PerceiverForImageClassificationLearned"}


def hf_config(case: str):
    from transformers import PerceiverConfig

    if case == "mlm":  # deepmind/language-perceiver
        return PerceiverConfig(qk_channels=256, v_channels=1280)
    return PerceiverConfig(  # deepmind/vision-perceiver-learned
        num_latents=512, d_latents=1024, d_model=512, num_blocks=8, num_self_attends_per_block=6,
        num_self_attention_heads=8, num_cross_attention_heads=1, image_size=224, num_labels=1000,
    )  # fmt: skip


def example(case: str) -> dict:
    g = torch.Generator().manual_seed(1)
    if case == "mlm":
        return {"inputs": torch.randint(6, 262, (1, 2048), generator=g)}
    return {"inputs": torch.randn(1, 3, 224, 224, generator=g)}


def run_case(case: str, runs: int) -> dict:
    import transformers
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    import perceiver

    x = example(case)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        hf = getattr(transformers, HEADS[case])(hf_config(case)).eval()
        hf.save_pretrained(tmp)
        ours = perceiver.from_pretrained(tmp).eval()
    hf_int8 = getattr(transformers, HEADS[case])(hf.config).eval()
    hf_int8.load_state_dict(hf.state_dict())
    quantize_(hf_int8, Int8DynamicActivationInt8WeightConfig())
    hf_int8 = torch.compile(hf_int8)
    fast = perceiver.optimize(ours, (), x, allow_int8=True, warmup=1, repeats=3, verbose=False)
    sessions, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        import onnxruntime as ort

        from perceiver.export import export_onnx

        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        args = (x["inputs"], torch.ones_like(x["inputs"], dtype=torch.bool)) if case == "mlm" else (x["inputs"],)
        for name, quantize in (("onnx", None), ("onnx-int8", "int8")):
            path = export_onnx(ours, Path(tmp) / f"{name}.onnx", args, quantize=quantize)
            sizes[name] = path.stat().st_size / 1e6
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {n: {i.name: a.numpy() for i, a in zip(s.get_inputs(), args)} for n, s in sessions.items()}
    forms = {
        "hf": lambda: hf(**x).logits,
        "hf-int8": lambda: hf_int8(**x).logits,
        "ours": lambda: ours(**x).logits,
        "ours-opt": lambda: fast(**x).logits,
        "onnx": lambda: torch.from_numpy(sessions["onnx"].run(None, feeds["onnx"])[0]),
        "onnx-int8": lambda: torch.from_numpy(sessions["onnx-int8"].run(None, feeds["onnx-int8"])[0]),
    }
    outputs, times = {}, {name: [] for name in forms}
    with torch.inference_mode():
        for name, fn in forms.items():
            outputs[name] = fn().float()  # warm-up (hf-int8 compiles here)
        check_same_function(f"{case} fp32: ours vs transformers", outputs["ours"], outputs["hf"])
        names = list(forms)
        for i in range(runs):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                start = time.perf_counter()
                forms[name]()
                times[name].append(time.perf_counter() - start)
    accuracy = {}
    for name, ref in (("hf-int8", "hf"), ("ours-opt", "ours"), ("ours", "hf"), ("onnx", "ours"), ("onnx-int8", "ours")):
        a, b = outputs[name], outputs[ref]
        accuracy[f"{name} vs {ref}"] = {
            "max_rel_error": float((a - b).abs().max() / b.abs().max()),
            "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        }
    return {
        "median_s": {name: statistics.median(t) for name, t in times.items()},
        "times_s": times,
        "onnx_mb": sizes,
        "opt_chosen": fast.report.chosen,
        "opt_report": str(fast.report),
        "accuracy": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the MLM only, 2 runs (smoke run, not for the report)")
    add_results_dir_argument(parser)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(THREADS)
    info = machine(THREADS, peaks=not args.quick)  # a smoke run skips the matmul peaks (a minute)
    cases = ("mlm",) if args.quick else ("mlm", "vision")
    result = {"run": run_record("bench_quant.py"), "quick": args.quick, "machine": info, "cases": {}}
    for case in cases:
        result["cases"][case] = run_case(case, 2 if args.quick else 6)
    finish(info, THREADS)
    print(write_results(results_dir(args.results_dir), "quant", result, render))


LABELS = {"mlm": "language-perceiver MLM, 2048 bytes", "vision": "vision-perceiver-learned 224x224"}


def render(r: dict) -> str:
    """The .md report of `r` (the .json's contents)."""
    rows, reports, onnx_rows = [], [], []
    for case, c in r["cases"].items():
        t, acc = c["median_s"], c["accuracy"]
        rows.append(
            f"| {LABELS[case]} | {t['hf']:.3f} | {t['hf-int8']:.3f} | {t['ours']:.3f} | {t['ours-opt']:.3f} "
            f"({c['opt_chosen']}) | {t['hf'] / t['ours-opt']:.2f}x | {t['hf-int8'] / t['ours-opt']:.2f}x "
            f"| {acc['ours-opt vs ours']['max_rel_error']:.3f} / {acc['ours-opt vs ours']['top1_agreement']:.3f} "
            f"| {acc['hf-int8 vs hf']['max_rel_error']:.3f} / {acc['hf-int8 vs hf']['top1_agreement']:.3f} |"
        )
        reports.append(f"{LABELS[case]}:\n\n```\n{c['opt_report']}\n```")
        if "onnx-int8" in t:
            o, mb = acc["onnx-int8 vs ours"], c["onnx_mb"]
            onnx_rows.append(
                f"| {LABELS[case]} | {t['onnx']:.3f} ({mb['onnx']:.0f} MB) | {t['onnx-int8']:.3f} ({mb['onnx-int8']:.0f} MB) "
                f"| {t['hf'] / t['onnx-int8']:.2f}x | {t['hf-int8'] / t['onnx-int8']:.2f}x "
                f"| {o['max_rel_error']:.3f} / {o['top1_agreement']:.3f} |"
            )
    run = r["run"]
    text = f"""# int8 inference: ours after optimize(allow_int8=True) vs transformers with the same quantisation

Date: {run["date"]} · commit `{run["commit"]}` · command: `{run["command"]}`

{describe(r["machine"])}

Batch 1, random weights of the published sizes (the same in both), see the script's docstring. Times in seconds
(median of the runs taken in turns). Error: max abs difference over the max abs value of the same library's fp32
output; top-1: the share of positions (MLM) or images (vision) whose argmax is unchanged.

| case | transformers fp32 | transformers int8 compiled | ours fp32 | ours after optimize | vs transformers fp32 | vs transformers int8 | ours int8: error / top-1 | transformers int8: error / top-1 |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{chr(10).join(rows)}

Exported to ONNX (`perceiver export MODEL OUT.onnx [--quantize int8]`) and run by onnxruntime (CPU provider, 2 threads):

| case | onnxruntime fp32 | onnxruntime int8 | int8 vs transformers fp32 | vs transformers int8 compiled | int8 error / top-1 (vs ours fp32) |
| --- | ---: | ---: | ---: | ---: | ---: |
{chr(10).join(onnx_rows)}

What `optimize` measured:

{chr(10).join(reports)}
"""
    if r.get("quick"):
        text += "\n**A `--quick` smoke run: too few runs for the report.**\n"
    return text


if __name__ == "__main__":
    main()
