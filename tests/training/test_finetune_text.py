"""Fine-tuning a pretrained masked LM for text classification through the CLI: `--model.pretrained MLM_FOLDER` with
the text classifier's config keeps the LM's embedding and encoder and gives a new head sized for the data's classes
(as transformers' `PerceiverForSequenceClassification.from_pretrained` of an MLM checkpoint starts it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_examples import example_args
from tiny_models import tiny

import perceiver
from perceiver.data import TextClassificationDataModule
from perceiver.models import PerceiverForSequenceClassification
from perceiver.models.token_heads import PerceiverForTokenClassification
from perceiver.training import ClassificationTask, TokenClassificationTask
from perceiver.training.cli import main
from perceiver.training.tasks import num_classes_of

KEPT = ("input_adapter.", "encoder.")


@pytest.fixture(scope="module")
def mlm_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    mlm = tiny("language-perceiver", max_seq_len=64)  # the example's data.max_seq_len
    return mlm.save_pretrained(tmp_path_factory.mktemp("lm") / "mlm")


def three_classes(path: Path) -> Path:
    rows = [(f"{word} {i}", word) for i in range(4) for word in ("good", "bad", "so-so")]
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return path


def kept_equal(model: torch.nn.Module, folder: Path) -> bool:
    theirs = perceiver.from_pretrained(folder).state_dict()
    ours = model.state_dict()
    return all(torch.equal(v, theirs[k]) for k, v in ours.items() if k.startswith(KEPT))


def test_a_text_classifier_task_starts_from_a_masked_lm(mlm_folder, tmp_path):
    task = ClassificationTask(model="text-classifier", pretrained=str(mlm_folder))
    assert isinstance(task.model, PerceiverForSequenceClassification) and task.model.training
    dm = TextClassificationDataModule(str(three_classes(tmp_path / "t.jsonl")), max_seq_len=64, batch_size=4)
    dm.setup("fit")
    task.adapt_to_datamodule(dm)  # the new head takes the data's 3 classes without reset_head
    assert num_classes_of(task.model) == 3 and kept_equal(task.model, mlm_folder)


def test_a_token_classifier_task_starts_from_a_masked_lm(mlm_folder):
    task = TokenClassificationTask(model="token-classifier", pretrained=str(mlm_folder))
    assert isinstance(task.model, PerceiverForTokenClassification) and kept_equal(task.model, mlm_folder)


def test_fine_tune_a_masked_lm_through_the_cli(mlm_folder, tmp_path, capsys):
    run = tmp_path / "run"
    train = three_classes(tmp_path / "three.jsonl")
    args = [a for a in example_args("text-jsonl", run, tmp_path) if not a.startswith("--model.model_kwargs")]
    args += [f"--data.train_file={train}", f"--model.pretrained={mlm_folder}"]
    with pytest.raises(SystemExit, match=r"do not fit .*drop them \(--model.model_kwargs null\)"):
        main(["fit", *args])  # the config's sizes are for a model from scratch
    main(["fit", *args, "--model.model_kwargs=null", "--overwrite=true"])
    tuned = perceiver.from_pretrained(run / "model")
    assert isinstance(tuned, PerceiverForSequenceClassification) and num_classes_of(tuned) == 3
    assert json.loads((run / "model" / "task.json").read_text())["class_names"] == ["bad", "good", "so-so"]


def test_lora_fine_tune_of_a_masked_lm_predicts_from_its_adapter(mlm_folder, tmp_path, capsys):
    run = tmp_path / "run"
    train = three_classes(tmp_path / "three.jsonl")
    args = [a for a in example_args("text-jsonl", run, tmp_path) if not a.startswith("--model.model_kwargs")]
    args += [f"--data.train_file={train}", f"--model.pretrained={mlm_folder}", "--model.model_kwargs=null"]
    main(["fit", *args, "--model.lora.r=2"])
    capsys.readouterr()
    rows = []
    for folder in ("model", "adapter"):  # the merged model and the adapter on the masked LM: the same classifier
        main(["predict", str(run / folder), "--text", "good 7", "--json"])
        rows.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert rows[0] == rows[1] and len(rows[0]["top"]) == 3
