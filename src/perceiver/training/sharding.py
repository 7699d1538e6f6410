"""FSDP2 sharding of a task's network under Lightning's `ModelParallelStrategy` (`PerceiverTask.configure_model`):
every attention layer is its own FSDP unit, then the rest of the model; callbacks that cannot work on sharded
parameters and tensor-parallel meshes are refused first, by name. `FSDP2Strategy` (`configs/strategy-fsdp.yaml`) is
that strategy over all processes of a run, whatever their number."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from perceiver.nn.layers import CrossAttentionLayer, SelfAttentionLayer

__all__ = ["SHARDED_LAYERS", "FSDP2Strategy", "check_mesh_for_sharding", "shard_model"]

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


def check_mesh_for_sharding(mesh: Any) -> None:
    """ValueError for a mesh with a tensor-parallel dimension of more than one process: the networks are sharded
    over the data-parallel dimension only, so the processes of a tensor-parallel group would each train an
    unsynchronized replica on other data (and only rank 0's would be saved)."""
    names = tuple(mesh.mesh_dim_names or ())
    if "tensor_parallel" not in names:
        return
    tp = mesh["tensor_parallel"].size()
    if tp > 1:
        dp = mesh["data_parallel"].size() if "data_parallel" in names else 1
        raise ValueError(
            f"perceiver models are sharded over data-parallel processes only (FSDP2), not tensor-parallel ones; "
            f"expected ModelParallelStrategy(tensor_parallel_size=1, data_parallel_size=<number of processes>), "
            f"got tensor_parallel_size={tp}, data_parallel_size={dp}: set --trainer.strategy.init_args."
            f"tensor_parallel_size 1 --trainer.strategy.init_args.data_parallel_size {tp * dp}"
        )


def shard_model(model: nn.Module, mesh: Any, callbacks: Sequence[Any] = ()) -> None:
    """`fully_shard` every `SHARDED_LAYERS` module of `model`, then `model`, over the data-parallel dimension of
    `mesh` (idempotent: a model sharded already is left as it is)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):  # configure_model runs once per trainer entry point
        return
    check_callbacks_for_sharding(callbacks)
    check_mesh_for_sharding(mesh)
    dp_mesh = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
    for module in model.modules():
        if isinstance(module, SHARDED_LAYERS):
            fully_shard(module, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` as perceiver shards (FSDP2 data parallelism, no tensor parallelism), over
    every process of the run by default: `data_parallel_size="auto"` is devices x nodes (Lightning's own "auto" is the
    number of nodes, with tensor parallelism over each node's devices), so `configs/strategy-fsdp.yaml` combines with
    any `--trainer.devices` / `--trainer.num_nodes`. `save_distributed_checkpoint` defaults to False: one full-state
    .ckpt file, loadable without the mesh. The other arguments are `ModelParallelStrategy`'s."""

    def __init__(
        self,
        data_parallel_size: Literal["auto"] | int = "auto",
        tensor_parallel_size: int = 1,
        save_distributed_checkpoint: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            tp = self._tensor_parallel_size if isinstance(self._tensor_parallel_size, int) else 1
            self._data_parallel_size = max(1, self.num_nodes * self.num_processes // tp)
        super().setup_environment()
