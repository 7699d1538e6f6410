"""`python -m perceiver.training.results [NAME ...]`: run shipped configs end to end and print the results table.

For each config: `perceiver fit --config configs/NAME.yaml --overwrite true`, then `perceiver test` on the best
checkpoint (in one process), each as its own process; the wall-clock time of both commands is measured. The test
metrics (and baselines) are read back from `RUN_DIR/metrics.csv` and printed as a markdown row (the results table of
README.md and docs/training.md).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path
from typing import TypedDict

from perceiver.training.config_files import shipped_config

#: config -> (metric, baseline metric or None, how to print them)
TABLE = {
    "digits": ("test/acc", None, "test accuracy"),
    "mlm-pydoc": ("test/acc", "test/acc_baseline", "masked-byte accuracy, held-out topics"),
    "points-synthetic": ("test/acc", None, "test accuracy"),
    "flow-synthetic": ("test/epe", "test/epe_zero", "test end-point error (px)"),
}


class ResultRow(TypedDict):
    """One config's results (`run_config`): name, metric label, test value and baseline, wall-clock, command."""

    name: str
    label: str
    value: float | None
    baseline: float | None
    seconds: float
    command: str


def last_value(csv_path: Path, key: str) -> float | None:
    """The last non-empty value of column `key` in a Lightning metrics.csv."""
    value = None
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get(key):
                value = float(row[key])
    return value


def run_config(name: str, extra: list[str], runs_dir: str | Path = "runs") -> ResultRow:
    """fit + test one shipped config in fresh processes; returns its metrics and wall-clock seconds."""
    config = shipped_config(f"{name}.yaml")
    run_dir = Path(runs_dir) / name
    cli = [sys.executable, "-m", "perceiver.training.cli"]
    start = time.perf_counter()
    fit = [*cli, "fit", "--config", str(config), f"--trainer.default_root_dir={run_dir}", "--overwrite=true", *extra]
    subprocess.run(fit, check=True)
    best = run_dir / "checkpoints" / "best.ckpt"
    # Testing in one process: a distributed sampler would pad the test set to a multiple of the process count.
    test = [*cli, "test", "--config", str(config), f"--trainer.default_root_dir={run_dir}", f"--ckpt_path={best}",
            "--trainer.devices=1", "--trainer.strategy=auto"]  # fmt: skip
    subprocess.run([*test, *extra], check=True)
    seconds = time.perf_counter() - start
    metric, baseline, label = TABLE[name]
    csv_path = run_dir / "metrics.csv"
    return {
        "name": name,
        "label": label,
        "value": last_value(csv_path, metric),
        "baseline": last_value(csv_path, baseline) if baseline else None,
        "seconds": seconds,
        "command": f"perceiver fit --config configs/{name}.yaml && perceiver test --config configs/{name}.yaml "
        f"--ckpt_path runs/{name}/checkpoints/best.ckpt",
    }


def markdown_row(r: ResultRow) -> str:
    baseline = "" if r["baseline"] is None else f"{r['baseline']:.4f}"
    return f"| `{r['name']}` | {r['label']} | {r['value']:.4f} | {baseline} | {r['seconds'] / 60:.1f} min | `{r['command']}` |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perceiver.training.results", description=__doc__)
    parser.add_argument("names", nargs="*", default=list(TABLE), help=f"configs to run (default: {list(TABLE)})")
    parser.add_argument("--runs-dir", default="runs", help="parent of the run directories (default: runs)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="CLI overrides for every run")
    args = parser.parse_args(argv)
    rows = []
    for name in args.names:
        if name not in TABLE:
            raise SystemExit(f"error: unknown config {name!r}; choose from {list(TABLE)}")
        rows.append(run_config(name, args.extra, args.runs_dir))
        if rows[-1]["value"] is None:
            raise SystemExit(f"error: {TABLE[name][0]} not found in {Path(args.runs_dir) / name / 'metrics.csv'}")
        print(markdown_row(rows[-1]), flush=True)
    print("\n| config | metric | result | baseline | wall-clock (fit + test) | command |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(markdown_row(r))


if __name__ == "__main__":
    main()
