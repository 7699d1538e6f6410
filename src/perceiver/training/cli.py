"""The `perceiver` command.

    perceiver fit|validate|test|predict --config FILE [--trainer.* ...] [--model.* ...] [--data.* ...]
    perceiver fit --config FILE --ckpt_path last          # resume the run in trainer.default_root_dir
    perceiver fit --config FILE --print_config            # the full, resolved configuration
    perceiver plot RUN_DIR [-o OUT.png]                   # training curves from RUN_DIR/metrics.csv
    perceiver attention MODEL_DIR IMAGE... [-o OUT.png]   # cross-attention maps over images
    perceiver export MODEL_DIR OUT.onnx [--check]         # ONNX with a dynamic batch dimension
    perceiver predict MODEL_DIR FILE... [--top-k 5]       # top-k labels (images, text) or a flow PNG (image pair)

`fit`, `validate`, `test` and `predict` are LightningCLI subcommands. `predict` is dispatched on its first
argument: an existing directory is a model folder (`perceiver.from_pretrained`) and runs `perceiver.training.predict`;
anything else (`--config ...`, options) is LightningCLI's predict over a datamodule.

A run directory is `trainer.default_root_dir` and holds everything of a run in a fixed layout, so that
`--ckpt_path last` finds the last checkpoint again:

    RUN_DIR/config.yaml          the resolved configuration (LightningCLI)
    RUN_DIR/metrics.csv          CSV log (CSVLogger), RUN_DIR/tb/ TensorBoard events
    RUN_DIR/checkpoints/         best.ckpt (by the task's monitored metric) and last.ckpt, written atomically
    RUN_DIR/model/               the best model as config.json + model.safetensors + task.json (at fit end)
    RUN_DIR/training_curves.png  (`perceiver plot RUN_DIR`), RUN_DIR/flow/*.png for the flow task

Loggers and these callbacks are added unless the configuration sets its own (`trainer.logger`, a
`ModelCheckpoint` or progress bar in `trainer.callbacks`).
"""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
)
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from perceiver.hardware import resolve_precision, resolve_threads
from perceiver.training.callbacks import (
    AppendingCSVLogger,
    FiniteCheck,
    FiniteModelCheckpoint,
    JsonlPredictionWriter,
    MetricsResume,
    MidEpochResume,
    NonFiniteError,
    SavePretrained,
    StepSeed,
)
from perceiver.training.tasks import PerceiverTask

__all__ = ["PerceiverCLI", "default_callbacks", "default_loggers", "main"]

EXTRA_HELP = """\
perceiver: train, evaluate and inspect Perceiver models (LightningCLI + extras)

  perceiver fit|validate|test|predict --config FILE [--trainer.* --model.* --data.*]  (see below)
  perceiver plot RUN_DIR [-o OUT.png]                  training curves (PNG) from RUN_DIR/metrics.csv
  perceiver attention MODEL_DIR IMAGE... [-o OUT.png]  first cross-attend's attention maps over images (PNG)
  perceiver export MODEL_DIR OUT.onnx [--check]        ONNX with a dynamic batch (--check: compare onnxruntime)
  perceiver predict MODEL_DIR FILE... [--top-k K]      top-k labels for images / text, flow PNG for an image pair

Shipped configs: configs/digits.yaml, configs/mlm-pydoc.yaml, configs/points-synthetic.yaml,
configs/flow-synthetic.yaml. `perceiver SUBCOMMAND -h` for the options of each.
"""


def default_loggers(run_dir: str | Path) -> list[Any]:
    """CSV log in `RUN_DIR/metrics.csv` (first: it defines `trainer.log_dir`) and TensorBoard in `RUN_DIR/tb`."""
    return [AppendingCSVLogger(run_dir, name="", version=""), TensorBoardLogger(run_dir, name="tb", version="")]


def default_callbacks(
    task: PerceiverTask | type[PerceiverTask],
    run_dir: str | Path,
    existing: list[Callback],
    progress_bar: bool = True,
    every_n_train_steps: int | None = None,
) -> list[Callback]:
    """The callbacks of a run that the configuration does not already provide (see the module docstring);
    `every_n_train_steps` also refreshes last.ckpt every that many optimizer steps (inside epochs)."""
    run_dir = Path(run_dir)
    have = lambda cls: any(isinstance(c, cls) for c in existing)  # noqa: E731
    out: list[Callback] = []
    if not have(ModelCheckpoint):
        # Two callbacks: Lightning 2.6's `save_last=True` refreshes last.ckpt only in epochs where the monitored
        # metric improved, which is not what resuming needs. The second one (no monitor, top-1 by recency)
        # rewrites last.ckpt after every epoch; `--ckpt_path last` finds it by name in the same folder.
        metric, mode = task.monitor
        common = dict(dirpath=run_dir / "checkpoints", auto_insert_metric_name=False, enable_version_counter=False)
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
    if not have(LearningRateMonitor):
        out.append(LearningRateMonitor(logging_interval="step"))
    for cls in (FiniteCheck, MetricsResume, MidEpochResume, StepSeed, SavePretrained, JsonlPredictionWriter):
        if not have(cls):
            out.append(cls())
    return out


class PerceiverCLI(LightningCLI):
    """LightningCLI over any `PerceiverTask` and any `LightningDataModule` (both given by `class_path` in the
    config), with the run-directory layout, loggers and callbacks of the module docstring."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # `args` given while pytest / a launcher has its own sys.argv is intended here
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        kwargs.setdefault("parser_kwargs", {"default_env": False})
        super().__init__(
            PerceiverTask,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            auto_configure_optimizers=False,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.default_root_dir": "runs/default"})
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="Start a new `fit` in a run directory that already holds a run (its logs and checkpoints are "
            "deleted). Without it such a fit stops with an error; resume with --ckpt_path last instead.",
        )
        parser.add_argument(
            "--threads",
            type=int | Literal["auto"] | None,
            default=None,
            help="CPU threads per process for torch ops (torch.set_num_threads): a number, 'auto' (the usable cores "
            "shared by the run's processes) or none (torch's choice). Printed at start.",
        )
        parser.add_argument(
            "--precision",
            type=str,
            default="auto",
            help="'auto' (default): bf16-mixed on a GPU with bf16 and on CPUs with native bf16 (avx512_bf16, "
            "amx_bf16, Arm bf16), 32-true otherwise; or any Lightning precision. --trainer.precision, when given, "
            "wins. Printed at start.",
        )
        parser.add_argument(
            "--checkpoint_every_n_steps",
            type=int | None,
            default=None,
            help="Also write checkpoints/last.ckpt every N optimizer steps (inside epochs), for resuming long "
            "epochs with --ckpt_path last.",
        )

    def _subconfig(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        config = self._subconfig()
        trainer = config.trainer
        devices = trainer.get("devices")
        processes = (int(devices) if str(devices).isdigit() else 1) * int(trainer.get("num_nodes") or 1)
        threads = resolve_threads(config.get("threads"), processes)
        if threads is not None:
            torch.set_num_threads(int(threads.value))
        if trainer.get("precision") is None:
            precision = resolve_precision(config.get("precision", "auto"), str(trainer.get("accelerator") or "auto"))
            trainer.precision = precision.value
        else:
            precision = resolve_precision(trainer.precision)
        what = f"precision {precision.value} ({precision.reason})"
        what += f"; {torch.get_num_threads()} CPU threads" + (f" ({threads.reason})" if threads else "")
        print(f"perceiver: {what}", file=sys.stderr)
        starting_fresh = self.subcommand in (None, "fit") and not config.get("ckpt_path")
        if starting_fresh:
            prepare_run_dir(Path(config.trainer.default_root_dir), overwrite=bool(config.get("overwrite")))

    def before_predict(self) -> None:
        """`perceiver predict --config ...` runs over the datamodule's test split when it has no predict split."""
        dm = self.datamodule
        if dm is not None and type(dm).predict_dataloader is LightningDataModule.predict_dataloader:
            dm.predict_dataloader = dm.test_dataloader

    def instantiate_trainer(self, **kwargs: Any):
        config = self._get(self.config_init, "trainer", default={})
        run_dir = Path(config.get("default_root_dir") or "runs/default")
        existing = list(config.get("callbacks") or [])
        progress_bar = config.get("enable_progress_bar") is not False and not config.get("barebones")
        every = self._get(self.config_init, "checkpoint_every_n_steps", default=None)
        kwargs["callbacks"] = existing + default_callbacks(self.model, run_dir, existing, progress_bar, every)
        if config.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(run_dir)
        return super().instantiate_trainer(**kwargs)


RUN_FILES = ("metrics.csv", "hparams.yaml", "config.yaml", "tb", "checkpoints", "model", "flow")


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse (or, with `overwrite`, clear) a run directory that already holds a run, before training starts."""
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not present:
        return
    if not overwrite:
        raise SystemExit(
            f"error: run directory {run_dir} already holds a run ({', '.join(present)}).\n"
            f"  resume it:        add --ckpt_path last\n"
            f"  start a new one:  choose another --trainer.default_root_dir, or add --overwrite true"
        )
    for name in present:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `perceiver` console script (see the module docstring)."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "plot":
        from perceiver.training.inspect import plot_main

        return plot_main(argv[1:])
    if argv and argv[0] == "generate":
        from perceiver.training.generate import generate_main

        return generate_main(argv[1:])
    if argv and argv[0] == "export":
        from perceiver.export import export_main

        return export_main(argv[1:])
    if argv and argv[0] == "attention":
        from perceiver.training.inspect import attention_main

        return attention_main(argv[1:])
    if len(argv) >= 2 and argv[0] == "predict" and Path(argv[1]).is_dir():
        from perceiver.training.predict import predict_main

        return predict_main(argv[1:])
    if not argv or argv[0] in ("-h", "--help"):
        print(EXTRA_HELP)
    try:
        PerceiverCLI(args=None if from_sys else argv)
    except NonFiniteError as e:
        raise SystemExit(f"error: {e}") from e
    except ValueError as e:
        raise SystemExit(f"error: {_instantiation_error(e)}") from e
    return None


def _instantiation_error(error: ValueError) -> str:
    """jsonargparse wraps an error raised while building the model / datamodule (e.g. an unknown model keyword) in a
    long "Does not validate against any of the Union subtypes" message; keep the lines that say what went wrong."""
    text = str(error)
    if "Does not validate against any of the Union subtypes" not in text:
        return text
    reasons = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("- ")]
    reasons = [r for r in reasons if not r.startswith("Expected a <class 'NoneType'>")]
    return "could not build the model or datamodule from the configuration: " + "; ".join(reasons or [text])


if __name__ == "__main__":
    main()
