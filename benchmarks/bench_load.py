"""Loading a checkpoint: `perceiver.from_pretrained` vs transformers' `from_pretrained`, the same weights on disk.

    .venv/bin/python benchmarks/bench_load.py            # writes benchmarks/results/<machine>/load.{md,json}
    .venv/bin/python benchmarks/bench_load.py --quick --results-dir /tmp/trial   # fewer rounds (a smoke run)

Cases, at the published sizes with random weights (transformers' model saved by its `save_pretrained`, then
converted and saved by ours): `language-perceiver` (`PerceiverForMaskedLM`, 201M parameters, 804 MB in fp32) and
`vision-perceiver-learned` (`PerceiverForImageClassificationLearned`, 62M). Forms:
- ours: `perceiver.from_pretrained(our folder)`: the model is built without its random draws
  (`perceiver.loading.no_init_weights`), every check runs (header shapes and dtypes, no missing or unexpected key, every
  tensor finite) and each tensor is copied from the memory-mapped safetensors file into the process's memory;
- ours-mmap: the same with `mmap=True`: the tensors stay copy-on-write views of the file (transformers' way);
- ours-mmap-unchecked: that with `check_finite=False` too (no weight read until used, as transformers' load);
- ours-bf16: the same folder with `dtype=torch.bfloat16`;
- ours-from-transformers: `perceiver.from_pretrained(transformers' folder)`: its weights converted to ours;
- transformers: `<its class>.from_pretrained(its folder)` (transformers 5: built on the meta device, weights
  assigned).

Each load runs in a fresh process (imports done before the clock starts; the file is in the page cache after the
first round), forms in turns, the order reversed every round. Time: median wall time of `from_pretrained` over the
rounds; beside it, that plus the time to read every weight once (a sum over each parameter), which a lazy load
(memory-mapped, nothing read) leaves to the first forward. Peak memory: the RSS high-water mark of the process minus its RSS before the call (both from
/proc/self/status; it counts the pages of a memory-mapped file the load read, which the page cache holds anyway and
other processes share), and private memory: the growth of `RssAnon` (the process's own memory, what a copy costs)
over the call; medians over the rounds, with `MALLOC_MMAP_THRESHOLD_=65536` as the other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import (  # benchmarks/: the script's folder
    add_results_dir_argument,
    describe,
    finish,
    machine,
    results_dir,
    run_record,
    write_results,
)

THREADS = 2
HF_CLASS = {
    "language-perceiver": "PerceiverForMaskedLM",
    "vision-perceiver-learned": "PerceiverForImageClassificationLearned",
}
FORMS = ("ours", "ours-mmap", "ours-mmap-unchecked", "ours-bf16", "ours-from-transformers", "transformers")

CHILD = r"""
import json, os, sys, time
import torch
torch.set_num_threads(int(sys.argv[4]))
form, folder, hf_class = sys.argv[1], sys.argv[2], sys.argv[3]
import perceiver, transformers
import perceiver.models, perceiver.pretrained  # ours' lazy imports, before the clock as transformers' are

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024

cls = getattr(transformers, hf_class)
before, anon = status("VmRSS:"), status("RssAnon:")
start = time.perf_counter()
if form == "ours":
    model = perceiver.from_pretrained(folder + "/ours")
elif form == "ours-mmap":
    model = perceiver.from_pretrained(folder + "/ours", mmap=True)
elif form == "ours-mmap-unchecked":
    model = perceiver.from_pretrained(folder + "/ours", mmap=True, check_finite=False)
elif form == "ours-bf16":
    model = perceiver.from_pretrained(folder + "/ours", dtype=torch.bfloat16)
elif form == "ours-from-transformers":
    model = perceiver.from_pretrained(folder + "/hf")
else:
    model = cls.from_pretrained(folder + "/hf")
seconds = time.perf_counter() - start
peak = status("VmHWM:") - before
private = status("RssAnon:") - anon
start = time.perf_counter()
with torch.no_grad():  # what the first forward pays on top where the load read nothing (page faults of the file)
    for p in model.parameters():
        p.sum()
touch = time.perf_counter() - start
n = sum(p.numel() for p in model.parameters())
print(json.dumps({"seconds": seconds, "peak_mb": peak, "private_mb": private, "touch_s": touch, "params": n}))
"""


def prepare(name: str, folder: Path) -> int:
    """transformers' model of `name` with random weights saved to folder/hf, ours (converted) to folder/ours."""
    import torch
    import transformers
    from bench_perceiver_io import hf_config  # the published configurations

    import perceiver

    torch.manual_seed(0)
    config = hf_config("mlm" if name == "language-perceiver" else "vision")
    hf = getattr(transformers, HF_CLASS[name])(config).eval()
    hf.save_pretrained(folder / "hf")
    ours = perceiver.from_pretrained(folder / "hf")
    ours.save_pretrained(folder / "ours")
    return sum(p.numel() for p in hf.parameters())


def run_form(form: str, folder: Path, name: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    cmd = [sys.executable, "-c", CHILD, form, str(folder), HF_CLASS[name], str(THREADS)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench(name: str, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        params = prepare(name, folder)
        size_mb = {k: sum(f.stat().st_size for f in (folder / k).iterdir()) / 2**20 for k in ("ours", "hf")}
        runs: dict[str, list[dict]] = {form: [] for form in FORMS}
        for r in range(rounds):
            for form in FORMS if r % 2 == 0 else reversed(FORMS):
                runs[form].append(run_form(form, folder, name))
    out = {"transformers_params": params, "folder_mb": size_mb, "rounds": rounds, "forms": {}}
    for form, rs in runs.items():
        out["forms"][form] = {
            "median_s": statistics.median(r["seconds"] for r in rs),
            "min_s": min(r["seconds"] for r in rs),
            "peak_mb": statistics.median(r["peak_mb"] for r in rs),
            "private_mb": statistics.median(r["private_mb"] for r in rs),
            "ready_s": statistics.median(r["seconds"] + r["touch_s"] for r in rs),
            "params": rs[0]["params"],
            "seconds": [r["seconds"] for r in rs],
        }
    hf = out["forms"]["transformers"]
    for form in FORMS:
        f = out["forms"][form]
        f["speedup"] = hf["median_s"] / f["median_s"]
        f["ready_speedup"] = hf["ready_s"] / f["ready_s"]
    return out


def markdown(results: dict) -> str:
    info = results["machine"]
    lines = [
        "# Loading a checkpoint: ours vs transformers (same weights on disk)",
        "",
        f"Date: {results['date']} · commit `{results['commit']}` · command: `{results['command']}`",
        "",
        describe(info),
        "",
        "Each load in a fresh process (imports before the clock; the files in the page cache after the first round), "
        "the forms in turns, the order reversed every round. Time: median (min) wall time of the `from_pretrained` "
        "call; peak RSS: high-water mark minus the RSS before the call (mapped file pages included); private: growth of "
        "RssAnon over the call (copies the process owns); medians. Speed-up against transformers' `from_pretrained` "
        "of its own folder, which reads no weight until the model uses it: 'load + every weight read once' adds the "
        "time of summing every parameter after the load, what a first forward pays on top for the weights it reads.",
        "",
        "| model | form | median s | min s | speed-up | load + every weight read once: s | speed-up | peak RSS MB "
        "| private MB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    labels = {
        "ours": "ours (`perceiver.from_pretrained`, our folder)",
        "ours-mmap": "ours, `mmap=True`",
        "ours-mmap-unchecked": "ours, `mmap=True, check_finite=False`",
        "ours-bf16": "ours, `dtype=torch.bfloat16`",
        "ours-from-transformers": "ours from transformers' folder (converted)",
        "transformers": "transformers (`from_pretrained`)",
    }
    for name, case in results["cases"].items():
        for form, f in case["forms"].items():
            lines.append(
                f"| {name} ({case['forms']['ours']['params'] / 1e6:.1f}M) | {labels[form]} | {f['median_s']:.3f} | "
                f"{f['min_s']:.3f} | {f['speedup']:.2f}x | {f['ready_s']:.3f} | {f['ready_speedup']:.2f}x | "
                f"{f['peak_mb']:.0f} | {f['private_mb']:.0f} |"
            )
    if results.get("quick"):
        lines += ["", "**A `--quick` smoke run: too few rounds for the report.**"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per form and model")
    parser.add_argument("--quick", action="store_true", help="2 rounds, language-perceiver only")
    parser.add_argument("--models", default=",".join(HF_CLASS), help="comma-separated: " + ", ".join(HF_CLASS))
    add_results_dir_argument(parser)
    args = parser.parse_args()
    names = ["language-perceiver"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    if not names or set(names) - set(HF_CLASS):
        parser.error(f"--models: expected some of {','.join(HF_CLASS)}, got {args.models!r}")
    if args.rounds < 1:
        parser.error(f"--rounds: expected at least 1, got {args.rounds}")
    info = machine(THREADS, peaks=False)
    results = {**run_record("bench_load.py"), "quick": args.quick, "machine": info, "cases": {}}
    for name in names:
        results["cases"][name] = bench(name, 2 if args.quick else args.rounds)
        forms = results["cases"][name]["forms"]
        print(name, {k: round(v["median_s"], 3) for k, v in forms.items()}, flush=True)
    finish(info, THREADS)
    print(write_results(results_dir(args.results_dir), "load", results, markdown))


if __name__ == "__main__":
    main()
