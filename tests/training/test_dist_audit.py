"""Multi-process evaluation and FSDP2 meshes as a Lightning user meets them: validation / test metrics of 2 DDP
processes count every sample once (not Lightning's padded `DistributedSampler`), every process gets the same number
of batches (FSDP2's all-gathers stay in step), and a tensor-parallel mesh, which would train unsynchronized replicas,
is refused by name."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from trainutil import CONFIGS, TINY, TINY_TRAINER

from perceiver.data import DigitsDataModule
from perceiver.data._common import EvalSampler, eval_shard
from perceiver.training.sharding import check_mesh_for_sharding


@pytest.mark.parametrize("processes", [2, 3])
@pytest.mark.parametrize("batch_size", [1, 2, 5, 16])
def test_eval_shard_covers_every_sample_once_in_equal_batch_counts(processes, batch_size):
    for n in range(60):
        shards = [eval_shard(n, batch_size, processes, r) for r in range(processes)]
        seen = sorted(i for indices, _ in shards for i in indices)
        repeated = shards[0][1]
        assert set(seen) == set(range(n)) and len(seen) == n + repeated
        assert len({-(-len(indices) // batch_size) for indices, _ in shards}) <= 1, (n, shards)
        # repeats only where no equal split exists: the last block has fewer samples than processes
        assert repeated == (
            processes - n % (processes * batch_size) if 0 < n % (processes * batch_size) < processes else 0
        )


def _labels(loader) -> list[int]:
    return [int(y) for batch in loader for y in batch["labels"]]


def test_val_and_test_loaders_of_two_processes_split_the_split_without_repeats():
    """89 validation digits in batches of 16 on 2 processes: Lightning's padded sampler evaluates 90 (one twice); the
    datamodule's own loaders evaluate the 89 once, 3 batches in each process."""
    one = DigitsDataModule(batch_size=16, val_fraction=0.06)
    one.setup()
    for split in ("val", "test"):
        whole = _labels(getattr(one, f"{split}_dataloader")())
        loaders = []
        for rank in (0, 1):
            dm = DigitsDataModule(batch_size=16, val_fraction=0.06)
            dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, current_epoch=0)
            dm.setup()
            loaders.append(getattr(dm, f"{split}_dataloader")())
        assert all(isinstance(loader.sampler, EvalSampler) for loader in loaders)  # Lightning keeps it
        assert len(loaders[0]) == len(loaders[1])
        shares = [_labels(loader) for loader in loaders]
        assert sum(map(len, shares)) == len(whole) and sorted(shares[0] + shares[1]) == sorted(whole)
    assert len(whole) == 360 and len(_labels(one.val_dataloader())) == 89


def test_unsharded_val_loader_and_predict_loader_give_the_whole_split_in_every_process():
    """Statistics of the split itself (the MLM / segmentation baselines) need all of it in every process; predict
    loaders stay whole too, as Lightning splits them itself (without repeats)."""
    one = DigitsDataModule(batch_size=16, val_fraction=0.06)
    one.setup()
    dm = DigitsDataModule(batch_size=16, val_fraction=0.06)
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1, current_epoch=0)
    dm.setup()
    assert _labels(dm.unsharded_val_dataloader()) == _labels(one.val_dataloader())
    assert _labels(dm.predict_dataloader()) == _labels(one.test_dataloader())


def test_eval_sampler_warns_when_samples_must_repeat():
    data = list(range(33))  # 33 = 2 x 16 + 1: the second process has no sample for its last batch
    with pytest.warns(UserWarning, match=r"33 samples in batches of 16 on 2 processes counts 1 of them twice"):
        EvalSampler(data, 16, 2, 0)


class _Mesh:
    """What `check_mesh_for_sharding` reads of a `DeviceMesh`: its dimension names and sizes."""

    def __init__(self, **sizes: int) -> None:
        self.sizes, self.mesh_dim_names = sizes, tuple(sizes)

    def __getitem__(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(size=lambda: self.sizes[name])


def test_tensor_parallel_mesh_is_refused_by_name():
    """Lightning's `ModelParallelStrategy()` defaults to tensor_parallel_size = devices per node: the processes would
    each train their own unsynchronized replica on other data (perceiver shards over data-parallel processes only)."""
    check_mesh_for_sharding(_Mesh(data_parallel=2, tensor_parallel=1))
    with pytest.raises(ValueError, match=r"tensor_parallel_size=2, data_parallel_size=1.*data_parallel_size 2"):
        check_mesh_for_sharding(_Mesh(data_parallel=1, tensor_parallel=2))


def _validate(run_dir: Path, *extra: str) -> dict[str, float]:
    args = [
        "--config",
        str(CONFIGS / "digits.yaml"),
        f"--trainer.default_root_dir={run_dir}",
        *TINY_TRAINER,
        *TINY["digits"],
        "--trainer.limit_val_batches=null",
        "--data.val_fraction=0.06",  # 89 validation digits: odd, so 2 processes cannot split them evenly
        *extra,
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "perceiver.training.cli", "validate", *args], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = re.findall(r"(val/\w+)\s*│\s*([-\d.e]+)", proc.stdout + proc.stderr)
    return {k: float(v) for k, v in found}


@pytest.mark.slow
def test_two_process_validation_counts_each_sample_once(tmp_path):
    """`perceiver validate` (the same seeded weights) in 2 DDP processes reports the metrics of 1 process: 9 of 89
    right, not 9 of 90 with one digit counted twice."""
    one = _validate(tmp_path / "one")
    two = _validate(tmp_path / "two", "--trainer.devices=2", "--trainer.strategy=ddp")
    assert set(one) == set(two) == {"val/acc", "val/loss"}, (one, two)
    assert abs(one["val/acc"] - two["val/acc"]) < 1e-6, (one, two)
    assert torch.isclose(torch.tensor(two["val/acc"] * 89), torch.tensor(two["val/acc"] * 89).round())  # k of 89
    # Lightning's sync_dist mean averages the int sample counts of the processes: (45 + 44) / 2 truncated to 44 made
    # the loss 44.5 / 44 too high; `PerceiverTask._log_loss` passes a float batch_size
    assert abs(one["val/loss"] - two["val/loss"]) <= 1e-5 * abs(one["val/loss"]), (one, two)


def test_rewriting_a_sharded_checkpoint_folder_is_not_announced():
    """FSDP2 with `save_distributed_checkpoint: true` rewrites best.ckpt / last.ckpt folders at every save: torch's
    "Detected an existing checkpoint ... overwriting" (twice per save, one per process) is the run layout, not news;
    other warnings of the checkpoint writer still show."""
    import warnings

    from perceiver.training.run_defaults import quiet_lightning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        warnings.warn(
            "Detected an existing checkpoint in runs/x/checkpoints/last.ckpt, overwriting since self.overwrite=True."
            " Past version 2.5 of PyTorch, `overwrite` will default to False.",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn(
            "Detected an existing checkpoint in x, overwriting since self.overwrite=False.", UserWarning, stacklevel=1
        )
    assert [str(w.message) for w in caught] == [
        "Detected an existing checkpoint in x, overwriting since self.overwrite=False."
    ]


@pytest.mark.slow
def test_fsdp_config_combines_with_any_number_of_processes(tmp_path):
    """`configs/strategy-fsdp.yaml` added to a config of 1 device (digits.yaml says `devices: 1`) trains: its data-
    parallel size is every process of the run, not a fixed 2 (Lightning's "sizes ... should equal the world size")."""
    from trainutil import fit

    log = fit(tmp_path / "one", 1, 16, "fsdp")
    assert "Starting with 1 processes" in log
    assert (tmp_path / "one" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["mlm", "segment"])
def test_split_baselines_cover_the_whole_split_in_every_process(name):
    """The logged baselines (the masked LM's most-frequent-byte accuracy, the segmenter's heuristic F1) are statistics
    of the whole validation split: a process of a 2-process run computes the 1-process value, not that of its share."""
    from perceiver.data import PydocMLMDataModule
    from perceiver.data.segment_pydoc import SegmentPydocDataModule

    def make():
        return PydocMLMDataModule(max_seq_len=64, batch_size=8) if name == "mlm" else SegmentPydocDataModule(64, 8)

    def baseline(dm) -> float:
        return dm.most_frequent_byte_baseline() if name == "mlm" else dm.heuristic_f1()

    alone = baseline(make())
    for rank in (0, 1):
        dm = make()
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, current_epoch=0)
        assert baseline(dm) == pytest.approx(alone, rel=1e-12)


@pytest.mark.slow
def test_a_sharded_best_checkpoint_is_the_exported_model(tmp_path):
    """FSDP2 with `save_distributed_checkpoint: true` writes best.ckpt as a folder: RUN_DIR/model holds its weights
    (before: `is_file()` was False for the folder, and the final weights were exported as if no best existed)."""
    from safetensors.torch import load_file
    from trainutil import fit

    from perceiver.training.callbacks import _checkpoint_weights

    run = tmp_path / "run"
    log = fit(run, 1, 16, "fsdp", "--trainer.strategy.init_args.save_distributed_checkpoint=true")
    best = run / "checkpoints" / "best.ckpt"
    assert best.is_dir()
    assert "saved the model of the best checkpoint" in log, log[-2000:]
    saved, expected = load_file(run / "model" / "model.safetensors"), _checkpoint_weights(best)
    assert saved.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(saved[name], value), name


def test_text_model_folders_hold_their_tokenizer(tmp_path):
    """`perceiver fit` of a byte-level text model writes the tokenizer beside it, as transformers keeps one in a model
    folder: ByteTokenizer / AutoTokenizer.from_pretrained(RUN_DIR/model) work (before: FileNotFoundError)."""
    from trainutil import tiny_args

    from perceiver.tokenizer import ByteTokenizer
    from perceiver.training.cli import main

    main(["fit", *tiny_args("mlm-pydoc", tmp_path)])
    tokenizer = ByteTokenizer.from_pretrained(tmp_path / "model")
    assert tokenizer.model_max_length == 32 and not tokenizer.split_special_tokens  # the tiny run's --data.max_seq_len
    assert tokenizer("a[MASK]")["input_ids"] == [4, 103, 3, 5]  # [CLS] a [MASK] [SEP]: "[MASK]" is the mask token
    transformers = pytest.importorskip("transformers")
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "model")("a[MASK]")["input_ids"] == [4, 103, 3, 5]
