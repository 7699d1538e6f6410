"""The determinism contract shared by all datamodules: epoch from the trainer, ranks, workers, Lightning."""

from types import SimpleNamespace

import lightning.pytorch as pl
import torch

from perceiver.data import DigitsDataModule, PydocMLMDataModule
from perceiver.data._common import EpochSampler


def batches(loader, key="labels"):
    return [b[key] for b in loader]


def test_train_loader_follows_trainer_epoch_and_rank():
    dm = DigitsDataModule(batch_size=50, seed=2)
    dm.setup()
    dm.set_epoch(3)
    single = torch.cat(batches(dm.train_dataloader(), "inputs"))
    dm.trainer = SimpleNamespace(current_epoch=3, world_size=2, global_rank=1)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSampler)  # a DistributedSampler: Lightning keeps it under DDP
    rank1 = torch.cat(batches(loader, "inputs"))
    n = len(dm.train_set)
    assert len(rank1) == (n + 1) // 2
    assert torch.equal(rank1[: n // 2], single[1::2][: n // 2])


def test_workers_do_not_change_the_data():
    """Per-sample randomness depends on (seed, epoch, index) only: 0 or 2 workers, same batches (also for the
    first epoch after a resume, whose iterator Lightning creates before calling set_epoch)."""
    dm = PydocMLMDataModule(max_seq_len=64, batch_size=8, seed=1)
    dm.setup()
    dm.train_set.sequences = dm.train_set.sequences[:32]
    dm.trainer = SimpleNamespace(current_epoch=2, world_size=1, global_rank=0)
    ref = next(iter(dm.train_dataloader()))
    dm.num_workers = 2
    got = next(iter(dm.train_dataloader()))
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(ref[key], got[key])


class _Recorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(64, 10)
        self.seen: dict[int, list[torch.Tensor]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).append(batch["labels"].clone())
        return torch.nn.functional.cross_entropy(self.layer(batch["inputs"].flatten(1)), batch["labels"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_sees_the_documented_epoch_order(tmp_path):
    dm = DigitsDataModule(batch_size=32, seed=4, augment=True)
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    ref = DigitsDataModule(batch_size=32, seed=4, augment=True)
    ref.setup()
    for epoch in (0, 1):
        ref.set_epoch(epoch)
        expected = [b["labels"] for _, b in zip(range(2), ref.train_dataloader())]
        assert all(torch.equal(a, b) for a, b in zip(model.seen[epoch], expected))
    assert not torch.equal(model.seen[0][0], model.seen[1][0])


def test_every_datamodule_builds_from_a_cli_style_config():
    """LightningCLI builds datamodules through jsonargparse: every constructor must have parseable plain types."""
    from jsonargparse import ArgumentParser

    import perceiver.data as data

    for name in data.__all__:
        cls = getattr(data, name)
        if not isinstance(cls, type):
            continue
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "data")
        defaults = parser.get_defaults()["data"]
        assert {"batch_size", "num_workers", "seed"} <= set(vars(defaults)), name
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(data.SyntheticFlowDataModule, "data")
    cfg = parser.parse_args(["--data.image_size", "[32, 48]", "--data.batch_size", "4"])
    dm = data.SyntheticFlowDataModule(**vars(cfg.data))
    assert dm.image_shape == (32, 48, 3) and dm.batch_size == 4
