"""What a `perceiver fit` run gets unless its configuration provides it: the loggers (CSV + TensorBoard in the run
directory) and the callbacks (best / last checkpoints, progress bar, learning-rate monitor, the finite checks, resume
and seeding helpers, the model folder and prediction writer); and the libraries' messages it does not show
(`quiet_lightning`). Imports Lightning only when called.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import Callback

    from perceiver.training.tasks import PerceiverTask

__all__ = ["default_callbacks", "default_loggers", "quiet_lightning"]


def default_loggers(run_dir: str | Path) -> list[Any]:
    """CSV log in `RUN_DIR/metrics.csv` (first: it defines `trainer.log_dir`) and TensorBoard in `RUN_DIR/tb`."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from perceiver.training.callbacks import AppendingCSVLogger

    return [AppendingCSVLogger(run_dir, name="", version=""), TensorBoardLogger(run_dir, name="tb", version="")]


def default_callbacks(
    task: PerceiverTask | type[PerceiverTask],
    run_dir: str | Path,
    existing: list[Callback],
    progress_bar: bool = True,
    every_n_train_steps: int | None = None,
    logger: bool = True,
    checkpointing: bool = True,
) -> list[Callback]:
    """The callbacks of a run that the configuration does not already provide (see `perceiver.training.cli`'s docstring);
    `every_n_train_steps` also refreshes last.ckpt every that many optimizer steps (inside epochs). Without a
    logger (`trainer.logger: false`) no learning-rate monitor; without checkpointing (`trainer.enable_checkpointing:
    false`) no checkpoints (the model folder then holds the final weights)."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, RichProgressBar

    from perceiver.training.callbacks import (
        FiniteCheck,
        FiniteModelCheckpoint,
        MetricsResume,
        MidEpochResume,
        SavePretrained,
        StepSeed,
    )
    from perceiver.training.run_files import JsonlPredictionWriter, StepLearningRateMonitor

    run_dir = Path(run_dir)
    have = lambda cls: any(isinstance(c, cls) for c in existing)  # noqa: E731
    out: list[Callback] = []
    if checkpointing and not have(ModelCheckpoint):
        # Two callbacks: Lightning 2.6's `save_last=True` refreshes last.ckpt only in epochs where the monitored
        # metric improved, which is not what resuming needs. The second one (no monitor, top-1 by recency)
        # rewrites last.ckpt after every epoch; `--ckpt_path last` finds it by name in the same folder.
        metric, mode = task.monitor
        common: dict[str, Any] = dict(
            dirpath=run_dir / "checkpoints", auto_insert_metric_name=False, enable_version_counter=False
        )
        # FiniteModelCheckpoint: never writes NaN / inf weights, writes next to the target and renames
        out.append(FiniteModelCheckpoint(filename="best", monitor=metric, mode=mode, save_top_k=1, **common))
        out.append(FiniteModelCheckpoint(filename="last", monitor=None, save_top_k=1, **common))
        if every_n_train_steps:
            out.append(
                FiniteModelCheckpoint(
                    filename="last", monitor=None, save_top_k=1, every_n_train_steps=every_n_train_steps, **common
                )
            )
    if progress_bar and not have(ProgressBar):
        out.append(RichProgressBar(leave=True))
    if logger and not have(LearningRateMonitor):
        out.append(StepLearningRateMonitor())  # once per optimizer step, also with gradient accumulation
    for cls in (FiniteCheck, MetricsResume, MidEpochResume, StepSeed, SavePretrained, JsonlPredictionWriter):
        if not have(cls):
            out.append(cls())
    return out


# -- Lightning's noise ---------------------------------------------------------------------------------------------

#: warnings of the libraries that say nothing actionable about a perceiver run (message regex, category)
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # torch >= 2.6 deprecates pytree's LeafSpec, which Lightning 2.6 still builds on every training step
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # resuming writes best.ckpt / last.ckpt into the same checkpoints folder: that is the run layout
    (r"Checkpoint directory .* exists and is not empty", UserWarning),
    # `args` given while pytest / a launcher has its own sys.argv is intended here
    (r"LightningCLI's args parameter is intended", UserWarning),
    # ckpt_path="best" with our two checkpoint callbacks: the first one is the best checkpoint's, as intended
    (r".* is called with Trainer configured with multiple `ModelCheckpoint` callbacks", UserWarning),
    # every task overrides configure_model (for FSDP2); weight averaging with a sharded model is refused by name
    (r"You're using the WeightAveraging callback with a model that overrides the configure_model", UserWarning),
    # FSDP2 with `save_distributed_checkpoint: true`: every save of best.ckpt / last.ckpt rewrites that checkpoint
    # folder (the run layout; Lightning saves with overwrite=True), which torch's writer announces in every process
    (r"Detected an existing checkpoint in .*, overwriting since self\.overwrite=True", UserWarning),
)


#: warnings that say nothing actionable when a run only evaluates (validate / test / predict)
QUIET_WHEN_EVALUATING: tuple[tuple[str, type[Warning]], ...] = (
    # a checkpoint of another run directory: its top-k bookkeeping matters to a fit that goes on saving, not here
    (r"The dirpath has changed from .* won't be reloaded", UserWarning),
)


class _DropTips(logging.Filter):
    """Drops Lightning's advertising ("💡 Tip: For seamless cloud ... try installing [litmodels] ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_lightning(evaluating: bool = False) -> None:
    """Silences the warnings of `QUIET_WARNINGS` (and, `evaluating`, of `QUIET_WHEN_EVALUATING`) and Lightning's tips
    (only those; idempotent)."""
    for message, category in QUIET_WARNINGS + (QUIET_WHEN_EVALUATING if evaluating else ()):
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning_fabric.utilities.rank_zero",
        "pytorch_lightning.utilities.rank_zero",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())
