"""`perceiver.list_models` / `create_model` as a timm user calls them: several patterns and `exclude_filters`,
`pretrained=True, num_classes=0` for a feature extractor, a checkpoint folder of the wrong preset."""

from __future__ import annotations

import pytest
import torch

import perceiver

TINY = dict(num_latents=6, latent_dim=16, num_blocks=1, num_self_attends_per_block=1, latent_heads=2, num_classes=5)
FOURIER = dict(TINY, image_size=8, max_resolution=(8, 8), num_bands=4)


def test_list_models_takes_several_patterns_and_exclude_filters():
    vision = ["vision-perceiver-conv", "vision-perceiver-fourier", "vision-perceiver-learned"]
    assert perceiver.list_models(["vision*", "perceiver"]) == ["perceiver", *vision]
    assert perceiver.list_models("vision*", exclude_filters="*-conv") == vision[1:]
    assert perceiver.list_models("*", pretrained=True, exclude_filters=["vision*", "*modal*"]) == [
        "language-perceiver",
        "optical-flow-perceiver",
    ]
    assert perceiver.list_models("") == perceiver.list_models()  # timm's default filter: every model
    with pytest.raises(TypeError, match="pattern: expected a pattern .* got 3"):
        perceiver.list_models(3)  # type: ignore[arg-type]


@pytest.fixture
def fourier_folder(tmp_path):
    torch.manual_seed(0)
    model = perceiver.create_model("vision-perceiver-fourier", **FOURIER).eval()
    model.save_pretrained(tmp_path)
    return model, str(tmp_path)


def test_pretrained_feature_extractor_needs_no_mismatch_flag(fourier_folder):
    saved, folder = fourier_folder
    model = perceiver.create_model("vision-perceiver-fourier", pretrained=True, checkpoint_path=folder, num_classes=0)
    x = torch.randn(2, 3, 8, 8)
    assert model.num_classes == 0
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, saved.forward_head(saved.forward_features(x), pre_logits=True))
    # another class count still asks for the flag (its head would be drawn at random)
    with pytest.raises(ValueError, match="ignore_mismatched_sizes=True"):
        perceiver.create_model("vision-perceiver-fourier", pretrained=True, checkpoint_path=folder, num_classes=3)


def test_checkpoint_of_another_image_preset_is_refused(fourier_folder):
    _, folder = fourier_folder
    with pytest.raises(ValueError, match=r"holds a vision-perceiver-fourier model .*not a 'vision-perceiver-learned'"):
        perceiver.create_model("vision-perceiver-learned", pretrained=True, checkpoint_path=folder)
    model = perceiver.create_model("vision-perceiver-fourier", pretrained=True, checkpoint_path=folder)
    assert model.config.adapter.prep_type == "pixels"


def test_unknown_name_that_is_a_hub_id_points_to_from_pretrained():
    with pytest.raises(ValueError, match=r"unknown model .*perceiver.from_pretrained\('timm/vit_tiny'\)"):
        perceiver.create_model("hf-hub:timm/vit_tiny")


def test_timm_keywords_in_chans_and_img_size_name_our_fields(fourier_folder):
    _, folder = fourier_folder
    model = perceiver.create_model("vision-perceiver-learned", **TINY, in_chans=1, img_size=8)
    assert model.config.adapter.in_channels == 1 and model.config.adapter.image_size == (8, 8)
    assert model(torch.randn(2, 1, 8, 8)).logits.shape == (2, 5)
    again = perceiver.create_model("vision-perceiver-fourier", pretrained=True, checkpoint_path=folder, img_size=(8, 8))
    assert again.config.adapter.image_size == (8, 8)
    square = perceiver.create_model("vision-perceiver-fourier", pretrained=True, checkpoint_path=folder, img_size=8)
    assert square.config.adapter.image_size == (8, 8)  # timm's int img_size (before: "expected tuple[int, int]")
    assert perceiver.from_pretrained(folder, image_size=8).config.adapter.image_size == (8, 8)
    with pytest.raises(ValueError, match="pass image_size or its alias img_size, not both"):
        perceiver.create_model("vision-perceiver-learned", **TINY, image_size=8, img_size=8)
