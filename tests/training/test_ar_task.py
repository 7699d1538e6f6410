"""Causal LM on pydoc topics: the shipped `configs/ar-pydoc.yaml` trains on a tiny budget, bits per byte are
logged, `perceiver generate` continues a prompt with the saved model; the datamodule scores the same bytes for any
window."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from trainutil import CONFIGS, TINY_AR_MODEL, TINY_TRAINER

from perceiver.data.ar_pydoc import PydocARDataModule
from perceiver.training.cli import main

TINY_AR = [
    "--trainer.max_time=null",
    "--trainer.val_check_interval=null",
    "--trainer.check_val_every_n_epoch=1",
    "--model.time_budget=null",
    *TINY_AR_MODEL,
    "--data.eval_context=64",
    "--data.batch_size=4",
]


def _args(run_dir, *extra):
    return [
        "--config",
        str(CONFIGS / "ar-pydoc.yaml"),
        f"--trainer.default_root_dir={run_dir}",
        *TINY_TRAINER,
        *TINY_AR,
        *extra,
    ]


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ar-run")
    main(["fit", *_args(run_dir)])
    return run_dir


def test_fit_logs_bits_per_byte_and_saves_a_model(ar_run):
    rows = list(csv.DictReader((ar_run / "metrics.csv").open()))
    val = [r for r in rows if r.get("val/bpb")]
    assert val and any(r.get("train/loss_step") for r in rows)
    bpb, loss = float(val[-1]["val/bpb"]), float(val[-1]["val/loss"])
    assert math.isclose(bpb, loss / math.log(2), rel_tol=1e-4)
    assert 0 < float(val[-1]["val/bpb_unigram"]) < 8.1
    import perceiver

    model = perceiver.from_pretrained(ar_run / "model")
    assert isinstance(model, perceiver.PerceiverAR) and model.config.max_seq_len == 64


def test_grad_checkpointing_trains_the_same_weights(ar_run, tmp_path):
    """`--model.grad_checkpointing=true` recomputes activations in the backward pass: the same run ends with the same
    weights (dropout masks redrawn alike)."""
    import perceiver

    main(["fit", *_args(tmp_path, "--model.grad_checkpointing=true")])
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["grad_checkpointing"] is True
    want = perceiver.from_pretrained(ar_run / "model").state_dict()
    got = perceiver.from_pretrained(tmp_path / "model").state_dict()
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=name)


def test_time_budget_trains_without_a_step_budget_and_points_to_it_otherwise(tmp_path):
    """`max_epochs=-1` and `max_time`: a schedule by `time_budget` needs no step count; without it the error names
    `model.time_budget` as the way to schedule by time."""
    budget = ["--trainer.max_epochs=-1", "--trainer.max_time=00:00:00:03"]
    with pytest.raises(
        SystemExit, match=r"needs a step budget.*or schedule over wall-clock time with model.time_budget"
    ):
        main(["fit", *_args(tmp_path / "steps", *budget)])
    main(["fit", *_args(tmp_path / "time", *budget, "--model.time_budget=3")])
    rows = list(csv.DictReader((tmp_path / "time" / "metrics.csv").open()))
    assert sum(1 for r in rows if r.get("train/loss_step")) > 2  # several epochs of 2 batches, stopped by max_time
    assert (tmp_path / "time" / "model" / "model.safetensors").is_file()


def test_test_split_reports_bpb(ar_run, tmp_path):
    main(["test", *_args(tmp_path), f"--ckpt_path={ar_run / 'checkpoints' / 'best.ckpt'}"])
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert any(r.get("test/bpb") for r in rows)


def test_generate_cli_continues_the_prompt(ar_run, capsys):
    main(["generate", str(ar_run / "model"), "--prompt", "The assert", "--max-new-tokens", "12", "--greedy"])
    greedy = capsys.readouterr().out
    assert greedy.startswith("The assert") and len(greedy.encode()) > len("The assert")
    main(["generate", str(ar_run / "model"), "--prompt", "x" * 100, "--max-new-tokens", "3", "--temperature", "0.7"])
    assert capsys.readouterr().out.startswith("x" * 64)  # a prompt longer than the window keeps its last 64 bytes
    with pytest.raises(SystemExit, match="temperature > 0"):
        main(["generate", str(ar_run / "model"), "--prompt", "a", "--temperature", "0"])
    with pytest.raises(SystemExit, match="non-empty --prompt"):
        main(["generate", str(ar_run / "model"), "--prompt", ""])


def test_held_out_topics_and_scored_bytes_do_not_depend_on_the_window():
    short = PydocARDataModule(max_seq_len=32, num_targets=8, eval_context=64)
    long = PydocARDataModule(max_seq_len=64, num_targets=8, eval_context=64)
    assert not set(short.train_topics) & (set(short.val_topics) | set(short.test_topics))
    assert not set(short.val_topics) & set(short.test_topics) and short.test_topics
    for dm in (short, long):
        dm.setup()
    for i in (0, 5, len(short.val_set) - 1):
        a, b = short.val_set[i], long.val_set[i]
        assert torch.equal(a["labels"][a["labels"] != -100], b["labels"][b["labels"] != -100])
        assert (a["labels"] != -100).sum() == min(8, (a["labels"] != -100).sum())
    batch = next(iter(short.train_dataloader()))
    assert batch["input_ids"].shape == (16, 32) and torch.equal(batch["input_ids"], batch["labels"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--model.model_kwargs.vocab_size=300"],
            r"PydocARDataModule gives token ids of a 262-token vocabulary but PerceiverAR embeds 300 tokens "
            r"\(vocab_size=300\); pass --model.model_kwargs.vocab_size 262",
        ),
        (
            ["--data.max_seq_len=96", "--data.eval_context=96"],
            r"sequences of up to 96 tokens .* positions for 64 .*; pass --data.max_seq_len 64",
        ),
        (  # 16 scored bytes per window, 8 latents: 9 of the 16 were silently left out of val/bpb
            ["--model.model_kwargs.num_latents=8", "--data.num_targets=16"],
            r"PydocARDataModule scores the last 16 tokens of each evaluation window \(num_targets=16\) but the 8 "
            r"latents of PerceiverAR predict only the last 7; pass --data.num_targets 7 or less, or give the model "
            r"more latents \(--model.model_kwargs.num_latents 17\)",
        ),
    ],
)
def test_data_the_model_cannot_read_stops_before_training(tmp_path, extra, message):
    """A model of another vocabulary (e.g. a subword checkpoint given byte data) or a window longer than its
    positions: a clear error naming both sides and the fix, and nothing trained."""
    with pytest.raises(SystemExit, match=message):
        main(["fit", *_args(tmp_path, *extra)])
    assert not (tmp_path / "model").exists() and not list((tmp_path / "checkpoints").glob("*.ckpt"))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("restore_first", [True, False], ids=["restore-then-configure", "configure-then-restore"])
def test_time_budget_schedule_continues_where_a_resumed_run_stopped(monkeypatch, restore_first):
    """`--ckpt_path last` with `time_budget`: Lightning's `max_time` timer continues its clock from the checkpoint, so
    the schedule must too. It restarted from warmup (lr 3% of peak, then a whole new cosine over the time left)."""
    from types import SimpleNamespace

    from perceiver.training import ar_task

    clock = [1000.0]
    monkeypatch.setattr(ar_task, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    kwargs = dict(max_seq_len=16, num_latents=4, d_model=16, num_heads=2, num_layers=1)

    def task():
        return ar_task.CausalLMTask(model="perceiver-ar-tiny", model_kwargs=kwargs, lr=1e-3, time_budget=100.0)

    def lr_now(config) -> float:
        config["lr_scheduler"]["scheduler"].step()
        return config["optimizer"].param_groups[0]["lr"]

    first = task()
    config = first.configure_optimizers()
    clock[0] += 60.0
    at_60 = lr_now(config)
    checkpoint: dict = {}
    first.on_save_checkpoint(checkpoint)
    assert checkpoint["time_budget_elapsed"] == 60.0 and 1e-4 < at_60 < 5e-4  # past the cosine's middle

    clock[0] += 3600.0  # resumed an hour later
    resumed = task()
    if restore_first:
        resumed.on_load_checkpoint(checkpoint)
        config = resumed.configure_optimizers()
    else:
        config = resumed.configure_optimizers()
        clock[0] += 5.0  # the checkpoint is read after the optimizers are configured
        resumed.on_load_checkpoint(checkpoint)
    assert lr_now(config) == pytest.approx(at_60)
    clock[0] += 40.0
    assert lr_now(config) == pytest.approx(1e-3 * resumed.hparams.min_lr_ratio)  # the budget is spent
