"""Loading errors name what was expected and what came (and the file or folder): devices torch does not know or this
machine lacks, corrupt LoRA adapter folders, transformers folders whose weights are not their config's, a checkpoint
of another class than the preset asked for, saving onto a file, bad LoRA hyper-parameters, and the keyword
constructors of Perceiver AR and the resampler. Each failure leaves nothing written and no model half-changed."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from tiny_models import TINY, inputs, tiny

import perceiver
from perceiver.models.ar import PerceiverAR, PerceiverARConfig
from perceiver.models.resampler import PerceiverResampler, PerceiverResamplerConfig

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny text classifier folder of ours."""
    return tiny("text-classifier").save_pretrained(tmp_path_factory.mktemp("models") / "text")


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, text_dir: Path) -> Path:
    """A LoRA adapter folder (`save_adapter`) naming `text_dir` as its base model."""
    lora = pytest.importorskip("perceiver.lora")
    pytest.importorskip("peft")
    model = lora.add_lora(perceiver.from_pretrained(text_dir), r=2)
    return lora.save_adapter(model, tmp_path_factory.mktemp("adapters") / "adapter", base_model=text_dir)


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    target.mkdir()
    for path in folder.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


# 1. devices: parsed first, then checked for availability, before any file is read


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu0"])
def test_invalid_device_names_the_device_not_the_file(text_dir, device):
    with pytest.raises(ValueError, match=f"invalid device '{device}'") as info:
        perceiver.from_pretrained(text_dir, device=device)
    assert "safetensors" not in str(info.value)
    with pytest.raises(ValueError, match=f"invalid map_location '{device}'"):
        type(tiny("text-classifier")).from_pretrained(text_dir, map_location=device)


@NO_CUDA
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_unavailable_cuda_is_named(text_dir, device):
    expected = re.escape(f" '{device}' is not available (torch.cuda.is_available() is False)")
    with pytest.raises(RuntimeError, match=f"^device{expected}"):
        perceiver.from_pretrained(text_dir, device=device)
    with pytest.raises(RuntimeError, match=f"^map_location{expected}"):
        type(tiny("text-classifier")).from_pretrained(text_dir, map_location=device)


@NO_CUDA
def test_unavailable_device_fails_before_reading_anything(tmp_path):
    # the folder does not exist: the device is checked first, so the error is about the device
    with pytest.raises(RuntimeError, match="'cuda' is not available"):
        perceiver.from_pretrained(tmp_path / "missing", device="cuda")


@NO_CUDA
def test_unavailable_device_for_adapters(adapter_dir):
    with pytest.raises(RuntimeError, match="'cuda' is not available"):
        perceiver.from_pretrained(adapter_dir, device="cuda")
    with pytest.raises(RuntimeError, match="map_location 'cuda' is not available"):
        perceiver.lora.load_adapter(tiny("text-classifier"), adapter_dir, map_location="cuda")


def test_cpu_devices_still_load(text_dir):
    for device in ("cpu", torch.device("cpu"), "cpu:0"):
        model = perceiver.from_pretrained(text_dir, device=device)
        assert next(model.parameters()).device.type == "cpu"


# 2. corrupt LoRA adapter folders: ValueErrors naming the file, the model untouched


def _drop_key(path: Path, key: str) -> None:
    config = json.loads(path.read_text())
    del config[key]
    path.write_text(json.dumps(config))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:5])


@pytest.mark.parametrize(
    ("name", "corrupt", "expected"),
    [
        ("adapter_model.safetensors", _truncate, "expected a safetensors file, could not read it"),
        ("adapter_model.safetensors", lambda p: p.write_bytes(b""), "expected a safetensors file"),
        ("adapter_config.json", lambda p: p.write_text("{bad"), "expected a JSON object, got invalid JSON"),
        ("adapter_config.json", lambda p: p.write_text("[1, 2]"), "expected a JSON object, got list"),
        ("adapter_config.json", lambda p: _drop_key(p, "target_modules"), "expected target_modules"),
        ("perceiver_adapter.json", lambda p: p.write_text("{"), "expected a JSON object, got invalid JSON"),
    ],
)
def test_corrupt_adapter_folder_names_the_file(adapter_dir, tmp_path, name, corrupt, expected):
    folder = _copy(adapter_dir, tmp_path)
    corrupt(folder / name)
    with pytest.raises(ValueError, match=re.escape(str(folder / name)) + ".*" + re.escape(expected)):
        perceiver.from_pretrained(folder)
    if name == "perceiver_adapter.json":  # ours, read by from_pretrained only
        return
    model = tiny("text-classifier")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=re.escape(str(folder / name)) + ".*" + re.escape(expected)):
        perceiver.lora.load_adapter(model, folder)
    assert not perceiver.lora.has_lora(model)  # nothing half-applied
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_intact_adapter_folder_still_loads(adapter_dir):
    model = perceiver.from_pretrained(adapter_dir)
    assert perceiver.lora.has_lora(model)
    assert model(*inputs("text-classifier")).logits.shape == (2, 3)


# 3. a transformers folder whose weights are not its config's


def test_transformers_config_with_other_weights(text_dir, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((text_dir / "model.safetensors").read_bytes())
    config = {"architectures": ["PerceiverForSequenceClassification"], "d_model": 16, "num_latents": 6}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        perceiver.from_pretrained(folder)
    message = str(info.value)
    assert str(folder) in message and "PerceiverForSequenceClassification" in message
    assert "missing ['perceiver.embeddings.latents'" in message
    assert "unexpected: ['decoder." in message  # our keys, a few of them
    assert "and 53 more" in message or "more" in message


def test_transformers_folder_missing_one_weight(tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    config = transformers.PerceiverConfig(
        num_latents=4, d_latents=16, d_model=16, num_self_attends_per_block=1, num_blocks=1, vocab_size=262,
        max_position_embeddings=16, num_labels=3, num_cross_attention_heads=1, num_self_attention_heads=2,
    )  # fmt: skip
    folder = tmp_path / "hf"
    transformers.PerceiverForSequenceClassification(config).save_pretrained(folder)
    assert perceiver.from_pretrained(folder).num_classes == 3  # the intact folder converts
    weights = load_file(folder / "model.safetensors")
    key = "perceiver.encoder.self_attends.0.attention.self.query.weight"
    del weights[key]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder))}: .*PerceiverForSequenceClassification.*{key}"):
        perceiver.from_pretrained(folder)


def test_corrupt_transformers_weights_name_the_file(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["PerceiverForMaskedLM"]}))
    (folder / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match=re.escape(str(folder / "model.safetensors")) + ": expected a safetensors"):
        perceiver.from_pretrained(folder)


# 4. create_model with a checkpoint of another class


def test_create_model_checkpoint_of_another_class(text_dir):
    with pytest.raises(ValueError) as info:
        perceiver.create_model("vision-perceiver-learned", checkpoint_path=text_dir)
    message = str(info.value)
    assert f"{text_dir} holds a PerceiverForSequenceClassification model" in message
    assert "not a 'vision-perceiver-learned' one (PerceiverForImageClassification)" in message
    assert "text-classifier" in message  # the preset that fits


def test_create_model_checkpoint_of_its_class(text_dir):
    model = perceiver.create_model("text-classifier", checkpoint_path=text_dir)
    assert type(model).__name__ == "PerceiverForSequenceClassification"


# 5. save_pretrained onto a file


def test_save_pretrained_onto_a_file(tmp_path):
    model = tiny("text-classifier")
    target = tmp_path / "model"
    target.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=f"expected a directory to save into at {re.escape(str(target))}"):
        model.save_pretrained(target)
    assert target.read_text() == "not a folder"
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary folder left


def test_save_pretrained_below_a_file(tmp_path):
    model = tiny("text-classifier")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match=re.escape(f"{tmp_path / 'afile'} (a parent of")):
        model.save_pretrained(tmp_path / "afile" / "sub")
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_save_adapter_onto_a_file(tmp_path):
    lora = pytest.importorskip("perceiver.lora")
    pytest.importorskip("peft")
    model = lora.add_lora(tiny("text-classifier"), r=2)
    (tmp_path / "adapter").write_text("x")
    with pytest.raises(NotADirectoryError, match="expected a directory to save into"):
        lora.save_adapter(model, tmp_path / "adapter")
    assert sorted(os.listdir(tmp_path)) == ["adapter"]


# 6. LoRA hyper-parameters


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(dropout=-0.5), r"dropout must be a probability in \[0, 1\), got -0.5"),
        (dict(dropout=1.0), r"dropout must be a probability in \[0, 1\), got 1.0"),
        (dict(dropout="0.1"), r"dropout must be a probability in \[0, 1\), got '0.1'"),
        (dict(alpha="16"), r"alpha must be a positive number \(None: r\), got '16'"),
        (dict(alpha=0), r"alpha must be a positive number \(None: r\), got 0"),
        (dict(alpha=-8.0), r"alpha must be a positive number \(None: r\), got -8.0"),
        (dict(alpha=float("nan")), r"alpha must be a positive number \(None: r\), got nan"),
        (dict(r=0), r"rank r must be an integer >= 1, got 0"),
    ],
)
def test_add_lora_rejects_bad_hyperparameters(kwargs, expected):
    lora = pytest.importorskip("perceiver.lora")
    pytest.importorskip("peft")
    model = tiny("text-classifier")
    with pytest.raises(ValueError, match=expected):
        lora.add_lora(model, **kwargs)
    assert not lora.has_lora(model)


def test_add_lora_accepts_valid_hyperparameters():
    lora = pytest.importorskip("perceiver.lora")
    pytest.importorskip("peft")
    model = lora.add_lora(tiny("text-classifier"), r=2, alpha=4, dropout=0.0)
    assert lora.has_lora(model)


# 7. keyword constructors


def test_perceiver_ar_takes_config_fields_as_keywords():
    fields = dict(max_seq_len=16, num_latents=4, d_model=16, num_heads=2, num_layers=1)
    model = PerceiverAR(**fields)
    assert model.config == PerceiverARConfig(**fields)
    same = PerceiverAR(PerceiverARConfig(**fields))
    same.load_state_dict(model.state_dict())
    x = torch.randint(0, 262, (2, 8))
    torch.testing.assert_close(model.eval()(x).logits, same.eval()(x).logits, rtol=0, atol=0)


def test_resampler_takes_config_fields_as_keywords():
    model = PerceiverResampler(dim=16, depth=1, num_latents=4, num_heads=2, head_dim=8)
    assert model.config == PerceiverResamplerConfig(dim=16, depth=1, num_latents=4, num_heads=2, head_dim=8)
    assert model(torch.randn(2, 5, 16)).last_hidden_state.shape == (2, 4, 16)


@pytest.mark.parametrize(("cls", "config_cls"), [(PerceiverAR, PerceiverARConfig), (PerceiverResampler, None)])
def test_keyword_constructors_reject_unknown_and_mixed(cls, config_cls):
    config_cls = config_cls or PerceiverResamplerConfig
    name = config_cls.__name__
    with pytest.raises(ValueError, match=rf"unknown keys for {name}: \['foo'\]; expected a subset of \["):
        cls(foo=1)
    with pytest.raises(ValueError, match=f"pass a {name} or its fields as keywords, not both"):
        cls(config_cls(), num_latents=4)
    with pytest.raises(ValueError, match=rf"expected a {name} or its fields as keywords, got dict \(for a dict d"):
        cls({"num_latents": 4})


def test_keyword_constructor_values_are_checked():
    with pytest.raises(ValueError, match="num_latents must be <= max_seq_len=16, got 32"):
        PerceiverAR(max_seq_len=16, num_latents=32, d_model=16, num_heads=2, num_layers=1)


def test_keyword_models_round_trip(tmp_path):
    model = PerceiverAR(**TINY["perceiver-ar"][0])
    loaded = perceiver.from_pretrained(model.save_pretrained(tmp_path / "ar"))
    assert type(loaded) is PerceiverAR and loaded.config == model.config


def test_num_classes_and_its_alias_together():
    with pytest.raises(ValueError, match=r"pass num_classes or its alias num_labels, not both \(got num_classes=3, "):
        perceiver.create_model("text-classifier", num_classes=3, num_labels=4)


def test_a_checkpoint_path_that_is_not_a_folder_never_goes_to_the_network(tmp_path, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("checkpoint_path was sent to the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    with pytest.raises(FileNotFoundError, match=r"checkpoint_path 'local/copy' is not a folder"):
        perceiver.create_model("vision-perceiver-fourier", pretrained=True, checkpoint_path="local/copy")
