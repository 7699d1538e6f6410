"""A run killed after epoch k and resumed with `--ckpt_path last` ends with the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainutil import tiny_args

KILLER = '''
import os, signal
from lightning.pytorch.callbacks import Callback

class KillAtEpoch(Callback):
    """SIGKILL this process when epoch `epoch` starts (epochs 0..epoch-1 are complete and checkpointed)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)
'''


def run_cli(args: list[str], extra_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(extra_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "perceiver.training.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path):
    (tmp_path / "killer.py").write_text(KILLER)
    kill_cfg = tmp_path / "kill.yaml"
    kill_cfg.write_text(
        "trainer:\n  callbacks:\n    - class_path: killer.KillAtEpoch\n      init_args:\n        epoch: 2\n"
    )
    # dropout and shift augmentation on, so the test also covers per-epoch RNG state (EpochSeed, datamodule seeds)
    common = [
        "--trainer.max_epochs=4",
        "--trainer.limit_train_batches=3",
        "--trainer.precision=32",
        "--model.model_kwargs.ff_dropout=0.1",
        "--model.model_kwargs.attn_dropout=0.1",
        "--data.augment=true",
    ]
    full, broken = tmp_path / "full", tmp_path / "broken"
    ok = run_cli(["fit", *tiny_args("digits", full, *common)], tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]

    killed = run_cli(["fit", *tiny_args("digits", broken, *common), "--config", str(kill_cfg)], tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpt = torch.load(broken / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1  # killed at the start of epoch 2: epochs 0 and 1 are done
    assert not (broken / "model").exists()

    resumed = run_cli(["fit", *tiny_args("digits", broken, *common), "--ckpt_path=last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.stderr + resumed.stdout

    a, b = weights(full), weights(broken)
    assert a.keys() == b.keys()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff <= 1e-6, f"resumed weights differ from the uninterrupted run by {diff}"
    assert torch.load(broken / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3
