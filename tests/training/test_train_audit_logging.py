"""What a `perceiver fit` logs and says about Lightning's trainer options: one learning-rate row per optimizer step
with gradient accumulation; a GPU accelerator on a machine without one is an error naming it."""

from __future__ import annotations

import csv
from collections import Counter

import pytest
import torch
from trainutil import tiny_args

from perceiver.training.cli import main


def test_learning_rates_are_logged_once_per_optimizer_step_with_gradient_accumulation(tmp_path):
    """7 batches in windows of 3 are 3 optimizer steps ([0, 1, 2], [3, 4, 5], [6]): one row of rates each."""
    args = ["--trainer.limit_train_batches=7", "--trainer.accumulate_grad_batches=3"]
    main(["fit", *tiny_args("digits", tmp_path, *args)])
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    lr_key = next(k for k in rows[0] if k.startswith("lr-"))
    steps = Counter(r["step"] for r in rows if r.get(lr_key))
    assert steps == Counter({"0": 1, "1": 1, "2": 1}), steps
    assert sorted({r["step"] for r in rows if r.get("train/loss_step")}) == ["0", "1", "2"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_accelerator_without_a_gpu_is_an_error_saying_so(accelerator, tmp_path, capsys):
    """It used to print "precision 32-true (the GPU has no bf16 support)" and then Lightning's traceback
    "No supported gpu backend found!"; nothing is written."""
    with pytest.raises(SystemExit, match=rf"--trainer.accelerator {accelerator}: torch finds no GPU here"):
        main(["fit", *tiny_args("digits", tmp_path / "run"), f"--trainer.accelerator={accelerator}"])
    assert "GPU has no bf16" not in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
