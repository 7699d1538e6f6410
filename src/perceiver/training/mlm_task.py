"""Byte-level masked language modelling task (Perceiver IO's MLM, `language-perceiver`).

Batches `{"input_ids" (B, L), "attention_mask" (B, L), "labels" (B, L)}` with labels -100 where a byte is not
masked (as `PydocMLMDataModule` gives them); the model returns logits `(B, L, V)`.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from perceiver.training.tasks import PerceiverTask, metric_dict

__all__ = ["MaskedLMTask"]


class MaskedLMTask(PerceiverTask):
    """Masked language modelling: cross-entropy over the masked positions (`labels != -100`).

    Logs `acc`, the accuracy on masked positions; when the datamodule has `most_frequent_byte_baseline()` (as
    `PydocMLMDataModule`) also `acc_baseline`, the accuracy of always predicting the most frequent training byte.
    """

    monitor = ("val/acc", "max")
    task_name = "masked-lm"
    datamodule_baseline = ("most_frequent_byte_baseline", "acc_baseline")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metric_dict("acc")

    def _call_model(self, batch: dict[str, Tensor]) -> Any:
        return self.run_model(batch["input_ids"], batch.get("attention_mask"))

    def step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        logits = self(batch).float()
        labels = batch["labels"]
        valid = labels != -100
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        self._log_loss(stage, loss, max(int(valid.sum()), 1))
        if valid.any():
            self.metrics[f"{stage}_acc"].update((logits.argmax(-1)[valid] == labels[valid]).float())
        self._log_metric(stage, "acc")
        return loss

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[dict[str, Any]]:
        preds = self(batch).argmax(-1)
        return [{"predicted_ids": p.tolist()} for p in preds]
