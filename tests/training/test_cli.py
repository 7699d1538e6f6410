"""The `perceiver` command: every shipped config trains on a tiny budget, bad keys fail clearly, run dirs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from trainutil import CONFIGS, assert_png, tiny_args

from perceiver.training.cli import main

SHIPPED = ["digits", "mlm-pydoc", "points-synthetic", "flow-synthetic"]
TESTED_ELSEWHERE = ["ar-pydoc", "segment-pydoc"]  # tests/training/test_ar_task.py, test_segment_task.py


def test_every_shipped_config_is_tested():
    tasks = [p.stem for p in CONFIGS.glob("*.yaml") if not p.stem.startswith("strategy-")]
    assert sorted(tasks) == sorted(SHIPPED + TESTED_ELSEWHERE)


@pytest.mark.parametrize("config", SHIPPED)
def test_shipped_config_smoke(config, tmp_path):
    """fit (train + validate) on a tiny budget writes logs, best / last checkpoints and the model folder."""
    main(["fit", *tiny_args(config, tmp_path)])
    assert (tmp_path / "config.yaml").is_file()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert any(r.get("train/loss_step") for r in rows) and any(r.get("val/loss") for r in rows)
    for name in ("best.ckpt", "last.ckpt"):
        assert (tmp_path / "checkpoints" / name).is_file()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    model_dir = tmp_path / "model"
    assert {p.name for p in model_dir.iterdir()} >= {"config.json", "model.safetensors", "task.json"}
    import perceiver

    model = perceiver.from_pretrained(model_dir)  # the saved model loads back
    ckpt = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    key = next(iter(model.state_dict()))
    assert torch.equal(model.state_dict()[key], ckpt["state_dict"][f"model.{key}"])  # = the best checkpoint
    if config == "flow-synthetic":
        assert_png(tmp_path / "flow" / "epoch=000.png")


def test_validate_and_test_from_checkpoint(digits_run, tmp_path):
    ckpt = digits_run / "checkpoints" / "best.ckpt"
    for sub in ("validate", "test"):
        main([sub, *tiny_args("digits", tmp_path), f"--ckpt_path={ckpt}"])
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert any(r.get("test/acc") for r in rows) and any(r.get("val/acc") for r in rows)


def test_an_evaluation_keeps_the_training_config(tmp_path):
    """`test` / `validate` in the run directory write config-{stage}.yaml: config.yaml stays the record of how the
    run was trained (reusing it with --config must not resume from the evaluation's checkpoint)."""
    main(["fit", *tiny_args("digits", tmp_path)])
    trained = (tmp_path / "config.yaml").read_text()
    for sub in ("validate", "test"):
        main([sub, *tiny_args("digits", tmp_path), "--ckpt_path=last"])
        assert "ckpt_path: last" in (tmp_path / f"config-{sub}.yaml").read_text()
    assert (tmp_path / "config.yaml").read_text() == trained


def test_resuming_after_a_test_keeps_the_test_rows_aside(tmp_path):
    """A resumed fit cuts metrics.csv back to its checkpoint (the steps it logs again must not appear twice); the rows
    cut, such as a `test` run's in between, are moved to metrics.after-checkpoint-TIME.csv, not lost."""
    main(["fit", *tiny_args("digits", tmp_path, "--trainer.max_epochs=1")])
    main(["test", *tiny_args("digits", tmp_path), "--ckpt_path=last"])
    main(["fit", *tiny_args("digits", tmp_path, "--trainer.max_epochs=2"), "--ckpt_path=last"])
    (aside,) = tmp_path.glob("metrics.after-checkpoint-*.csv")
    assert any(r.get("test/acc") for r in csv.DictReader(aside.open()))
    assert not any(r.get("test/acc") for r in csv.DictReader((tmp_path / "metrics.csv").open()))


def test_lightning_predict_writes_jsonl(digits_run, tmp_path):
    ckpt = digits_run / "checkpoints" / "best.ckpt"
    main(["predict", *tiny_args("digits", tmp_path), f"--ckpt_path={ckpt}"])
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and len(rows[0]["top_labels"]) == 5  # one batch of 16 digits, top-5
    # readable without the training code: the class names of the ids, and the true label to score against
    assert rows[0]["top_names"] == [str(i) for i in rows[0]["top_labels"]]
    assert all(r["label_name"] == str(r["label"]) and 0 <= r["label"] < 10 for r in rows)


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_ckpt_path_best_in_a_new_process_is_the_runs_best_checkpoint(subcommand, digits_run, tmp_path):
    """Lightning knows a best model only in the process that trained it ("ModelCheckpoint is not configured to save
    the best model"); `--ckpt_path best` reads RUN_DIR/checkpoints/best.ckpt, and names it when it is missing."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run / "checkpoints", run / "checkpoints")
    main([subcommand, *tiny_args("digits", run), "--ckpt_path=best"])
    written = run / ("predictions.jsonl" if subcommand == "predict" else "metrics.csv")
    assert written.is_file() and written.read_text().strip()
    (run / "checkpoints" / "best.ckpt").unlink()
    with pytest.raises(SystemExit, match=r"--ckpt_path best: run directory .* has no best checkpoint \(looked for "):
        main([subcommand, *tiny_args("digits", run), "--ckpt_path=best"])


def test_masked_lm_predictions_name_the_masked_bytes_and_read_as_text(tmp_path):
    """predictions.jsonl of the masked LM: per sequence (padding cut) the masked positions with the predicted and the
    true ids there, and the input as text with the masked bytes filled in by the model."""
    main(["fit", *tiny_args("mlm-pydoc", tmp_path)])
    main(["predict", *tiny_args("mlm-pydoc", tmp_path), "--ckpt_path=last"])
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert rows and all(r["masked_positions"] and r["text"] for r in rows)
    for r in rows:
        at, ids = r["masked_positions"], r["predicted_ids"]
        assert len(r["masked_label_ids"]) == len(at) and r["masked_predicted_ids"] == [ids[i] for i in at]


def test_masked_lm_prediction_rows_fill_the_masked_bytes_and_cut_the_padding():
    from perceiver.tokenizer import MASK_ID, PAD_ID, VOCAB_SIZE, encode_bytes
    from perceiver.training.mlm_task import MaskedLMTask

    task = MaskedLMTask(model="language-perceiver", model_kwargs=dict(max_seq_len=16, d_model=8, num_latents=2,
        latent_dim=8, num_self_attends_per_block=1))  # fmt: skip
    true = encode_bytes("a cat")
    ids = torch.tensor([[*true[:2], MASK_ID, *true[3:], PAD_ID, PAD_ID]])  # "a ?at" + padding
    labels = torch.full_like(ids, -100)
    labels[0, 2] = true[2]
    guess = encode_bytes("a bat..")  # what the "model" predicts at every position
    logits = torch.nn.functional.one_hot(torch.tensor([guess]), VOCAB_SIZE).float()
    task.forward = lambda batch: logits  # type: ignore[method-assign]
    batch = {"input_ids": ids, "labels": labels, "attention_mask": ids != PAD_ID}
    (row,) = task.predict_step(batch, 0)
    assert row["text"] == "a bat" and row["predicted_ids"] == guess[:5]
    assert (row["masked_positions"], row["masked_predicted_ids"], row["masked_label_ids"]) == (
        [2],
        [guess[2]],
        [true[2]],
    )
    del batch["labels"]  # without labels the MASK tokens of the input are the masked positions
    (row,) = task.predict_step(batch, 0)
    assert row["text"] == "a bat" and row["masked_positions"] == [2] and "masked_label_ids" not in row


def test_a_trained_classifier_saves_its_datamodules_class_names(digits_run):
    """config.json's id2label (as transformers keeps class names): a model folder used from Python has them too."""
    import perceiver
    from perceiver.labels import class_names

    assert class_names(perceiver.from_pretrained(digits_run / "model")) == [str(i) for i in range(10)]


def test_bad_config_key_fails_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", *tiny_args("digits", tmp_path), "--trainer.max_epocs=3"])
    assert err.value.code != 0
    assert "max_epocs" in capsys.readouterr().err
    assert not (tmp_path / "metrics.csv").exists()


def test_bad_key_in_config_file_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    learning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        main(["fit", *tiny_args("digits", tmp_path / "run"), "--config", str(bad)])
    assert "learning_rate" in capsys.readouterr().err


def test_bad_model_kwarg_is_named(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown keys \['num_latentz'\]"):
        main(["fit", *tiny_args("digits", tmp_path), "--model.model_kwargs.num_latentz=4"])
    assert not (tmp_path / "metrics.csv").exists()


def test_print_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(CONFIGS / "digits.yaml"), "--model.lr=0.123", "--print_config"])
    assert err.value.code in (0, None)
    out = capsys.readouterr().out
    assert "lr: 0.123" in out and "perceiver.data.DigitsDataModule" in out


def test_fresh_fit_refuses_existing_run_dir(digits_run, tmp_path, capsys):
    with pytest.raises(SystemExit, match="already holds a run"):
        main(["fit", *tiny_args("digits", digits_run)])
    assert (digits_run / "checkpoints" / "last.ckpt").is_file()  # nothing was deleted


def test_help_lists_extra_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for word in ("perceiver plot", "perceiver attention", "perceiver predict MODEL_DIR", "fit"):
        assert word in out
    # `perceiver predict -h` is Lightning's predict: the help names where predict's model-folder options are
    assert "`perceiver predict MODEL_DIR -h`" in out


def test_resume_continues_from_last_checkpoint(digits_run, tmp_path):
    """`--ckpt_path last` finds RUN_DIR/checkpoints/last.ckpt and trains the remaining epochs."""
    before = torch.load(digits_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    run = tmp_path / "run"
    import shutil

    shutil.copytree(digits_run, run)
    main(["fit", *tiny_args("digits", run, "--trainer.max_epochs=3"), "--ckpt_path=last"])
    after = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (before["epoch"], after["epoch"]) == (1, 2)
    assert after["global_step"] == before["global_step"] + 2


def test_entry_point_declared():
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert 'perceiver = "perceiver.training.cli:main"' in text


def test_optimize_times_training_candidates_and_trains_with_the_fastest(tmp_path, capsys):
    """`--model.optimize true` (the digits config's setting): the report names the chosen candidate, the run trains
    and saves a model folder as usual."""
    main(["fit", *tiny_args("digits", tmp_path / "run"), "--model.optimize=true"])
    printed = capsys.readouterr().out
    assert "perceiver: training steps optimize (training): chose" in printed
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize(("monitor", "pick"), [("val/loss", min), ("val/loss:max", max), ("last", max)])
def test_best_checkpoint_follows_the_monitor_option(monitor, pick, tmp_path):
    """`--model.monitor` (and `--model.monitor_mode`) choose which epoch best.ckpt and the model folder hold; for
    "last" it is the final epoch (picked here as the largest epoch number)."""
    metric, _, mode = monitor.partition(":")
    extra = [f"--model.monitor={metric}", "--trainer.max_epochs=3"] + ([f"--model.monitor_mode={mode}"] if mode else [])
    main(["fit", *tiny_args("digits", tmp_path, *extra)])
    rows = [r for r in csv.DictReader((tmp_path / "metrics.csv").open()) if r.get("val/loss")]
    losses = {int(r["epoch"]): float(r["val/loss"]) for r in rows}
    assert len(losses) == 3 and len(set(losses.values())) == 3
    ckpt = torch.load(tmp_path / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == (pick(losses) if monitor == "last" else pick(losses, key=losses.get))
    import perceiver

    model = perceiver.from_pretrained(tmp_path / "model")  # the model folder holds the chosen epoch's weights
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"model.{key}"]), key
