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


def test_seed_everything_reaches_the_data_unless_the_data_seed_is_given(monkeypatch):
    from lightning.pytorch import seed_everything

    from perceiver.data import DigitsDataModule

    def order(**kwargs) -> list:
        dm = DigitsDataModule(batch_size=8, **kwargs)
        dm.setup("fit")
        return list(dm.train_dataloader().sampler)[:16]  # the first training samples' keys

    assert DigitsDataModule(batch_size=8).seed == 0  # no global seed: 0, as before
    seed_everything(3)
    assert DigitsDataModule(batch_size=8).seed == 3
    assert DigitsDataModule(batch_size=8, seed=5).seed == 5
    assert order() == order(seed=3) != order(seed=0)
    monkeypatch.setenv("PL_GLOBAL_SEED", "x")
    with pytest.raises(ValueError, match="expected PL_GLOBAL_SEED as an integer seed, got 'x'"):
        DigitsDataModule(batch_size=8)
