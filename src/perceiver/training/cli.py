"""The `perceiver` command.

    perceiver fit|validate|test|predict --config FILE [--trainer.* ...] [--model.* ...] [--data.* ...]
    perceiver fit --config FILE --ckpt_path last          # resume the run in trainer.default_root_dir
    perceiver fit --config FILE --ckpt_path last_if_any   # resume it if it has a last checkpoint, else start it
    perceiver fit --config FILE --print_config            # the full, resolved configuration
    perceiver plot RUN_DIR [-o OUT.png]                   # training curves from RUN_DIR/metrics.csv
    perceiver attention MODEL_DIR IMAGE... [-o OUT.png]   # cross-attention maps over images
    perceiver export MODEL_DIR OUT.onnx [--check]         # ONNX with a dynamic batch dimension
    perceiver predict MODEL_DIR FILE... [--top-k 5]       # top-k labels (images, text) or a flow PNG (image pair)
    perceiver generate MODEL_DIR --prompt TEXT            # continue a text with a causal model (Perceiver AR)
    perceiver --version                                   # versions of perceiver-torch, torch, Lightning, Python

`fit`, `validate`, `test` and `predict` are LightningCLI subcommands. `predict` is dispatched on its first
argument: an existing directory is a model folder (`perceiver.from_pretrained`) and runs `perceiver.training.predict`;
anything else (`--config ...`, options) is LightningCLI's predict over a datamodule (its `predict_dataloader`; the
datamodules of `perceiver.data` predict over their test split). Keys are matched exactly: an abbreviated or
misspelled key (`--trainer.max_epoch`) is an error naming it.

A run directory is `trainer.default_root_dir` and holds everything of a run in a fixed layout, so that
`--ckpt_path last` finds the last checkpoint again:

    RUN_DIR/config.yaml          the resolved configuration of fit (validate / test / predict: config-STAGE.yaml)
    RUN_DIR/metrics.csv          CSV log (CSVLogger), RUN_DIR/tb/ TensorBoard events
    RUN_DIR/checkpoints/         best.ckpt (by the task's monitored metric) and last.ckpt, written atomically
    RUN_DIR/model/               the best model as config.json + model.safetensors + task.json (at fit end)
    RUN_DIR/training_curves.png  (`perceiver plot RUN_DIR`), RUN_DIR/flow/*.png for the flow task

Loggers and these callbacks are added unless the configuration sets its own (`trainer.logger`, a
`ModelCheckpoint` or progress bar in `trainer.callbacks`). A new `fit` refuses a run directory that holds a run (a
checkpoint, a model folder or a logged metric); what a start that failed before its first optimizer step wrote
is removed again, so the corrected command runs in the same directory.

Help is fast: `perceiver --help` imports neither torch nor Lightning, and the help of a subcommand (`perceiver fit
--help`, `--model.help CLASS`, ...) is rendered by the real parser once and then read from a cache
(`perceiver.training.help_cache`). This module imports Lightning and the models only inside the functions that need them.
"""

from __future__ import annotations

import os
import sys
import textwrap
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from perceiver.training.cli_errors import check_accelerator, instantiation_error, missing_file_error, with_suggestions
from perceiver.training.config_files import resolve_config_args, shipped_configs
from perceiver.training.help_cache import is_help_request, print_help
from perceiver.training.run_defaults import default_callbacks, default_loggers, quiet_lightning
from perceiver.training.run_dir import (
    RUN_FILES,
    prepare_run_dir,
    remove_hpc_leftovers,
    resume_path,
    undo_failed_start,
    untrained_note,
)

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

    PerceiverCLI: type  # the LightningCLI subclass, defined on first use (module `__getattr__`, `_cli_class`)

__all__ = ["PerceiverCLI", "default_callbacks", "default_loggers", "main"]

EXTRA_HELP = """\
perceiver: train, evaluate and inspect Perceiver models (LightningCLI + extras)

  perceiver fit|validate|test|predict --config FILE [--trainer.* --model.* --data.*]
  perceiver plot RUN_DIR [-o OUT.png]                  training curves (PNG) from RUN_DIR/metrics.csv
  perceiver attention MODEL_DIR IMAGE... [-o OUT.png]  first cross-attend's attention maps over images (PNG)
  perceiver export MODEL_DIR OUT.onnx [--check]        ONNX with a dynamic batch (--check: compare onnxruntime)
  perceiver predict MODEL_DIR FILE... [--top-k K]      top-k labels for images / text, flow PNG for an image pair
  perceiver generate MODEL_DIR --prompt TEXT           continue a text with a causal model (Perceiver AR)
  perceiver --version                                  versions of perceiver-torch, torch, Lightning and Python

LightningCLI subcommands (each takes -c/--config FILE, --print_config and --trainer.*, --model.*, --data.* keys):
  fit       train (and validate) in the run directory trainer.default_root_dir; --ckpt_path last resumes it
            (an error when it has no checkpoint), --ckpt_path last_if_any resumes it or starts it fresh,
            --overwrite true starts it afresh
  validate  one evaluation epoch over the validation split (--ckpt_path FILE or last)
  test      one evaluation epoch over the test split (--ckpt_path FILE or last)
  predict   predictions of the datamodule's predict split (the test split for perceiver.data) to
            RUN_DIR/predictions.jsonl (--ckpt_path FILE or last)

Shipped configs (inside the package: `--config digits.yaml` finds them from any directory; a file of that name
where you run wins):
{configs}
`perceiver SUBCOMMAND -h` for the options of each (`perceiver predict MODEL_DIR -h`: those of predict on a model
folder).
"""

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

CKPT_PATH_HELP = (
    "perceiver: 'last' resumes from the last checkpoint of the run directory (trainer.default_root_dir/checkpoints/"
    "last.ckpt, or a newer SLURM requeue checkpoint hpc_ckpt_N.ckpt) and is an error when there is none; "
    "'last_if_any' (fit only) resumes from it when there is one and starts the run fresh otherwise; "
    "'best' (validate, test, predict) is the run's best checkpoint (checkpoints/best.ckpt). "
    "Lightning: {}"
)


def _is_launching_process() -> bool:
    """False in the worker processes of a multi-process launch (ranks > 0), which re-run this command."""
    return all(os.environ.get(k, "0") == "0" for k in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


# -- the LightningCLI ----------------------------------------------------------------------------------------------


@cache
def _cli_class() -> type:
    """`PerceiverCLI`, defined on first use so that importing this module does not import Lightning."""
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from perceiver.hardware import resolve_precision, resolve_threads
    from perceiver.training.run_files import SaveRunConfig
    from perceiver.training.tasks import PerceiverTask

    class PerceiverArgumentParser(LightningArgumentParser):
        """Names the closest known keys when a key is unknown (abbreviations are off: see `PerceiverCLI`)."""

        def error(self, message: str, ex: Exception | None = None) -> NoReturn:
            super().error(with_suggestions(message, self._option_string_actions), ex)

    class PerceiverCLI(LightningCLI):
        """LightningCLI over any `PerceiverTask` and any `LightningDataModule` (both given by `class_path` in the
        config), with the run-directory layout, loggers and callbacks of the module docstring. Keys must be spelled
        out: argparse's prefix matching (`--trainer.max_epoch` for `max_epochs`) is off in every parser."""

        def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
            quiet_lightning()
            kwargs.setdefault("save_config_kwargs", {"overwrite": True})
            kwargs.setdefault("save_config_callback", SaveRunConfig)  # evaluations: config-{stage}.yaml beside it
            kwargs.setdefault("parser_class", PerceiverArgumentParser)
            given = dict(kwargs.pop("parser_kwargs", None) or {})
            parser_kwargs: dict[str, Any] = {"default_env": False, "allow_abbrev": False}
            for sub in self.subcommands():
                parser_kwargs[sub] = {"allow_abbrev": False, **given.pop(sub, {})}
            parser_kwargs.update(given)
            self._fresh_start: tuple[Path, bool, set[str]] | None = None
            super().__init__(
                PerceiverTask,
                LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                args=args,
                run=run,
                auto_configure_optimizers=False,
                parser_kwargs=parser_kwargs,
                **kwargs,
            )

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
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
                help="CPU threads per process for torch ops (torch.set_num_threads): a number, 'auto' (the usable "
                "cores shared by the run's processes) or none (torch's choice). Printed at start.",
            )
            parser.add_argument(
                "--precision",
                type=str,
                default="auto",
                help="'auto' (default): bf16-mixed on a GPU with bf16 and on CPUs with native bf16 (avx512_bf16, "
                "amx_bf16, Arm bf16), 32-true otherwise; or any Lightning precision. --trainer.precision, when "
                "given, wins. Printed at start.",
            )
            parser.add_argument(
                "--checkpoint_every_n_steps",
                type=int | None,
                default=None,
                help="Also write checkpoints/last.ckpt every N optimizer steps (inside epochs), for resuming long "
                "epochs with --ckpt_path last.",
            )

        def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
            parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
            for action in parser._actions:
                if action.dest == "ckpt_path":
                    action.help = CKPT_PATH_HELP.format(action.help or "")
            return parser

        def _subconfig(self) -> Any:
            return self.config[self.subcommand] if self.subcommand else self.config

        def before_instantiate_classes(self) -> None:
            import torch

            config = self._subconfig()
            trainer = config.trainer
            devices = trainer.get("devices")
            # the processes of this node (devices per node; each node of a multi-node run has its own cores)
            processes = int(devices) if str(devices).isdigit() else 1
            check_accelerator(trainer.get("accelerator"))
            threads = resolve_threads(config.get("threads"), processes)
            if threads is not None:
                torch.set_num_threads(int(threads.value))
            if trainer.get("precision") is None:
                precision = resolve_precision(
                    config.get("precision", "auto"), str(trainer.get("accelerator") or "auto")
                )
                trainer.precision = precision.value
            else:
                precision = resolve_precision(trainer.precision)
            what = f"precision {precision.value} ({precision.reason})"
            what += f"; {torch.get_num_threads()} CPU threads" + (f" ({threads.reason})" if threads else "")
            print(f"perceiver: {what}", file=sys.stderr)
            if config.get("ckpt_path") == "last_if_any" and self.subcommand != "fit":
                raise SystemExit(
                    f"error: --ckpt_path last_if_any is for fit (it may start fresh); for {self.subcommand} "
                    "give a checkpoint file or 'last'"
                )
            resume = config.get("ckpt_path") in ("last", "last_if_any")  # this run's last checkpoint
            if config.get("overwrite") and resume and self.subcommand == "fit":
                raise SystemExit(
                    f"error: --overwrite true starts the run afresh and --ckpt_path {config.get('ckpt_path')} "
                    "resumes it; give one of them"
                )

        def _resolve_last(self) -> None:
            """`--ckpt_path last` / `last_if_any`: look for the last checkpoint where Lightning looks (the folders
            of the ModelCheckpoint callbacks, RUN_DIR/checkpoints by default, and on-exception checkpoints) and
            among the SLURM requeue checkpoints (RUN_DIR/hpc_ckpt_N.ckpt), the newest file wins; none: an error
            for `last`, a fresh start for `last_if_any` (Lightning would silently start fresh). Evaluating
            (validate / test / predict): also quiets what only matters to a fit (`QUIET_WHEN_EVALUATING`), and
            without a `ckpt_path` in a run directory with checkpoints says that they are not used (`untrained_note`)."""
            quiet_lightning(evaluating=self.subcommand != "fit")
            config = self.config_init[self.subcommand]
            wanted = config.get("ckpt_path")
            if wanted == "best" and self.subcommand != "fit":
                return self._resolve_best(config)
            evaluating = wanted is None and self.subcommand != "fit" and _is_launching_process()
            if evaluating and (note := untrained_note(self.trainer.default_root_dir, str(self.subcommand))):
                print(f"perceiver: {note}", file=sys.stderr)
            if wanted not in ("last", "last_if_any"):
                return
            found: set[str] = set()
            looked: list[str] = []
            for cb in self.trainer.callbacks:  # type: ignore[attr-defined]  # set by Lightning, not declared on Trainer
                if isinstance(cb, OnExceptionCheckpoint):
                    looked.append(str(cb.ckpt_path))
                    found |= {str(cb.ckpt_path)} if Path(cb.ckpt_path).is_file() else set()
                elif isinstance(cb, ModelCheckpoint):
                    where = cb.dirpath if cb.dirpath is not None else f"the checkpoint folder of {type(cb).__name__}"
                    looked.append(f"{where}/{cb.CHECKPOINT_NAME_LAST}*{cb.FILE_EXTENSION}")
                    found |= cb._find_last_checkpoints(self.trainer)  # what Lightning's ckpt_path="last" uses
            if path := resume_path(found, self.trainer.default_root_dir):  # also SLURM's requeue checkpoints
                config["ckpt_path"] = path
                return
            if wanted == "last":
                raise SystemExit(
                    f"error: --ckpt_path last: run directory {self.trainer.default_root_dir} has no checkpoint to "
                    f"resume (looked for {', '.join(dict.fromkeys(looked)) or 'checkpoint callbacks: none'}).\n"
                    f"  start the run:        leave out --ckpt_path\n"
                    f"  resume it if it can:  --ckpt_path last_if_any (starts fresh when there is no checkpoint)"
                )
            config["ckpt_path"] = None
            print(f"perceiver: no last checkpoint in {self.trainer.default_root_dir}; starting fresh", file=sys.stderr)

        def _resolve_best(self, config: Any) -> None:
            """`--ckpt_path best` for validate / test / predict in a new process, where Lightning knows no best model
            (its error says ModelCheckpoint "is not configured to save the best model"): the file of the monitoring
            ModelCheckpoint callbacks (RUN_DIR/checkpoints/best.ckpt by default); an error naming where it looked."""
            looked: list[str] = []
            for cb in self.trainer.callbacks:  # type: ignore[attr-defined]  # set by Lightning, not declared on Trainer
                if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.dirpath and "{" not in (cb.filename or "{"):
                    path = Path(cb.dirpath) / f"{cb.filename}{cb.FILE_EXTENSION}"
                    looked.append(str(path))
                    if path.is_file():
                        config["ckpt_path"] = str(path)
                        return
            if looked:
                raise SystemExit(
                    f"error: --ckpt_path best: run directory {self.trainer.default_root_dir} has no best checkpoint "
                    f"(looked for {', '.join(looked)}); train it first, or give a checkpoint file or 'last'"
                )

        def _prepare_fresh_start(self) -> None:
            """Any fit: `remove_hpc_leftovers`; one that does not resume: `prepare_run_dir`, and remember what was
            there (`_run_subcommand`)."""
            if not _is_launching_process() or getattr(self.trainer, "fast_dev_run", False):  # it writes nothing
                return
            run_dir = Path(self.trainer.default_root_dir)
            remove_hpc_leftovers(run_dir)
            if self._get(self.config_init, "ckpt_path"):
                return
            existed = run_dir.exists()
            prepare_run_dir(run_dir, overwrite=bool(self._get(self.config_init, "overwrite")))
            self._fresh_start = (run_dir, existed, {name for name in RUN_FILES if (run_dir / name).exists()})

        def after_instantiate_classes(self) -> None:
            if self.subcommand is None:  # run=False (e.g. the digits demo): the caller fits a fresh run
                self._prepare_fresh_start()

        def before_fit(self) -> None:
            self._resolve_last()
            self._prepare_fresh_start()

        before_validate = before_test = _resolve_last

        def before_predict(self) -> None:
            self._resolve_last()
            dm = self.datamodule
            if dm is not None and type(dm).predict_dataloader is LightningDataModule.predict_dataloader:
                raise SystemExit(
                    f"error: {type(dm).__name__} has no predict split (predict_dataloader); give it one (the "
                    "datamodules of perceiver.data predict over their test split), or use `perceiver test`"
                )

        def _run_subcommand(self, subcommand: str) -> None:
            try:
                super()._run_subcommand(subcommand)
            except BaseException:
                if self._fresh_start is not None and self.trainer.global_step == 0:
                    undo_failed_start(*self._fresh_start)
                raise

        def instantiate_trainer(self, **kwargs: Any) -> Trainer:
            config = self._get(self.config_init, "trainer", default={})
            run_dir = Path(config.get("default_root_dir") or "runs/default")
            existing = list(config.get("callbacks") or [])
            progress_bar = config.get("enable_progress_bar") is not False and not config.get("barebones")
            every = self._get(self.config_init, "checkpoint_every_n_steps", default=None)
            bare = bool(config.get("barebones"))  # Lightning's barebones: no logger, checkpoints, progress bar
            logger = config.get("logger") is not False and not bare
            checkpointing = config.get("enable_checkpointing") is not False and not bare
            kwargs["callbacks"] = existing + default_callbacks(
                self.model, run_dir, existing, progress_bar, every, logger, checkpointing
            )
            if config.get("logger") in (None, True) and not bare:
                kwargs["logger"] = default_loggers(run_dir)
            return super().instantiate_trainer(**kwargs)

    # importable by name (the module's `__getattr__`), so that pickle finds them: `strategy: ddp_spawn` pickles
    # the trainer, whose config-saving callback holds the parser
    for cls in (PerceiverCLI, PerceiverArgumentParser):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
    PerceiverCLI.parser_class = PerceiverArgumentParser
    return PerceiverCLI


def __getattr__(name: str) -> Any:
    if name == "PerceiverCLI":
        return _cli_class()
    if name == "PerceiverArgumentParser":
        return getattr(_cli_class(), "parser_class")  # noqa: B009  # set in _cli_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- entry point ---------------------------------------------------------------------------------------------------


def version_text() -> str:
    """`perceiver --version`: this package's version and those of what it runs on, read from the installed
    distributions' metadata (no torch or Lightning import, like `--help`)."""
    from importlib.metadata import PackageNotFoundError, version

    from perceiver import __version__

    def installed(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    runs_on = ", ".join(f"{dist} {installed(dist)}" for dist in ("torch", "lightning"))
    return f"perceiver-torch {__version__} ({runs_on}, Python {sys.version.split()[0]})"


# The optional dependencies the commands import, and the extra of perceiver-torch that brings each.
EXTRA_OF_MODULE = {
    **dict.fromkeys(["lightning", "jsonargparse", "torchmetrics", "matplotlib", "rich", "tensorboard"], "train"),
    **dict.fromkeys(["sklearn", "datasets"], "train"),
    **dict.fromkeys(["soundfile", "scipy"], "audio"),
    "PIL": "vision",
    "av": "video",
    **dict.fromkeys(["onnx", "onnxscript", "onnxruntime"], "export"),
    "huggingface_hub": "hub",
    "peft": "lora",
    "torchao": "quant",
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `perceiver` console script (see the module docstring)."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv, from_sys)
    except ModuleNotFoundError as e:  # an optional dependency: say which extra brings it, not a traceback
        extra = EXTRA_OF_MODULE.get((e.name or "").partition(".")[0])
        if extra is None:
            raise
        command = f"perceiver {argv[0]}" if argv else "perceiver"
        raise SystemExit(
            f"error: `{command}` needs {e.name}, which is not installed: pip install 'perceiver-torch[{extra}]'"
        ) from e


def _dispatch(argv: list[str], from_sys: bool) -> None:
    if argv and argv[0] == "plot":
        from perceiver.training.inspect import plot_main

        return plot_main(argv[1:])
    if argv and argv[0] == "generate":
        from perceiver.training.generate import generate_main

        return generate_main(argv[1:])
    if argv and argv[0] == "export":
        from perceiver.training.export_command import export_main

        return export_main(argv[1:])
    if argv and argv[0] == "attention":
        from perceiver.training.inspect import attention_main

        return attention_main(argv[1:])
    if len(argv) >= 2 and argv[0] == "predict" and not argv[1].startswith("-"):  # Lightning's predict: options only
        from perceiver.training.predict import predict_main

        return predict_main(argv[1:])
    if argv and argv[0] in ("-V", "--version"):
        print(version_text())
        return None
    if not argv or argv[0] in ("-h", "--help"):
        names = textwrap.fill(
            ", ".join(shipped_configs()), 116, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False
        )
        print(EXTRA_HELP.format(configs=names))
        if not argv:
            print("error: expected a command", file=sys.stderr)
        raise SystemExit(0 if argv else 2)
    argv = resolve_config_args(argv)
    if from_sys:
        sys.argv[1:] = argv  # LightningCLI reads sys.argv itself when called from the console script
    if is_help_request(argv):
        return print_help(argv, lambda: _run_cli(argv, from_sys))
    return _run_cli(argv, from_sys)


def _run_cli(argv: list[str], from_sys: bool) -> None:
    from perceiver.training.callbacks import NonFiniteError

    try:
        _cli_class()(args=None if from_sys else argv)
    except NonFiniteError as e:
        raise SystemExit(f"error: {e}") from e
    except ValueError as e:
        raise SystemExit(f"error: {instantiation_error(e)}") from e
    except FileNotFoundError as e:  # --ckpt_path FILE that does not exist (Lightning's), a missing data file
        raise SystemExit(f"error: {missing_file_error(e)}") from e


if __name__ == "__main__":
    main()
