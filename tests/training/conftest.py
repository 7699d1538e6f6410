"""Fixtures of the training tests: one small digits run shared by the plot / predict / attention tests, and the
reference run of the multi-process tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the helpers module `trainutil` next to this file
from trainutil import fit, tiny_args  # noqa: E402


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A tiny digits `perceiver fit` (2 epochs of 2 batches), shared by the plot / predict / attention tests."""
    from perceiver.training.cli import main

    run_dir = tmp_path_factory.mktemp("digits-run")
    main(["fit", *tiny_args("digits", run_dir, "--trainer.max_epochs=2")])
    return run_dir


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    """The multi-process tests' reference: 10 steps of 1 process with the whole batch of 16 (`trainutil.fit`)."""
    run = tmp_path_factory.mktemp("one-process")
    fit(run, devices=1, batch_size=16)
    return run


@pytest.fixture
def folder(tmp_path) -> Path:
    """An image folder of 2 classes (`test_examples.write_image_folder`), for the fine-tuning tests."""
    from test_examples import write_image_folder

    return write_image_folder(tmp_path / "images")


@pytest.fixture
def pretrained_3(tmp_path) -> Path:
    """A saved 3-class Perceiver IO image classifier (stands in for a Hub checkpoint with another head; the data of
    `folder` has 2 classes)."""
    import torch
    from test_finetune import TINY_FOURIER

    import perceiver

    torch.manual_seed(0)
    model = perceiver.create_model("vision-perceiver-fourier", **TINY_FOURIER, num_classes=3)
    return model.save_pretrained(tmp_path / "pretrained-3")
