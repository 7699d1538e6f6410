"""The run directory of a `perceiver fit`: what the CLI writes there, what counts as a run that trained, and how a
new start refuses, clears or cleans up after itself (see `perceiver.training.cli`)."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

#: what the CLI writes into a run directory (`--overwrite` deletes these)
RUN_FILES = ("metrics.csv", "hparams.yaml", "config.yaml", "tb", "checkpoints", "model", "flow")


def run_contents(run_dir: Path) -> list[str]:
    """What of `RUN_FILES` in `run_dir` comes from a run that trained: checkpoints, a model folder, flow plots, or a
    metrics.csv with a logged metric (learning rates alone are logged before the first step). A start that failed
    before its first step leaves none of these, only config.yaml, hparams.yaml, tb/ and such a metrics.csv."""
    found = []
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(p.suffix == ".ckpt" for p in checkpoints.iterdir()):
        found.append("checkpoints")
    for name in ("model", "flow"):
        if (run_dir / name).is_dir() and any((run_dir / name).iterdir()):
            found.append(name)
    if _logs_a_metric(run_dir / "metrics.csv"):
        found.append("metrics.csv")
    return found


def _logs_a_metric(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if any(
                v not in (None, "") and k not in ("step", "epoch") and not k.startswith("lr-") for k, v in row.items()
            ):
                return True
    return False


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Before a new `fit`: refuse (or, with `overwrite`, clear) a run directory that holds a run; clear what a start
    that failed left there (see `run_contents`)."""
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not present:
        return
    real = run_contents(run_dir)
    if real and not overwrite:
        raise SystemExit(
            f"error: run directory {run_dir} already holds a run ({', '.join(real)}).\n"
            f"  resume it:        add --ckpt_path last\n"
            f"  start a new one:  choose another --trainer.default_root_dir, or add --overwrite true"
        )
    if not real:
        print(f"perceiver: clearing what a failed start left in {run_dir}: {', '.join(present)}", file=sys.stderr)
    _remove(run_dir, present)


def _remove(run_dir: Path, names: list[str]) -> None:
    for name in names:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink(missing_ok=True)


def undo_failed_start(run_dir: Path, existed: bool, before: set[str]) -> None:
    """Removes what a fit that failed before its first optimizer step wrote into `run_dir`."""
    if run_contents(run_dir):
        return
    new = [name for name in RUN_FILES if name not in before and (run_dir / name).exists()]
    _remove(run_dir, new)
    if not existed and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
    if new:
        print(f"perceiver: removed what the failed start wrote to {run_dir}: {', '.join(new)}", file=sys.stderr)
