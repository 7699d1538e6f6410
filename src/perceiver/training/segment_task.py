"""`TokenClassificationTask`: a label per byte (e.g. word segmentation of space-less text), scored by F1.

Batches as `perceiver.data.SegmentPydocDataModule`: `{"input_ids" (B, L), "attention_mask" (B, L), "labels" (B, L)
with -100 = not scored}`. The loss is the cross-entropy over the scored positions; `f1` is the F1 of the positive
class (`positive_label`, a word start) over a whole epoch (true / false positives and false negatives are summed
over the epoch, and over processes, before the ratio). When the datamodule has `heuristic_f1()` the task also logs
it as `f1_baseline` for validation and test.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from perceiver.core.model import token_cross_entropy
from perceiver.training.tasks import MetricDict, PerceiverTask


class BinaryF1(Metric):
    """F1 of `pred == positive` against `target == positive` over the positions where `target != ignore_index`."""

    full_state_update = False
    #: true positives, false positives, false negatives (`add_state`)
    tp: Tensor
    fp: Tensor
    fn: Tensor

    def __init__(self, positive: int = 1, ignore_index: int = -100) -> None:
        super().__init__()
        self.positive, self.ignore_index = positive, ignore_index
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        valid = target != self.ignore_index
        p, g = (pred == self.positive) & valid, (target == self.positive) & valid
        self.tp += (p & g).sum()
        self.fp += (p & ~g).sum()
        self.fn += (~p & g).sum()

    def compute(self) -> Tensor:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn).clamp_min(1)


class TokenClassificationTask(PerceiverTask):
    """Per-byte classification with a `PerceiverForTokenClassification` (`model: token-classifier`); logs `f1`."""

    monitor = ("val/f1", "max")
    task_name = "token-classification"
    datamodule_baseline = ("heuristic_f1", "f1_baseline")  # the rule-based F1 of the datamodule

    def __init__(self, *args: Any, positive_label: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.f1 = MetricDict({f"{s}_f1": BinaryF1(positive_label) for s in ("train", "val", "test")})

    def _call_model(self, batch: dict[str, Tensor]) -> Any:
        return self.model(batch["input_ids"], batch.get("attention_mask"))

    def step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        logits = self(batch).float()
        labels = batch["labels"]
        loss = token_cross_entropy(logits, labels)
        self._log_loss(stage, loss, int((labels != -100).sum()))
        self.f1[f"{stage}_f1"].update(logits.argmax(-1), labels)
        self.log(f"{stage}/f1", self.f1[f"{stage}_f1"], on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[dict[str, Any]]:
        preds = self(batch).argmax(-1)
        mask = batch.get("attention_mask")
        rows = []
        for i, p in enumerate(preds):
            n = int(mask[i].sum()) if mask is not None else p.shape[0]
            rows.append({"predicted_labels": p[:n].tolist()})
        return rows
