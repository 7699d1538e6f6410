"""Nested configs: `perceiver.hub.apply_overrides` (flat, dotted and part keys), `config_from_dict` on nested dicts,
and the config.json format versions."""

from __future__ import annotations

import json

import pytest

import perceiver
from perceiver.hub import FORMAT_VERSION, apply_overrides, config_from_dict
from perceiver.models.vision import ImageClassifierConfig


def test_flat_keys_reach_every_part_that_has_them():
    config = apply_overrides(ImageClassifierConfig(), {"attn_dropout": 0.1, "num_latents": 32, "num_bands": 4})
    assert config.encoder.attn_dropout == config.decoder.attn_dropout == 0.1
    assert config.encoder.num_latents == 32 and config.adapter.num_bands == 4


def test_dotted_keys_reach_one_part_and_the_rest_is_untouched():
    base = ImageClassifierConfig()
    config = apply_overrides(base, {"decoder.attn_dropout": 0.2})
    assert config.decoder.attn_dropout == 0.2 and config.encoder.attn_dropout == 0.0
    assert base.decoder.attn_dropout == 0.0  # a copy: the preset's config is not changed


def test_num_labels_is_an_alias_and_a_part_dict_merges():
    config = apply_overrides(ImageClassifierConfig(), {"num_labels": 3, "encoder": {"num_blocks": 2}})
    assert config.num_classes == 3 and config.encoder.num_blocks == 2 and config.encoder.num_latents == 512


def test_unknown_keys_are_errors_that_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown keys \['num_latent'\].*encoder\.num_latents"):
        apply_overrides(ImageClassifierConfig(), {"num_latent": 3})
    with pytest.raises(ValueError, match="unknown key 'encoder.bogus'"):
        apply_overrides(ImageClassifierConfig(), {"encoder.bogus": 3})


def test_part_values_are_checked_together():
    """A part's `__post_init__` sees all its new values at once (one replace per part)."""
    config = apply_overrides(perceiver.models.ar.PerceiverARConfig(), {"d_model": 16, "num_heads": 2})
    assert (config.d_model, config.num_heads) == (16, 2)


def test_nested_dicts_build_nested_configs_and_name_the_bad_key(tmp_path):
    data = json.loads(json.dumps(perceiver.hub.config_to_dict(ImageClassifierConfig())))
    assert config_from_dict(ImageClassifierConfig, data, source="f") == ImageClassifierConfig()
    data["encoder"]["num_latents"] = "many"
    with pytest.raises(ValueError, match="f: key 'encoder.num_latents'.*expected int"):
        config_from_dict(ImageClassifierConfig, data, source="f")


def test_saved_config_is_nested_with_a_format_version(tmp_path):
    model = perceiver.create_model(
        "vision-perceiver-fourier", num_latents=4, latent_dim=8, num_blocks=1, num_self_attends_per_block=1,
        latent_heads=2, image_size=8, num_bands=2, max_resolution=8, num_classes=3,
    )  # fmt: skip
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["format_version"] == FORMAT_VERSION == 2
    assert saved["encoder"]["num_latents"] == 4 and saved["adapter"]["prep_type"] == "pixels"
    assert saved["num_classes"] == 3
    saved["format_version"] = 7
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="format_version 7"):
        perceiver.from_pretrained(tmp_path)
