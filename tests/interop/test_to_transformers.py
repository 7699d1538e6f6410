"""Export to transformers (`perceiver.interop.to_transformers`): the exported head gives our outputs, loads back into
ours with the same tensors, and models transformers cannot express are refused with the reason."""

from __future__ import annotations

import pytest
import torch

import perceiver
from perceiver.interop.to_transformers import to_transformers, transformers_config

transformers = pytest.importorskip("transformers")

TEXT = dict(num_latents=6, latent_dim=32, d_model=16, max_seq_len=20, num_self_attends_per_block=2, latent_heads=2)
WIDTHS = dict(cross_qk_channels=16, cross_v_channels=32, latent_qk_channels=16, latent_v_channels=32)
IMAGE = dict(num_latents=6, latent_dim=32, num_self_attends_per_block=2, latent_heads=4, num_classes=5)
CASES = {
    "language-perceiver": dict(TEXT, **WIDTHS, cross_heads=2),
    "text-classifier": dict(TEXT, **WIDTHS, num_classes=3, num_blocks=2),
    "vision-perceiver-learned": dict(IMAGE, image_size=[16, 16]),
    "vision-perceiver-fourier": dict(IMAGE, image_size=[16, 16], use_query_residual=False),
    "vision-perceiver-conv": dict(IMAGE, image_size=[32, 32], same_padding=False),
    "optical-flow-perceiver": dict(num_latents=6, latent_dim=32, train_size=[12, 16], num_self_attends_per_block=1),
}


def perturbed(name: str, **overrides) -> torch.nn.Module:
    """A small preset whose weights are O(1) random (the 0.02 init would make any comparison easy)."""
    torch.manual_seed(0)
    model = perceiver.create_model(name, **{**CASES[name], **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def inputs(name: str, model) -> dict:
    if name == "optical-flow-perceiver":  # patches of a pair of frames
        return {"inputs": torch.randn(2, 2, 27, 12, 16, generator=torch.Generator().manual_seed(1))}
    if name in ("language-perceiver", "text-classifier"):
        ids = torch.randint(6, 262, (3, 20), generator=torch.Generator().manual_seed(1))
        mask = torch.ones(3, 20, dtype=torch.long)
        mask[1, 12:] = 0
        return {"inputs": ids, "attention_mask": mask}
    h, w = model.config.adapter.image_size
    return {"inputs": torch.randn(3, 3, h, w, generator=torch.Generator().manual_seed(1))}


@pytest.mark.parametrize("name", list(CASES))
def test_exported_head_gives_our_outputs_and_loads_back(name, tmp_path):
    model = perturbed(name)
    hf = to_transformers(model)
    arch, _ = transformers_config(model)
    assert type(hf).__name__ == arch and not hf.training
    x = inputs(name, model)
    with torch.no_grad():
        ours, theirs = model(**x).logits, hf(**x).logits
    if name == "optical-flow-perceiver":  # ours in pixels, transformers' in its units
        ours = ours / model.config.output.flow_scale_factor
    assert ours.shape == theirs.shape and theirs.std() > 0.1
    torch.testing.assert_close(theirs, ours, atol=1e-4 * max(1.0, ours.abs().max().item()), rtol=1e-4)
    hf.save_pretrained(tmp_path / "hf")  # transformers' own folder: config.json + model.safetensors
    assert type(transformers.AutoModel.from_pretrained(tmp_path / "hf")).__name__ == "PerceiverModel"
    back = perceiver.from_pretrained(tmp_path / "hf", **({"same_padding": False} if "conv" in name else {}))
    assert type(back) is type(model)
    expected = model.state_dict()
    for key, value in back.state_dict().items():
        torch.testing.assert_close(value, expected[key], atol=0, rtol=0, msg=key)


def test_the_callers_model_keeps_its_dtype_and_mode():
    model = perturbed("text-classifier").to(torch.bfloat16).train()
    hf = to_transformers(model, atol=0.1)  # compared in fp32 on a copy: bf16 weights, fp32 arithmetic
    assert model.training and next(model.parameters()).dtype == torch.bfloat16
    assert next(hf.parameters()).dtype == torch.float32


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [
        ("vision-perceiver-conv", {"same_padding": True}, "transformers' conv stem pads .* same_padding=False"),
        ("text-classifier", {"latent_v_channels": 16}, "needs v_channels = d_latents; .* v 16 and latents 32 wide"),
        ("text-classifier", {"latent_qk_channels": 8}, "one qk_channels / v_channels .* latent self-attention qk 8"),
        ("text-classifier", {"num_cross_attends": 2}, "one cross-attention, .* num_cross_attends=2"),
        ("vision-perceiver-fourier", {"image_size": [16, 12]}, "square images, this model takes 16x12"),
        ("optical-flow-perceiver", {"projection_hidden": 16}, r"none of our flow options; .*'projection_hidden': 16"),
        # transformers hard-codes its MLM decoder (8 heads, 256 query / key channels): named before any weight moves
        ("language-perceiver", {"decoder_heads": 2}, r"hard-codes its decoder: .* has \{'num_heads': 2\}"),
        ("language-perceiver", {"decoder_qk_channels": 64}, r"decoder has \{'qk_channels': 64\}"),
        # the image heads hard-code their preprocessing (was "has no tensor ... of shape", naming no setting)
        ("vision-perceiver-fourier", {"num_bands": 8}, r"Fourier hard-codes its input .* has \{'num_bands': 8\}"),
        ("vision-perceiver-learned", {"trainable_pos_channels": 64}, r"'trainable_pos_channels': 64\}"),
        ("vision-perceiver-conv", {"same_padding": False, "out_channels": 32}, r"has \{'out_channels': 32\}"),
    ],
)
def test_models_transformers_cannot_express_are_refused(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        to_transformers(perturbed(name, **overrides))


def test_other_models_are_refused_by_name():
    with pytest.raises(ValueError, match="got a Perceiver$"):
        to_transformers(perceiver.Perceiver(input_channels=3, depth=1, num_latents=4, latent_dim=8, num_classes=2))
    with pytest.raises(ValueError, match="got a PerceiverForMultimodalAutoencoding"):
        to_transformers(perceiver.create_model("multimodal-perceiver", num_latents=4, latent_dim=16))


def test_export_command_writes_a_transformers_folder(tmp_path, capsys):
    from perceiver.training.cli import main

    model = perturbed("vision-perceiver-learned")
    model.save_pretrained(tmp_path / "ours")
    main(["export", str(tmp_path / "ours"), str(tmp_path / "hf"), "--transformers"])
    assert "PerceiverForImageClassificationLearned, outputs equal to ours" in capsys.readouterr().out
    hf = transformers.PerceiverForImageClassificationLearned.from_pretrained(tmp_path / "hf").eval()
    x = inputs("vision-perceiver-learned", model)
    with torch.no_grad():
        torch.testing.assert_close(hf(**x).logits, model(**x).logits, atol=1e-4, rtol=1e-4)
    perturbed("vision-perceiver-conv", same_padding=True).save_pretrained(tmp_path / "conv")
    with pytest.raises(SystemExit, match="error: transformers' conv stem pads"):
        main(["export", str(tmp_path / "conv"), str(tmp_path / "hf2"), "--transformers"])
    assert not (tmp_path / "hf2").exists()


def test_a_headless_classifier_is_refused_by_name():
    model = perturbed("text-classifier")
    model.reset_classifier(0)  # was "DecoderConfig.output_dim must be a positive integer" from inside the export
    with pytest.raises(ValueError, match="expected num_classes >= 1, got this PerceiverForSequenceClassification"):
        to_transformers(model)


@pytest.mark.parametrize(
    "arch",
    [
        "PerceiverForImageClassificationLearned",
        "PerceiverForImageClassificationFourier",
        "PerceiverForImageClassificationConvProcessing",
        "PerceiverForOpticalFlow",
    ],
)
def test_a_transformers_checkpoint_goes_back_to_transformers(arch, tmp_path):
    """transformers' qk_channels unset (DeepMind's image and flow configs) loads as explicit widths with
    cross_attention_shape "q"; the export refused these ("these give no cross-attention qk 261 / v 261 ...")
    although transformers' cross_attention_shape_for_attention="kv" expresses them."""
    sizes = dict(num_latents=6, d_latents=32, num_self_attends_per_block=1, num_self_attention_heads=2)
    sizes |= dict(num_cross_attention_heads=1, num_labels=3, train_size=[12, 16])
    sizes |= dict(image_size=32 if "Conv" in arch else 16)
    torch.manual_seed(0)
    hf = getattr(transformers, arch)(transformers.PerceiverConfig(**sizes)).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = perceiver.from_pretrained(tmp_path / "hf", **({"same_padding": False} if "Conv" in arch else {}))
    back = to_transformers(ours)
    assert type(back) is type(hf)
    expected = hf.state_dict()
    for key, value in back.state_dict().items():
        torch.testing.assert_close(value, expected[key], atol=0, rtol=0, msg=key)
