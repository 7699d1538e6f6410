"""`MidEpochResume`: the exact resume of a run from a checkpoint written inside an epoch (one of the callbacks the
`perceiver` CLI adds to every run; importable from `perceiver.training.callbacks` as before)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["MidEpochResume"]


class MidEpochResume(Callback):
    """Exact resume from a checkpoint written inside an epoch (`every_n_train_steps`): the first epoch after the
    resume skips the batches that the checkpoint has already trained on.

    Lightning restores the loop counters of such a checkpoint but iterates a (non-stateful) train dataloader from
    its start, so the resumed epoch would see its first batches again. The datamodules of `perceiver.data` make the
    order of an epoch a function of (seed, epoch), so drawing and dropping the trained batches puts the run exactly
    where the checkpoint left it; with `StepSeed` the weights then equal an uninterrupted run's. Works on the
    datamodule's `train_dataloader` (the class of the returned loader gets a skipping `__iter__`).
    """

    def __init__(self) -> None:
        self._skip = 0
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning, not declared on Trainer
        if stage != "fit" or dm is None or getattr(dm.train_dataloader, "_mid_epoch_resume", False):
            return
        self._trainer = trainer
        build, callback = dm.train_dataloader, self

        def train_dataloader() -> Any:
            loader = build()
            if isinstance(loader, torch.utils.data.DataLoader):
                loader.__class__ = _skipping_loader_class(type(loader), callback)
            return loader

        train_dataloader._mid_epoch_resume = True  # type: ignore[attr-defined]
        dm.train_dataloader = train_dataloader

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
        # a checkpoint of the last batch (or the epoch's end) starts the next epoch: nothing to skip
        finished = bool(progress.get("is_last_batch", True))
        self._skip = 0 if finished else int(progress.get("current", {}).get("processed", 0) or 0)

    def take_skip(self) -> int:
        """Batches to drop at the start of this iteration (once, only inside an unfinished epoch)."""
        skip, self._skip = self._skip, 0
        return skip


def _skipping_loader_class(base: type, callback: MidEpochResume) -> type:
    def __iter__(self: Any) -> Any:  # noqa: N807
        iterator = base.__iter__(self)  # type: ignore[attr-defined]  # base is a DataLoader class
        return _skip_lazily(iterator, callback)

    return type(f"MidEpochResume{base.__name__}", (base,), {"__iter__": __iter__})


def _skip_lazily(iterator: Any, callback: MidEpochResume) -> Any:
    """Drop the batches to skip at the first `next` (Lightning creates the iterator of a resumed run before it
    restores the loop counters; the samplers read the epoch when the first index is drawn)."""
    skip = callback.take_skip()
    if skip:
        rank_zero_info(f"resuming inside the epoch: skipping the {skip} batches trained before the checkpoint")
    for _ in range(skip):
        if next(iterator, _END) is _END:
            return
    yield from iterator


_END = object()
