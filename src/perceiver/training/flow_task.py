"""Optical flow task (Perceiver IO's flow model): end-point error loss, a zero-flow baseline and colour-coded flow
PNGs of a few validation pairs after each validation epoch.

Batches `{"frames" (B, 2, H, W, 3) in [0, 1], "flow" (B, H, W, 2)}` (as `SyntheticFlowDataModule` gives them), with
an optional `"valid" (B, H, W)` bool (`SintelFlowDataModule`: False where the ground truth is unknown), whose False
pixels count in neither the loss nor the metrics; the model takes `frames_to_model_input(frames)` and returns the
flow `(B, H, W, 2)` in pixels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from perceiver.training.tasks import PerceiverTask, metric_dict

__all__ = ["FlowTask", "frames_to_model_input", "masked_epe"]


def frames_to_model_input(frames: Tensor, patch_size: int = 3) -> Tensor:
    """`(B, 2, H, W, 3)` frames in [0, 1] -> the flow model's input (transformers' `(B, 2, 27, H, W)` patches, or
    `(B, 2, 3 * k * k, H, W)` for `patch_size` k) of the frames scaled to [-1, 1], DeepMind's input range (the
    published weights expect it; `model.predict` does the same for uint8 frames)."""
    from perceiver.adapters.flow import frames_to_patches, normalize_frames

    return frames_to_patches(normalize_frames(frames), patch_size=patch_size)


def masked_epe(pred: Tensor, flow: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """End-point errors of `pred` against `flow` `(B, H, W, 2)` over the `valid` `(B, H, W)` pixels (None: all):
    `(mean over all valid pixels of the batch, per-sample means (B,))`; a sample without valid pixels counts 0."""
    epe = (pred - flow).norm(dim=-1)  # (B, H, W)
    if valid is None:
        return epe.mean(), epe.mean(dim=(1, 2))
    w = valid.to(epe.dtype)
    epe = torch.where(valid, epe, torch.zeros_like(epe))
    return epe.sum() / w.sum().clamp_min(1), epe.sum(dim=(1, 2)) / w.sum(dim=(1, 2)).clamp_min(1)


class FlowTask(PerceiverTask):
    """Optical flow: the loss is the mean end-point error (EPE, in pixels); logs `epe` and `epe_zero`, the EPE of
    predicting zero flow. After each validation epoch it writes `RUN_DIR/flow/epoch=NNN.png`: the first frame,
    ground truth and predicted flow of a few validation pairs, colour-coded (Middlebury colour wheel).
    """

    monitor = ("val/epe", "min")
    task_name = "optical-flow"

    def __init__(self, *args: Any, num_flow_images: int = 4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.metrics = metric_dict("epe", baseline="epe_zero")
        self._examples: dict[str, Tensor] | None = None

    def _call_model(self, batch: dict[str, Tensor]) -> Any:
        return self.run_model(frames_to_model_input(batch["frames"], getattr(self.model.config, "patch_size", 3)))

    def step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        pred = self(batch).float()
        gt = batch["flow"].float()
        valid = batch.get("valid")
        loss, per_sample = masked_epe(pred, gt, valid)
        self._log_loss(stage, loss, gt.shape[0])
        self.metrics[f"{stage}_epe"].update(per_sample)
        self._log_metric(stage, "epe")
        if stage != "train":
            self.metrics[f"{stage}_epe_zero"].update(masked_epe(torch.zeros_like(gt), gt, valid)[1])
            self._log_metric(stage, "epe_zero", prog_bar=False)
        if stage == "val" and self._examples is None:
            k = self.hparams.num_flow_images
            self._examples = {"frames": batch["frames"][:k].cpu(), "flow": gt[:k].cpu(), "pred": pred[:k].cpu()}
        return loss

    def on_validation_epoch_start(self) -> None:
        self._examples = None

    def on_validation_epoch_end(self) -> None:
        trainer = self.trainer
        if (
            self._examples is None
            or trainer.sanity_checking
            or getattr(trainer, "fast_dev_run", False)
            or not trainer.is_global_zero
        ):
            return
        from perceiver.training.plots import save_flow_comparison

        ex = self._examples
        out = self.run_dir() / "flow" / f"epoch={self.current_epoch:03d}.png"
        save_flow_comparison(ex["frames"][:, 0], ex["flow"], ex["pred"], out)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[dict[str, Any]]:
        pred = self(batch).float()
        epe = masked_epe(pred, batch["flow"].float(), batch.get("valid"))[1] if "flow" in batch else None
        rows = []
        for i in range(pred.shape[0]):
            row: dict[str, Any] = {"mean_flow_magnitude": float(pred[i].norm(dim=-1).mean())}
            if epe is not None:
                row["epe"] = float(epe[i])
            rows.append(row)
        return rows
