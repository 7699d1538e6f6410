"""DDP on CPU (gloo): 2 processes with per-process batch b reach the loss of 1 process with batch 2b."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from trainutil import tiny_args

import perceiver
from perceiver.data import DigitsDataModule


def fit(run_dir: Path, devices: int, batch_size: int) -> str:
    args = tiny_args(
        "digits",
        run_dir,
        "--trainer.max_steps=10",
        "--trainer.max_epochs=-1",
        "--trainer.limit_train_batches=null",
        "--trainer.limit_val_batches=0",
        "--trainer.precision=32",
        f"--trainer.devices={devices}",
        f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}",
        f"--data.batch_size={batch_size}",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "perceiver.training.cli", "fit", *args], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


@torch.no_grad()
def loss_on_fixed_batch(model_dir: Path) -> float:
    model = perceiver.from_pretrained(model_dir)
    dm = DigitsDataModule()
    dm.setup()
    images = torch.stack([dm.train_set[i]["inputs"] for i in range(256)])
    labels = torch.stack([dm.train_set[i]["labels"] for i in range(256)])
    return F.cross_entropy(model(images), labels).item()


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    fit(tmp_path / "one", devices=1, batch_size=16)
    log = fit(tmp_path / "two", devices=2, batch_size=8)
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log
    one, two = loss_on_fixed_batch(tmp_path / "one" / "model"), loss_on_fixed_batch(tmp_path / "two" / "model")
    print(f"loss after 10 steps: 1 process {one:.8f}, 2 processes {two:.8f}, rel. diff {abs(one - two) / one:.2e}")
    assert abs(one - two) / abs(one) <= 1e-4, (one, two)
    a = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 10
