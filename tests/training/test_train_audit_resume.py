"""Resuming a `perceiver fit`: metrics.csv after a resume holds what an uninterrupted run logs (each epoch's training
means included), a `fast_dev_run` leaves the run directory as it was."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback
from trainutil import tiny_args

from perceiver.training.cli import main

MODULE = Path(__file__).stem  # the callback below is given to the CLI by class path


class CrashAt(Callback):
    """Raises at the start of batch `batch` of epoch `epoch` (a crash after the checkpoints of the epoch before)."""

    def __init__(self, epoch: int = 1, batch: int = 1) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError(f"crashed at epoch {self.epoch} batch {self.batch}")


class StopAt(Callback):
    """Asks the trainer to stop after batch `batch` of epoch `epoch`, as Lightning's `max_time` timer does."""

    def __init__(self, epoch: int = 0, batch: int = 1) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            trainer.should_stop = True


def logged(run_dir: Path) -> Counter:
    """(epoch, step, metric names) of every row of metrics.csv."""
    rows = csv.DictReader((run_dir / "metrics.csv").open())
    return Counter(
        (r["epoch"], r["step"], tuple(sorted(k for k, v in r.items() if v and k not in ("epoch", "step"))))
        for r in rows
    )


def test_a_resumed_run_logs_what_an_uninterrupted_run_logs(tmp_path):
    """The training means of the epoch before the crash are logged after that epoch's checkpoint; resuming must not
    move them out of metrics.csv (the resumed run never logs them again)."""
    common = ["--trainer.max_epochs=3", "--trainer.limit_train_batches=3"]
    full, broken = tmp_path / "full", tmp_path / "broken"
    main(["fit", *tiny_args("digits", full, *common)])
    crash = [f"--trainer.callbacks+={MODULE}.CrashAt", "--trainer.callbacks.init_args.epoch=2"]
    with pytest.raises(RuntimeError, match="crashed at"):
        main(["fit", *tiny_args("digits", broken, *common, *crash)])
    main(["fit", *tiny_args("digits", broken, *common, "--ckpt_path=last")])
    assert logged(broken) == logged(full)
    epochs = [r["epoch"] for r in csv.DictReader((broken / "metrics.csv").open()) if r.get("train/loss_epoch")]
    assert epochs == ["0", "1", "2"]
    (aside,) = broken.glob("metrics.after-checkpoint-*.csv")  # the crashed epoch's rows, logged again
    assert not any(r.get("train/loss_epoch") for r in csv.DictReader(aside.open()))


def test_extending_a_finished_run_keeps_its_last_epochs_training_means(tmp_path):
    main(["fit", *tiny_args("digits", tmp_path, "--trainer.max_epochs=1")])
    main(["fit", *tiny_args("digits", tmp_path, "--trainer.max_epochs=2"), "--ckpt_path=last"])
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["epoch"] for r in rows if r.get("train/loss_epoch")] == ["0", "1"]
    assert [r["epoch"] for r in rows if r.get("val/loss")] == ["0", "1"]
    assert not list(tmp_path.glob("metrics.after-checkpoint-*.csv"))  # nothing was logged after the checkpoint


@pytest.mark.parametrize("config", ["digits", "flow-synthetic"])
def test_fast_dev_run_writes_nothing_and_runs_in_a_run_directory(config, tmp_path):
    """Lightning's `fast_dev_run` suppresses logs and checkpoints; its one step must not leave a model folder or plots
    that make the real `fit` refuse the directory, nor be refused in a directory that holds a run."""
    main(["fit", *tiny_args(config, tmp_path), "--trainer.fast_dev_run=true"])
    assert not tmp_path.exists() or not any(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())
    main(["fit", *tiny_args(config, tmp_path)])  # the real run: not refused
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    main(["fit", *tiny_args(config, tmp_path), "--trainer.fast_dev_run=true"])
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before


def test_the_saved_config_neither_deletes_nor_resumes_its_run(tmp_path):
    """`--overwrite true` and `--ckpt_path last` act once on the run directory: reusing RUN_DIR/config.yaml resumes
    the run with --ckpt_path last, and without it refuses the directory instead of deleting the run."""
    main(["fit", *tiny_args("digits", tmp_path), "--overwrite=true"])
    saved = tmp_path / "config.yaml"
    main(["fit", "--config", str(saved), "--trainer.max_epochs=2", "--ckpt_path=last"])  # resumes
    text = saved.read_text()
    assert "overwrite: false" in text and "ckpt_path: null" in text
    weights = (tmp_path / "model" / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit, match="already holds a run"):
        main(["fit", "--config", str(saved)])
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == weights
    other = tmp_path / "other"
    main(["fit", "--config", str(saved), f"--trainer.default_root_dir={other}"])  # a new run from the record
    assert (other / "model" / "model.safetensors").is_file()


def test_evaluating_without_a_checkpoint_in_a_trained_run_directory_says_so(tmp_path, capsys):
    """`perceiver test --config RUN_DIR/config.yaml` (the record has no ckpt_path) evaluates the untrained model, as
    Lightning does; the command says so and names the option that evaluates the trained weights."""
    main(["fit", *tiny_args("digits", tmp_path)])
    capsys.readouterr()
    main(["test", "--config", str(tmp_path / "config.yaml")])
    err = capsys.readouterr().err
    assert "test without --ckpt_path runs the model as the configuration builds it" in err
    assert "--ckpt_path best" in err and "best.ckpt, last.ckpt" in err
    main(["test", "--config", str(tmp_path / "config.yaml"), "--ckpt_path=best"])
    assert "without --ckpt_path" not in capsys.readouterr().err


def test_a_run_stopped_inside_an_epoch_resumes_that_epoch(tmp_path):
    """A stop inside an epoch (`max_time`'s way: `should_stop` after a batch) writes last.ckpt with the epoch not
    completed: the resume trains the epoch's remaining batches, then the next epoch (2 + 2 + 4 steps), as many as
    an uninterrupted run, none skipped and none twice."""
    import torch

    common = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=4"]
    stop = [f"--trainer.callbacks+={MODULE}.StopAt", "--trainer.callbacks.init_args.batch=1"]
    main(["fit", *tiny_args("digits", tmp_path, *common, *stop)])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (ckpt["global_step"], ckpt["epoch"]) == (2, 0)
    main(["fit", *tiny_args("digits", tmp_path, *common, "--ckpt_path=last")])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (ckpt["global_step"], ckpt["epoch"]) == (6, 1)


class RecordLR(Callback):
    """Appends `global_step learning_rate` of each optimizer step to the file `path` (the CLI imports this module
    anew, so the records go through a file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {trainer.optimizers[0].param_groups[0]['lr']!r}\n")


def recorded(path: Path) -> dict[int, float]:
    return {int(step): float(lr) for step, lr in (line.split() for line in path.read_text().splitlines())}


def test_extending_max_epochs_on_resume_runs_every_step_on_the_new_schedule(tmp_path):
    """The warmup + cosine schedule spans the run's steps; resuming a 2-epoch run with --trainer.max_epochs 4 spans 4
    epochs. The first resumed step ran at the old schedule's last (near-minimum) rate, restored with the optimizer;
    every step of the resumed run must run at the rate an uninterrupted 4-epoch run uses at that step."""

    def args(name: str, epochs: int) -> list[str]:
        record = [f"--trainer.callbacks+={MODULE}.RecordLR", f"--trainer.callbacks.init_args.path={tmp_path / name}"]
        return tiny_args(
            "digits",
            tmp_path / name.split("-")[0].removesuffix(".txt"),
            "--trainer.limit_train_batches=3",
            *record,
            f"--trainer.max_epochs={epochs}",
        )

    main(["fit", *args("full.txt", 4)])
    main(["fit", *args("run-1.txt", 2)])
    main(["fit", *args("run-2.txt", 4), "--ckpt_path=last"])
    full, resumed = recorded(tmp_path / "full.txt"), recorded(tmp_path / "run-2.txt")
    assert sorted(resumed) == list(range(6, 12))
    assert resumed == pytest.approx({step: full[step] for step in range(6, 12)}, rel=1e-6)
