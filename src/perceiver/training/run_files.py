"""Callbacks that write a run's files beside its checkpoints: `predictions.jsonl` (`perceiver predict --config`), the
configuration of an evaluation (`config-validate.yaml`, `config-test.yaml`, `config-predict.yaml`), and the learning
rates in the logs (`StepLearningRateMonitor`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter, LearningRateMonitor
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

#: options of a `fit` that act on the run directory once, not on how the model trains: `RUN_DIR/config.yaml` records
#: them as their defaults, so that reusing it (`--config RUN_DIR/config.yaml`) neither deletes the run it describes
#: (`overwrite: true`) nor resumes (or fails to find) a checkpoint nobody asked for (`ckpt_path: last`)
ONE_TIME_OPTIONS = {"overwrite": False, "ckpt_path": None}


class SaveRunConfig(SaveConfigCallback):
    """LightningCLI's `RUN_DIR/config.yaml` for `fit`; `validate` / `test` / `predict` write theirs beside it as
    `config-{stage}.yaml`, so an evaluation (with its `ckpt_path` and overrides) does not replace the record of how
    the run was trained, which `--config RUN_DIR/config.yaml` reproduces (`ONE_TIME_OPTIONS` at their defaults)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        name = getattr(stage, "value", stage)  # Lightning passes its TrainerFn ("validate", ...)
        if name != "fit":
            self.config_filename = f"config-{name}.yaml"
        elif any(self.config.get(key) != value for key, value in ONE_TIME_OPTIONS.items()):
            self.config = self.config.clone()
            for key, value in ONE_TIME_OPTIONS.items():
                if key in self.config:
                    self.config[key] = value
        super().setup(trainer, pl_module, stage)


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes what `predict_step` returns (a list of JSON-ready dicts per batch) to `RUN_DIR/predictions.jsonl`,
    one line per sample with its running index and, for a dataset of files, the file it was read from (rank-local
    files `predictions.rank{r}.jsonl` under DDP)."""

    def __init__(self, filename: str = "predictions.jsonl") -> None:
        super().__init__(write_interval="batch")
        self.filename = filename
        self._count = 0

    def _path(self, trainer: L.Trainer) -> Path:
        name = self.filename
        if trainer.world_size > 1:
            name = name.replace(".jsonl", f".rank{trainer.global_rank}.jsonl")
        return Path(trainer.default_root_dir) / name

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._count = 0
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, list):
            return
        files = _files_of(trainer, dataloader_idx, batch_indices, len(prediction))
        with self._path(trainer).open("a") as f:
            for i, row in enumerate(prediction):
                named = {"file": files[i]} if files else {}
                f.write(json.dumps({"index": self._count, **named, **row}) + "\n")
                self._count += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rank_zero_info(f"wrote {self._count} predictions to {self._path(trainer)}")


def _files_of(
    trainer: L.Trainer, dataloader_idx: int, batch_indices: Sequence[Any] | None, count: int
) -> list[str] | None:
    """The files the batch's samples were read from (a dataset of files: image, sound, video, OFF folders), by the
    dataset indices Lightning gives (`batch_indices`; a key `(epoch, index)` counts by its index); None otherwise."""
    loaders = trainer.predict_dataloaders
    loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
    files = getattr(getattr(loader, "dataset", None), "files", None)
    if not isinstance(files, (list, tuple)) or not batch_indices or len(batch_indices) != count:
        return None
    indices = [i[-1] if isinstance(i, (list, tuple)) else i for i in batch_indices]
    if not all(
        isinstance(i, int) and 0 <= i < len(files) and isinstance(files[i], (str, os.PathLike)) for i in indices
    ):
        return None
    return [str(files[i]) for i in indices]


class StepLearningRateMonitor(LearningRateMonitor):
    """`LearningRateMonitor(logging_interval="step")` that logs the learning rates once per optimizer step.

    Lightning's logs them at the start of every batch of a logging step, so with `accumulate_grad_batches=K` each
    step's rates appeared K times in metrics.csv (and in TensorBoard); this one logs at the first batch of each
    accumulation window only (the batches `batch_idx % K == 0`, as Lightning groups them).
    """

    def __init__(self, log_momentum: bool = False, log_weight_decay: bool = False) -> None:
        super().__init__(logging_interval="step", log_momentum=log_momentum, log_weight_decay=log_weight_decay)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        batch_idx = args[2] if len(args) > 2 else kwargs.get("batch_idx", 0)
        if int(batch_idx) % max(int(trainer.accumulate_grad_batches), 1):
            return  # a later batch of the same optimizer step: its rates are logged already
        super().on_train_batch_start(trainer, *args, **kwargs)
