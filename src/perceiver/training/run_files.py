"""Callbacks that write a run's files beside its checkpoints: `predictions.jsonl` (`perceiver predict --config`) and
the configuration of an evaluation (`config-validate.yaml`, `config-test.yaml`, `config-predict.yaml`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info


class SaveRunConfig(SaveConfigCallback):
    """LightningCLI's `RUN_DIR/config.yaml` for `fit`; `validate` / `test` / `predict` write theirs beside it as
    `config-{stage}.yaml`, so an evaluation (with its `ckpt_path` and overrides) does not replace the record of how
    the run was trained, which `--config RUN_DIR/config.yaml` reproduces."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        name = getattr(stage, "value", stage)  # Lightning passes its TrainerFn ("validate", ...)
        if name != "fit":
            self.config_filename = f"config-{name}.yaml"
        super().setup(trainer, pl_module, stage)


class JsonlPredictionWriter(BasePredictionWriter):
    """Writes what `predict_step` returns (a list of JSON-ready dicts per batch) to `RUN_DIR/predictions.jsonl`,
    one line per sample with its running index (rank-local files `predictions.rank{r}.jsonl` under DDP)."""

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
        with self._path(trainer).open("a") as f:
            for row in prediction:
                f.write(json.dumps({"index": self._count, **row}) + "\n")
                self._count += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rank_zero_info(f"wrote {self._count} predictions to {self._path(trainer)}")
