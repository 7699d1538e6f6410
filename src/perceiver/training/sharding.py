"""FSDP2 sharding of a task's network under Lightning's `ModelParallelStrategy` (`PerceiverTask.configure_model`):
every attention layer is its own FSDP unit, then the rest of the model; callbacks that cannot work on sharded
parameters are refused first, by name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from perceiver.nn.layers import CrossAttentionLayer, SelfAttentionLayer

__all__ = ["SHARDED_LAYERS", "shard_model"]

#: modules that become their own FSDP2 unit under `ModelParallelStrategy`: every cross- and self-attention layer
#: (encoder, latent Transformer, decoder) and subclasses of them
SHARDED_LAYERS: tuple[type[nn.Module], ...] = (CrossAttentionLayer, SelfAttentionLayer)


def check_callbacks_for_sharding(callbacks: Sequence[Any]) -> None:
    """ValueError naming a weight-averaging callback (Lightning's `EMAWeightAveraging` / `WeightAveraging`): it
    keeps a full copy of the model made by `deepcopy`, which FSDP2 modules refuse deep inside the first step."""
    try:
        from lightning.pytorch.callbacks import WeightAveraging
    except ImportError:  # Lightning < 2.6 has no weight averaging
        return
    found = [type(c).__name__ for c in callbacks if isinstance(c, WeightAveraging)]
    if found:
        raise ValueError(
            f"{found[0]} keeps an unsharded copy of the whole model, which FSDP2 (ModelParallelStrategy) cannot "
            f"make; expected no weight averaging with a sharded model, got {found}: train with "
            f"--trainer.strategy ddp, or without the callback"
        )


def shard_model(model: nn.Module, mesh: Any, callbacks: Sequence[Any] = ()) -> None:
    """`fully_shard` every `SHARDED_LAYERS` module of `model`, then `model`, over the data-parallel dimension of
    `mesh` (idempotent: a model sharded already is left as it is)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):  # configure_model runs once per trainer entry point
        return
    check_callbacks_for_sharding(callbacks)
    dp_mesh = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
    for module in model.modules():
        if isinstance(module, SHARDED_LAYERS):
            fully_shard(module, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)
