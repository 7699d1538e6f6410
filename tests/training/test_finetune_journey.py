"""A user's fine-tuning journey through the Python route (a `PerceiverTask` under a plain Lightning `Trainer`): what
they froze stays frozen, weight averaging follows the head the task builds for the data, and a pretrained model whose
config does not fit the given `model_kwargs` is an error naming both."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import BaseFinetuning, StochasticWeightAveraging
from test_examples import example_args
from test_finetune import HF_FOURIER, TINY_FOURIER

import perceiver
from perceiver.data import ImageFolderDataModule
from perceiver.training import ClassificationTask
from perceiver.training.cli import main
from perceiver.training.tasks import num_classes_of

#: a few steps, nothing written
TRAINER = dict(
    accelerator="cpu",
    max_epochs=2,
    limit_train_batches=2,
    limit_val_batches=1,
    num_sanity_val_steps=0,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)


def datamodule(folder: Path) -> ImageFolderDataModule:
    return ImageFolderDataModule(str(folder), image_size=16, val_fraction=0.25, batch_size=4, num_workers=0)


def task_for(kind: str, pretrained: Path, **kwargs) -> ClassificationTask:
    """A task whose network `setup` replaces: a pretrained 3-class head reset for 2 classes, or a model from scratch
    built with the preset's 1000 classes (no count in `model_kwargs`, as the shipped examples)."""
    if kind == "reset_head":
        return ClassificationTask(pretrained=str(pretrained), reset_head=True, **kwargs)
    return ClassificationTask(model="vision-perceiver-fourier", model_kwargs=dict(TINY_FOURIER), **kwargs)


def ema_callback() -> L.Callback:
    callbacks = pytest.importorskip("lightning.pytorch.callbacks")
    if not hasattr(callbacks, "EMAWeightAveraging"):
        pytest.skip("Lightning < 2.6 has no EMAWeightAveraging")
    return callbacks.EMAWeightAveraging(decay=0.5)


@pytest.mark.parametrize("kind", ["reset_head", "scratch"])
@pytest.mark.parametrize("averaging", ["ema", "swa"])
def test_weight_averaging_averages_the_network_with_the_new_head(kind, averaging, pretrained_3, folder):
    """EMA / SWA copy the task in their `setup`, which Lightning runs before the task's, where the head for the
    datamodule's classes is built: the first update of the average failed with `RuntimeError: The size of tensor a
    (3) must match the size of tensor b (2)` (1000 for a model from scratch)."""
    callback = ema_callback() if averaging == "ema" else StochasticWeightAveraging(swa_lrs=1e-3, swa_epoch_start=1)
    task = task_for(kind, pretrained_3)
    L.Trainer(**TRAINER, callbacks=[callback]).fit(task, datamodule=datamodule(folder))
    average = callback._average_model  # EMA: an AveragedModel of the task, SWA: a copy of the task
    averaged = getattr(average, "module", average)  # the average of what trained: the 2-class network
    assert num_classes_of(averaged.model) == 2 and averaged.model is not task.model
    logits = task({"inputs": torch.rand(2, 16, 16, 3)})
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_ema_fine_tune_through_the_cli(pretrained_3, tmp_path):
    """`perceiver fit ... --model.reset_head true --trainer.callbacks+=EMAWeightAveraging`: the documented fine-tuning
    command with the documented EMA callback crashed at the first step; the model folder now holds the average."""
    ema_callback()  # skips on Lightning < 2.6
    run = tmp_path / "run"
    args = example_args("imagefolder-perceiver-io", run, tmp_path, f"--model.pretrained={pretrained_3}")
    main(["fit", *args, "--model.model_kwargs=null", "--model.reset_head=true", "--trainer.max_epochs=2",
          "--trainer.callbacks+=EMAWeightAveraging", "--trainer.callbacks.decay=0.5"])  # fmt: skip
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    average, current = ckpt["state_dict"], ckpt["current_model_state"]
    assert average["model.decoder.final_layer.weight"].shape == (2, 32)
    assert not torch.equal(average["model.decoder.final_layer.weight"], current["model.decoder.final_layer.weight"])
    saved = perceiver.from_pretrained(run / "model").state_dict()
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, best[f"model.{k}"]) for k, v in saved.items())  # the average of the best epoch


class FreezeEncoder(BaseFinetuning):
    """Lightning's way to freeze a backbone: frozen in the callback's `setup`, never unfrozen here."""

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.freeze(pl_module.model.encoder)

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        pass


@pytest.mark.parametrize("kind", ["reset_head", "scratch"])
@pytest.mark.parametrize("how", ["by_hand", "base_finetuning"])
def test_parameters_frozen_before_fit_stay_frozen_when_the_head_is_rebuilt(kind, how, pretrained_3, folder):
    """Freezing the body before `fit` (by hand, or with a `BaseFinetuning` callback) and training the head: the task
    replaced its network in `setup` and everything trained, silently."""
    task = task_for(kind, pretrained_3, lr=1e-2)
    start = Snapshot()
    callbacks: list[L.Callback] = [start]
    if how == "by_hand":
        task.model.encoder.requires_grad_(False)
    else:
        callbacks.append(FreezeEncoder())
    trainer = L.Trainer(**TRAINER, callbacks=callbacks)
    trainer.fit(task, datamodule=datamodule(folder))
    encoder = dict(task.model.encoder.named_parameters())
    assert encoder and not any(p.requires_grad for p in encoder.values())
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in encoder.values()}  # neither updated nor decayed
    assert {id(p) for p in task.model.get_classifier().parameters()} <= optimized
    assert all(torch.equal(p, start.state[f"model.encoder.{name}"]) for name, p in encoder.items())
    head = task.model.get_classifier().weight
    assert not torch.equal(head, start.state["model." + task.model.classifier_name + ".weight"])  # it trained
    if kind == "reset_head":  # the frozen encoder is the pretrained one
        source = perceiver.from_pretrained(pretrained_3).encoder
        assert all(torch.equal(p, encoder[name]) for name, p in source.named_parameters())


class Snapshot(L.Callback):
    """The task's weights when training starts (after `setup` built the network that trains)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_nothing_to_train_is_a_clear_error(pretrained_3, folder):
    """Everything frozen: an error naming the cause, not autograd's `element 0 of tensors does not require grad`."""
    task = ClassificationTask(pretrained=str(pretrained_3), reset_head=True)
    task.model.requires_grad_(False)
    with pytest.raises(ValueError, match=r"nothing to train: all \d+ parameters of .* have requires_grad=False"):
        L.Trainer(**TRAINER).fit(task, datamodule=datamodule(folder))


def test_model_kwargs_that_do_not_fit_the_pretrained_weights_name_both(pretrained_3):
    """The example config's sizes for a model from scratch, kept with `--model.pretrained`: the error named one
    tensor's shapes only; now it names each overridden key with the pretrained config's value and the way out."""
    kwargs = dict(num_latents=16, latent_dim=64, image_size=[64, 64])
    with pytest.raises(ValueError) as err:
        ClassificationTask(pretrained=str(pretrained_3), model_kwargs=kwargs, reset_head=True)
    message = str(err.value)
    assert f"model_kwargs override the config of the pretrained model {pretrained_3}" in message
    assert "num_latents=16 (pretrained: 8)" in message and "latent_dim=64 (pretrained: 32)" in message
    assert "image_size=[64, 64] (pretrained: (16, 16))" in message
    assert "--model.model_kwargs null" in message


def test_model_kwargs_that_do_not_fit_a_transformers_checkpoint_name_both(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.PerceiverConfig(**HF_FOURIER)
    transformers.PerceiverForImageClassificationFourier(config).save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match=r"does not fit .*\(num_latents=16 \(pretrained: 8\)\); drop them"):
        ClassificationTask(pretrained=str(tmp_path / "hf"), model_kwargs={"num_latents": 16})


def test_lora_without_training_a_reset_head_is_a_clear_error(pretrained_3, folder):
    """`lora: {train_head: false}` with `reset_head`: the new head was frozen at its random initialisation."""
    pytest.importorskip("peft")
    task = ClassificationTask(pretrained=str(pretrained_3), reset_head=True, lora={"train_head": False})
    with pytest.raises(ValueError, match=r"train_head=false freezes the class head, but the head of .* is new"):
        task.adapt_to_datamodule(datamodule(folder))


def test_an_adapter_folder_as_pretrained(pretrained_3, tmp_path):
    """RUN_DIR/adapter of an earlier LoRA run as `pretrained`: without `lora` its adapter trains further (only the
    adapter and the head); with `lora` the error says what to do in a config, not only `merge_lora(model)`."""
    pytest.importorskip("peft")
    from perceiver.lora import add_lora, save_adapter

    model = perceiver.from_pretrained(pretrained_3)
    adapter = save_adapter(add_lora(model, r=2), tmp_path / "adapter", base_model=pretrained_3)
    task = ClassificationTask(pretrained=str(adapter))
    trainable = [n for n, p in task.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    with pytest.raises(ValueError, match=r"already has LoRA adapters .* leave out --model.lora .* RUN_DIR/model"):
        ClassificationTask(pretrained=str(adapter), lora={})


def test_reset_head_without_a_class_count_is_an_error_not_ignored(pretrained_3):
    """`reset_head=True` with dataloaders given to the trainer (no datamodule to take the class count from): the
    pretrained 3-class head trained on 2-class labels, silently; with `num_classes` in `model_kwargs` it is reset."""
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    batches = [{"inputs": torch.rand(4, 16, 16, 3), "labels": torch.tensor([0, 1, 1, 0])} for _ in range(2)]
    loader = DataLoader(batches, batch_size=None)
    task = ClassificationTask(pretrained=str(pretrained_3), reset_head=True)
    with pytest.raises(ValueError, match=r"reset_head needs the number of classes .* the trainer has no datamodule"):
        L.Trainer(**TRAINER).fit(task, loader, loader)
    task = ClassificationTask(pretrained=str(pretrained_3), reset_head=True, model_kwargs={"num_classes": 2})
    L.Trainer(**TRAINER).fit(task, loader, loader)
    assert num_classes_of(task.model) == 2


def test_reset_head_with_a_datamodule_without_a_class_count_is_an_error(pretrained_3, folder):
    """A datamodule of the user's own that does not say `num_classes`: `reset_head` cannot know the count."""

    class Plain(L.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.inner = datamodule(folder)

        def setup(self, stage: str) -> None:
            self.inner.setup(stage)

        def train_dataloader(self):
            return self.inner.train_dataloader()

    task = ClassificationTask(pretrained=str(pretrained_3), reset_head=True)
    with pytest.raises(ValueError, match=r"reset_head needs the number of classes .* Plain has no num_classes"):
        L.Trainer(**TRAINER).fit(task, datamodule=Plain())


@pytest.mark.parametrize("kind", ["reset_head", "scratch"])
def test_grad_checkpointing_set_on_the_model_survives_the_new_head(kind, pretrained_3, folder):
    """`task.model.set_grad_checkpointing()` (the Python spelling docs/training.md gives) before `fit` was dropped
    with the network `setup` replaced, silently: the run kept every activation."""
    task = task_for(kind, pretrained_3)
    task.model.set_grad_checkpointing()
    L.Trainer(**TRAINER).fit(task, datamodule=datamodule(folder))
    assert num_classes_of(task.model) == 2 and task.model.is_gradient_checkpointing
