"""Byte-level masked language modelling task (Perceiver IO's MLM, `language-perceiver`).

Batches `{"input_ids" (B, L), "attention_mask" (B, L), "labels" (B, L)}` with labels -100 where a byte is not
masked (as `PydocMLMDataModule` gives them); the model returns logits `(B, L, V)`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from perceiver.core.model import token_cross_entropy
from perceiver.tokenizer import MASK_ID, VOCAB_SIZE, decode_bytes
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

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits `(B, L, V)` of the batch's L positions, also for a model with `decode_all_positions=True` (as
        transformers, it decodes all `max_seq_len` positions; the first L are the batch's)."""
        return super().forward(batch)[:, : batch["input_ids"].shape[1]]

    def step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        logits = self(batch).float()
        labels = batch["labels"]
        valid = labels != -100
        loss = token_cross_entropy(logits, labels)
        self._log_loss(stage, loss, int(valid.sum()))
        if valid.any():
            self.metrics[f"{stage}_acc"].update((logits.argmax(-1)[valid] == labels[valid]).float())
        self._log_metric(stage, "acc")
        return loss

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[dict[str, Any]]:
        """One row per sequence (right padding cut by `attention_mask`): `predicted_ids` at every position; the
        masked positions (`labels != -100`, else the MASK tokens of the input) with the predicted and, given
        labels, the true ids there; for a byte vocabulary (262 ids) the input as `text` with the masked bytes filled
        in by the model."""
        logits = self(batch)
        preds, ids = logits.argmax(-1), batch["input_ids"]
        labels, mask = batch.get("labels"), batch.get("attention_mask")
        masked = labels != -100 if labels is not None else ids == MASK_ID
        rows = []
        for i, p in enumerate(preds):
            n = int(mask[i].sum()) if mask is not None else p.shape[0]
            at = masked[i, :n].nonzero().flatten()
            row: dict[str, Any] = {"predicted_ids": p[:n].tolist(), "masked_positions": at.tolist()}
            row["masked_predicted_ids"] = p[at].tolist()
            if labels is not None:
                row["masked_label_ids"] = labels[i, at].tolist()
            if logits.shape[-1] == VOCAB_SIZE:
                row["text"] = decode_bytes(torch.where(masked[i, :n], p[:n], ids[i, :n]).tolist())
            rows.append(row)
        return rows
