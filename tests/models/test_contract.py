"""The model contract of every registry preset (docs/design.md): forward_features / forward_head / forward, one output
type, num_classes / get_classifier / reset_classifier / num_parameters, resize on load, pretrained presets, and
config.json files of the previous release (format 1, `tests/fixtures/format1`) still loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import TINY, inputs, logits, tiny

import perceiver
from perceiver.core.model import Features, ModelOutput, PerceiverModel
from perceiver.models.registry import list_pretrained, model_type_class

FORMAT1 = json.loads((Path(__file__).parent.parent / "fixtures" / "format1" / "tiny_models.json").read_text())


def _close(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    else:
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def has_class_head(model) -> bool:
    try:
        model.get_classifier()
    except NotImplementedError:
        return False
    try:
        model.reset_classifier(model.num_classes)
    except NotImplementedError:
        return False
    return True


def test_every_preset_is_covered():
    assert set(TINY) == set(perceiver.list_models())


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_is_forward_head_of_forward_features(name):
    torch.manual_seed(0)
    model = tiny(name)
    assert isinstance(model, PerceiverModel)
    args = inputs(name, 2)
    with torch.no_grad():
        out = model(*args)
        features = model.forward_features(*args)
        head = model.forward_head(features)
    assert isinstance(features, Features) and features.latents.ndim >= 3
    assert isinstance(head, ModelOutput)
    _close(logits(head), logits(out))
    assert model.num_parameters() == sum(p.numel() for p in model.parameters()) > 0
    assert model.num_parameters(only_trainable=True) == model.num_parameters()
    assert isinstance(model.num_classes, int)


@pytest.mark.parametrize("name", sorted(set(TINY) - {"perceiver-resampler"}))
def test_every_model_with_an_encoder_returns_its_hidden_states(name):
    """`return_hidden_states=True` (transformers' `output_hidden_states`) through each model's own forward: the latents
    after every step, ending with `last_hidden_state`, and the same task output as without."""
    torch.manual_seed(0)
    model = tiny(name)
    args = inputs(name, 2)
    with torch.no_grad():
        out = model(*args, return_hidden_states=True)
        plain = model(*args)
    states = out.hidden_states
    assert len(states) >= 2 and states[-1] is out.last_hidden_state
    assert all(s.shape == states[-1].shape for s in states)
    _close(logits(out), logits(plain))


@pytest.mark.parametrize("name", sorted(TINY))
def test_reset_classifier_changes_the_output_size_or_says_why_not(name):
    torch.manual_seed(0)
    model = tiny(name)
    args = inputs(name, 2)
    if not has_class_head(model):
        with pytest.raises(NotImplementedError, match=type(model).__name__ + "|vocab|head"):
            model.reset_classifier(3)
        return
    before = model.num_classes
    model.reset_classifier(before + 2)
    assert model.num_classes == before + 2 == model.get_classifier().out_features
    with torch.no_grad():
        assert logits(model(*args)).shape[-1] == before + 2
    model.reset_classifier(0)  # timm: no classifier, the logits are the pre-logits features
    assert isinstance(model.get_classifier(), torch.nn.Identity) and model.num_classes == 0
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
        model.reset_classifier(-1)


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_headless_model_refuses_labels_and_regrows_its_head_in_its_dtype(name, tmp_path):
    """After `reset_classifier(0)` the logits are features: labels are a ValueError (they were a silent loss over
    the features, or a shape error from torch); a new head takes the model's dtype (it was float32 in a bf16 model,
    which then saved a file of two dtypes that `dtype="auto"` refused)."""
    model = tiny(name)
    if not has_class_head(model):
        pytest.skip(f"{name} has no class head")
    model.to(torch.bfloat16).reset_classifier(0)
    args = [a.to(torch.bfloat16) if a.is_floating_point() else a for a in inputs(name, 2)]
    features = logits(model(*args))
    with pytest.raises(ValueError, match="expected labels only for a model with a class head"):
        model(*args, labels=torch.zeros(features.shape[:-1], dtype=torch.long))
    model.reset_classifier(3)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    loaded = perceiver.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert loaded.num_classes == 3 and {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    if name != "perceiver":
        return
    classic = perceiver.create_model("perceiver", **TINY["perceiver"][0], final_classifier_head=False)
    with pytest.raises(ValueError, match="expected labels only for a model with a class head"):
        classic(*inputs("perceiver", 2), labels=torch.tensor([0, 1]))


@pytest.mark.parametrize("name", sorted(TINY))
def test_resize_on_load(name, tmp_path, caplog):
    torch.manual_seed(0)
    model = tiny(name)
    if not has_class_head(model):
        pytest.skip(f"{name} has no class head")
    model.save_pretrained(tmp_path)
    k = model.num_classes + 3
    with pytest.raises(ValueError, match="ignore_mismatched_sizes=True"):
        perceiver.from_pretrained(tmp_path, num_classes=k)
    with caplog.at_level("WARNING", logger="perceiver"):
        loaded = perceiver.from_pretrained(tmp_path, num_classes=k, ignore_mismatched_sizes=True)
    assert loaded.num_classes == k and loaded.reinitialized_keys
    assert all(key in caplog.text for key in loaded.reinitialized_keys)
    ours, theirs = loaded.state_dict(), model.state_dict()
    for key in ours:  # everything but the re-initialised head is the checkpoint's
        if key not in loaded.reinitialized_keys:
            torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0)
    with torch.no_grad():
        assert logits(loaded(*inputs(name, 2))).shape[-1] == k
    same = perceiver.from_pretrained(tmp_path, num_classes=model.num_classes)  # same size: nothing to do
    assert not getattr(same, "reinitialized_keys", [])


@pytest.mark.parametrize("name", sorted(FORMAT1))
def test_format1_folders_of_the_previous_release_still_load(name, tmp_path):
    """config.json as the previous release wrote it (flat task configs, no format_version) with weights of the
    state-dict layout it had: the model loads, has the same tensors, and saves in the current format."""
    entry = FORMAT1[name]
    config = entry["config"]
    assert "format_version" not in config
    cls = model_type_class(config["model_type"])
    data = {k: v for k, v in config.items() if k != "model_type"}
    model = cls.from_config(cls.config_from_file(dict(data), "fixture", {}))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == entry["state_dict_shapes"]
    torch.manual_seed(1)
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    weights = {k: torch.randn(v.shape) if k in params else v for k, v in model.state_dict().items()}
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in weights.items() if not _tied_copy(model, k)}, tmp_path / "model.safetensors"
    )
    loaded = perceiver.from_pretrained(tmp_path, check_finite=True)
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, weights[key] if not _tied_copy(model, key) else value, atol=0, rtol=0)
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["format_version"] == 2
    again = perceiver.from_pretrained(tmp_path / "again")
    args = inputs(name, 2)
    with torch.no_grad():
        _close(logits(again(*args)), logits(loaded(*args)))


def _tied_copy(model, key: str) -> bool:
    """Whether `key` shares its storage with an earlier tensor of the state dict (tied weights)."""
    sd = model.state_dict()
    ptr = sd[key].data_ptr()
    return any(sd[k].data_ptr() == ptr for k in list(sd)[: list(sd).index(key)])


def test_pretrained_presets_know_their_checkpoints():
    hub = list_pretrained()
    published = ("vision-perceiver-learned", "vision-perceiver-fourier", "vision-perceiver-conv")
    published += ("language-perceiver", "optical-flow-perceiver", "multimodal-perceiver")
    assert hub == {name: f"deepmind/{name}" for name in published}
    assert perceiver.list_models(pretrained=True) == sorted(published)  # timm's filter
    assert perceiver.list_models("vision*", pretrained=True) == sorted(n for n in published if n.startswith("vision"))


def test_pretrained_offline_error_names_the_hub_id(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OSError) as info:
        perceiver.create_model("vision-perceiver-fourier", pretrained=True)
    message = str(info.value)
    assert "deepmind/vision-perceiver-fourier" in message and "checkpoint_path=" in message
    with pytest.raises(ValueError, match="has no published checkpoint"):
        perceiver.create_model("point-cloud-classifier", pretrained=True)


def test_pretrained_from_a_local_copy_of_the_checkpoint(tmp_path):
    """`create_model(name, pretrained=True, checkpoint_path=DIR)` with a transformers checkpoint folder (what the Hub
    id holds, at a tiny size): the converter runs and a new head can be asked for."""
    transformers = pytest.importorskip("transformers")
    config = transformers.PerceiverConfig(
        num_latents=8, d_latents=32, num_blocks=1, num_self_attends_per_block=1, num_self_attention_heads=2,
        num_cross_attention_heads=1, image_size=16, num_labels=4,
    )  # fmt: skip
    hf = transformers.PerceiverForImageClassificationFourier(config).eval()
    hf.save_pretrained(tmp_path)
    model = perceiver.create_model("vision-perceiver-fourier", pretrained=True, checkpoint_path=str(tmp_path))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (model(x).logits - hf(inputs=x).logits).abs().max() <= 1e-4
    tuned = perceiver.create_model(
        "vision-perceiver-fourier", pretrained=True, checkpoint_path=str(tmp_path), num_classes=7,
        ignore_mismatched_sizes=True,
    )  # fmt: skip
    assert tuned.num_classes == 7 and tuned.reinitialized_keys == [
        "decoder.final_layer.bias",
        "decoder.final_layer.weight",
    ]


def test_one_output_type():
    from perceiver.core.io import PerceiverIOOutput
    from perceiver.models.ar import PerceiverAROutput
    from perceiver.models.resampler import PerceiverResamplerOutput

    assert PerceiverIOOutput is PerceiverAROutput is PerceiverResamplerOutput is ModelOutput


def test_models_from_one_preset_share_no_config():
    """Changing one model's config (a head reset, a part's switch) leaves the preset and other models alone."""
    with torch.device("meta"):  # published sizes, no allocation; overrides that touch no part config
        a, b = (perceiver.create_model("vision-perceiver-fourier", num_classes=3) for _ in range(2))
        a.reset_classifier(2)
        a.config.encoder.attn_dropout = 0.5
        a.config.adapter.num_bands = 1
        c = perceiver.create_model("vision-perceiver-fourier")
    assert b.num_classes == 3 and c.num_classes == 1000
    assert b.config.encoder.attn_dropout == c.config.encoder.attn_dropout == 0.0
    assert b.config.adapter.num_bands == c.config.adapter.num_bands == 64
