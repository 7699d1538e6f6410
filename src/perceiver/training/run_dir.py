"""The run directory of a `perceiver fit`: what the CLI writes there, what counts as a run that trained, how a new
start refuses, clears or cleans up after itself, and what `--ckpt_path last` resumes from, SLURM's requeue
checkpoints included (see `perceiver.training.cli`)."""

from __future__ import annotations

import csv
import re
import shutil
import sys
from pathlib import Path

#: what the CLI writes into a run directory (`--overwrite` deletes these, and the requeue checkpoints below)
RUN_FILES = ("metrics.csv", "hparams.yaml", "config.yaml", "tb", "checkpoints", "model", "flow")

#: Lightning's checkpoint on SLURM's requeue signal (SIGUSR1): `default_root_dir/hpc_ckpt_N.ckpt`, N = 1, 2, ...
HPC_CHECKPOINT = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


def hpc_checkpoints(run_dir: str | Path) -> list[Path]:
    """The SLURM requeue checkpoints (`hpc_ckpt_N.ckpt`) in `run_dir`, by N. Lightning writes one when a SLURM job
    gets the requeue signal, and resumes from the highest N only when `fit` is given no `ckpt_path` (a fresh start,
    which `prepare_run_dir` refuses while they are there); `--ckpt_path last` / `last_if_any` weigh them against the
    last checkpoints (`resume_path`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m[1]), p) for p in run_dir.iterdir() if (m := HPC_CHECKPOINT.fullmatch(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def resume_path(found: set[str], run_dir: str | Path) -> str | None:
    """What `--ckpt_path last` resumes from, given the last checkpoints that Lightning's `ckpt_path="last"` would
    consider (`found`): "last" (Lightning then picks the newest of them), or the newest SLURM requeue checkpoint of
    `run_dir` (which Lightning's "last" does not consider) when that is the newest file; None when there is
    neither."""
    from lightning.fabric.utilities.cloud_io import get_filesystem

    hpc = [str(p) for p in hpc_checkpoints(run_dir)]
    if not found and not hpc:
        return None
    newest = max([*found, *hpc], key=lambda path: get_filesystem(path).modified(path).timestamp())
    return newest if newest in hpc else "last"


def remove_hpc_leftovers(run_dir: str | Path) -> None:
    """Before any `fit`: delete what a requeue checkpoint write killed half-way left (`.hpc_ckpt_N.ckpt.*.tmp`):
    Lightning would number its next checkpoint after it, and try to resume from a file that does not exist."""
    from perceiver.training.callbacks import TMP_SUFFIX, remove_stale_temp_files

    for path in remove_stale_temp_files(run_dir, f".hpc_ckpt_*{TMP_SUFFIX}"):
        print(f"perceiver: removed {path}, left behind by a killed run", file=sys.stderr)


def run_contents(run_dir: Path) -> list[str]:
    """What of `RUN_FILES` in `run_dir` comes from a run that trained: checkpoints, a model folder, flow plots, or a
    metrics.csv with a logged metric (learning rates alone are logged before the first step), and SLURM requeue
    checkpoints (`hpc_checkpoints`). A start that failed before its first step leaves none of these, only
    config.yaml, hparams.yaml, tb/ and such a metrics.csv."""
    found = []
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(p.suffix == ".ckpt" for p in checkpoints.iterdir()):
        found.append("checkpoints")
    for name in ("model", "flow"):
        if (run_dir / name).is_dir() and any((run_dir / name).iterdir()):
            found.append(name)
    if _logs_a_metric(run_dir / "metrics.csv"):
        found.append("metrics.csv")
    return found + [p.name for p in hpc_checkpoints(run_dir)]


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
    that failed left there (see `run_contents`). SLURM requeue checkpoints count as a run: under SLURM Lightning
    would resume from them although no `--ckpt_path` asked for it."""
    present = [name for name in RUN_FILES if (run_dir / name).exists()] + [p.name for p in hpc_checkpoints(run_dir)]
    if not present:
        return
    real = run_contents(run_dir)
    if real and not overwrite:
        raise SystemExit(
            f"error: run directory {run_dir} already holds a run ({', '.join(real)}).\n"
            f"  resume it:        add --ckpt_path last (or last_if_any)\n"
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


def untrained_note(run_dir: str | Path, subcommand: str) -> str | None:
    """What `validate` / `test` / `predict` without `--ckpt_path` in a run directory with checkpoints should know:
    Lightning then runs the model as the configuration builds it (untrained, or the `pretrained` folder), not the
    weights trained there. None when the run directory has no checkpoint."""
    folder = Path(run_dir) / "checkpoints"
    found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    if not found:
        return None
    return (
        f"{subcommand} without --ckpt_path runs the model as the configuration builds it, not the weights trained "
        f"in {run_dir} ({', '.join(found)}); for those add --ckpt_path best (or last, or a checkpoint file)"
    )
