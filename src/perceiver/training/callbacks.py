"""Callbacks and the logger the `perceiver` CLI adds to every run: per-step reseeding, the best model as a model
folder, predictions as JSON lines, a CSV logger that appends to the run's metrics.csv, a stop on non-finite losses or
gradients, checkpoints that are never non-finite and are written atomically next to their target."""

from __future__ import annotations

import copy
import csv
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info

from perceiver.labels import set_id2label
from perceiver.training.mid_epoch import MidEpochResume  # moved; importable from here as before
from perceiver.training.run_files import JsonlPredictionWriter  # moved; importable from here as before

__all__ = [
    "AppendingCSVLogger",
    "FiniteCheck",
    "FiniteModelCheckpoint",
    "JsonlPredictionWriter",
    "MetricsResume",
    "MidEpochResume",
    "NonFiniteError",
    "SavePretrained",
    "StepSeed",
    "data_description",
    "remove_stale_temp_files",
]

#: suffix of the temporary files / folders written next to their target and renamed into place
TMP_SUFFIX = ".tmp"


class NonFiniteError(FloatingPointError):
    """A training loss, gradient or set of weights holds NaN or infinity; the run stops (nothing is saved)."""


def _non_finite_names(named: Any, limit: int = 3, trainer: L.Trainer | None = None) -> list[str]:
    """Names of (up to `limit`) tensors in `named` ((name, tensor) pairs) holding NaN or inf; one host sync.

    Sharded tensors (DTensor) are checked by their local shards; with `trainer` and several processes the verdict is
    agreed by all of them (one collective), so that every process stops together.
    """
    items = []
    for n, t in named:
        t = t.to_local() if hasattr(t, "to_local") else t
        if t is not None and t.is_floating_point() and t.numel():
            items.append((n, t))
    bad: list[str] = []
    if items:
        device = items[0][1].device
        flags = torch.stack([torch.isfinite(t).all().to(device) for _, t in items]).tolist()
        bad = [n for (n, _), ok in zip(items, flags, strict=True) if not ok][:limit]
    if trainer is not None and trainer.world_size > 1:
        all_ok = trainer.strategy.reduce_boolean_decision(not bad, all=True)
        if not all_ok and not bad:
            bad = ["tensors of another process"]
    return bad


def remove_stale_temp_files(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """Delete leftovers of writes killed half-way (`folder/pattern`, files or folders); returns what was removed."""
    import shutil

    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.glob(pattern):
        if not path.name.endswith(TMP_SUFFIX):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed


class FiniteCheck(Callback):
    """Stop training with `NonFiniteError` at the first non-finite loss (before its backward pass) or gradient
    (before the optimizer step, so the weights stay finite), naming the step, epoch and batch.

    With fp16 loss scaling (`16-mixed`) non-finite gradients are expected and skipped by the scaler, so only the loss
    is checked there. With several processes (DDP) and no scaler only the gradients are checked: they are averaged
    over the processes, so every process stops at the same step (a loss check on one rank alone would leave the
    others waiting in the gradient all-reduce). Costs one host sync per step for the loss and one for the gradients.
    """

    def __init__(self, check_gradients: bool = True) -> None:
        self.check_gradients = check_gradients
        self._batch_idx = 0

    def _where(self, trainer: L.Trainer) -> str:
        return f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx})"

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if trainer.world_size > 1 and self.check_gradients and scaler is None:
            return  # the gradient check stops every process at the same step
        if not bool(torch.isfinite(loss.detach()).all()):
            raise NonFiniteError(
                f"non-finite training loss {loss.detach().float().cpu().tolist()} at {self._where(trainer)}; "
                f"the run stops and no checkpoint or model of it is written (lower the learning rate, check the "
                f"data for NaN / inf, or use gradient clipping)"
            )

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if not self.check_gradients or getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = ((n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None)
        bad = _non_finite_names(grads, trainer=trainer)
        if bad:
            raise NonFiniteError(
                f"non-finite gradient at {self._where(trainer)} in {', '.join(bad)}; the run stops before the "
                f"optimizer step and no checkpoint or model of it is written (lower the learning rate or clip "
                f"gradients)"
            )


class _AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` into `.NAME.PID.tmp` next to the target, then `os.replace` (Lightning's own atomic save writes
    its temporary file into the system temp folder, where a killed run leaves it behind)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}{TMP_SUFFIX}"
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


class FiniteModelCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that refuses to write weights holding NaN / inf (`NonFiniteError`), writes atomically next
    to the target (`.NAME.PID.tmp`, renamed into place) and removes such leftovers of a killed run at setup.

    `every_n_train_steps` gives step checkpoints inside an epoch, as in `ModelCheckpoint`.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = _AtomicCheckpointIO()
        if trainer.is_global_zero and self.dirpath:
            for path in remove_stale_temp_files(self.dirpath, f".*{TMP_SUFFIX}"):
                rank_zero_info(f"removed {path}, left behind by a killed run")

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        bad = _non_finite_names(trainer.lightning_module.state_dict().items(), trainer=trainer)
        if bad:
            raise NonFiniteError(
                f"refusing to write the checkpoint {filepath} at step {trainer.global_step}: non-finite weights in "
                f"{', '.join(bad)}"
            )
        super()._save_checkpoint(trainer, filepath)


class MetricsResume(Callback):
    """Stores the number of data rows of `metrics.csv` in every checkpoint and, when `fit` resumes from one, cuts
    the file back to that many rows, so that steps logged after the checkpoint (and logged again by the resumed
    run) do not appear twice; the rows cut (also those of a `validate` / `test` run in between) go to
    `metrics.after-checkpoint-TIME.csv` beside it.

    Kept are the rows of the checkpoint's own last step that only hold training metrics: Lightning logs an epoch's
    training means (`train/loss_epoch`, `train/acc`) after the epoch's checkpoints are written, at the epoch's last
    step, and the resumed run, which starts at the next step, never logs them again."""

    def _logger(self, trainer: L.Trainer) -> AppendingCSVLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, AppendingCSVLogger)), None)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        logger = self._logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        logger.save()  # flush buffered rows, so the count is that of everything logged so far
        path = Path(logger.experiment.metrics_file_path)
        rows = 0
        if path.is_file():
            with path.open(newline="") as f:
                rows = max(sum(1 for _ in f) - 1, 0)
        checkpoint["metrics_csv_rows"] = rows

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        logger = self._logger(trainer)
        rows = checkpoint.get("metrics_csv_rows")
        # only a resumed fit repeats steps; validate / test from a checkpoint append to the full log
        if logger is None or rows is None or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        path = Path(logger.experiment.metrics_file_path)
        if not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        if len(lines) - 1 <= rows:
            return
        last_step = (str(int(checkpoint.get("epoch", 0))), str(int(checkpoint.get("global_step", 0)) - 1))
        later = lines[rows + 1 :]
        keep = [_is_training_row_of(line, lines[0], last_step) for line in later]
        moved = [line for line, k in zip(later, keep, strict=True) if not k]
        tmp = path.parent / f".{path.name}.{os.getpid()}{TMP_SUFFIX}"
        tmp.write_text("".join([*lines[: rows + 1], *(line for line, k in zip(later, keep, strict=True) if k)]))
        if moved:
            # rows of the stopped run or of a validate / test in between: kept aside (with the header), not lost
            aside = path.with_name(f"{path.stem}.after-checkpoint-{time.strftime('%Y%m%d-%H%M%S')}.csv")
            aside.write_text("".join([lines[0], *moved]))
            rank_zero_info(f"{path}: moved the {len(moved)} rows logged after the checkpoint to {aside.name}")
        os.replace(tmp, path)


def _is_training_row_of(line: str, header: str, epoch_step: tuple[str, str]) -> bool:
    """Whether a metrics.csv row was logged at `(epoch, step)` and holds only training metrics (`train/...`)."""
    names = next(csv.reader([header.strip()]))
    values = next(csv.reader([line.strip()]), [])
    row = dict(zip(names, values, strict=False))
    metrics = [k for k, v in row.items() if v != "" and k not in ("epoch", "step")]
    at = (row.get("epoch"), row.get("step")) == epoch_step
    return at and bool(metrics) and all(k.startswith("train/") for k in metrics)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one keeps it and its columns and appends."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = f.readline().strip()
            self.metrics_keys = sorted(k for k in header.split(",") if k)

    def _check_log_dir_exists(self) -> None:
        pass


class AppendingCSVLogger(CSVLogger):
    """`CSVLogger` that appends to an existing `metrics.csv` instead of deleting it, so that a resumed `fit` and a
    later `validate` / `test` in the same run directory extend the run's log (one file for `perceiver plot`)."""

    _experiment: _AppendingWriter | None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class StepSeed(Callback):
    """Reseed torch / numpy / random before every training batch with a function of (seed, step, batch, rank).

    Everything random in a training step (dropout, stochastic depth, ...) then depends only on the seed and the
    step, so a run resumed from its last checkpoint continues exactly as the uninterrupted run would have. (The
    datamodules of `perceiver.data` already make data order, augmentation and masks functions of (seed, epoch,
    index).) Lightning does not store RNG states in checkpoints, so without this a resumed run draws other dropout
    masks; reseeding per step rather than per epoch also covers checkpoints written inside an epoch. `seed`
    defaults to the run's `seed_everything` value (`PL_GLOBAL_SEED`, read once at setup).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._base: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        key = [self._base or 0, trainer.global_step, batch_idx, trainer.global_rank]
        seed = int(np.random.SeedSequence(key).generate_state(1)[0])
        # not seed_everything: it would overwrite PL_GLOBAL_SEED, the base of the next steps
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def data_description(datamodule: Any) -> dict[str, Any]:
    """JSON-ready attributes of a datamodule that `perceiver predict` needs (shapes, class names, vocabulary)."""
    keys = (
        "num_classes",
        "image_shape",
        "image_size",
        "class_names",
        "vocab_size",
        "max_seq_len",
        "num_points",
        "num_samples",
        "sample_rate",
        "video_shape",
    )
    info: dict[str, Any] = {}
    for key in keys:
        value = getattr(datamodule, key, None)
        if value is None:
            continue
        try:
            info[key] = json.loads(json.dumps(list(value) if isinstance(value, tuple) else value))
        except TypeError:
            continue
    if datamodule is not None:
        info["datamodule"] = f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"
    return info


def task_description(pl_module: L.LightningModule, model: torch.nn.Module, datamodule: Any) -> dict[str, Any]:
    """`task.json` of a model folder: the task name and `data_description`; for a classifier `num_classes` is the
    model head's (the task made it agree with the datamodule before training)."""
    from perceiver.training.tasks import num_classes_of

    task = {"task": getattr(pl_module, "task_name", "generic"), **data_description(datamodule)}
    n = num_classes_of(model) if task["task"] == "classification" else None
    if n is not None:
        task["num_classes"] = n
    return task


@runtime_checkable
class SavesPretrained(Protocol):
    """A model that writes a model folder (`PretrainedMixin.save_pretrained`, the models of `perceiver`)."""

    def save_pretrained(self, save_directory: str | os.PathLike, /) -> Any: ...


class SavePretrained(Callback):
    """At the end of `fit`, write the best checkpoint's model (or the final one without a best) as a model folder:
    `RUN_DIR/model/{config.json, model.safetensors, task.json}`, loadable with `perceiver.from_pretrained` and
    usable by `perceiver predict RUN_DIR/model FILE...`. `task.json` records the task and the data description.
    Not with `fast_dev_run`, which writes nothing (Lightning suppresses its logs and checkpoints too).

    Args:
        dirname: folder name inside the run directory (`trainer.default_root_dir`), or an absolute path.
    """

    def __init__(self, dirname: str = "model") -> None:
        self.dirname = dirname

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            out = Path(trainer.default_root_dir) / self.dirname
            remove_stale_temp_files(out.parent, f".{out.name}.*{TMP_SUFFIX}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        if not isinstance(model, torch.nn.Module) or not isinstance(model, SavesPretrained):
            return
        if getattr(trainer, "fast_dev_run", False):  # a smoke test writes nothing (as Lightning's logs / checkpoints)
            return
        ckpt = trainer.checkpoint_callback
        best = ckpt.best_model_path if isinstance(ckpt, ModelCheckpoint) else ""
        sharded = _is_sharded(model)
        state, source = None, "final weights"
        if isinstance(ckpt, ModelCheckpoint) and best and Path(best).exists():  # a file, or a sharded one's folder
            if trainer.is_global_zero:
                state = _checkpoint_weights(Path(best))
            score = ckpt.best_model_score  # None for a checkpoint callback without a monitor (the latest checkpoint)
            source = (
                f"best checkpoint {best} ({ckpt.monitor}={float(score):.6g})"
                if score is not None
                else f"checkpoint {best}"
            )
        elif sharded:  # FSDP2: gather the full weights (a collective: every process takes part)
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not trainer.is_global_zero:
            return
        if state is not None:
            # a plain (unsharded) copy of the network to hold the chosen weights
            if sharded:
                model = _plain_model(pl_module)
                assert isinstance(model, SavesPretrained)  # the class of the sharded network
            else:
                model = copy.deepcopy(model).cpu()
            model.load_state_dict(state)
        bad = _non_finite_names(model.state_dict().items())
        if bad:
            raise NonFiniteError(f"refusing to save the model of the {source}: non-finite weights in {', '.join(bad)}")
        out = Path(trainer.default_root_dir) / self.dirname
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning, not declared on Trainer
        task = task_description(pl_module, model, datamodule)
        if task.get("class_names") and task.get("num_classes") == len(task["class_names"]):
            set_id2label(model, list(task["class_names"]))  # config.json's id2label, as transformers keeps them
        model.save_pretrained(out)  # with LoRA adapters merged
        _save_tokenizer(out, datamodule)
        (out / "task.json").write_text(json.dumps(task, indent=2) + "\n")
        rank_zero_info(f"saved the model of the {source} to {out}")
        from perceiver.lora import has_lora, save_adapter

        if has_lora(model):
            folder = out.parent / ("adapter" if out.name == "model" else f"{out.name}-adapter")
            base = pl_module.hparams["pretrained"]
            adapter = save_adapter(model, folder, base_model=base)
            (adapter / "task.json").write_text(json.dumps(task, indent=2) + "\n")
            rank_zero_info(f"saved its LoRA adapter to {adapter} (base model: {base})")


def _plain_model(pl_module: L.LightningModule) -> torch.nn.Module:
    """A new, unsharded instance of the task's (sharded) network, of the same class (`build_plain_model`)."""
    from perceiver.training.tasks import PerceiverTask

    if not isinstance(pl_module, PerceiverTask):
        raise TypeError(f"SavePretrained of a sharded model needs a PerceiverTask, got {type(pl_module).__name__}")
    return pl_module.build_plain_model()


def _is_sharded(model: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - older torch
        return False
    return isinstance(model, FSDPModule)


def _checkpoint_weights(path: Path) -> dict[str, Any]:
    """The network's weights (its `model.` keys, prefix removed) in a Lightning checkpoint: a file, or the folder of a
    sharded one (FSDP2 with `save_distributed_checkpoint: true`), read whole into this process."""
    if path.is_dir():
        import tempfile

        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(path, Path(tmp) / "full.pt")
            state = torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=True)["state_dict"]
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def _save_tokenizer(out: Path, datamodule: Any) -> None:
    """The byte tokenizer beside a text model trained on `perceiver.data`'s bytes (`tokenizer_config.json`, as
    transformers keeps a tokenizer in the model folder), for `AutoTokenizer` / `ByteTokenizer.from_pretrained(out)`:
    a masked LM's reads "[MASK]" as the mask token; a text classifier's texts were bytes throughout (`[MASK]`
    included), so its tokenizer splits special tokens as training did."""
    from perceiver.data.pydoc import MaskedBytes
    from perceiver.data.text import TextClassificationDataModule

    if not isinstance(datamodule, (MaskedBytes, TextClassificationDataModule)):
        return
    from perceiver.tokenizer import ByteTokenizer

    split = isinstance(datamodule, TextClassificationDataModule)
    ByteTokenizer(model_max_length=datamodule.max_seq_len, split_special_tokens=split).save_pretrained(out)
