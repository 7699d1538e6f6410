"""A model class's `from_pretrained` with the keywords transformers users pass: the Hub options (`revision`, `token`,
`cache_dir`, `local_files_only`, `force_download`), `subfolder`, `device` / `device_map`, `id2label` were taken for
config fields ("unknown keys ['revision'] for ImageClassifierConfig") when the folder was a local one of ours, though
`perceiver.from_pretrained` took them. A Hub id is read from a Hugging Face cache the test fills, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import flat, inputs, tiny

import perceiver
from perceiver.models import PerceiverForImageClassification


@pytest.fixture(scope="module")
def model():
    return tiny("vision-perceiver-learned")


@pytest.fixture
def folder(model, tmp_path) -> Path:
    return model.save_pretrained(tmp_path / "m")


def same(a, b) -> bool:
    x = inputs("vision-perceiver-learned")
    return torch.equal(flat(a(*x))[0], flat(b(*x))[0])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(revision="main"),
        dict(token="hf_x"),
        dict(local_files_only=True),
        dict(force_download=False),
        dict(cache_dir="unused-cache"),
        dict(revision="main", local_files_only=True, low_cpu_mem_usage=True, torch_dtype="auto"),
    ],
)
def test_hub_options_on_a_local_folder_are_accepted(model, folder, kwargs):
    loaded = PerceiverForImageClassification.from_pretrained(folder, **kwargs)
    assert type(loaded) is PerceiverForImageClassification and same(model, loaded)


@pytest.mark.parametrize("kwargs", [dict(device="cpu"), dict(device_map="cpu"), dict(device_map={"": "cpu"})])
def test_device_and_device_map_of_a_model_class(model, folder, kwargs):
    loaded = PerceiverForImageClassification.from_pretrained(folder, **kwargs)
    assert next(loaded.parameters()).device == torch.device("cpu") and same(model, loaded)


def test_device_and_map_location_naming_different_devices_is_an_error(folder):
    with pytest.raises(ValueError, match=r"pass map_location or device, not both \(got 'meta' and device='cpu'\)"):
        PerceiverForImageClassification.from_pretrained(folder, map_location="meta", device="cpu")
    meta = PerceiverForImageClassification.from_pretrained(folder, device="meta")
    assert next(meta.parameters()).device.type == "meta"


def test_id2label_of_a_model_class(folder):
    names = {i: f"class {i}" for i in range(5)}
    loaded = PerceiverForImageClassification.from_pretrained(folder, id2label=names, label2id={})
    assert loaded.id2label == names


def test_subfolder_of_a_folder_that_is_a_model_itself(model, tmp_path):
    """A repo whose top folder holds one model and `sub/` another: `subfolder="sub"` loads the inner one."""
    tiny("vision-perceiver-learned").save_pretrained(tmp_path / "repo")
    model.save_pretrained(tmp_path / "repo" / "sub")
    loaded = PerceiverForImageClassification.from_pretrained(tmp_path / "repo", subfolder="sub")
    assert same(model, loaded)


def test_config_overrides_still_apply_and_unknown_ones_name_the_fields(folder):
    loaded = PerceiverForImageClassification.from_pretrained(folder, attn_dropout=0.25, revision="main")
    assert loaded.config.encoder.attn_dropout == 0.25
    with pytest.raises(ValueError, match=r"unknown keys \['hidden_dropout_prob'\] for ImageClassifierConfig; "):
        PerceiverForImageClassification.from_pretrained(folder, hidden_dropout_prob=0.1)


@pytest.mark.parametrize(
    "key, close",
    [("attention_probs_dropout_prob", "'attn_dropout'"), ("dropout", "'ff_dropout' or 'attn_dropout'")],
)
def test_an_unknown_config_key_names_the_closest_fields_first(folder, key, close):
    """The error listed ~60 dotted fields; the likely one is now named before the list."""
    with pytest.raises(
        ValueError, match=rf"unknown keys \['{key}'\] for ImageClassifierConfig \(did you mean {close}\?\)"
    ):
        PerceiverForImageClassification.from_pretrained(folder, **{key: 0.1})


def test_config_of_transformers_from_pretrained_replaces_the_files(model, folder):
    """`from_pretrained(dir, config=config)` (transformers' keyword) was "unknown keys ['config']"."""
    import dataclasses

    config = dataclasses.replace(model.config, encoder=dataclasses.replace(model.config.encoder, attn_dropout=0.5))
    loaded = PerceiverForImageClassification.from_pretrained(folder, config=config, ff_dropout=0.25)
    assert loaded.config.encoder.attn_dropout == 0.5 and loaded.config.encoder.ff_dropout == 0.25
    assert same(model, loaded)
    with pytest.raises(ValueError, match=r"expected a ImageClassifierConfig or its fields as keywords, got dict"):
        PerceiverForImageClassification.from_pretrained(folder, config={"encoder": {}})


def test_a_hub_id_from_a_filled_cache_offline_with_shards(model, tmp_path):
    """What `from_pretrained("me/tiny", local_files_only=True)` reads: the snapshot of the Hugging Face cache that
    `refs/<revision>` points at (filled here by hand as huggingface_hub lays it out), a sharded checkpoint."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--me--tiny"
    model.save_pretrained(repo / "snapshots" / commit, max_shard_size="50KB")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    options = dict(cache_dir=tmp_path / "cache", local_files_only=True)
    for loaded in (
        PerceiverForImageClassification.from_pretrained("me/tiny", **options),
        perceiver.from_pretrained("me/tiny", revision=commit, **options),
    ):
        assert type(loaded) is PerceiverForImageClassification and same(model, loaded)
    with pytest.raises(OSError, match=r"could not fetch 'me/other' from the Hugging Face Hub"):
        PerceiverForImageClassification.from_pretrained("me/other", **options)


def test_a_folder_of_another_model_type_names_the_class_that_loads_it(tmp_path):
    folder = tiny("perceiver").save_pretrained(tmp_path / "classic")
    message = (
        r"holds a 'perceiver' model, expected 'perceiver-image-classifier' \(PerceiverForImageClassification\); it is "
        r"a Perceiver: load it with perceiver.from_pretrained"
    )
    with pytest.raises(ValueError, match=message):
        PerceiverForImageClassification.from_pretrained(folder)
