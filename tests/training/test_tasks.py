"""PerceiverTask internals: weight-decay groups by module type / tensor role, FSDP units by class, input layouts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from perceiver.nn.layers import CrossAttentionLayer, SelfAttentionLayer
from perceiver.training.classification_task import ClassificationTask
from perceiver.training.tasks import PerceiverTask, convert_layout

TINY_VISION = dict(
    image_size=8,
    out_channels=8,
    trainable_pos_channels=8,
    project_pos_dim=8,
    num_latents=4,
    latent_dim=16,
    num_blocks=1,
    num_self_attends_per_block=1,
    latent_heads=2,
)


def optimizer_of(task: PerceiverTask) -> torch.optim.Optimizer:
    """The optimizer `configure_optimizers` builds (outside a trainer)."""
    task._trainer = SimpleNamespace(estimated_stepping_batches=10)  # what configure_optimizers reads of the trainer
    try:
        return task.configure_optimizers()["optimizer"]
    finally:
        task._trainer = None


def decay_of(task: PerceiverTask) -> dict[str, float]:
    """`{parameter name: weight decay}` of the optimizer `configure_optimizers` builds (outside a trainer)."""
    optimizer = optimizer_of(task)
    by_id = {id(p): name for name, p in task.named_parameters()}
    decays = {by_id[id(p)]: group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert len(decays) == len(by_id), "every trainable parameter is in exactly one group"
    return decays


def test_weight_decay_by_module_type_not_name():
    task = ClassificationTask(model="vision-perceiver-learned", model_kwargs={**TINY_VISION, "num_labels": 3})
    decay = decay_of(task)
    # a Linear weight whose name contains "position": decayed (the name-substring rule exempted it)
    assert decay["model.input_adapter.positions_projection.weight"] == 0.05
    assert decay["model.encoder.cross_attends.0.attention.q_proj.weight"] == 0.05
    assert decay["model.decoder.final_layer.weight"] == 0.05
    assert decay["model.input_adapter.convnet_1x1.weight"] == 0.05  # conv weights too
    # free parameters (latents, learned positions, queries), norms and biases: no decay
    for name in (
        "model.encoder.latents",
        "model.input_adapter.trainable.position_embeddings",
        "model.query_builder.encoding.position_embeddings",
        "model.encoder.cross_attends.0.q_norm.weight",
        "model.encoder.latent_blocks.0.0.mlp_norm.bias",
        "model.input_adapter.positions_projection.bias",
        "model.decoder.final_layer.bias",
    ):
        assert decay[name] == 0.0, name


class Gate(nn.Module):
    """A module whose weight matrix is named like a norm; it is a Linear, so it is decayed."""

    def __init__(self) -> None:
        super().__init__()
        self.norm_mixer = nn.Linear(4, 4)
        self.embedding_scale = nn.Parameter(torch.ones(4, 4))  # a free parameter: not decayed
        self.table = nn.Embedding(10, 4)  # embeddings: not decayed


def test_weight_decay_ignores_misleading_names(monkeypatch):
    task = ClassificationTask(model="vision-perceiver-learned", model_kwargs={**TINY_VISION, "num_labels": 3})
    task.model.extra = Gate()
    decay = decay_of(task)
    assert decay["model.extra.norm_mixer.weight"] == 0.05
    assert decay["model.extra.norm_mixer.bias"] == 0.0
    assert decay["model.extra.embedding_scale"] == 0.0
    assert decay["model.extra.table.weight"] == 0.0


def test_no_weight_decay_on_token_embeddings():
    """The text models' token embeddings (`nn.Embedding`) are not decayed, their projections are."""
    task = ClassificationTask(
        model="text-classifier",
        model_kwargs=dict(
            max_seq_len=16,
            d_model=16,
            num_latents=4,
            latent_dim=16,
            num_self_attends_per_block=1,
            cross_heads=1,
            latent_heads=1,
            cross_qk_channels=16,
            cross_v_channels=16,
            latent_qk_channels=16,
            latent_v_channels=16,
        ),
    )
    decay = decay_of(task)
    embeddings = [n for n, m in task.named_modules() if isinstance(m, nn.Embedding)]
    linears = [n for n, m in task.named_modules() if isinstance(m, nn.Linear)]
    assert embeddings and all(decay[f"{n}.weight"] == 0.0 for n in embeddings)
    assert linears and all(decay[f"{n}.weight"] == 0.05 for n in linears)


def test_adamw_is_fused_on_cpu_and_steps_like_the_default():
    """`fused_adamw=True` takes torch's fused AdamW kernel for plain CPU parameters, and its steps equal the loop's."""
    torch.manual_seed(0)
    kwargs = dict(model="vision-perceiver-learned", model_kwargs={**TINY_VISION, "num_labels": 3})
    default = optimizer_of(ClassificationTask(**kwargs))
    assert not any(group["fused"] for group in default.param_groups)  # opt-in: the default loop's rounding
    task = ClassificationTask(**kwargs, fused_adamw=True)
    optimizer = optimizer_of(task)
    assert all(group["fused"] for group in optimizer.param_groups)
    copies = {id(p): p.detach().clone().requires_grad_() for p in task.parameters()}
    reference = [copies[id(p)] for p in task.parameters()]
    groups = [{**g, "params": [copies[id(p)] for p in g["params"]]} for g in optimizer.param_groups]
    plain = torch.optim.AdamW([{k: v for k, v in g.items() if k != "fused"} for g in groups])
    for _ in range(3):
        for p, r in zip(task.parameters(), reference, strict=True):
            p.grad = torch.randn_like(p)
            r.grad = p.grad.clone()
        optimizer.step()
        plain.step()
    for p, r in zip(task.parameters(), reference, strict=True):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)


def test_adamw_is_not_fused_for_parameters_without_a_fused_kernel():
    from perceiver.training.tasks import fused_adam_applies

    assert fused_adam_applies([{"params": [nn.Parameter(torch.zeros(2))]}])
    assert not fused_adam_applies([{"params": [nn.Parameter(torch.zeros(2, device="meta"))]}])
    assert not fused_adam_applies([{"params": [nn.Parameter(torch.zeros(2), requires_grad=False).to(torch.int64)]}])

    class Sharded(torch.Tensor):  # stands for a DTensor: a tensor subclass torch steps with its foreach path
        pass

    assert not fused_adam_applies([{"params": [torch.zeros(2).as_subclass(Sharded)]}])
    assert not fused_adam_applies([])


# ---------------------------------------------------------------------------------------------------- FSDP units
class RenamedCross(CrossAttentionLayer):
    """A subclass under another name: still an attention layer, so its own FSDP unit."""


class SelfAttentionLayerLookalike(nn.Module):
    """Named like an attention layer but not one: not an FSDP unit of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)


def test_fsdp_units_are_chosen_by_class(monkeypatch):
    import torch.distributed.fsdp as fsdp

    task = ClassificationTask(model="vision-perceiver-learned", model_kwargs={**TINY_VISION, "num_labels": 3})
    task.model.renamed = RenamedCross(q_dim=16, kv_dim=16, num_heads=1)
    task.model.lookalike = type("SelfAttentionLayer", (SelfAttentionLayerLookalike,), {})()
    sharded: list[nn.Module] = []
    monkeypatch.setattr(fsdp, "fully_shard", lambda module, mesh: sharded.append(module))
    task._device_mesh = SimpleNamespace(mesh_dim_names=None)
    task.configure_model()
    assert sharded[-1] is task.model  # the root last
    units = sharded[:-1]
    assert task.model.renamed in units
    assert task.model.lookalike not in units
    expected = [m for m in task.model.modules() if isinstance(m, (CrossAttentionLayer, SelfAttentionLayer))]
    assert len(expected) == 4 and units == expected  # encoder cross, latent self, decoder cross, the subclass


# ---------------------------------------------------------------------------------------------------- layouts
def test_convert_layout_images_and_videos():
    image = torch.randn(2, 5, 6, 3)
    first = convert_layout(image, "channels_last", "channels_first")
    assert first.shape == (2, 3, 5, 6) and torch.equal(first[:, 1], image[..., 1])
    assert torch.equal(convert_layout(first, "channels_first", "channels_last"), image)
    video = torch.randn(2, 4, 5, 6, 3)
    assert convert_layout(video, "channels_last", "channels_first").shape == (2, 4, 3, 5, 6)
    points = torch.randn(2, 7, 3)
    assert convert_layout(points, "channels_last", "channels_first") is points  # no spatial axes: unchanged
    with pytest.raises(ValueError, match="expected an input layout"):
        convert_layout(image, "channels_last", "nchw")


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_classification_task_feeds_the_model_its_layout(layout):
    """The task permutes `(B, H, W, C)` batches for models with `input_layout = "channels_first"` (the Perceiver IO
    image classifiers declare it; this test sets it on the instance to cover both layouts either way)."""
    task = ClassificationTask(model="vision-perceiver-learned", model_kwargs={**TINY_VISION, "num_labels": 3})
    seen = []
    model_forward = task.model.forward

    def forward(inputs, *args, **kwargs):
        seen.append(tuple(inputs.shape))
        if layout == "channels_last":  # a channels-last model: feed the model what it takes after recording
            inputs = inputs.permute(0, 3, 1, 2)
        return model_forward(inputs, *args, **kwargs)

    task.model.input_layout = layout
    task.model.forward = forward
    batch = {"inputs": torch.rand(2, 8, 8, 3), "labels": torch.tensor([0, 2])}
    logits = task(batch)
    assert logits.shape == (2, 3)
    assert seen == [(2, 3, 8, 8) if layout == "channels_first" else (2, 8, 8, 3)]


TINY_TASK = dict(model="vision-perceiver-learned", model_kwargs={**TINY_VISION, "num_labels": 3})


def test_monitor_defaults_to_the_task_and_is_inferred_from_the_metric_name():
    assert ClassificationTask(**TINY_TASK).monitor == ("val/acc", "max")
    assert ClassificationTask(**TINY_TASK, monitor="val/loss").monitor == ("val/loss", "min")
    assert ClassificationTask(**TINY_TASK, monitor="train/loss_epoch").monitor == ("train/loss_epoch", "min")
    assert ClassificationTask(**TINY_TASK, monitor="val/acc", monitor_mode="min").monitor == ("val/acc", "min")
    assert ClassificationTask(**TINY_TASK, monitor="last").monitor == ("step", "max")  # the latest


@pytest.mark.parametrize(
    ("monitor", "mode", "match"),
    [
        ("loss", None, "must name a logged metric such as 'val/loss'.*got 'loss'"),
        ("val/margin", None, "cannot tell whether lower or higher 'val/margin' is better.*monitor_mode"),
        ("val/loss", "lowest", "monitor_mode must be 'min' or 'max', got 'lowest'"),
        (None, "min", "monitor_mode='min' needs monitor"),
        ("last", "max", "monitor_mode='max' needs monitor, the metric"),
    ],
)
def test_monitor_errors_name_expected_and_got(monitor, mode, match):
    with pytest.raises(ValueError, match=match):
        ClassificationTask(**TINY_TASK, monitor=monitor, monitor_mode=mode)


def test_grad_checkpointing_of_a_model_without_layers_to_checkpoint_is_a_clear_error(tmp_path):
    """`grad_checkpointing=True` on a model folder whose class cannot checkpoint (perceiver-pytorch's `PerceiverBlock`
    form) names the class, not an AttributeError from inside."""
    from perceiver.models.lucidrains_io import LucidrainsBlockConfig, LucidrainsPerceiverBlock

    folder = LucidrainsPerceiverBlock(LucidrainsBlockConfig(dim=16, latent_heads=2, latent_dim_head=8)).save_pretrained(
        tmp_path / "block"
    )
    with pytest.raises(ValueError, match="set_grad_checkpointing.*LucidrainsPerceiverBlock"):
        PerceiverTask(pretrained=str(folder), grad_checkpointing=True)
    assert isinstance(PerceiverTask(pretrained=str(folder)).model, LucidrainsPerceiverBlock)


def test_a_batch_without_scored_tokens_leaves_the_epoch_loss_as_it_is():
    """The token-level epoch loss is a mean over scored tokens: a validation batch with none (all labels -100) adds
    nothing, where a plain mean would log NaN for it and make the epoch's val/loss NaN (and `monitor` useless)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from perceiver.training.mlm_task import MaskedLMTask

    torch.manual_seed(0)
    task = MaskedLMTask(model="language-perceiver", model_kwargs=dict(max_seq_len=16, d_model=8, num_latents=2,
        latent_dim=8, num_self_attends_per_block=1))  # fmt: skip
    ids = torch.randint(6, 262, (2, 16))
    scored = torch.full_like(ids, -100)
    scored[0, :3], scored[1, 5] = ids[0, :3], ids[1, 5]
    batches = [{"input_ids": ids, "labels": scored}, {"input_ids": ids, "labels": torch.full_like(ids, -100)}]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.validate(task, dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(task(batches[0]).flatten(0, 1), scored.flatten())
    assert metrics["val/loss"] == pytest.approx(expected.item(), rel=1e-5)


def test_a_warmup_longer_than_the_run_warns():
    """An absolute `warmup_steps` of a longer run kept for a short fine-tune (10 optimizer steps): the learning rate
    would never reach `lr` nor decay, silently."""
    with pytest.warns(UserWarning, match=r"warmup_steps=20 is 20 optimizer steps, and the run has 10: .* never"):
        optimizer_of(ClassificationTask(**TINY_TASK, warmup_steps=20))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer_of(ClassificationTask(**TINY_TASK, warmup_steps=5))
        optimizer_of(ClassificationTask(**TINY_TASK, warmup_steps=0.05))
