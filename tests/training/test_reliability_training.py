"""Training faults: a non-finite loss stops the run naming the step, non-finite weights are never checkpointed or
saved as the model, a run interrupted and resumed writes no duplicate metrics rows and leaves no temp files, step
checkpoints resume inside an epoch."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from trainutil import tiny_args

from perceiver.training.callbacks import FiniteCheck, NonFiniteError
from perceiver.training.cli import main

MODULE = Path(__file__).stem  # the callbacks below are given to the CLI by class path


class PoisonAt(Callback):
    """Sets the first parameter to NaN at a training step (`hook="batch"`) or after the last step of an epoch
    (`hook="epoch_end"`, before the checkpoints of that epoch are written)."""

    def __init__(self, step: int = 1, hook: str = "batch") -> None:
        self.step, self.hook = step, hook

    def _poison(self, pl_module) -> None:
        with torch.no_grad():
            next(pl_module.parameters()).fill_(float("nan"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.hook == "batch" and trainer.global_step == self.step:
            self._poison(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.hook == "epoch_end":
            self._poison(pl_module)


class Interrupt(Exception):
    pass


class InterruptAt(Callback):
    """Raises `Interrupt` (a crash) at the start of batch `batch` of epoch `epoch`."""

    def __init__(self, epoch: int = 1, batch: int = 1) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise Interrupt(f"interrupted at epoch {self.epoch} batch {self.batch}")


def callback_args(cls: type, **init: object) -> list[str]:
    args = [f"--trainer.callbacks+={MODULE}.{cls.__name__}"]
    return args + [f"--trainer.callbacks.init_args.{k}={v}" for k, v in init.items()]


def test_nan_loss_stops_the_run_naming_the_step(tmp_path):
    args = tiny_args("digits", tmp_path, "--trainer.limit_train_batches=4", *callback_args(PoisonAt, step=2))
    with pytest.raises(SystemExit, match=r"non-finite training loss .* at step 2 \(epoch 0, batch 2\)"):
        main(["fit", *args])
    assert not list(tmp_path.rglob("*.ckpt"))
    assert not (tmp_path / "model").exists()


def test_non_finite_weights_are_never_checkpointed_or_saved(tmp_path):
    args = tiny_args("digits", tmp_path, *callback_args(PoisonAt, hook="epoch_end"))
    with pytest.raises(SystemExit, match="refusing to write the checkpoint .* non-finite weights"):
        main(["fit", *args])
    assert not list(tmp_path.rglob("*.ckpt"))
    assert not (tmp_path / "model").exists()


def test_finite_check_names_non_finite_gradients():
    class Trainer:  # the attributes FiniteCheck reads
        global_step, current_epoch, world_size = 7, 1, 1
        precision_plugin = None

    model = torch.nn.Linear(2, 2)
    model.weight.grad = torch.tensor([[0.0, float("inf")], [0.0, 0.0]])
    check = FiniteCheck()
    check.on_train_batch_start(Trainer(), model, None, 3)
    with pytest.raises(NonFiniteError, match=r"non-finite gradient at step 7 \(epoch 1, batch 3\) in weight"):
        check.on_before_optimizer_step(Trainer(), model, None)
    model.weight.grad.zero_()
    check.on_before_optimizer_step(Trainer(), model, None)  # finite: no error


def train_rows(run_dir: Path) -> list[tuple[str, str]]:
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    return [(r["epoch"], r["step"]) for r in rows if r.get("train/loss_step")]


def test_resume_after_a_crash_no_duplicate_rows_no_temp_files(tmp_path):
    common = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=3"]
    with pytest.raises(Exception, match="interrupted at"):  # the CLI imports this file as another module
        main(["fit", *tiny_args("digits", tmp_path, *common, *callback_args(InterruptAt, epoch=1, batch=2))])
    crashed = train_rows(tmp_path)
    assert ("1", "3") in crashed  # the crashed epoch logged a step after the epoch-0 checkpoint
    # leftovers of writes killed half-way: a checkpoint and a model folder
    (tmp_path / "checkpoints" / ".last.ckpt.12345.tmp").write_bytes(b"partial")
    (tmp_path / ".model.abc123.tmp").mkdir()
    main(["fit", *tiny_args("digits", tmp_path, *common, "--ckpt_path=last")])
    rows = train_rows(tmp_path)
    assert len(rows) == len(set(rows)), f"duplicate rows in metrics.csv: {rows}"
    assert len(rows) == 6  # 2 epochs x 3 steps, each once
    assert not list(tmp_path.rglob("*.tmp"))
    assert (tmp_path / "model" / "model.safetensors").is_file()
    # validate from a checkpoint of the run appends: the rows of the fit stay
    main(["validate", *tiny_args("digits", tmp_path, *common, "--ckpt_path=last")])
    assert train_rows(tmp_path) == rows


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_step_checkpoint_resumes_inside_an_epoch_to_identical_weights(tmp_path):
    common = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=4", "--model.model_kwargs.ff_dropout=0.1"]
    full, broken = tmp_path / "full", tmp_path / "broken"
    main(["fit", *tiny_args("digits", full, *common)])
    steps = ["--checkpoint_every_n_steps=1"]
    with pytest.raises(Exception, match="interrupted at"):  # the CLI imports this file as another module
        main(["fit", *tiny_args("digits", broken, *common, *steps, *callback_args(InterruptAt, epoch=1, batch=2))])
    ckpt = torch.load(broken / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6  # written inside epoch 1, after its second step
    main(["fit", *tiny_args("digits", broken, *common, *steps, "--ckpt_path=last")])
    a, b = last_weights(full), last_weights(broken)
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff <= 1e-6, f"resumed weights differ from the uninterrupted run by {diff}"


def test_divergent_learning_rate_stops_without_checkpoints(tmp_path):
    args = tiny_args("digits", tmp_path, "--model.init_args.lr=1e6", "--model.init_args.warmup_steps=0")
    with pytest.raises(SystemExit, match=r"non-finite training loss .* at step \d+ \(epoch 0, batch \d+\)"):
        main(["fit", *args, "--trainer.limit_train_batches=8"])
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "model").exists()


def test_ema_weights_are_validated_saved_and_resumed_to_identical_weights(tmp_path):
    """Lightning's `EMAWeightAveraging` (timm's model EMA) added on the command line: the checkpoints and the model
    folder hold the average, not the last step's weights, and a run interrupted inside an epoch resumes to the
    same average (and current weights) as an uninterrupted one."""
    from safetensors.torch import load_file

    common = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=4"]
    common += ["--trainer.callbacks+=EMAWeightAveraging", "--trainer.callbacks.decay=0.5"]
    full, broken = tmp_path / "full", tmp_path / "broken"
    main(["fit", *tiny_args("digits", full, *common)])
    ckpt = torch.load(full / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    average = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    current = {k.removeprefix("model."): v for k, v in ckpt["current_model_state"].items()}
    saved = load_file(full / "model" / "model.safetensors")
    assert all(torch.equal(saved[k], average[k]) for k in saved)
    assert max((saved[k] - current[k]).abs().max().item() for k in saved) > 1e-4  # an average, not the last step
    steps = ["--checkpoint_every_n_steps=1"]
    with pytest.raises(Exception, match="interrupted at"):
        main(["fit", *tiny_args("digits", broken, *common, *steps, *callback_args(InterruptAt, epoch=1, batch=2))])
    main(["fit", *tiny_args("digits", broken, *common, *steps, "--ckpt_path=last")])
    resumed = torch.load(broken / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for key in ("state_dict", "current_model_state"):
        diff = max((ckpt[key][k] - resumed[key][k]).abs().max().item() for k in ckpt[key])
        assert diff <= 1e-6, f"resumed {key} differs from the uninterrupted run by {diff}"


def test_weight_averaging_with_a_sharded_model_is_refused_by_name():
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

    from perceiver.training.sharding import check_callbacks_for_sharding

    check_callbacks_for_sharding([ModelCheckpoint()])
    with pytest.raises(ValueError, match=r"expected no weight averaging with a sharded model, got \['EMAW"):
        check_callbacks_for_sharding([ModelCheckpoint(), EMAWeightAveraging()])
