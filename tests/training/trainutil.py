"""Helpers of the training tests: tiny overrides of the shipped configs, PNG checks (imported as `trainutil`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import perceiver
from perceiver.data import DigitsDataModule

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"

#: a tiny Perceiver AR and its windows, for configs that train `CausalLMTask` (model keys, then data keys)
TINY_AR_MODEL = [
    "--model.model_kwargs.max_seq_len=64",
    "--model.model_kwargs.num_latents=16",
    "--model.model_kwargs.d_model=32",
    "--model.model_kwargs.num_heads=2",
    "--model.model_kwargs.num_layers=1",
    "--data.max_seq_len=64",
    "--data.num_targets=8",
]

#: a few batches, no sanity check, fp32 (bf16 is covered by the shipped configs' own smoke runs)
TINY_TRAINER = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.limit_predict_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_model_summary=false",
    "--trainer.enable_progress_bar=false",
]

#: tiny models and datasets for each shipped config
TINY = {
    "digits": [
        "--model.model_kwargs.depth=1",
        "--model.model_kwargs.num_latents=8",
        "--model.model_kwargs.latent_dim=32",
        "--model.model_kwargs.latent_heads=2",
        "--model.model_kwargs.latent_dim_head=16",
        "--model.model_kwargs.cross_dim_head=16",
        "--model.model_kwargs.self_per_cross_attn=1",
        "--model.optimize=false",  # the shipped config times compiled candidates first (tested on its own)
        "--data.batch_size=16",
    ],
    "mlm-pydoc": [
        "--trainer.devices=1",  # the shipped config runs 2 DDP processes
        "--trainer.strategy=auto",
        "--trainer.check_val_every_n_epoch=1",
        "--model.model_kwargs.max_seq_len=32",
        "--model.model_kwargs.d_model=32",
        "--model.model_kwargs.num_latents=8",
        "--model.model_kwargs.latent_dim=32",
        "--model.model_kwargs.num_self_attends_per_block=1",
        "--model.model_kwargs.cross_qk_channels=16",
        "--model.model_kwargs.cross_v_channels=32",
        "--model.model_kwargs.latent_qk_channels=16",
        "--model.model_kwargs.latent_v_channels=32",
        "--model.model_kwargs.decoder_qk_channels=16",
        "--data.max_seq_len=32",
        "--data.batch_size=4",
    ],
    "points-synthetic": [
        "--model.model_kwargs.num_latents=8",
        "--model.model_kwargs.latent_dim=32",
        "--model.model_kwargs.num_bands=4",
        "--model.model_kwargs.num_self_attends_per_block=1",
        "--data.num_train=16",
        "--data.num_val=8",
        "--data.num_test=8",
        "--data.min_points=16",
        "--data.max_points=32",
        "--data.batch_size=8",
    ],
    "flow-synthetic": [
        "--model.model_kwargs.train_size=[16, 16]",
        "--model.model_kwargs.out_channels=16",
        "--model.model_kwargs.num_bands=4",
        "--model.model_kwargs.num_latents=8",
        "--model.model_kwargs.latent_dim=32",
        "--model.model_kwargs.num_self_attends_per_block=1",
        "--data.image_size=16",
        "--data.num_train=8",
        "--data.num_val=4",
        "--data.num_test=4",
        "--data.batch_size=4",
    ],
}


def tiny_args(config: str, run_dir: Path, *extra: str) -> list[str]:
    """`--config configs/<config>.yaml` + tiny model / data / trainer overrides, writing into `run_dir`."""
    return [
        "--config",
        str(CONFIGS / f"{config}.yaml"),
        f"--trainer.default_root_dir={run_dir}",
        *TINY_TRAINER,
        *TINY[config],
        *extra,
    ]


def assert_png(path: Path) -> None:
    """`path` is a non-empty PNG file."""
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, f"{path} is not a real PNG ({len(data)} bytes)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a rendezvous of test processes)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- multi-process runs (test_ddp, test_slurm) --------------------------------------------------------------------

#: the digits run of the multi-process tests: 10 steps, no validation, fp32, no dropout (dropout masks depend on how a
#: batch is split over processes)
DDP_RUN = (
    "--trainer.max_steps=10",
    "--trainer.max_epochs=-1",
    "--trainer.limit_train_batches=null",
    "--trainer.limit_val_batches=0",
    "--trainer.precision=32",
    "--model.model_kwargs.ff_dropout=0.0",
)


def fit(run_dir: Path, devices: int, batch_size: int, strategy: str = "auto", *extra: str) -> str:
    """`perceiver fit` of the `DDP_RUN` in a subprocess (`devices` processes of `batch_size`); its printed output."""
    strategy_args = (
        ["--config", str(CONFIGS / "strategy-fsdp.yaml")] if strategy == "fsdp" else [f"--trainer.strategy={strategy}"]
    )
    args = tiny_args(
        "digits",
        run_dir,
        *DDP_RUN,
        f"--trainer.devices={devices}",
        f"--data.batch_size={batch_size}",
        *strategy_args,
        *extra,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "perceiver.training.cli", "fit", *args], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


@torch.no_grad()
def loss_on_fixed_batch(model_dir: Path) -> float:
    """The cross-entropy of the model folder's model on the first 256 training digits."""
    model = perceiver.from_pretrained(model_dir)
    dm = DigitsDataModule()
    dm.setup()
    images = torch.stack([dm.train_set[i]["inputs"] for i in range(256)])
    labels = torch.stack([dm.train_set[i]["labels"] for i in range(256)])
    return F.cross_entropy(model(images), labels).item()


def two_node_args(run_dir: Path) -> list[str]:
    """The digits run of the multi-node tests: 10 steps of batch 8 per process, 2 nodes x 1 CPU process, DDP."""
    return tiny_args(
        "digits",
        run_dir,
        *DDP_RUN,
        "--trainer.devices=1",
        "--trainer.num_nodes=2",
        "--trainer.strategy=ddp",
        "--data.batch_size=8",
    )
