"""Fine-tuning from your own data: the head follows the datamodule's classes, a pretrained head of another size is a
clear error unless `reset_head` re-initialises it, and `perceiver predict` refuses names that do not fit the head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_examples import CLASSES, example_args

import perceiver
from perceiver.data import ImageFolderDataModule
from perceiver.training import ClassificationTask
from perceiver.training.cli import main
from perceiver.training.tasks import num_classes_of

TINY_FOURIER = dict(
    image_size=[16, 16],
    max_resolution=[16, 16],
    num_bands=4,
    num_latents=8,
    latent_dim=32,
    num_blocks=1,
    num_self_attends_per_block=1,
    latent_heads=2,
)
#: a tiny transformers PerceiverConfig of the Fourier image classifier, 7 labels (a checkpoint with another head)
HF_FOURIER = dict(
    num_latents=8,
    d_latents=32,
    num_blocks=1,
    num_self_attends_per_block=1,
    num_self_attention_heads=1,
    num_cross_attention_heads=1,
    image_size=16,
    num_labels=7,
)
TINY_CLASSIC = dict(
    input_channels=3,
    depth=1,
    num_latents=8,
    latent_dim=32,
    latent_heads=2,
    cross_dim_head=16,
    latent_dim_head=16,
    num_freq_bands=4,
    max_freq=8.0,
)


def _has_head_contract() -> bool:
    model = perceiver.create_model("vision-perceiver-fourier", **TINY_FOURIER)
    return hasattr(model, "reset_classifier") and hasattr(model, "num_classes")


#: needs the model contract: `reset_classifier`, `num_classes`, `from_pretrained(num_classes=, ignore_mismatched_sizes=)`
head_contract = pytest.mark.skipif(not _has_head_contract(), reason="models without reset_classifier / num_classes")


def datamodule(folder: Path) -> ImageFolderDataModule:
    return ImageFolderDataModule(str(folder), image_size=16, val_fraction=0.25, batch_size=4)


@pytest.mark.parametrize(("name", "kwargs"), [("perceiver", TINY_CLASSIC), ("vision-perceiver-fourier", TINY_FOURIER)])
def test_head_takes_the_datamodule_class_count(name, kwargs, folder):
    """No class count in model_kwargs: the model is built with the datamodule's (the presets say 1000)."""
    task = ClassificationTask(model=name, model_kwargs=dict(kwargs))
    assert num_classes_of(task.model) == 1000
    task.adapt_to_datamodule(datamodule(folder))
    assert num_classes_of(task.model) == 2
    counts = {k: v for k, v in task.hparams.model_kwargs.items() if k in ("num_classes", "num_labels")}
    assert list(counts.values()) == [2]  # in the hyperparameters: checkpoints rebuild the same network
    assert num_classes_of(task.build_plain_model()) == 2
    logits = task({"inputs": torch.rand(2, 16, 16, 3), "labels": torch.tensor([0, 1])})
    assert logits.shape == (2, 2)


@pytest.mark.parametrize("null", [None, "None"])  # YAML's null; `--model.model_kwargs.num_classes null` on the CLI
def test_a_null_class_count_takes_the_datamodules(null, folder):
    """A config that sets a class count (points-synthetic.yaml: 8) reused on other data: nulling it lets the data
    decide, as leaving it out does (before: "num_classes must be an integer >= 0, got None")."""
    task = ClassificationTask(model="vision-perceiver-fourier", model_kwargs={**TINY_FOURIER, "num_classes": null})
    task.adapt_to_datamodule(datamodule(folder))
    assert num_classes_of(task.model) == 2 and task.hparams.model_kwargs["num_classes"] == 2


def test_pretrained_head_of_another_size_is_a_clear_error(pretrained_3, folder):
    task = ClassificationTask(pretrained=str(pretrained_3))
    with pytest.raises(ValueError) as err:
        task.adapt_to_datamodule(datamodule(folder))
    message = str(err.value)
    assert f"pretrained model {pretrained_3} has a 3-class head" in message
    assert "ImageFolderDataModule) has 2 classes ['cat', 'dog']" in message
    assert "--model.reset_head true" in message and "ignore_mismatched_sizes=True" in message


def test_pretrained_mismatch_stops_the_cli_before_training(pretrained_3, tmp_path):
    """The documented fine-tuning command without `reset_head` (the issue: a 3-class model trained silently on 2
    classes, then `perceiver predict` crashed with IndexError)."""
    run = tmp_path / "run"
    args = example_args("imagefolder-perceiver-io", run, tmp_path, f"--model.pretrained={pretrained_3}")
    with pytest.raises(SystemExit, match=r"has a 3-class head but the datamodule .* has 2 classes"):
        main(["fit", *args, "--model.model_kwargs=null"])
    assert not (run / "model").exists()


@head_contract
def test_reset_head_keeps_the_body_and_gives_a_new_head(pretrained_3, folder):
    source = perceiver.from_pretrained(pretrained_3)
    task = ClassificationTask(pretrained=str(pretrained_3), reset_head=True)
    task.adapt_to_datamodule(datamodule(folder))
    assert num_classes_of(task.model) == 2 and task.hparams.model_kwargs == {"num_classes": 2}
    head = {id(p) for p in task.model.get_classifier().parameters()}
    ours, theirs = task.model.state_dict(keep_vars=True), source.state_dict()
    assert set(ours) == set(theirs)
    kept = [k for k, v in ours.items() if id(v) not in head]
    assert kept and all(torch.equal(ours[k], theirs[k]) for k in kept)  # every other tensor is the pretrained one
    assert [tuple(v.shape)[0] for k, v in ours.items() if id(v) in head and v.ndim] == [2] * len(head)
    rebuilt = task.build_plain_model()  # what load_from_checkpoint / FSDP's model folder build from hparams
    assert num_classes_of(rebuilt) == 2


@head_contract
def test_explicit_count_with_reset_head_loads_with_ignore_mismatched_sizes(pretrained_3, folder):
    task = ClassificationTask(pretrained=str(pretrained_3), model_kwargs={"num_classes": 2}, reset_head=True)
    assert num_classes_of(task.model) == 2  # built so by from_pretrained(num_classes=2, ignore_mismatched_sizes=True)
    model = task.model
    task.adapt_to_datamodule(datamodule(folder))
    assert task.model is model  # nothing to change


@head_contract
def test_explicit_count_without_reset_head_names_the_option(pretrained_3):
    with pytest.raises(ValueError, match="reset_head true"):
        ClassificationTask(pretrained=str(pretrained_3), model_kwargs={"num_classes": 2})


@head_contract
def test_fine_tune_through_the_cli_and_predict(pretrained_3, tmp_path, capsys):
    run = tmp_path / "run"
    args = example_args("imagefolder-perceiver-io", run, tmp_path, f"--model.pretrained={pretrained_3}")
    main(["fit", *args, "--model.model_kwargs=null", "--model.reset_head=true"])
    info = json.loads((run / "model" / "task.json").read_text())
    assert info["num_classes"] == 2 and info["class_names"] == CLASSES
    assert num_classes_of(perceiver.from_pretrained(run / "model")) == 2
    capsys.readouterr()
    main(["predict", str(run / "model"), str(tmp_path / "images" / "dog" / "1.png"), "--json"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(t["label"] for t in row["top"]) == CLASSES


def test_matching_pretrained_head_is_kept(tmp_path, folder):
    torch.manual_seed(0)
    path = perceiver.create_model("vision-perceiver-fourier", **TINY_FOURIER, num_classes=2).save_pretrained(
        tmp_path / "pretrained-2"
    )
    task = ClassificationTask(pretrained=str(path), reset_head=True)
    model = task.model
    task.adapt_to_datamodule(datamodule(folder))
    assert task.model is model and num_classes_of(model) == 2


def test_predict_refuses_class_names_that_do_not_fit_the_head(pretrained_3, tmp_path, folder):
    """An old model folder whose head (3) and task.json (2 names) disagree: a clear error, not an IndexError."""
    (pretrained_3 / "task.json").write_text(
        json.dumps({"task": "classification", "image_shape": [16, 16, 3], "class_names": CLASSES})
    )
    with pytest.raises(
        SystemExit, match=r"error: the model predicts 3 classes but its task.json names 2 \(\['cat', 'dog'\]\)"
    ):
        main(["predict", str(pretrained_3), str(folder / "cat" / "0.png")])


@head_contract
def test_fine_tune_a_transformers_checkpoint_with_a_new_head(tmp_path, capsys):
    """The documented command for deepmind/vision-perceiver-fourier, on a tiny transformers checkpoint of the same
    architecture saved locally (7 labels): `reset_head` gives it a 2-class head, the rest is converted weights."""
    transformers = pytest.importorskip("transformers")
    config = transformers.PerceiverConfig(**HF_FOURIER)
    torch.manual_seed(0)
    transformers.PerceiverForImageClassificationFourier(config).save_pretrained(tmp_path / "hf-fourier")
    run = tmp_path / "run"
    args = example_args("imagefolder-perceiver-io", run, tmp_path, f"--model.pretrained={tmp_path / 'hf-fourier'}")
    with pytest.raises(SystemExit, match="has a 7-class head but the datamodule"):
        main(["fit", *args, "--model.model_kwargs=null"])
    main(["fit", *args, "--model.model_kwargs=null", "--model.reset_head=true", "--overwrite=true"])
    tuned = perceiver.from_pretrained(run / "model")
    assert num_classes_of(tuned) == 2 and type(tuned).input_layout == "channels_first"
    assert json.loads((run / "model" / "task.json").read_text())["num_classes"] == 2


@head_contract
def test_lora_fine_tune_through_the_cli(pretrained_3, tmp_path, capsys):
    """`--model.lora`: only the adapters and the new head train (the checkpoint keeps the pretrained weights), the
    model folder holds the merged weights, `RUN_DIR/adapter` the adapter, and both predict the same."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    args = example_args("imagefolder-perceiver-io", run, tmp_path, f"--model.pretrained={pretrained_3}")
    main(["fit", *args, "--model.model_kwargs=null", "--model.reset_head=true", "--model.lora={r: 4, alpha: 8}"])
    source = perceiver.from_pretrained(pretrained_3).state_dict()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    bases = {k.removeprefix("model.").replace(".base_layer", ""): v for k, v in ckpt.items() if ".base_layer." in k}
    assert len(bases) >= 6 and all(torch.equal(v, source[k]) for k, v in bases.items())  # frozen
    assert any(v.abs().sum() > 0 for k, v in ckpt.items() if "lora_B" in k)  # trained (B starts at zero)
    assert set(load_file(run / "model" / "model.safetensors")) == set(source)  # plain keys: merged
    adapter = run / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    sizes = [(folder / "model.safetensors" if folder.name == "model" else folder / "adapter_model.safetensors").stat()
             for folder in (run / "model", adapter)]  # fmt: skip
    assert sizes[1].st_size < sizes[0].st_size / 2 and sizes[1].st_mode == sizes[0].st_mode
    x = torch.rand(2, 3, 16, 16)
    merged, adapted = perceiver.from_pretrained(run / "model"), perceiver.from_pretrained(adapter)
    torch.testing.assert_close(adapted(x).logits, merged(x).logits, atol=1e-5, rtol=1e-4)
    assert num_classes_of(adapted) == 2
    capsys.readouterr()
    main(["predict", str(adapter), str(tmp_path / "images" / "dog" / "1.png"), "--json"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(t["label"] for t in row["top"]) == CLASSES


def test_lora_without_a_pretrained_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="lora fine-tunes a pretrained model .* set --model.pretrained"):
        ClassificationTask(model="vision-perceiver-fourier", model_kwargs=dict(TINY_FOURIER), lora={})
