"""Classification task: images, videos, sound, point clouds or text -> one class per example (cross-entropy with label
smoothing, accuracy). The class count comes from the datamodule and is checked against the model (see
`perceiver.training.tasks`).

Batches: images `{"inputs" (B, H, W, C), "labels" (B,)}`; videos `{"inputs" (B, T, H, W, C), "labels"}`; sound
`{"inputs" (B, S, 1), "mask" (B, S), "labels"}`; point clouds `{"inputs" (B, P, 3), "mask" (B, P), "labels"}`; text
`{"input_ids" (B, L), "attention_mask" (B, L), "labels"}`.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from perceiver.training.building import class_count_in, class_count_key, num_classes_of, task_model_kwargs
from perceiver.training.mixing import check_mixing, mix_batch
from perceiver.training.tasks import PerceiverTask, metric_dict

__all__ = ["ClassificationTask"]


class ClassificationTask(PerceiverTask):
    """Classification of images, videos, sound, point clouds or text. Cross-entropy with `label_smoothing`; logs `acc`.

    `mixup_alpha` / `cutmix_alpha` (> 0: on; images and videos only) mix each training batch with a permutation of
    itself, as timm's `Mixup` (`perceiver.training.mixing`); the training accuracy is then measured against the label
    that dominates each mixed input.

    The model is called as `model(inputs, mask)` when the batch has `inputs` (images, videos, sound, point clouds;
    images and videos in the model's `input_layout`) and as `model(input_ids, attention_mask)` for text.

    Before training the head is matched to the datamodule's `num_classes` (see the module docstring): built with it
    when `model_kwargs` name no class count, an error naming both counts otherwise, or with `reset_head=True` a new
    head for a `pretrained` model (which needs the count: from the datamodule's `num_classes` or `model_kwargs`;
    dataloaders given to the trainer directly have none, and without `model_kwargs.num_classes` that is an error).
    The datamodule's `image_shape` `(H, W, C)` and `max_seq_len` are checked against what the model takes (channels,
    learned-position grid, text positions).
    """

    monitor = ("val/acc", "max")
    task_name = "classification"

    def __init__(
        self,
        *args: Any,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        **kwargs: Any,
    ) -> None:
        check_mixing(mixup_alpha, cutmix_alpha)
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.metrics = metric_dict("acc")

    def setup(self, stage: str) -> None:
        if getattr(self.trainer, "datamodule", None) is None:  # dataloaders given to the trainer directly
            self._check_reset_head(None)
        super().setup(stage)

    def adapt_to_datamodule(self, datamodule: Any) -> None:
        self._match_classes(datamodule)
        super().adapt_to_datamodule(datamodule)

    def _check_reset_head(self, dm: Any) -> None:
        """`reset_head` takes the class count from the datamodule: without one that says it (or dataloaders given to
        the trainer directly) and without a count in `model_kwargs`, a ValueError instead of training the pretrained
        head silently."""
        hp = self.hparams
        if not (hp.get("reset_head") and hp.pretrained) or class_count_in(hp.model_kwargs) is not None:
            return
        where = "the trainer has no datamodule" if dm is None else f"{type(dm).__name__} has no num_classes"
        raise ValueError(
            f"reset_head needs the number of classes of the data, but {where}: pass it in model_kwargs "
            f"(--model.model_kwargs.num_classes K, in Python model_kwargs={{'num_classes': K}}), which gives "
            f"{hp.pretrained}'s {num_classes_of(self.model)}-class head K outputs"
        )

    def _match_classes(self, dm: Any) -> None:
        k = getattr(dm, "num_classes", None)
        n = num_classes_of(self.model)
        if not isinstance(k, int) or isinstance(k, bool):
            self._check_reset_head(dm)
            return
        if n is None:
            return
        hp = self.hparams
        kwargs = task_model_kwargs(hp.model_kwargs)
        names = list(getattr(dm, "class_names", None) or [])
        shown = f" {names[:10]}{' ...' if len(names) > 10 else ''}" if names else ""
        data = f"the datamodule ({type(dm).__name__}) has {k} classes{shown}"
        explicit = class_count_in(kwargs)
        if n == k:
            return
        if explicit is not None:
            fix = f"--model.model_kwargs.{explicit} {k}" + (" --model.reset_head true" if hp.pretrained else "")
            raise ValueError(
                f"the model is configured for {kwargs[explicit]} classes (model_kwargs.{explicit}="
                f"{kwargs[explicit]}) but {data}; pass {fix}, or remove {explicit} from model_kwargs (or set it null) to take the "
                f"datamodule's count"
            )
        if hp.pretrained and getattr(self.model, "reinitialized_keys", None) and not hp.get("reset_head"):
            rank_zero_info(f"perceiver: a new {k}-class head on the encoder of {hp.pretrained} (a masked LM)")
            hp.model_kwargs = {**kwargs, "num_classes": k}  # its head is new anyway: sized for the data
        elif hp.pretrained:
            if not hp.get("reset_head"):
                raise ValueError(
                    f"the pretrained model {hp.pretrained} has a {n}-class head but {data}; to fine-tune it with a "
                    f"new {k}-class head (re-initialised, all other weights kept) add --model.reset_head true, "
                    f"which loads it with num_classes={k} and ignore_mismatched_sizes=True"
                )
            rank_zero_info(
                f"perceiver: reset_head: replacing the {n}-class head of {hp.pretrained} by a new {k}-class head"
            )
            hp.model_kwargs = {**kwargs, "num_classes": k}
        else:
            hp.model_kwargs = {**kwargs, class_count_key(self.model): k}
        self.set_model(self.build_plain_model().to(next(self.model.parameters()).device))

    def _call_model(self, batch: dict[str, Tensor]) -> Any:
        if "inputs" in batch:
            inputs, mask = self.model_inputs(batch["inputs"]), batch.get("mask")
            return self.run_model(inputs) if mask is None else self.run_model(inputs, mask)
        if "input_ids" in batch:
            return self.run_model(batch["input_ids"], batch.get("attention_mask"))
        raise ValueError(f"expected a batch with 'inputs' or 'input_ids', got keys {sorted(batch)}")

    def step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        hp = self.hparams
        labels = batch["labels"]
        smoothing = hp.label_smoothing if stage == "train" else 0.0
        if stage == "train" and (hp.get("mixup_alpha") or hp.get("cutmix_alpha")):
            if "inputs" not in batch or "mask" in batch:
                raise ValueError(
                    f"mixup_alpha / cutmix_alpha mix image or video batches; this batch has keys {sorted(batch)} "
                    f"(text, sound with its padding mask and point clouds cannot be mixed): set both to 0"
                )
            inputs, perm, lam = mix_batch(
                batch["inputs"], hp.mixup_alpha, hp.cutmix_alpha, self.__dict__["_data_layout"]
            )
            logits = self({**batch, "inputs": inputs}).float()
            loss = lam * F.cross_entropy(logits, labels, label_smoothing=smoothing) + (1.0 - lam) * F.cross_entropy(
                logits, labels[perm], label_smoothing=smoothing
            )
            if lam < 0.5:  # training accuracy against the label that dominates the mixed input
                labels = labels[perm]
        else:
            logits = self(batch).float()
            loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        self._log_loss(stage, loss, labels.shape[0])
        self.metrics[f"{stage}_acc"].update((logits.argmax(-1) == labels).float())
        self._log_metric(stage, "acc")
        return loss

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[dict[str, Any]]:
        """One row per example: the top-5 class ids and probabilities; with the datamodule's `class_names` (as many
        as the model's classes) also `top_names`; with `labels` in the batch also the true `label` (and its
        `label_name`), so that a predictions file can be scored and read without the training code."""
        probs = self(batch).float().softmax(-1)
        top = probs.topk(min(5, probs.shape[-1]), dim=-1)
        names = self._class_names(probs.shape[-1])
        labels = batch.get("labels")
        rows = []
        for row, (ids, p) in enumerate(zip(top.indices.tolist(), top.values.tolist())):
            out: dict[str, Any] = {"top_labels": ids, "top_probs": [round(x, 6) for x in p]}
            if names is not None:
                out["top_names"] = [names[i] for i in ids]
            if labels is not None:
                out["label"] = int(labels[row])
                if names is not None and 0 <= out["label"] < len(names):
                    out["label_name"] = names[out["label"]]
            rows.append(out)
        return rows

    def _class_names(self, num_classes: int) -> list[str] | None:
        """The attached datamodule's `class_names` if it names `num_classes` classes, else None."""
        trainer = self._trainer
        names = getattr(getattr(trainer, "datamodule", None), "class_names", None) if trainer is not None else None
        return [str(n) for n in names] if names is not None and len(names) == num_classes else None
