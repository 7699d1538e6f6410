"""LoRA fine-tuning step: ours (`perceiver.lora.add_lora`) vs transformers + peft (`get_peft_model`), same weights.

    .venv/bin/python benchmarks/bench_lora.py            # writes benchmarks/results/<machine>/lora.{md,json}
    .venv/bin/python benchmarks/bench_lora.py --quick --results-dir /tmp/trial   # fewer runs (a smoke run)

Case (fp32, 2 threads): a training step (forward, backward, AdamW step) of the text classifier built on the language
perceiver (`deepmind/language-perceiver`'s architecture, 201M parameters, random weights: transformers'
`PerceiverForSequenceClassification` saved and loaded by ours with `perceiver.from_pretrained`) on a batch of 2 x 512
bytes, 2 classes. LoRA rank 8, alpha 16 on every attention projection and MLP layer (ours: `q_proj k_proj v_proj
o_proj fc1 fc2`; transformers' names: `query key value dense dense1 dense2`), the class head trained in full (ours by
default; peft: `modules_to_save`). Beside them, ours with every weight trained (`full`), what LoRA saves, and ours
after `perceiver.optimize(training=True)` with the fp32 candidates (`ours-lora-opt`: it times eager, torch.compile,
SDPA's math backend, written-out attention and oneDNN's Linear on packed weights on this machine and keeps the
fastest; frozen weights are packed once for the whole run).

Before timing, every form's loss on the batch is checked against transformers + peft's (same weights: the same
loss, max abs diff <= 1e-4 relative). Time: median of interleaved runs in one process. Peak memory: a fresh process per form, RSS high-water mark reset
(`/proc/self/clear_refs`) after building the model and optimizer and one warm-up step, then 2 steps; the peak increase
over the RSS before them, with `MALLOC_MMAP_THRESHOLD_=65536` (as the other benchmarks), median of 2 processes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
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
BATCH, LENGTH, RANK, ALPHA = 2, 512, 8, 16
OURS_TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|fc1|fc2)$"
HF_TARGETS = ["query", "key", "value", "dense", "dense1", "dense2"]
FORMS = ("ours-lora", "hf-peft-lora", "ours-full", "ours-lora-opt")


def build(form: str, folder: Path, candidates: tuple[str, ...] | None = None):
    """(model, call, optimizer) of a form; `call(ids, labels)` returns the loss. `ours-lora-opt`: `perceiver.optimize`
    over `candidates` (default: the fp32 training candidates)."""
    import perceiver

    torch.manual_seed(0)
    if form == "ours-lora-opt":
        from perceiver.optimization import TRAINING_FP32

        model, call, opt = build("ours-lora", folder)
        ids, labels = batch()
        fast = perceiver.optimize(
            model, (ids,), training=True, candidates=candidates or TRAINING_FP32, warmup=1, repeats=3, verbose=False,
            loss_fn=lambda out: torch.nn.functional.cross_entropy(out.logits, labels),
        )  # fmt: skip

        def fast_call(ids, labels):
            return torch.nn.functional.cross_entropy(fast(ids).logits, labels)

        return fast, fast_call, opt
    if form.startswith("hf"):
        from peft import LoraConfig, get_peft_model
        from transformers import PerceiverForSequenceClassification

        model = PerceiverForSequenceClassification.from_pretrained(folder)
        config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=HF_TARGETS, modules_to_save=["classifier"])
        model = get_peft_model(model, config).train()

        def call(ids, labels):
            return model(inputs=ids, labels=labels).loss
    else:
        from perceiver.lora import add_lora

        model = perceiver.from_pretrained(folder).train()
        if form == "ours-lora":
            add_lora(model, r=RANK, alpha=ALPHA, target_modules=OURS_TARGETS)

        def call(ids, labels):
            return torch.nn.functional.cross_entropy(model(ids).logits, labels)

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, call, opt


def step(call, opt, ids, labels) -> None:
    call(ids, labels).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(6, 262, (BATCH, LENGTH), generator=g), torch.tensor([0, 1])


def save_base(folder: Path) -> None:
    from transformers import PerceiverConfig, PerceiverForSequenceClassification

    torch.manual_seed(0)
    # deepmind/language-perceiver's architecture (256 x 1280 latents, 26 layers, q / k of 256 channels), no dropout:
    # both compute the same loss in training mode
    config = PerceiverConfig(num_labels=2, qk_channels=256, v_channels=1280, attention_probs_dropout_prob=0.0)
    PerceiverForSequenceClassification(config).save_pretrained(folder)


def _status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def memory_worker(form: str, folder: str, chosen: str) -> dict:
    torch.set_num_threads(THREADS)
    _, call, opt = build(form, Path(folder), (chosen,) if chosen != "-" else None)
    ids, labels = batch()
    step(call, opt, ids, labels)  # optimizer state allocated
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kb("VmRSS")
    for _ in range(2):
        step(call, opt, ids, labels)
    peak = _status_kb("VmHWM")
    return {"form": form, "peak_increase_mb": (peak - base) / 1024, "peak_rss_mb": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 runs, 1 memory round (smoke run, not for the report)")
    add_results_dir_argument(parser)
    parser.add_argument("--memory-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        print(json.dumps(memory_worker(*args.memory_worker)))
        return
    torch.set_num_threads(THREADS)
    info = machine(THREADS, peaks=not args.quick)  # a smoke run skips the matmul peaks (a minute)
    runs, rounds = (2, 1) if args.quick else (6, 2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "base"
        save_base(folder)
        setups = {form: build(form, folder) for form in FORMS}
        report = setups["ours-lora-opt"][0].report
        chosen = report.chosen
        trainable = {f: sum(p.numel() for p in m.parameters() if p.requires_grad) for f, (m, _, _) in setups.items()}
        ids, labels = batch()
        with torch.no_grad():  # same weights: the same loss before training
            losses_t = {f: call(ids, labels) for f, (_, call, _) in setups.items()}
        for form, loss in losses_t.items():
            check_same_function(f"loss before training: {form} vs hf-peft-lora", loss, losses_t["hf-peft-lora"])
        losses = {f: float(v) for f, v in losses_t.items()}
        times: dict[str, list[float]] = {f: [] for f in FORMS}
        for i in range(runs + 1):  # rotating order after a warm-up round
            for form in FORMS[i % len(FORMS) :] + FORMS[: i % len(FORMS)]:
                _, call, opt = setups[form]
                start = time.perf_counter()
                step(call, opt, ids, labels)
                if i:
                    times[form].append(time.perf_counter() - start)
        del setups
        gc.collect()
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        memory: dict[str, list[dict]] = {f: [] for f in FORMS}
        for _ in range(rounds):
            for form in FORMS:
                cmd = [sys.executable, __file__, "--memory-worker", form, str(folder), chosen]
                res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                memory[form].append(json.loads(res.stdout.strip().splitlines()[-1]))
    finish(info, THREADS)
    result = {
        "run": run_record("bench_lora.py"),
        "quick": args.quick,
        "machine": info,
        "trainable_params": trainable,
        "opt_chosen": chosen,
        "opt_report": str(report),
        "loss_before": losses,
        "median_s": {f: statistics.median(t) for f, t in times.items()},
        "times_s": times,
        "peak_increase_mb": {f: statistics.median(x["peak_increase_mb"] for x in m) for f, m in memory.items()},
        "peak_rss_mb": {f: statistics.median(x["peak_rss_mb"] for x in m) for f, m in memory.items()},
        "memory_rounds_mb": memory,
    }
    print(write_results(results_dir(args.results_dir), "lora", result, render))


def render(r: dict) -> str:
    """The .md report of `r` (the .json's contents)."""
    t, m, n, rss = r["median_s"], r["peak_increase_mb"], r["trainable_params"], r["peak_rss_mb"]
    rows = [f"| {form} | {n[form] / 1e6:.2f}M | {t[form]:.3f} | {rss[form]:.0f} | {m[form]:.0f} |" for form in FORMS]
    run = r["run"]
    text = f"""# LoRA fine-tuning step: ours vs transformers + peft

Date: {run["date"]} · commit `{run["commit"]}` · command: `{run["command"]}`

{describe(r["machine"])}

Text classifier on the language perceiver (201M parameters, random weights, the same in both), batch 2 x 512 bytes,
fp32, LoRA rank {RANK} (alpha {ALPHA}) on every attention and MLP Linear, the class head trained in full; see the
script's docstring. Loss before training: ours {r["loss_before"]["ours-lora"]:.6f}, transformers
{r["loss_before"]["hf-peft-lora"]:.6f}.

| form | trainable | step s (median) | peak RSS MB (process) | peak increase over the RSS before a step MB |
| --- | ---: | ---: | ---: | ---: |
{chr(10).join(rows)}

LoRA step: ours {t["hf-peft-lora"] / t["ours-lora"]:.2f}x as fast as transformers + peft, at {rss["ours-lora"] / rss["hf-peft-lora"]:.2f}x its
peak RSS ({m["ours-lora"] / m["hf-peft-lora"]:.2f}x its peak increase during a step). Against training every weight (ours), LoRA's
step takes {t["ours-lora"] / t["ours-full"]:.2f}x the time at {rss["ours-lora"] / rss["ours-full"]:.2f}x the peak RSS: no gradients and AdamW
states for the frozen weights; the backward pass still runs through every layer to reach the adapters.
After `perceiver.optimize(training=True)` (chose '{r["opt_chosen"]}'), ours' LoRA step is
{t["hf-peft-lora"] / t["ours-lora-opt"]:.2f}x as fast as transformers + peft at {rss["ours-lora-opt"] / rss["hf-peft-lora"]:.2f}x its peak RSS.

What `optimize` measured:

```
{r["opt_report"]}
```
"""
    if r.get("quick"):
        text += "\n**A `--quick` smoke run: too few runs for the report.**\n"
    return text


if __name__ == "__main__":
    main()
