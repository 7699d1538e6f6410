"""Causal language modelling task (Perceiver AR, or any model with `model(input_ids, attention_mask, labels=...)`
returning `.logits` `(B, N, V)` for the last N positions and `.loss`).

Batches `{"input_ids" (B, L), "labels" (B, L), optional "attention_mask" (B, L)}` as `PydocARDataModule` gives
them: labels aligned with the inputs (-100 = not scored), the model shifts them. Logs `loss` (nats per scored
token) and `bpb`, bits per byte (= loss / ln 2 with byte tokens), weighted by the number of scored tokens, so an
epoch value is the mean over all scored bytes; with a datamodule offering `unigram_bpb()` also `bpb_unigram`, the
bits per byte of the training byte frequencies on the same bytes.

`time_budget` (seconds) makes the warmup + cosine schedule run over wall-clock time instead of steps (pair it with
`trainer.max_time`), so that models of different speed can be compared at equal training time (`warmup_steps` < 1
is then a fraction of the budget; a step count >= 1 becomes 5% of it). The time trained so far is saved in
checkpoints: a resumed run (`--ckpt_path last`) continues the schedule where it stopped, as Lightning's `max_time`
timer continues its clock.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from perceiver.training.tasks import PerceiverTask, cosine_with_warmup, metric_dict

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

__all__ = ["CausalLMTask"]


class CausalLMTask(PerceiverTask):
    """Next-token cross-entropy on the model's latent positions; logs `{stage}/bpb` (see the module docstring)."""

    monitor = ("val/bpb", "min")
    task_name = "causal-lm"

    def __init__(self, *args: Any, time_budget: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.metrics = metric_dict("bpb")
        self._unigram: dict[str, float] = {}
        self._start: float | None = None  # when this process started the schedule (monotonic clock)
        self._offset = 0.0  # seconds trained before, by the runs this one resumes (from the checkpoint)

    no_step_budget_hint = ", or schedule over wall-clock time with model.time_budget (seconds, as trainer.max_time)"

    def schedule_steps(self) -> float:
        if self.hparams.time_budget:  # by time: the step schedule is replaced below
            return 1.0
        return super().schedule_steps()

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        config = super().configure_optimizers()
        budget = self.hparams.time_budget
        if not budget:
            return config
        hp, optimizer = self.hparams, config["optimizer"]
        warmup = hp.warmup_steps if hp.warmup_steps < 1 else 0.05  # a fraction of the budget

        def by_time(step: int) -> float:
            elapsed = min(1.0, self.time_trained() / budget)
            return cosine_with_warmup(int(elapsed * 10000), int(warmup * 10000), 10000, hp.min_lr_ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, by_time)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def time_trained(self) -> float:
        """Seconds of the `time_budget` schedule spent: by the runs resumed from, and by this one since its schedule
        started (the first call starts it)."""
        if self._start is None:
            self._start = time.monotonic()
        return self._offset + time.monotonic() - self._start

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.hparams.time_budget:
            checkpoint["time_budget_elapsed"] = self.time_trained()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._offset = float(checkpoint.get("time_budget_elapsed", 0.0))
        if self._start is not None:  # the schedule started before the restore: count from now
            self._start = time.monotonic()

    def adapt_to_datamodule(self, datamodule: Any) -> None:
        """As `PerceiverTask`'s, and the model's latents must cover the tokens each evaluation window scores: a
        datamodule with `num_targets` and `max_seq_len` (`PydocARDataModule`, `TextFilesARDataModule`) scores the last
        `num_targets` tokens of a window, which only the latents predict (N - 1 of them inside the window); with more
        targets the others were dropped from the loss without a word, and bits per byte measured fewer bytes."""
        super().adapt_to_datamodule(datamodule)
        targets, window = getattr(datamodule, "num_targets", None), getattr(datamodule, "max_seq_len", None)
        latents = getattr(self.model, "_num_latents", None)  # PerceiverAR's N for a window (None: another model)
        if not isinstance(targets, int) or not isinstance(window, int) or not callable(latents):
            return
        n = latents(window, None)
        if targets >= n:
            fewer = f"pass --data.num_targets {n - 1} or less, or " if n > 1 else ""
            raise ValueError(
                f"{type(datamodule).__name__} scores the last {targets} tokens of each evaluation window "
                f"(num_targets={targets}) but the {n} latents of {type(self.model).__name__} predict only the last "
                f"{n - 1}; {fewer}give the model more latents (--model.model_kwargs.num_latents {targets + 1})"
            )

    def _call_model(self, batch: dict[str, Tensor]) -> Any:
        return self.model(batch["input_ids"], batch.get("attention_mask"), labels=batch["labels"])

    def step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        out = self._call_model(batch)
        labels = batch["labels"]
        n = out.logits.shape[1]
        count = int((labels[:, labels.shape[1] - n + 1 :] != -100).sum())
        loss = out.loss
        self._log_loss(stage, loss, count)
        if count:
            self.metrics[f"{stage}_bpb"].update(loss.detach() / math.log(2), count)
        self._log_metric(stage, "bpb")
        return loss

    def _log_unigram(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "unigram_bpb"):
            if stage not in self._unigram:
                self._unigram[stage] = float(dm.unigram_bpb(stage))
            self.log(f"{stage}/bpb_unigram", self._unigram[stage], sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_unigram("val")

    def on_test_epoch_end(self) -> None:
        self._log_unigram("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[dict[str, Any]]:
        logits = self._call_model(batch).logits
        return [{"next_token_ids": row.argmax(-1).tolist()} for row in logits]
