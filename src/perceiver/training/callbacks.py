"""Callbacks and the logger the `perceiver` CLI adds to every run: per-step reseeding, the best model as a model
folder, predictions as JSON lines, a CSV logger that appends to the run's metrics.csv."""

from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["AppendingCSVLogger", "JsonlPredictionWriter", "SavePretrained", "StepSeed", "data_description"]


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

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        key = [self._base or 0, trainer.global_step, batch_idx, trainer.global_rank]
        seed = int(np.random.SeedSequence(key).generate_state(1)[0])
        # not seed_everything: it would overwrite PL_GLOBAL_SEED, the base of the next steps
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def data_description(datamodule: Any) -> dict[str, Any]:
    """JSON-ready attributes of a datamodule that `perceiver predict` needs (shapes, class names, vocabulary)."""
    keys = ("num_classes", "image_shape", "image_size", "class_names", "vocab_size", "max_seq_len", "num_points")
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


class SavePretrained(Callback):
    """At the end of `fit`, write the best checkpoint's model (or the final one without a best) as a model folder:
    `RUN_DIR/model/{config.json, model.safetensors, task.json}`, loadable with `perceiver.from_pretrained` and
    usable by `perceiver predict RUN_DIR/model FILE...`. `task.json` records the task and the data description.

    Args:
        dirname: folder name inside the run directory (`trainer.default_root_dir`), or an absolute path.
    """

    def __init__(self, dirname: str = "model") -> None:
        self.dirname = dirname

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        if not hasattr(model, "save_pretrained"):
            return
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        sharded = _is_sharded(model)
        state, source = None, "final weights"
        if best and Path(best).is_file():
            if trainer.is_global_zero:
                state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
                state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
            source = f"best checkpoint {best} ({ckpt.monitor}={float(ckpt.best_model_score):.4f})"
        elif sharded:  # FSDP2: gather the full weights (a collective: every process takes part)
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not trainer.is_global_zero:
            return
        if state is not None:
            # a plain (unsharded) copy of the network to hold the chosen weights
            model = pl_module.build_plain_model() if sharded else copy.deepcopy(model).cpu()
            model.load_state_dict(state)
        out = Path(trainer.default_root_dir) / self.dirname
        model.save_pretrained(out)
        task = {"task": getattr(pl_module, "task_name", "generic"), **data_description(trainer.datamodule)}
        (out / "task.json").write_text(json.dumps(task, indent=2) + "\n")
        rank_zero_info(f"saved the model of the {source} to {out}")


def _is_sharded(model: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - older torch
        return False
    return isinstance(model, FSDPModule)


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

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if not isinstance(prediction, list):
            return
        with self._path(trainer).open("a") as f:
            for row in prediction:
                f.write(json.dumps({"index": self._count, **row}) + "\n")
                self._count += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rank_zero_info(f"wrote {self._count} predictions to {self._path(trainer)}")
