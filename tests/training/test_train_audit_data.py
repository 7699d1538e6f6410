"""Own data through the CLI: a split that the datamodule was not given is an error naming the option that gives it."""

from __future__ import annotations

import pytest
from test_examples import example_args, write_image_folder, write_jsonl

from perceiver.data import ImageFolderDataModule, TextClassificationDataModule
from perceiver.training.cli import main


def test_testing_an_image_folder_without_a_test_folder_names_the_option(tmp_path):
    with pytest.raises(
        SystemExit, match=r"ImageFolderDataModule has no test split; give it one with --data\.test_root"
    ):
        main(["test", *example_args("imagefolder-classic", tmp_path / "run", tmp_path)])


def test_a_missing_split_names_each_option_that_gives_it(tmp_path):
    text = TextClassificationDataModule(train_file=str(write_jsonl(tmp_path / "train.jsonl")), batch_size=4)
    with pytest.raises(ValueError, match=r"no test split; give it one with --data\.test_file or --data\.test_split"):
        text.test_dataloader()
    images = ImageFolderDataModule(str(write_image_folder(tmp_path / "images")), image_size=8, batch_size=4)
    with pytest.raises(ValueError, match=r"--data\.test_root \(the constructor argument test_root\)"):
        images.predict_dataloader()
