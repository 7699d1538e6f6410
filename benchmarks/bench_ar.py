"""Perceiver AR and the Perceiver Resampler: ours vs perceiver-ar-pytorch / flamingo-pytorch, same weights.

    .venv/bin/python benchmarks/bench_ar.py                # writes benchmarks/results/<machine>/ar.{md,json}
    .venv/bin/python benchmarks/bench_ar.py --quick --results-dir /tmp/trial   # a smoke run, not for the report

Before timing, ours' outputs are checked against each peer's on the same input (same weights: max abs diff <= 1e-4
relative, fp32): the Perceiver AR logits and the resampler's output.

Cases (fp32, 2 threads):

- generate: 256 new tokens after a 2048-token prompt. perceiver-ar-pytorch: `AutoregressiveWrapper.generate`
  (a full forward of the last `max_seq_len` tokens per token, top-k sampling with `filter_thres=0.9`); ours:
  `PerceiverAR.generate` with its KV cache, the same top-k (k = 10% of the vocabulary) sampling. Same weights
  (`PerceiverAR.from_perceiver_ar_pytorch`). Window 2048, 512 latents (perceiver-ar-pytorch: `cross_attn_seq_len`
  1536), width 256, 4 + 1 layers, 4 heads of 64, vocabulary 262.
- generate-cached: the peer with a KV cache, krasserm's perceiver-io (its PyPI wheel, run in a subprocess because its
  package is also named `perceiver`, see `tests/krasserm_peer.py`): its causal language model (width 256, 4 heads of
  64, 1 cross + 4 self layers, window 2048, up to 512 latents, its defaults otherwise: learned positions, rotary in
  the first self-attention layer) and ours built from its weights (`PerceiverAR.from_krasserm`), 256 greedy tokens
  after a 1792-token prompt with 256 latents, so that the latents grow to 512 and the window never slides (where the
  two cache policies differ: its cache is truncated, ours recomputed). Its steps are its Hugging Face wrapper's
  (`prepare_inputs_for_generation`, forward with `past_key_values`) in a plain loop: transformers 5 no longer mixes
  `GenerationMixin` into its `PreTrainedModel`, so its `generate` fails. The generated tokens are compared.
- train step: forward + backward + AdamW step at context 2048 (batch 2), the same model: both eager, ours after
  `perceiver.optimize(training=True)` (eager / compile / SDPA math backend / oneDNN Linears) and
  perceiver-ar-pytorch under `torch.compile`. Time: median of interleaved runs in one process; peak memory: a fresh process per implementation, RSS high-water mark reset
  (`/proc/self/clear_refs`) after building the model and optimizer and one warm-up step, then more steps; we report
  the peak increase over the RSS before them, with `MALLOC_MMAP_THRESHOLD_=65536`, median of 3 processes each.
- gradient checkpointing: ours with `set_grad_checkpointing()` (`ours-ckpt`: each layer keeps its inputs and is
  recomputed in the backward pass; perceiver-ar-pytorch has no such option) in the train step above (time and peak
  memory), and a long window with a larger model (`LONG`: context 8192 = 7168 prefix + 1024 latents, width 512, 8
  latent layers, 8 heads of 64, batch 1), where the latent layers' activations rather than the one cross-attention
  over the window set the peak: ours eager, ours checkpointed and perceiver-ar-pytorch eager, peak memory as above
  and step time (median of interleaved runs).
- resampler: forward of Flamingo's resampler (width 1024, depth 6, 64 latents, 8 heads x 64) on 2 x 1 x 256 media
  features (batch 2), ours vs flamingo-pytorch (`PerceiverResampler.from_flamingo_pytorch`): both eager, and ours
  after `perceiver.optimize` (fp32 candidates) vs the faster of flamingo-pytorch eager and `torch.compile`d (with and
  without Inductor freezing), interleaved in one process.
- bf16 (only where the CPU computes bf16 natively, `perceiver.hardware.has_native_bf16`): the train step and the
  resampler of both libraries under `torch.autocast("cpu", torch.bfloat16)`, timed with the fp32 forms, and ours
  after `perceiver.optimize(training=True)` called under that autocast (`ours-opt-bf16`: the candidates that keep
  the caller's arithmetic, `TRAINING_FP32`, among them the written-out `matmul-attention`); a form that fails under
  autocast is reported with its error (perceiver-ar-pytorch's: its mask value overflows bf16), so its network with
  bf16 weights (`peer-bf16w`, no autocast) is timed as well, and the train-step ratios are against the fastest peer
  form that runs, fp32 or bf16.
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
import time
from pathlib import Path

import torch
from bench_ar_krasserm import KRASSERM_PROMPT, bench_generate_krasserm  # the generate-cached case
from bench_ar_report import write_report  # the report (ar.md) of the results
from machine import (
    add_results_dir_argument,
    atomic_write,
    check_same_function,
    finish,
    machine,
    native_bf16,
    read_results,
    results_dir,
    run_record,
    time_by_kind,
    write_results,
)  # benchmarks/: the script's folder

THREADS = 2
AR = dict(num_tokens=262, dim=256, depth=4, max_seq_len=2048, cross_attn_seq_len=1536, dim_head=64, heads=4, ff_mult=4)
RESAMPLER = dict(dim=1024, depth=6, dim_head=64, heads=8, num_latents=64, num_media_embeds=4)
PROMPT, NEW_TOKENS, TRAIN_BATCH = 2048, 256, 2
# the long-window checkpointing case: a deeper, wider model with more latents, whose latent layers' activations
# (rather than the one cross-attention over the window) set the peak memory
LONG = dict(AR, dim=512, depth=8, heads=8, max_seq_len=8192, cross_attn_seq_len=8192 - 1024)
LONG_BATCH = 1
MEMORY_ROUNDS = 3


def build_ar(config: dict = AR):
    from perceiver_ar_pytorch import PerceiverAR as PeerAR
    from perceiver_ar_pytorch.autoregressive_wrapper import AutoregressiveWrapper

    from perceiver import PerceiverAR

    torch.manual_seed(0)
    peer = PeerAR(**config)
    ours = PerceiverAR.from_perceiver_ar_pytorch(peer.state_dict(), **config)
    return ours, AutoregressiveWrapper(peer)


def build_resampler():
    from flamingo_pytorch import PerceiverResampler as PeerResampler

    from perceiver import PerceiverResampler

    torch.manual_seed(0)
    peer = PeerResampler(**RESAMPLER).eval()
    return PerceiverResampler.from_flamingo_pytorch(peer.state_dict(), **RESAMPLER).eval(), peer


def tokens(b: int, n: int) -> torch.Tensor:
    return torch.randint(6, 262, (b, n), generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- generation


def gen_ours(model, prompt, new_tokens):
    return model.generate(prompt, new_tokens, do_sample=True, top_k=int(0.1 * 262), generator=torch.Generator())


def gen_peer(wrapper, prompt, new_tokens):
    return wrapper.generate(prompt, new_tokens, filter_thres=0.9)


def bench_generate(new_tokens: int) -> dict:
    ours, wrapper = build_ar()
    prompt = tokens(1, PROMPT)
    out = {}
    for name, fn, model in (("ours", gen_ours, ours), ("peer", gen_peer, wrapper)):
        fn(model, prompt[:, -64:] if name == "ours" else prompt, 2)  # warm-up
        start = time.perf_counter()
        fn(model, prompt, new_tokens)
        elapsed = time.perf_counter() - start
        out[name] = {"seconds": elapsed, "tokens_per_s": new_tokens / elapsed}
    out["speedup"] = out["ours"]["tokens_per_s"] / out["peer"]["tokens_per_s"]
    return out


# ----------------------------------------------------------------------------- training step


def train_step(impl: str, model, opt, x) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=impl.endswith("-bf16")):
        if impl.startswith("ours"):  # ours, or ours after perceiver.optimize (an OptimizedModel around it)
            loss = model(x, labels=x).loss
        else:  # perceiver-ar-pytorch's wrapper (peer, peer-bf16), its network (compiled: peer-compile; in bf16: peer-bf16w)
            loss = (model.net if impl in ("peer", "peer-bf16") else model)(x, labels=x)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _train_setup(impl: str, long: bool = False):
    config, batch = (LONG, LONG_BATCH) if long else (AR, TRAIN_BATCH)
    ours, wrapper = build_ar(config)
    model = (ours if impl.startswith("ours") else wrapper).train()
    del ours, wrapper
    gc.collect()
    if impl == "ours-ckpt":
        model.set_grad_checkpointing()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = tokens(batch, config["max_seq_len"])
    if impl in ("ours-opt", "ours-opt-bf16"):  # the latter times the candidates that keep the caller's bf16 autocast
        import perceiver
        from perceiver.optimization import TRAINING_FP32

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=impl.endswith("-bf16")):
            model = perceiver.optimize(
                model, (x,), {"labels": x}, training=True, candidates=TRAINING_FP32, loss_fn=lambda out: out.loss,
                warmup=2, repeats=3, verbose=False,
            )  # fmt: skip
    elif impl == "peer-compile":
        model = torch.compile(model.net)
    elif impl == "peer-bf16w":  # its bf16 form that runs: weights in bf16 (under autocast its mask value overflows)
        model = model.net.to(torch.bfloat16)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, opt, x


def _status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def memory_worker(impl: str, steps: int, long: bool = False) -> dict:
    torch.set_num_threads(THREADS)
    model, opt, x = _train_setup(impl, long)
    train_step(impl, model, opt, x)  # optimizer state allocated
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kb("VmRSS")
    for _ in range(steps):
        train_step(impl, model, opt, x)
    peak = _status_kb("VmHWM")
    return {
        "impl": impl,
        "baseline_rss_mb": base / 1024,
        "peak_rss_mb": peak / 1024,
        "peak_increase_mb": (peak - base) / 1024,
    }


def _peak_memory(out: dict, impls: tuple[str, ...], long: bool = False, rounds: int = MEMORY_ROUNDS) -> None:
    """`out[impl]["memory"]`: median peak RSS increase of a training step over MEMORY_ROUNDS fresh processes each."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    samples: dict[str, list[dict]] = {impl: [] for impl in impls}
    for _ in range(rounds):
        for impl in impls:
            spec = json.dumps({"impl": impl, "steps": 2, "long": long})
            res = subprocess.run(
                [sys.executable, __file__, "--memory-worker", spec], check=True, capture_output=True, text=True, env=env
            )
            samples[impl].append(json.loads(res.stdout.strip().splitlines()[-1]))
    for impl, rounds in samples.items():
        peak = statistics.median(r["peak_increase_mb"] for r in rounds)
        out.setdefault(impl, {})["memory"] = {"peak_increase_mb": peak, "rounds": rounds}


def bench_long(runs: int) -> dict:
    """The LONG model: ours eager, ours checkpointed, perceiver-ar-pytorch eager; time (interleaved, one process) and
    peak memory (fresh processes)."""
    impls = ("ours", "ours-ckpt", "peer")
    setups = {impl: _train_setup(impl, long=True) for impl in impls}
    for impl in impls:
        train_step(impl, *setups[impl])
    fns = {impl: (lambda impl=impl, s=setups: train_step(impl, *s[impl])) for impl in impls}
    out: dict = {"config": LONG, "batch": LONG_BATCH, **_interleaved(fns, runs)}
    del setups, fns
    gc.collect()
    _peak_memory(out, impls, long=True)
    mem = {impl: out[impl]["memory"]["peak_increase_mb"] for impl in impls}
    out["mem_ratio"], out["ckpt_mem_ratio"] = mem["ours"] / mem["peer"], mem["ours-ckpt"] / mem["peer"]
    out["speedup"] = out["peer"]["median_s"] / out["ours"]["median_s"]
    out["ckpt_speedup"] = out["peer"]["median_s"] / out["ours-ckpt"]["median_s"]
    return out


def check_ar(config: dict = AR) -> float:
    """Ours' and perceiver-ar-pytorch's logits on one window (eval mode): the same function before any timing."""
    ours, wrapper = build_ar(config)
    x = tokens(1, config["max_seq_len"])
    with torch.no_grad():
        got, ref = ours.eval()(x).logits, wrapper.net.eval()(x)
    return check_same_function("Perceiver AR: ours vs perceiver-ar-pytorch", got, ref)


def bench_train(runs: int, quick: bool = False) -> dict:
    """Eager steps of both, ours after `perceiver.optimize(training=True)` and perceiver-ar-pytorch under
    `torch.compile`, interleaved in one process; peak memory of the eager forms in fresh processes. `quick`: the
    eager forms only."""
    out: dict = {"max_abs_diff": check_ar()}
    setups = {}
    bf16_forms = ("ours-bf16", "ours-opt-bf16", "peer-bf16", "peer-bf16w") if native_bf16() and not quick else ()
    fp32_forms = ("ours", "peer", "ours-ckpt") if quick else ("ours", "peer", "ours-opt", "peer-compile", "ours-ckpt")
    for impl in (*fp32_forms, *bf16_forms):
        try:
            setups[impl] = _train_setup(impl)
            train_step(impl, *setups[impl])
        except Exception as e:  # a form that does not run here is reported, not fatal
            setups.pop(impl, None)
            out[impl] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    fns = {impl: (lambda impl=impl, s=setups: train_step(impl, *s[impl])) for impl in setups}
    out.update(_interleaved(fns, runs))
    out["profile_ms"] = {impl: time_by_kind(fns[impl]) for impl in ("ours", "peer")}  # where the eager time goes
    if "ours-opt" in setups:
        out["opt_chosen"] = setups["ours-opt"][0].report.chosen
    if "ours-opt-bf16" in setups:
        out["opt_bf16_chosen"] = setups["ours-opt-bf16"][0].report.chosen
    del setups, fns
    gc.collect()
    # Fresh processes, alternating, with MALLOC_MMAP_THRESHOLD_ (as bench_perceiver_io.py): freed blocks go back to
    # the OS, so the peak is that of live tensors rather than of glibc's heap fragmentation (which made one run of
    # the same step read 48 MB and another 125 MB); the median of MEMORY_ROUNDS processes is reported.
    _peak_memory(out, ("ours", "peer", "ours-ckpt"), rounds=1 if quick else MEMORY_ROUNDS)
    out["ckpt_mem_ratio"] = out["ours-ckpt"]["memory"]["peak_increase_mb"] / out["peer"]["memory"]["peak_increase_mb"]
    out["speedup"] = out["peer"]["median_s"] / out["ours"]["median_s"]
    out["mem_ratio"] = out["ours"]["memory"]["peak_increase_mb"] / out["peer"]["memory"]["peak_increase_mb"]
    peers = [n for n in ("peer", "peer-compile") if "median_s" in out.get(n, {})]
    if "median_s" in out.get("ours-opt", {}):
        out["opt_best_peer"] = min(peers, key=lambda n: out[n]["median_s"])
        out["opt_speedup"] = out[out["opt_best_peer"]]["median_s"] / out["ours-opt"]["median_s"]
    if "median_s" in out.get("ours-bf16", {}):
        bf16_peers = [n for n in (*peers, "peer-bf16", "peer-bf16w") if "median_s" in out.get(n, {})]
        out["bf16_best_peer"] = min(bf16_peers, key=lambda n: out[n]["median_s"])
        out["bf16_speedup"] = out[out["bf16_best_peer"]]["median_s"] / out["ours-bf16"]["median_s"]
        if "median_s" in out.get("ours-opt-bf16", {}):
            out["opt_bf16_speedup"] = out[out["bf16_best_peer"]]["median_s"] / out["ours-opt-bf16"]["median_s"]
    return out


# ----------------------------------------------------------------------------- resampler


def _interleaved(fns: dict, runs: int) -> dict:
    """Median seconds of `runs` calls of each function, in rotating order after one warm-up round."""
    times = {name: [] for name in fns}
    names = list(fns)
    for i in range(runs + 1):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            fns[name]()
            if i:
                times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "times_s": t} for name, t in times.items()}


def bench_resampler(runs: int, quick: bool = False) -> dict:
    """Eager forms, `perceiver.optimize` (fp32 candidates) for ours, `torch.compile` (with and without Inductor
    freezing, the faster kept) for flamingo-pytorch; all timed in one process, interleaved. `quick`: the eager
    forms only."""
    import perceiver
    from perceiver.optimization import compile_frozen

    ours, peer = build_resampler()
    media = torch.randn(2, 1, 256, RESAMPLER["dim"], generator=torch.Generator().manual_seed(2))
    out = {}
    with torch.no_grad():
        diff = check_same_function("resampler: ours vs flamingo-pytorch", ours(media).last_hidden_state, peer(media))
        fns = {"ours": lambda: ours(media), "peer": lambda: peer(media)}
        fast, peer_forms = None, {}
        if not quick:
            fast = perceiver.optimize(
                ours, (media,), candidates=("eager", "compile", "compile-freezing", "onednn-linear"), verbose=False
            )
            peer_forms = {
                "peer-compile": torch.compile(peer),
                "peer-compile-freezing": compile_frozen(peer),  # options={"freezing": True} alone does not freeze
            }
            fns["ours-opt"] = lambda: fast(media)
        if native_bf16() and not quick:
            for name, model in (("ours-bf16", ours), ("peer-bf16", peer)):
                fns[name] = lambda model=model: _bf16(model, media)
            diff_bf16 = (ours_bf16 := _bf16(ours, media).last_hidden_state.float()) - _bf16(peer, media).float()
            out["max_abs_diff_bf16"] = diff_bf16.abs().max().item()
            out["max_abs_ref_bf16"] = ours_bf16.abs().max().item()
        for name, fn in peer_forms.items():
            try:
                fn(media)
                fns[name] = lambda fn=fn: fn(media)
            except Exception as e:  # report, do not fail the benchmark
                out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        out.update(_interleaved(fns, runs))
        out["profile_ms"] = {impl: time_by_kind(fns[impl], runs=5) for impl in ("ours", "peer")}
    compiled = [n for n in peer_forms if "median_s" in out.get(n, {})]
    best_peer = min(["peer", *compiled], key=lambda n: out[n]["median_s"])
    out["speedup"] = out["peer"]["median_s"] / out["ours"]["median_s"]
    if fast is not None:
        out["opt_chosen"] = fast.report.chosen
        out["opt_best_peer"] = best_peer
        out["opt_speedup"] = out[best_peer]["median_s"] / out["ours-opt"]["median_s"]
    out["max_abs_diff"] = diff
    if "ours-bf16" in out:
        out["bf16_speedup"] = out["peer-bf16"]["median_s"] / out["ours-bf16"]["median_s"]
    return out


def _bf16(model, media):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(media)


# ----------------------------------------------------------------------------- report


def machine_info(peaks: bool = True) -> dict:
    """The shared machine record (`machine.py`: CPU, id, flags, matmul peak per backend) plus the peers' versions."""
    from importlib.metadata import version

    return machine(THREADS, peaks=peaks) | {
        "perceiver_ar_pytorch": version("perceiver-ar-pytorch"),
        "flamingo_pytorch": version("flamingo-pytorch"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="16 new tokens, 3 runs, eager forms only, no long-window or krasserm case (smoke run, not for the report)",
    )
    parser.add_argument("--runs", type=int, default=9, help="timed runs per implementation (train step)")
    parser.add_argument(
        "--resampler-runs",
        type=int,
        default=25,
        help="timed runs per implementation of the resampler forward (~0.3 s each: on an AVX2 EPYC single runs "
        "of one form read 0.31 and 0.42 s, so 5 runs left the median to chance)",
    )
    add_results_dir_argument(parser)
    parser.add_argument("--out", type=Path, default=None, help="output path without suffix (default: RESULTS_DIR/ar)")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    parser.add_argument("--report-only", action="store_true", help="re-render OUT.md from OUT.json, no runs")
    args = parser.parse_args()
    out = args.out or results_dir(args.results_dir) / "ar"
    if args.report_only:
        text = write_report(read_results(out.with_suffix(".json")))
        atomic_write(out.with_suffix(".md"), text)
        print(text)
        return
    for name in ("runs", "resampler_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected at least 1, got {getattr(args, name)}")
    if args.memory_worker:
        spec = json.loads(args.memory_worker)
        print(json.dumps(memory_worker(spec["impl"], spec["steps"], spec["long"])))
        return
    torch.set_num_threads(THREADS)
    runs, new_tokens = (3, 16) if args.quick else (args.runs, NEW_TOKENS)
    load0 = os.getloadavg()[0]
    results = {
        **run_record("bench_ar.py"),
        "quick": args.quick,
        "machine": machine_info(peaks=not args.quick),  # a smoke run skips the matmul peaks (a minute)
        "new_tokens": new_tokens,
    }
    results["resampler"] = bench_resampler(3 if args.quick else args.resampler_runs, args.quick)
    print("resampler", results["resampler"]["speedup"], flush=True)
    results["train"] = bench_train(runs, args.quick)
    print("train", results["train"]["speedup"], results["train"]["mem_ratio"], flush=True)
    if not args.quick:  # the long window (minutes per step) and krasserm's (installed from PyPI): full runs only
        results["long"] = bench_long(5)
        print("long context", results["long"]["ckpt_mem_ratio"], flush=True)
    results["generate"] = bench_generate(new_tokens)
    print("generate", results["generate"]["speedup"], flush=True)
    if not args.quick:
        results["generate_krasserm"] = bench_generate_krasserm(new_tokens, tokens(1, KRASSERM_PROMPT), THREADS)
        print("generate vs krasserm", results["generate_krasserm"].get("speedup"), flush=True)
    results["load"] = [load0, os.getloadavg()[0]]
    finish(results["machine"])  # the load and the FMA ceiling at the end (the machine's drift)
    print(write_results(out.parent, out.name, results, write_report))  # the .json first: before the report can fail


if __name__ == "__main__":
    main()
