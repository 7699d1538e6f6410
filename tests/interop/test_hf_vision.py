"""Parity with transformers' Perceiver image classifiers: random transformers models are saved with
`save_pretrained`, loaded with `perceiver.from_pretrained`, and must give the same logits (max abs diff <= 1e-4)."""

from __future__ import annotations

import json

import pytest
import torch
from hf_intermediates import assert_same_intermediates

import perceiver
from perceiver.hub import apply_overrides
from perceiver.models.vision import PerceiverForImageClassification

transformers = pytest.importorskip("transformers")

HEADS = {
    "learned": transformers.PerceiverForImageClassificationLearned,
    "fourier": transformers.PerceiverForImageClassificationFourier,
    "conv": transformers.PerceiverForImageClassificationConvProcessing,
}
IMAGE_SIZE = {"learned": 16, "fourier": 16, "conv": 32}  # conv: 32 -> 16 -> 7x7 tokens in transformers

# Small configurations covering heads 1 / 8, qk / v channels set and unset, 1 / 2 blocks, query residual on / off.
# transformers' latent self-attention only works when its v_channels (default: qk_channels) equal d_latents.
CONFIGS = {
    "h1-default-b1-res": dict(d_latents=32, num_blocks=1, use_query_residual=True),
    "h8-qkv-b2-nores": dict(
        d_latents=64,
        num_self_attention_heads=8,
        num_cross_attention_heads=8,
        qk_channels=32,
        v_channels=64,
        num_blocks=2,
        use_query_residual=False,
    ),
    "h8-qk-b2-res-wide": dict(
        d_latents=64,
        num_self_attention_heads=8,
        qk_channels=64,
        num_blocks=2,
        use_query_residual=True,
        self_attention_widening_factor=2,
        cross_attention_widening_factor=2,
    ),
    "h1-unset-b1-nores": dict(
        d_latents=32, num_blocks=1, use_query_residual=False, cross_attention_shape_for_attention="q"
    ),
}


def hf_model(head: str, image_size: int | None = None, **overrides):
    """A randomly initialised transformers head with weights perturbed away from their init (and BN statistics)."""
    base = dict(
        num_latents=12,
        num_self_attends_per_block=2,
        num_self_attention_heads=1,
        num_cross_attention_heads=1,
        image_size=image_size or IMAGE_SIZE[head],
        num_labels=7,
        attention_probs_dropout_prob=0.1,  # must be off in eval mode
    )
    model = HEADS[head](transformers.PerceiverConfig(**{**base, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.5)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return model.eval()


def load_ours(model, tmp_path, **fields) -> PerceiverForImageClassification:
    model.save_pretrained(tmp_path)
    ours = perceiver.from_pretrained(tmp_path)
    if fields:  # switches that are not in the checkpoint (e.g. transformers' conv-stem padding): rebuild and reload
        switched = PerceiverForImageClassification(apply_overrides(ours.config, fields))
        switched.load_state_dict(ours.state_dict())
        ours = switched.eval()
    return ours


def max_diff(hf, ours, x, **kwargs) -> float:
    with torch.no_grad():
        theirs = hf(inputs=x, **kwargs).logits
        mine = ours(x, **kwargs).logits
    assert mine.shape == theirs.shape
    assert theirs.std() > 0.1, "logits too flat for a meaningful comparison"
    return (mine - theirs).abs().max().item()


FAST = {"h1-default-b1-res", "h8-qkv-b2-nores"}  # the other two run with the slow tests


@pytest.mark.parametrize("config", [c if c in FAST else pytest.param(c, marks=pytest.mark.slow) for c in CONFIGS])
@pytest.mark.parametrize("head", list(HEADS))
def test_parity(head, config, tmp_path):
    hf = hf_model(head, **CONFIGS[config])
    ours = load_ours(hf, tmp_path, **({"same_padding": False} if head == "conv" else {}))
    assert isinstance(ours, PerceiverForImageClassification) and not ours.training
    x = torch.randn(2, 3, IMAGE_SIZE[head], IMAGE_SIZE[head])
    assert max_diff(hf, ours, x) <= 1e-4


def test_learned_interpolate_pos_encoding_parity(tmp_path):
    """transformers 5 interpolates learned positions bicubically too: same numbers at another image size."""
    hf = hf_model("learned", image_size=8, d_latents=32)
    ours = load_ours(hf, tmp_path)
    for size in (12, 6):
        x = torch.randn(2, 3, size, size)
        assert max_diff(hf, ours, x, interpolate_pos_encoding=True) <= 1e-4
    with pytest.raises(ValueError, match=r"expected pixel_values of shape \(B, 3, 8, 8\).*got \(2, 3, 6, 6\)"):
        ours(torch.randn(2, 3, 6, 6))


def test_attention_mask_parity(tmp_path):
    hf = hf_model("fourier", d_latents=32)
    ours = load_ours(hf, tmp_path)
    x = torch.randn(2, 3, 16, 16)
    mask = torch.ones(2, 256)
    mask[0, 100:] = 0
    mask[1, :30] = 0
    assert max_diff(hf, ours, x, attention_mask=mask) <= 1e-4


def test_conv_default_is_deepmind_same_padding(tmp_path):
    """Converted conv heads default to SAME padding (8x8 tokens at 32, as DeepMind); the switch gives transformers'."""
    hf = hf_model("conv", d_latents=32)
    hf.save_pretrained(tmp_path)
    ours = perceiver.from_pretrained(tmp_path)
    assert ours.config.adapter.same_padding and ours.input_adapter.token_grid(32, 32) == (8, 8)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert ours(x).last_hidden_state.shape == (1, 12, 32)
        assert not torch.allclose(ours(x).logits, hf(inputs=x).logits, atol=1e-4)


def test_converted_config_reads_checkpoint(tmp_path):
    hf = hf_model("learned", image_size=8, d_latents=32, num_labels=3, num_blocks=2)
    ours = load_ours(hf, tmp_path)
    c = ours.config
    got = (c.adapter.image_size, c.num_classes, c.encoder.num_latents, c.encoder.latent_dim, c.encoder.num_blocks)
    assert got == ((8, 8), 3, 12, 32, 2)
    assert ours.encoder.config.cross_qk_channels == 512  # 'kv': the input's 256 + 256 channels
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["PerceiverForImageClassificationLearned"]


def test_unsupported_architecture_is_rejected(tmp_path):
    from perceiver.interop.hf_vision import convert_image_classifier

    with pytest.raises(ValueError, match="PerceiverForImageClassificationLearned"):
        convert_image_classifier({"architectures": ["PerceiverForOpticalFlow"]}, {})


@pytest.mark.parametrize("config", ["h1-default-b1-res", "h8-qkv-b2-nores"])
def test_hidden_states_and_attention_maps_parity(config, tmp_path):
    """`return_hidden_states` / `return_attention` give transformers' `hidden_states`, `attentions` and
    `cross_attentions` (see `assert_same_intermediates`), and change nothing else."""
    hf = hf_model("fourier", **CONFIGS[config])
    ours = load_ours(hf, tmp_path)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        theirs = hf(inputs=x, output_hidden_states=True, output_attentions=True)
        mine = ours(x, return_hidden_states=True, return_attention=True)
        plain = ours(x)
    assert_same_intermediates(mine, theirs, hf.config.num_blocks, hf.config.num_self_attends_per_block)
    torch.testing.assert_close(mine.logits, plain.logits)
    assert plain.hidden_states is None and plain.latent_attentions is None


def test_missing_classifier_weight_is_named():
    """A checkpoint without the classifier's final layer names that weight (it was reported as `num_classes ...
    got None`, a config value the user never set)."""
    from perceiver.interop.hf_vision import convert_image_classifier

    hf = hf_model("fourier", d_latents=16, num_blocks=1)
    sd = {k: v for k, v in hf.state_dict().items() if "final_layer" not in k}
    hf_config = hf.config.to_dict() | {"architectures": ["PerceiverForImageClassificationFourier"]}
    with pytest.raises(ValueError, match=r"perceiver\.decoder\.decoder\.final_layer\.weight is missing"):
        convert_image_classifier(hf_config, sd)
    convert_image_classifier(hf_config, hf.state_dict())  # the complete checkpoint converts


@pytest.mark.parametrize(
    "problem_type, labels",
    [
        ("regression", lambda: torch.randn(2, 3)),  # 3 regression targets: MSE, not the inferred multi-label BCE
        ("multi_label_classification", lambda: (torch.rand(2, 3) > 0.5).float()),
        ("single_label_classification", lambda: torch.tensor([0, 2])),
    ],
)
def test_problem_type_of_the_checkpoint_gives_transformers_loss(problem_type, labels, tmp_path):
    torch.manual_seed(0)
    theirs = hf_model("fourier", num_labels=3, problem_type=problem_type, d_latents=32)
    ours = load_ours(theirs, tmp_path)
    assert ours.config.problem_type == problem_type
    x, y = torch.randn(2, 3, 16, 16), labels()
    with torch.no_grad():
        expected, got = theirs(pixel_values=x, labels=y).loss, ours(pixel_values=x, labels=y).loss
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    ours.save_pretrained(tmp_path / "ours")  # kept by our own format and by the export back
    reloaded = perceiver.from_pretrained(tmp_path / "ours")
    assert reloaded.config.problem_type == problem_type
    from perceiver.interop.to_transformers import to_transformers

    assert to_transformers(reloaded).config.problem_type == problem_type


def test_problem_type_errors():
    from perceiver.models.vision import vision_perceiver_fourier

    with pytest.raises(ValueError, match="problem_type must be one of.*'classification'"):
        vision_perceiver_fourier(
            num_latents=4, latent_dim=16, num_blocks=1, num_classes=3, problem_type="classification"
        )
    model = vision_perceiver_fourier(
        num_latents=4,
        latent_dim=16,
        num_blocks=1,
        num_self_attends_per_block=1,
        num_classes=3,
        num_bands=4,
        max_resolution=(8, 8),
        problem_type="regression",
    )
    with pytest.raises(ValueError, match=r"regression targets of shape \(2, 3\), got \(2,\)"):
        model(torch.randn(2, 3, 8, 8), labels=torch.tensor([0, 1]))
    model.config.problem_type = "single_label_classification"
    with pytest.raises(ValueError, match=r"class ids of shape \(2,\), got \(2, 3\)"):
        model(torch.randn(2, 3, 8, 8), labels=torch.rand(2, 3))


def test_transformers_output_flags_and_return_dict(tmp_path):
    """transformers' call form on the converted model: the same attentions, and to_tuple() order with labels."""
    torch.manual_seed(0)
    theirs = hf_model("learned", d_latents=32)
    ours = load_ours(theirs, tmp_path)
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 4])
    flags = dict(output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        ref = theirs(pixel_values=x, labels=y, **flags)
        got = ours(pixel_values=x, labels=y, **flags)
        ref_tuple = theirs(pixel_values=x, labels=y, return_dict=False)
        got_tuple = ours(pixel_values=x, labels=y, return_dict=False)
    for a, b in zip(got.attentions + got.cross_attentions, ref.attentions + ref.cross_attentions, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert len(got.hidden_states) == len(ref.hidden_states)
    assert isinstance(got_tuple, tuple) and len(got_tuple) == len(ref_tuple) == 2  # (loss, logits)
    for a, b in zip(got_tuple, ref_tuple, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    assert ours(pixel_values=x, return_dict=True, output_attentions=False).attentions is None
    with pytest.raises(TypeError, match="return_dict must be True, False or None, got 0"):
        ours(pixel_values=x, return_dict=0)
