"""Regenerate the README's speed table from `benchmarks/results/<machine>/*.json` (never typed by hand).

    .venv/bin/python benchmarks/tables.py            # rewrites the block between the speed-table markers in README.md
    .venv/bin/python benchmarks/tables.py --print    # prints it instead
    .venv/bin/python benchmarks/tables.py --print --results /tmp/trial   # the table of other results folders

`--results` is a folder of per-machine folders (as `benchmarks/results/`) or one machine's folder (a bench script's
`--results-dir`). Files of `--quick` smoke runs are left out (with a note on stderr).

Each machine has its folder (`machine.machine_slug()`: vendor, family and model id), so a run on a new CPU adds rows
beside the others' instead of replacing them. Each row names the machine its results file was measured on (CPU model,
family / model id and the flags that decide kernels) and the load during the run; the machine most recently measured
comes first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from machine import speedup  # benchmarks/: the script's folder

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
README = ROOT.parent / "README.md"
BEGIN, END = "<!-- speed-table:begin (benchmarks/tables.py) -->", "<!-- speed-table:end -->"


def _machine(info: dict) -> str:
    if "flags" not in info:
        return f"{info.get('cpu', '?')} (an earlier session's machine; flags not recorded)"
    flags = info["flags"]
    if "amx_bf16" in flags:
        bf16 = "native bf16, AMX"
    else:
        bf16 = "native bf16" if "avx512_bf16" in flags else "no native bf16"
    ident = info.get("cpu_id", "").replace("vendor_id ", "").replace("cpu family ", "family ")
    return f"{info.get('cpu', '?')} {ident} ({bf16})".replace("  ", " ").strip()


class ResultsError(Exception):
    """A results file the table cannot be made from (half-written, or of an unknown layout)."""


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: expected a complete JSON results file, got unreadable JSON ({e}); rerun its "
                           "benchmark or delete the file") from None  # fmt: skip
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read(folder: Path, name: str) -> dict | None:
    """The results file `name` of a machine's folder, or None where that benchmark has not run there or the file is
    a `--quick` smoke run's (a note on stderr)."""
    path = folder / name
    if not path.exists():
        return None
    data = _load_json(path)
    if data.get("quick"):
        print(f"note: left out {path}: a --quick smoke run", file=sys.stderr)
        return None
    return data


def _load(info: dict, row_load: list[float] | None = None) -> str:
    """The 1-minute load at the start and end of the run: `row_load` `[start, end]` where a row records its own
    (results merged from several runs), else the file's."""
    start = row_load[0:1] if row_load else info.get("load_average_at_start")
    end = row_load[1:2] if row_load else info.get("load_average_at_end")
    if not start:
        return ""
    s = start[0] if isinstance(start, list | tuple) else start
    e = end[0] if isinstance(end, list | tuple) else end if end else None
    return f"{s:.1f}" + (f"-{e:.1f}" if e is not None else "")


def classic_rows(folder: Path) -> list[list[str]]:
    data = _read(folder, "classic.json")
    if data is None:
        return []
    info, rows = data["machine"], []
    for r in data["rows"]:
        if r["case"] != "b1-224x224":
            continue
        lat, mem = r["latency"], r["memory"]
        peer = lat["peer"]["median_s"]
        best = min(lat[k]["median_s"] for k in ("peer", "peer-compile") if k in lat)
        what = f"classic snippet 224x224, batch 1, {r['precision']}"
        mem_ratio = f"{mem['ours']['peak_increase_mb'] / mem['peer']['peak_increase_mb']:.2f}x"
        rows.append([what, "perceiver-pytorch", f"{peer / lat['ours']['median_s']:.2f}x", "", mem_ratio,
                     _machine(info), _load(info), "classic.md"])  # fmt: skip
        if "ours-opt" in lat:
            rows.append([what, "perceiver-pytorch (faster of eager, compiled)", "",
                         f"{best / lat['ours-opt']['median_s']:.2f}x ({r['chosen']})", "", _machine(info), _load(info),
                         "classic.md"])  # fmt: skip
    return rows


IO_CASES = {
    "mlm-fp32": "language-perceiver MLM, 2048 bytes, fp32",
    "vision-fp32": "vision-perceiver-learned 224x224, batch 1, fp32",
    "vision-train-fp32-nodrop": "vision-learned training step, batch 2, fp32",
    "vision-train-fp32-nodrop-ckpt": "same, with set_grad_checkpointing()",
    "mlm-bf16": "language-perceiver MLM, bf16 autocast",
    "vision-bf16": "vision-perceiver-learned, bf16 autocast",
    "vision-train-bf16-nodrop": "vision-learned training step, batch 2, bf16 autocast",
}


def io_rows(folder: Path) -> list[list[str]]:
    data = _read(folder, "perceiver_io.json")
    if data is None:
        return []
    info = data["machine"]
    by = {(r["case"], r["impl"]): r for r in data["rows"]}
    out = []
    for case, what in IO_CASES.items():
        hf, ours, opt = by.get((case, "hf")), by.get((case, "ours")), by.get((case, "ours-opt"))
        if not hf or not ours:
            continue
        peers = [r for r in (hf, by.get((case, "hf-compile"))) if r]
        best = min(peers, key=lambda r: r["median_s"])
        mem = f"{ours['peak_delta_mb'] / max(hf['peak_delta_mb'], 1e-9):.2f}x"
        chosen = ""
        if opt and opt.get("optimize_report"):
            chosen = opt["optimize_report"].splitlines()[0].split("chose ")[1].split(",")[0].strip("'")
        speed_opt = f"{speedup(best, opt):.2f}x ({chosen})" if opt else ""
        vs = "transformers (opt: vs the faster of eager, compiled)" if len(peers) > 1 else "transformers (eager)"
        out.append([what, vs, f"{speedup(hf, ours):.2f}x",
                    speed_opt, mem, _machine(info), _load(info, ours.get("load_average")), "perceiver_io.md"])  # fmt: skip
    return out


def flow_rows(folder: Path) -> list[list[str]]:
    data = _read(folder, "flow.json")
    if data is None:
        return []
    info = data["machine"]
    out = []
    for r in data["rows"]:
        if r.get("implementation") == "ours" and r.get("latency_ratio_vs_transformers") and not r.get("autocast"):
            out.append([f"optical flow 368x496, {r['case'].removeprefix('ours, ')}", "transformers",
                        f"{1 / r['latency_ratio_vs_transformers']:.2f}x", "", f"{r['peak_ratio_vs_transformers']:.2f}x",
                        _machine(info), _load(info), "flow.md"])  # fmt: skip
            break
    return out


def ar_rows(folder: Path) -> list[list[str]]:
    data = _read(folder, "ar.json")
    if data is None:
        return []
    info, load = data["machine"], data.get("load")
    m, ld = _machine(info), _load(info, load)
    out = [
        ["Perceiver AR: 256 new tokens after 2048 (cached generation)", "perceiver-ar-pytorch",
         f"{data['generate']['speedup']:.1f}x", "", "", m, ld, "ar.md"],
        *([["Perceiver AR: 256 greedy tokens after 1792, both with a KV cache", "krasserm perceiver-io",
            f"{k['speedup']:.2f}x", "", "", m, ld, "ar.md"]] if "speedup" in (k := data.get("generate_krasserm", {}))
          else []),
        ["Perceiver AR training step, context 2048",
         "perceiver-ar-pytorch" + (" (opt: vs the faster of eager, compiled)" if "opt_speedup" in data["train"] else ""),
         f"{data['train']['speedup']:.2f}x",
         f"{data['train']['opt_speedup']:.2f}x ({data['train']['opt_chosen']})" if "opt_speedup" in data["train"] else "",
         f"{data['train']['mem_ratio']:.2f}x", m, ld, "ar.md"],
    ]  # fmt: skip
    if "ckpt_mem_ratio" in (t := data["train"]):
        out.append(["Perceiver AR training step, context 2048, ours with set_grad_checkpointing()",
                    "perceiver-ar-pytorch (no checkpointing)", f"{t['peer']['median_s'] / t['ours-ckpt']['median_s']:.2f}x",
                    "", f"{t['ckpt_mem_ratio']:.2f}x", m, ld, "ar.md"])  # fmt: skip
    if long := data.get("long"):
        c = long["config"]
        size = f"context {c['max_seq_len']}, {c['max_seq_len'] - c['cross_attn_seq_len']} latents, width {c['dim']}"
        out += [
            [f"Perceiver AR training step, {size}, {c['depth']} layers", "perceiver-ar-pytorch",
             f"{long['speedup']:.2f}x", "", f"{long['mem_ratio']:.2f}x", m, ld, "ar.md"],
            ["same, ours with set_grad_checkpointing()", "perceiver-ar-pytorch (no checkpointing)",
             f"{long['ckpt_speedup']:.2f}x", "", f"{long['ckpt_mem_ratio']:.2f}x", m, ld, "ar.md"],
        ]  # fmt: skip
    if "bf16_speedup" in t:
        forms = {"peer-bf16": "(bf16 autocast)", "peer-bf16w": "(bf16 weights: it fails under bf16 autocast)"}
        vs = "perceiver-ar-pytorch " + forms.get(
            t["bf16_best_peer"], f"(fails under autocast: vs {t['bf16_best_peer']})"
        )
        opt = f"{t['opt_bf16_speedup']:.2f}x ({t['opt_bf16_chosen']})" if "opt_bf16_speedup" in t else ""
        out.append(
            ["Perceiver AR training step, bf16 autocast", vs, f"{t['bf16_speedup']:.2f}x", opt, "", m, ld, "ar.md"]
        )
    r = data["resampler"]
    opt = f"{r['opt_speedup']:.2f}x ({r['opt_chosen']})" if "opt_speedup" in r else ""
    vs = "flamingo-pytorch (opt: vs the faster of eager, compiled)" if opt else "flamingo-pytorch"
    out.append(["Perceiver Resampler forward", vs, f"{r['speedup']:.2f}x", opt, "", m, ld, "ar.md"])
    if "bf16_speedup" in r:
        out.append(["Perceiver Resampler forward, bf16 autocast", "flamingo-pytorch (bf16 autocast)",
                    f"{r['bf16_speedup']:.2f}x", "", "", m, ld, "ar.md"])  # fmt: skip
    return out


def krasserm_rows(folder: Path) -> list[list[str]]:
    data = _read(folder, "krasserm.json")
    if data is None:
        return []
    info = data["machine"]
    labels = {
        "mlm": "language-perceiver MLM, 2048 bytes, fp32",
        "vision-fourier": "vision-perceiver-fourier 224x224, batch 1, fp32",
        "ar-train": "Perceiver AR training step, context 2048, fp32",
    }
    return [
        [labels[case], f"krasserm perceiver-io {data['version']}", f"{r['speedup']:.2f}x", "", "", _machine(info),
         _load(info), "krasserm.md"]
        for case, r in data["cases"].items() if "speedup" in r
    ]  # fmt: skip


def lora_rows(folder: Path) -> list[list[str]]:
    data = _read(folder, "lora.json")
    if data is None:
        return []
    t, rss = data["median_s"], data["peak_rss_mb"]
    return [[
        "LoRA fine-tuning step (rank 8), text classifier 201M, 2 x 512 bytes, fp32", "transformers + peft (eager)",
        f"{t['hf-peft-lora'] / t['ours-lora']:.2f}x", f"{t['hf-peft-lora'] / t['ours-lora-opt']:.2f}x ({data['opt_chosen']})",
        f"{rss['ours-lora'] / rss['hf-peft-lora']:.2f}x", _machine(data["machine"]), _load(data["machine"]), "lora.md",
    ]]  # fmt: skip


def quant_rows(folder: Path) -> list[list[str]]:
    data = _read(folder, "quant.json")
    if data is None:
        return []
    labels = {"mlm": "language-perceiver MLM, 2048 bytes", "vision": "vision-perceiver-learned 224x224, batch 1"}
    out = []
    for case, c in data["cases"].items():
        t = c["median_s"]
        out.append([
            f"{labels[case]}, int8 allowed (`allow_int8=True`)", "transformers + the same torchao int8, compiled", "",
            f"{t['hf-int8'] / t['ours-opt']:.2f}x ({c['opt_chosen']}; {t['hf'] / t['ours-opt']:.2f}x its fp32)", "",
            _machine(data["machine"]), _load(data["machine"]), "quant.md",
        ])  # fmt: skip
        if "onnx-int8" in t:
            out.append([
                f"{labels[case]}, ONNX int8 (`perceiver export --quantize int8`, onnxruntime)",
                "transformers + the same torchao int8, compiled", "",
                f"{t['hf-int8'] / t['onnx-int8']:.2f}x ({t['hf'] / t['onnx-int8']:.2f}x its fp32)", "",
                _machine(data["machine"]), _load(data["machine"]), "quant.md",
            ])  # fmt: skip
    return out


def load_rows(folder: Path) -> list[list[str]]:
    data = _read(folder, "load.json")
    if data is None:
        return []
    out = []
    for name, case in data["cases"].items():
        f = case["forms"]
        ours, mapped = f["ours"], f["ours-mmap"]
        out.append([
            f"`from_pretrained` of {name} ({ours['params'] / 1e6:.0f}M), fp32 safetensors",
            "transformers `from_pretrained` (its folder)",
            f"{ours['speedup']:.2f}x ({ours['ready_speedup']:.2f}x with every weight read once)",
            "", "", _machine(data["machine"]), _load(data["machine"]), "load.md",
        ])  # fmt: skip
        out.append([
            "same, `mmap=True` (copy-on-write views of the file, as transformers)",
            "transformers `from_pretrained` (its folder)",
            f"{mapped['speedup']:.2f}x ({mapped['ready_speedup']:.2f}x with every weight read once)",
            "", "", _machine(data["machine"]), _load(data["machine"]), "load.md",
        ])  # fmt: skip
    return out


def _date(data: dict) -> str:
    """When a results file's run was: `date` (or `run.date`, `machine.date`), '' where it has none."""
    for record in (data, data.get("run"), data.get("machine")):
        if isinstance(record, dict) and record.get("date"):
            return str(record["date"])
    return ""


def machine_folders(root: Path = RESULTS) -> list[Path]:
    """The per-machine result folders under `root`, the most recently measured first (by the newest file's date);
    `root` itself where it is one machine's folder (holds results files)."""

    def newest(folder: Path) -> str:
        return max((_date(_load_json(path)) for path in folder.glob("*.json")), default="")

    if not root.is_dir():
        return []
    if any(root.glob("*.json")):
        return [root]
    folders = [f for f in root.iterdir() if f.is_dir() and any(f.glob("*.json"))]
    return sorted(folders, key=newest, reverse=True)


ROWS = (
    (classic_rows, "classic.json"),
    (io_rows, "perceiver_io.json"),
    (flow_rows, "flow.json"),
    (ar_rows, "ar.json"),
    (krasserm_rows, "krasserm.json"),
    (lora_rows, "lora.json"),
    (quant_rows, "quant.json"),
    (load_rows, "load.json"),
)


def table(root: Path = RESULTS) -> str:
    """The speed table (markdown) of the results folders under `root`. Raises ResultsError where there is no
    results file to make a row from, or a file cannot be read (naming it)."""
    header = [
        "| case | vs | ours eager (speed-up) | ours after `optimize()` (chosen) | peak memory (ours / theirs) | machine "
        "| load | details |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    body = []
    for folder in machine_folders(root):
        rows = []
        for rows_of, name in ROWS:
            try:
                rows += rows_of(folder)
            except (KeyError, IndexError, TypeError, ZeroDivisionError) as e:
                got = f"no key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
                raise ResultsError(
                    f"{folder / name}: expected the layout {rows_of.__name__} reads, got {got} (a file of another "
                    "version of its benchmark? rerun it)"
                ) from None
        link = f"benchmarks/results/{folder.name}"
        body += ["| " + " | ".join(r[:-1] + [f"[{r[-1]}]({link}/{r[-1]})"]) + " |" for r in rows]
    if not body:
        raise ResultsError(
            f"no results to make the table from under {root}: expected benchmarks' .json files (not --quick smoke "
            "runs) in its machine folders; run a benchmark first (e.g. `python benchmarks/bench_classic.py`)"
        )
    return "\n".join(header + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the table instead of rewriting README.md")
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="folder of per-machine results folders, or one machine's folder (default: benchmarks/results)",
    )
    args = parser.parse_args()
    if args.results != RESULTS and not args.print:
        parser.error("--results: expected with --print (README.md's table is made from benchmarks/results only)")
    try:
        text = table(args.results)
    except ResultsError as e:
        raise SystemExit(f"tables.py: {e}") from None
    if args.print:
        print(text)
        return
    readme = README.read_text()
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(f"rewrote the speed table in {README} ({text.count(chr(10)) - 1} rows)")


if __name__ == "__main__":
    main()
