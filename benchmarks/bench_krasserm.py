"""Ours vs krasserm's perceiver-io (PyPI 0.11.0), same weights: the published Perceiver IO models and a Perceiver AR
training step.

    .venv/bin/python benchmarks/bench_krasserm.py            # writes benchmarks/results/<machine>/krasserm.{md,json}
    .venv/bin/python benchmarks/bench_krasserm.py --quick --results-dir /tmp/trial   # fewer runs (a smoke run)

krasserm's package is also named `perceiver`, so it runs in subprocesses (`tests/krasserm_peer.py`: its real wheel,
installed into a temporary folder); ours runs in this process, built from the weights its first subprocess saved
(`perceiver.interop.krasserm_io` / `PerceiverAR.from_krasserm`), and the outputs are compared. Rounds alternate a
peer subprocess and ours (the two cannot share a process), each timing `runs` calls after a warm-up; the reported
time is the median over all rounds. Ours' output is checked against krasserm's (max abs diff <= 1e-4 relative) before
ours is timed: a mismatch stops the run. fp32, 2 threads, eager both (krasserm's attention is written out: einsum,
softmax; ours is SDPA's fused kernel, with the reassociated cross-attention for the image classifier).

Cases:
- mlm: the masked LM at the published size (`language-perceiver`: krasserm's `convert_config` of transformers'
  default `PerceiverConfig`, 201M parameters), 2048 bytes, batch 1, inference.
- vision-fourier: the image classifier at the published size (`vision-perceiver-fourier`: 512 x 1024 latents,
  8 x 6 self-attention layers, 64 Fourier bands, 1000 classes; krasserm's `convert_config`), 224 x 224, batch 1.
- ar-train: forward + backward + AdamW step of krasserm's causal LM (width 256, 4 heads, 1 cross + 4 self layers,
  window 2048, 512 latents, prefix dropout off) at batch 2, the same step as `bench_ar.py`'s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_ar_krasserm import KRASSERM  # benchmarks/: the script's folder (the causal LM of bench_ar's krasserm row)
from machine import (  # benchmarks/: the script's folder
    add_results_dir_argument,
    atomic_write,
    check_same_function,
    describe,
    finish,
    machine,
    read_results,
    results_dir,
    run_record,
    write_results,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from krasserm_peer import VERSION, install, run  # noqa: E402  (tests/: the peer's installer and runner)

THREADS = 2

PEER = """
import dataclasses, json, time
import transformers
spec = json.loads(open(sys.argv[1] + "/spec.json").read())
case = spec["case"]
torch.manual_seed(0)
if case == "mlm":
    from perceiver.model.text.mlm.backend import MaskedLanguageModel
    from perceiver.model.text.mlm.huggingface import convert_config
    hf = transformers.PerceiverConfig()
    hf.tie_word_embeddings = True  # transformers 5's PerceiverConfig no longer has it; krasserm's converter asserts it
    config = convert_config(hf)
    model = MaskedLanguageModel(config).eval()
    inputs = (torch.randint(6, 262, (1, 2048), generator=torch.Generator().manual_seed(1)),)
elif case == "vision-fourier":
    from perceiver.model.vision.image_classifier.backend import ImageClassifier
    from perceiver.model.vision.image_classifier.huggingface import convert_config
    hf = transformers.PerceiverConfig(num_latents=512, d_latents=1024, num_blocks=8, num_self_attends_per_block=6,
                                      num_cross_attention_heads=1, num_self_attention_heads=8, num_labels=1000)
    config = convert_config(hf)
    model = ImageClassifier(config).eval()
    inputs = (torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(1)),)
else:
    from perceiver.model.text.clm.backend import CausalLanguageModel, CausalLanguageModelConfig
    config = CausalLanguageModelConfig(**spec["ar_config"], cross_attention_dropout=0.0)
    model = CausalLanguageModel(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = (torch.randint(6, 262, (2, 2048), generator=torch.Generator().manual_seed(1)),)

def call():
    if case != "ar-train":
        with torch.no_grad():
            return model(*inputs)
    logits = model(inputs[0], prefix_len=1536).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), inputs[0][:, 1537:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return logits.detach()

out = {"times": []}
if spec["save"]:
    out["config"] = dataclasses.asdict(config)
    out["state_dict"] = {k: v.clone() for k, v in model.state_dict().items()}  # before the training steps
    out["inputs"] = inputs
    if case == "ar-train":
        with torch.no_grad():
            model.eval()
            out["output"] = model(inputs[0], prefix_len=1536).logits
            model.train()
    else:
        out["output"] = call()
for _ in range(spec["warmup"]):
    call()
for _ in range(spec["runs"]):
    start = time.perf_counter()
    call()
    out["times"].append(time.perf_counter() - start)
torch.save(out, sys.argv[2])
"""


def peer_round(target: Path, case: str, runs: int, warmup: int, save: bool) -> dict:
    spec = {"case": case, "runs": runs, "warmup": warmup, "save": save, "ar_config": KRASSERM}
    (target / "spec.json").write_text(json.dumps(spec))
    return run(target, PEER, f"{case}.pt", threads=THREADS)


def build_ours(case: str, ref: dict):
    from perceiver import PerceiverAR
    from perceiver.interop.krasserm_io import image_classifier_from_krasserm, masked_lm_from_krasserm

    if case == "mlm":
        return masked_lm_from_krasserm(ref["state_dict"], ref["config"]).eval()
    if case == "vision-fourier":
        return image_classifier_from_krasserm(ref["state_dict"], ref["config"]).eval()
    return PerceiverAR.from_krasserm(ref["state_dict"], ref["config"]).train()


def ours_call(case: str, model, inputs: tuple, opt=None):
    if case == "mlm":
        with torch.no_grad():
            return model(inputs[0]).logits
    if case == "vision-fourier":
        with torch.no_grad():
            return model(inputs[0].permute(0, 3, 1, 2)).logits
    x = inputs[0]
    out = model(x, num_latents=512, labels=x)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.logits.detach()


def bench_case(target: Path, case: str, runs: int, warmup: int, rounds: int) -> dict:
    ref = peer_round(target, case, runs, warmup, save=True)
    peer_times = list(ref["times"])
    model = build_ours(case, ref)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if case == "ar-train" else None
    if case == "ar-train":
        with torch.no_grad():
            model.eval()
            got = model(ref["inputs"][0], num_latents=512).logits
            model.train()
    else:
        got = ours_call(case, model, ref["inputs"])
    diff = check_same_function(f"{case}: ours vs krasserm perceiver-io", got, ref["output"])
    ours_times: list[float] = []
    for r in range(rounds):
        if r > 0:
            peer_times += peer_round(target, case, runs, warmup, save=False)["times"]
        for _ in range(warmup):
            ours_call(case, model, ref["inputs"], opt)
        for _ in range(runs):
            start = time.perf_counter()
            ours_call(case, model, ref["inputs"], opt)
            ours_times.append(time.perf_counter() - start)
    ours_s, peer_s = statistics.median(ours_times), statistics.median(peer_times)
    return {
        "ours": {"median_s": ours_s, "min_s": min(ours_times), "times": ours_times},
        "peer": {"median_s": peer_s, "min_s": min(peer_times), "times": peer_times},
        "speedup": peer_s / ours_s,
        "speedup_min": min(peer_times) / min(ours_times),
        "max_abs_diff": diff,
        "output_max_abs": float(ref["output"].abs().max()),
    }


LABELS = {
    "mlm": "language-perceiver MLM (201M), 2048 bytes, batch 1, inference (s)",
    "vision-fourier": "vision-perceiver-fourier (48M), 224 x 224, batch 1, inference (s)",
    "ar-train": "Perceiver AR train step, context 2048, batch 2 (s)",
}


def write_report(results: dict) -> str:
    """The .md report of `results` (the .json's contents)."""
    info = results["machine"]
    lines = [
        f"# Ours vs krasserm's perceiver-io {results['version']} (same weights)",
        "",
        f"Date: {results['date']} · commit `{results['commit']}` · command: `{results['command']}`",
        "",
        f"{describe(info)} fp32, eager both; see the script's docstring for the cases and the timing protocol.",
        "",
        "| case | ours (median / min) | krasserm (median / min) | speed-up (median / min) | max abs diff (output max) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for case, r in results["cases"].items():
        if "error" in r:
            lines.append(f"| {LABELS[case]} | not run: {r['error'][:200]} | | | |")
            continue
        lines.append(
            f"| {LABELS[case]} | {r['ours']['median_s']:.3f} / {r['ours']['min_s']:.3f} | "
            f"{r['peer']['median_s']:.3f} / {r['peer']['min_s']:.3f} | {r['speedup']:.2f}x / {r['speedup_min']:.2f}x | "
            f"{r['max_abs_diff']:.1e} ({r['output_max_abs']:.1f}) |"
        )
    lines += [
        "",
        "Speed-up = krasserm's time / ours. Both run the same weight GEMMs (PyTorch's `addmm` / `mm`); ours gains on "
        "attention (SDPA's fused kernel; for the image classifier the reassociated cross-attention over the 261 "
        "input channels: 108 -> 32 GFLOP, see perceiver_io.md) and on everything else.",
    ]
    if results.get("quick"):
        lines += ["", "**A `--quick` smoke run: too few runs for the report.**"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 runs per case (smoke run)")
    parser.add_argument("--cases", default="mlm,vision-fourier,ar-train", help="comma-separated cases")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of a peer subprocess and ours")
    add_results_dir_argument(parser)
    parser.add_argument(
        "--out", type=Path, default=None, help="output path without suffix (default: RESULTS_DIR/krasserm)"
    )
    parser.add_argument("--report-only", action="store_true", help="re-render OUT.md from OUT.json, no runs")
    args = parser.parse_args()
    out = args.out or results_dir(args.results_dir) / "krasserm"
    if args.report_only:
        text = write_report(read_results(out.with_suffix(".json")))
        atomic_write(out.with_suffix(".md"), text)
        print(text)
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or set(cases) - set(LABELS):
        parser.error(f"--cases: expected some of {','.join(LABELS)}, got {args.cases!r}")
    if args.rounds < 1:
        parser.error(f"--rounds: expected at least 1, got {args.rounds}")
    torch.set_num_threads(THREADS)
    runs = {"mlm": 4, "vision-fourier": 3, "ar-train": 9}
    results = {
        **run_record("bench_krasserm.py"),
        "quick": args.quick,
        "machine": machine(THREADS, peaks=not args.quick),  # a smoke run skips the matmul peaks (a minute)
        "version": VERSION,
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp)
        error = install(target)
        for case in cases:
            if error is not None:
                results["cases"][case] = {"error": f"cannot install krasserm's perceiver-io {VERSION}: {error}"}
                continue
            n, warmup, rounds = (2, 1, 1) if args.quick else (runs[case], 1, args.rounds)
            results["cases"][case] = bench_case(target, case, n, warmup, rounds)
            print(case, f"{results['cases'][case]['speedup']:.2f}x", flush=True)
    finish(results["machine"])  # the load and the FMA ceiling at the end (the machine's drift)
    print(write_results(out.parent, out.name, results, write_report))


if __name__ == "__main__":
    main()
