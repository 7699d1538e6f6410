"""`SavePretrained` with checkpoint callbacks of the configuration (not the CLI's own)."""

from __future__ import annotations

from trainutil import tiny_args


def test_model_folder_from_a_checkpoint_callback_without_monitor(tmp_path):
    """A configured `ModelCheckpoint` without a monitor keeps the latest checkpoint and has no score: the model
    folder is written from that checkpoint (it was `float(None)`, a TypeError at the end of fit)."""
    from perceiver.training.cli import main

    main(["fit", *tiny_args("digits", tmp_path, "--trainer.callbacks+=ModelCheckpoint")])
    assert (tmp_path / "model" / "config.json").is_file()
    assert (tmp_path / "model" / "task.json").is_file()
