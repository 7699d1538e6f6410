"""Lightning task modules: one small class per task (each in its own module) on a shared base, defined here.

    PerceiverTask                model building, AdamW + linear warmup + cosine schedule, checkpoint metadata
    ├── ClassificationTask       (classification_task) images / point clouds / text -> class; accuracy
    ├── MaskedLMTask             (mlm_task) byte-level masked LM; masked-byte accuracy + most-frequent-byte baseline
    ├── FlowTask                 (flow_task) optical flow; end-point error (EPE) + zero-flow baseline, flow PNGs
    ├── CausalLMTask             (ar_task) causal byte LM (Perceiver AR); bits per byte + unigram baseline
    └── TokenClassificationTask  (segment_task) a label per byte (word segmentation), F1

The wrapped network is `self.model`, built from a registry name (`perceiver.create_model(model, **model_kwargs)`;
`"perceiver"` is the classic `Perceiver`) or loaded from a model folder or Hub id (`pretrained=...`, e.g. a converted
checkpoint to fine-tune). Models return a tensor (classic `Perceiver`) or an output object with `.logits`
(Perceiver IO); `logits_of` accepts both.

Batches are dicts (see `perceiver.data`): image classification `{"inputs" (B, H, W, C), "labels" (B,)}`; point
clouds `{"inputs" (B, P, 3), "mask" (B, P), "labels"}`; text `{"input_ids" (B, L), "attention_mask" (B, L),
"labels"}`; masked LM `labels` `(B, L)` with -100 where not masked; flow `{"frames" (B, 2, H, W, 3), "flow"
(B, H, W, 2)}`.

The task and its datamodule agree before training starts (`setup`, once the trainer has the datamodule):

- Layout: images / videos come channels-last from the datamodules (`input_layout`, default `"channels_last"`);
  a model whose class says `input_layout = "channels_first"` (the Perceiver IO image and video classifiers) gets
  `(B, C, H, W)` / `(B, T, C, H, W)`: the task permutes (`convert_layout`).
- Classes (`ClassificationTask`): a model built without a class count in `model_kwargs` is built with the
  datamodule's `num_classes`; an explicit count or a `pretrained` head of another size is a `ValueError` naming
  both numbers, unless `reset_head=True` re-initialises a pretrained head at the datamodule's size
  (`perceiver.from_pretrained(..., num_classes=K, ignore_mismatched_sizes=True)`). Image shapes / channels and text
  lengths the model cannot take are errors too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from perceiver.training.building import build_model, cli_nulls, num_classes_of
from perceiver.training.geometry import check_input_geometry
from perceiver.training.layouts import CHANNELS_LAST, convert_layout, input_layout, to_model_layout
from perceiver.training.optim import (
    check_trainable,
    cosine_with_warmup,
    fused_adam_applies,
    keep_frozen,
    param_groups,
    warmup_of,
)
from perceiver.training.sharding import shard_model

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict
    from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

__all__ = [
    "PerceiverTask",
    "build_model",
    "convert_layout",
    "input_layout",
    "logits_of",
    "num_classes_of",
    "param_groups",
    "resolve_monitor",
    "to_model_layout",
]


def logits_of(output: Any) -> Tensor:
    """The task output of a model call: the tensor itself (classic `Perceiver`) or `output.logits` (Perceiver IO)."""
    return output if isinstance(output, Tensor) else output.logits


class MetricDict(nn.ModuleDict):
    """An `nn.ModuleDict` of torchmetrics `Metric`s (a task's running metrics), read back as `Metric`s."""

    def __init__(self, metrics: Mapping[str, Metric] | None = None) -> None:
        super().__init__(metrics)

    def __getitem__(self, key: str) -> Metric:
        return cast(Metric, super().__getitem__(key))


def metric_dict(name: str, baseline: str | None = None) -> MetricDict:
    """Running means `{stage}_{name}` for train / val / test (and `{stage}_{baseline}` for val / test)."""
    metrics = {f"{s}_{name}": MeanMetric() for s in ("train", "val", "test")}
    if baseline:
        metrics.update({f"{s}_{baseline}": MeanMetric() for s in ("val", "test")})
    return MetricDict(metrics)


#: metric names (the part after `stage/`) and whether lower or higher is better, for `monitor_mode` inference
MONITOR_MODES = {"loss": "min", "bpb": "min", "epe": "min", "perplexity": "min", "acc": "max", "f1": "max"}


def resolve_monitor(default: tuple[str, str], metric: str | None, mode: str | None) -> tuple[str, str]:
    """`(metric, mode)` for ModelCheckpoint: the task's `default`, `("step", "max")` for `metric="last"` (the
    latest checkpoint: Lightning offers the global step as a monitor), or `metric` with `mode` (inferred from the
    metric's name when None; see `MONITOR_MODES`)."""
    if mode is not None and mode not in ("min", "max"):
        raise ValueError(f"monitor_mode must be 'min' or 'max', got {mode!r}")
    if metric is None or metric == "last":
        if mode is not None:
            raise ValueError(f"monitor_mode={mode!r} needs monitor, the metric it applies to (e.g. 'val/loss')")
        return default if metric is None else ("step", "max")
    if not isinstance(metric, str) or not metric.startswith(("val/", "train/")):
        raise ValueError(
            f"monitor must name a logged metric such as 'val/loss' or 'val/acc', or be 'last', got {metric!r}"
        )
    if mode is None:
        name = metric.split("/", 1)[1].removesuffix("_epoch").removesuffix("_step")
        mode = MONITOR_MODES.get(name)
        if mode is None:
            raise ValueError(
                f"cannot tell whether lower or higher {metric!r} is better (known: {sorted(MONITOR_MODES)}); "
                f"pass monitor_mode 'min' or 'max'"
            )
    return metric, mode


class PerceiverTask(L.LightningModule):
    """Base task: builds `self.model` and the optimizer; subclasses define `step(batch, stage) -> loss`.

    Args:
        model: registry name for `perceiver.create_model` (`"perceiver"` = classic Perceiver).
        model_kwargs: constructor / preset overrides, e.g. `{depth: 2, num_latents: 32, num_classes: 10}`.
        pretrained: a model folder or Hub id (ours or a transformers Perceiver checkpoint) to start from instead;
            `model_kwargs` then override fields of its config.
        reset_head: fine-tune `pretrained` on data with another number of classes: a pretrained classification
            head whose size differs from the datamodule's class count K (or `model_kwargs.num_classes`) is replaced
            by a new, randomly initialised K-class head and all other weights are kept
            (`perceiver.from_pretrained(..., num_classes=K, ignore_mismatched_sizes=True)`, which reports the
            re-initialised tensors); a head of the right size is kept. Without it such a mismatch is an error before
            training starts.
        lora: fine-tune `pretrained` with LoRA adapters instead of all its weights (`perceiver.lora.add_lora`, needs
            peft): `{}` for the defaults (rank 8 on every attention and MLP Linear) or its keywords, e.g.
            `{r: 16, alpha: 32, dropout: 0.05, target_modules: [q_proj, v_proj]}`. Only the adapters and the class
            head train; the model folder holds the merged weights, `RUN_DIR/adapter` the adapter alone (loadable with
            `perceiver.from_pretrained`, which fetches the base model it names).
        grad_checkpointing: recompute each layer's activations in the backward pass instead of keeping them
            (`model.set_grad_checkpointing()`): the same gradients with far less memory for long inputs (Perceiver AR
            windows, many pixels or media tokens), at about one more forward pass of compute per step.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay on the weights of Linear / Conv layers (not on biases, norms,
            embeddings, latents and position / query embeddings; see `param_groups`).
        betas: AdamW betas.
        warmup_steps: linear warmup steps; if < 1 it is a fraction of the total optimizer steps.
        min_lr_ratio: the cosine schedule ends at `lr * min_lr_ratio`.
        compile: run the model through `torch.compile` (`nn.Module.compile`: state dict and checkpoints unchanged).
            Worth it for long runs of small models, whose steps are dominated by per-op overhead; the first steps
            (and the first validation) pay the compilation.
        fused_adamw: step AdamW with torch's fused kernel where every parameter is a plain CPU / CUDA tensor
            (`fused_adam_applies`): one kernel per step instead of ~10 ops per tensor; the demo's step 66 -> 60 ms on
            an AVX2 EPYC. Off by default: its rounding differs from the loop's, and the demo's 120 epochs then end
            elsewhere (seed 0 on that CPU: test accuracy 0.9694 instead of 0.9833).
        optimize: at the start of training, time the ways to run a training step on this machine with the first
            batch (`perceiver.optimize(..., training=True)`: eager, torch.compile, SDPA's math backend, both) under
            the run's precision, print the report and train with the fastest (parameters, checkpoints and the
            model folder are unchanged). An explicit opt-in: the choice depends on the CPU / GPU it runs on.
        monitor: the logged metric that chooses best.ckpt and the saved model folder (default: the task's, e.g.
            `val/acc` for classification), or `"last"`: the final epoch's weights (validation is still logged, it
            just does not choose). On a small validation set selection is noise: on the digits demo's 70 images
            accuracy moves in steps of 1.4% and Lightning keeps the *first* epoch that reaches the maximum, an
            undertrained one (seed 0 without mixup: epoch 72 of 120, test accuracy 0.9694 against 0.9917 for the final
            weights).
        monitor_mode: `"min"` or `"max"`: whether lower or higher `monitor` is better. Inferred from the metric's
            name for the metrics the tasks log (loss, bpb, epe: min; acc, f1: max).
    """

    #: metric ModelCheckpoint keeps the best of, and whether lower or higher is better (the class attribute is the
    #: default of the `monitor` / `monitor_mode` arguments; an instance's choice is `self.monitor`)
    monitor: tuple[str, str] = ("val/loss", "min")
    #: what `task.json` in a saved model folder says the model does (read by `perceiver predict`)
    task_name: ClassVar[str] = "generic"
    #: (datamodule method giving a baseline value, metric name it is logged under as `{stage}/{name}`), or None
    datamodule_baseline: ClassVar[tuple[str, str] | None] = None
    #: the wrapped network (`set_model`)
    model: nn.Module
    #: the running metrics of the subclasses that log them (`metric_dict`; `_log_metric`)
    metrics: MetricDict

    def __init__(
        self,
        model: str = "perceiver",
        model_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        reset_head: bool = False,
        lora: dict[str, Any] | None = None,
        grad_checkpointing: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: float = 0.05,
        min_lr_ratio: float = 0.01,
        compile: bool = False,
        optimize: bool = False,
        fused_adamw: bool = False,
        monitor: str | None = None,
        monitor_mode: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.monitor = resolve_monitor(type(self).monitor, monitor, monitor_mode)
        self.__dict__["_runner"] = None  # what `optimize` chose for training steps (not a submodule: no new keys)
        self.__dict__["_captured"] = None
        self.__dict__["_data_layout"] = CHANNELS_LAST  # the datamodule's (`setup`)
        if lora is not None and not pretrained:
            raise ValueError(
                "lora fine-tunes a pretrained model (the base weights stay frozen): set --model.pretrained to a model "
                "folder or Hub id, or train all weights without lora"
            )
        self.set_model(self.build_plain_model())

    @property
    def hparams(self) -> AttributeDict:
        """The hyperparameters (`save_hyperparameters()` in `__init__` stores them as an `AttributeDict`)."""
        return super().hparams  # type: ignore[return-value]  # Lightning's hint also allows a plain MutableMapping

    def set_model(self, model: nn.Module) -> None:
        """Make `model` the task's network (compiled if `compile`; `optimize` chooses again)."""
        self.model = model
        if self.hparams.get("compile"):
            self.model.compile()
        self.__dict__["_runner"] = None

    def run_model(self, *args: Any, **kwargs: Any) -> Any:
        """`self.model(*args, **kwargs)`, through what `optimize=True` chose while training."""
        if self.__dict__["_captured"] is not None:
            self.__dict__["_captured"].append((args, kwargs))
        runner = self.__dict__["_runner"]
        return runner(*args, **kwargs) if runner is not None and self.training else self.model(*args, **kwargs)

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path is not None:
            self._resume_schedules()
        if not self.hparams.get("optimize") or self.__dict__["_runner"] is not None:
            return
        import perceiver

        loader = self.trainer.train_dataloader
        assert loader is not None  # the fit loop sets it up before on_train_start
        batch = self.transfer_batch_to_device(next(iter(loader)), self.device, 0)
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.__dict__["_captured"] = calls
        try:
            with torch.no_grad():
                self._call_model(batch)  # records the model call a training step makes
        finally:
            self.__dict__["_captured"] = None
        args, kwargs = calls[0]
        with self.trainer.precision_plugin.forward_context():
            fast = perceiver.optimize(
                self.model, args, kwargs, training=True, candidates=perceiver.optimization.TRAINING_FP32, verbose=False
            )
        if self.trainer.is_global_zero:
            print(f"perceiver: training steps {fast.report}", flush=True)
        self.__dict__["_runner"] = fast

    def build_plain_model(self) -> nn.Module:
        """A new, unsharded instance of the network built from this task's hyperparameters (random weights, or the
        `pretrained` ones; with new LoRA adapters where `lora` asks for them)."""
        hp = self.hparams
        model = build_model(hp.model, hp.model_kwargs, hp.pretrained, hp.get("reset_head", False))
        if hp.get("lora") is not None:
            from perceiver.lora import add_lora

            if cli_nulls(hp.lora).get("train_head") is False and (new := getattr(model, "reinitialized_keys", None)):
                raise ValueError(
                    f"lora train_head=false freezes the class head, but the head of {hp.pretrained} is new for the "
                    f"data's classes ({new}) and would stay random: leave train_head out (true) with reset_head"
                )
            add_lora(model, **cli_nulls(hp.lora))
        if hp.get("grad_checkpointing"):
            from perceiver.core.model import GradCheckpointingMixin

            if not isinstance(model, GradCheckpointingMixin):
                raise ValueError(
                    f"expected a model with set_grad_checkpointing for grad_checkpointing=True, got "
                    f"{type(model).__name__}, which has no layers to checkpoint"
                )
            model.set_grad_checkpointing(True)
        return model

    # ------------------------------------------------------------------ agreement with the datamodule
    def setup(self, stage: str) -> None:
        """Before training / evaluation (and before a checkpoint is restored): adapt to the trainer's datamodule.
        Lightning sets up the callbacks first: where adapting replaces the network (a head for the datamodule's
        classes), what was frozen in the old one (by hand, by `BaseFinetuning`) is frozen in the new one (so is
        gradient checkpointing), and the callbacks that copied the task in `setup` (`EMAWeightAveraging`, SWA) copy it."""
        datamodule, before = getattr(self.trainer, "datamodule", None), self.model
        if datamodule is not None:
            self.adapt_to_datamodule(datamodule)
        if self.model is before:
            return
        if frozen := keep_frozen(before, self.model):
            L.pytorch.utilities.rank_zero_info(f"perceiver: {len(frozen)} frozen parameters stay frozen")
        if getattr(before, "is_gradient_checkpointing", False):  # set on `task.model` by hand: on in the new one too
            self.model.set_grad_checkpointing(True)  # type: ignore[operator]  # the same class as `before`
        cbs = L.pytorch.callbacks  # WeightAveraging (EMA): Lightning >= 2.6
        averaging = tuple(getattr(cbs, n) for n in ("WeightAveraging", "StochasticWeightAveraging") if hasattr(cbs, n))
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]  # set by Lightning
            if isinstance(callback, averaging):
                callback.setup(self.trainer, self, stage)

    def adapt_to_datamodule(self, datamodule: Any) -> None:
        """Take the datamodule's input layout (`input_layout`, default channels-last) and check that its inputs fit
        the model (`check_input_geometry`); subclasses check more."""
        self.__dict__["_data_layout"] = input_layout(datamodule)
        check_input_geometry(self.model, datamodule)

    def model_inputs(self, x: Tensor) -> Tensor:
        """A batch's images / videos `x` (in the datamodule's layout) in the layout the model takes."""
        return convert_layout(x, self.__dict__["_data_layout"], input_layout(self.model))

    # ------------------------------------------------------------------ sharding
    def configure_model(self) -> None:
        """FSDP2 under Lightning's `ModelParallelStrategy`: shard every attention layer (cross, self and decoder
        layers), then the rest of the model, over the data-parallel mesh. A no-op under other strategies."""
        if self.device_mesh is not None:
            callbacks = self._trainer.callbacks if self._trainer is not None else []  # type: ignore[attr-defined]
            shard_model(self.model, self.device_mesh, callbacks)

    # ------------------------------------------------------------------ steps
    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return logits_of(self._call_model(batch))

    def _call_model(self, batch: dict[str, Tensor]) -> Any:
        raise NotImplementedError

    def step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.step(batch, "test")

    def _log_loss(self, stage: str, loss: Tensor, batch_size: int) -> None:
        """Log `{stage}/loss`; `batch_size` is its weight in the epoch mean (the samples, or the scored tokens of a
        token-level loss: 0 for a batch with none, whose loss is 0, so that it leaves the mean as it is)."""
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            batch_size=float(batch_size),  # type: ignore[arg-type]  # a float: Lightning's synced mean truncates ints
            sync_dist=True,
        )

    def _log_metric(self, stage: str, name: str, prog_bar: bool = True) -> None:
        """Log the epoch value of `self.metrics["{stage}_{name}"]` as `{stage}/{name}` (synced across processes)."""
        self.log(f"{stage}/{name}", self.metrics[f"{stage}_{name}"], on_step=False, on_epoch=True, prog_bar=prog_bar)

    # ------------------------------------------------------------------ baseline of the datamodule
    def baseline(self) -> float | None:
        """The datamodule's baseline value (`datamodule_baseline`), if the task names one and the datamodule has it
        (computed once)."""
        if self.datamodule_baseline is None:
            return None
        method = self.datamodule_baseline[0]
        dm = getattr(self.trainer, "datamodule", None)
        if self.__dict__.get("_baseline") is None and hasattr(dm, method):
            self.__dict__["_baseline"] = float(getattr(dm, method)())
        return self.__dict__.get("_baseline")

    def _log_baseline(self, stage: str) -> None:
        if self.datamodule_baseline is not None and (value := self.baseline()) is not None:
            self.log(f"{stage}/{self.datamodule_baseline[1]}", value, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._log_baseline("val")

    def on_test_epoch_end(self) -> None:
        self._log_baseline("test")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        hp = self.hparams
        groups = param_groups(self, hp.weight_decay)
        check_trainable(groups, self.model)
        optimizer = torch.optim.AdamW(
            groups, lr=hp.lr, betas=tuple(hp.betas), fused=bool(hp.get("fused_adamw")) and fused_adam_applies(groups)
        )
        total = max(1, int(self.schedule_steps()))
        warmup = warmup_of(hp.warmup_steps, total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cosine_with_warmup(s, warmup, total, hp.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _resume_schedules(self) -> None:
        """Set the learning rates a resumed run starts with from this run's schedules at the restored step. The
        checkpoint restores the optimizer's last rates, which the old schedule set: a resume that extends the run
        (`--trainer.max_epochs` raised) spans a longer schedule, and its first step ran at the old one's near-minimum
        rate (each `LambdaLR` step after it follows the new one)."""
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                continue
            rates = [base * f(scheduler.last_epoch) for f, base in zip(scheduler.lr_lambdas, scheduler.base_lrs)]
            for group, rate in zip(scheduler.optimizer.param_groups, rates):
                group["lr"] = rate
            scheduler._last_lr = rates  # what get_last_lr() and Lightning's LearningRateMonitor read

    def schedule_steps(self) -> float:
        """The optimizer steps the learning-rate schedule spans (Lightning's `estimated_stepping_batches`: epochs x
        batches / accumulation, or `max_steps`); ValueError when the trainer has no step budget (`max_epochs=-1`
        without `max_steps`, e.g. a `max_time` run), as the cosine schedule could then never decay."""
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            t = self.trainer
            raise ValueError(
                f"the warmup + cosine learning-rate schedule needs a step budget: expected trainer.max_steps or "
                f"trainer.max_epochs, got max_steps={t.max_steps}, max_epochs={t.max_epochs}; set one of them "
                f"(trainer.max_time still stops the run when it comes first){self.no_step_budget_hint}"
            )
        return steps

    #: what else a task offers without a step budget (CausalLMTask: a schedule over wall-clock time)
    no_step_budget_hint: ClassVar[str] = ""

    # ------------------------------------------------------------------ helpers
    def run_dir(self) -> Path:
        """The run folder (`trainer.default_root_dir`, where the CLI puts logs, checkpoints and plots)."""
        return Path(self.trainer.default_root_dir)
