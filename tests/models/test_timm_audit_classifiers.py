"""timm's classifier API on the image, modality and classic classifiers, as a timm user's code reads it:
`num_features`, `forward_head(pre_logits=True)`, `no_weight_decay()` and `group_matcher()` for timm's optimizer
factory, `pretrained_cfg` for its data config, `reset_classifier(n, global_pool)`."""

from __future__ import annotations

import json
import re

import pytest
import torch

import perceiver
from perceiver.training.optim import param_groups

IO = dict(num_latents=6, latent_dim=16, num_blocks=1, num_self_attends_per_block=1, latent_heads=2, num_classes=5)
IMAGE = dict(IO, image_size=8)
CLASSIC = dict(num_freq_bands=2, max_freq=4.0, depth=2, num_latents=6, latent_dim=16, latent_heads=2)
CLASSIC |= dict(cross_dim_head=8, latent_dim_head=8, num_classes=5)

MODELS = {
    "vision-perceiver-learned": (IMAGE, lambda: torch.randn(2, 3, 8, 8)),
    "vision-perceiver-fourier": (dict(IMAGE, max_resolution=(8, 8), num_bands=4), lambda: torch.randn(2, 3, 8, 8)),
    "vision-perceiver-conv": (dict(IMAGE, max_resolution=(2, 2), num_bands=4), lambda: torch.randn(2, 3, 8, 8)),
    "point-cloud-classifier": (dict(IO, num_bands=4), lambda: torch.randn(2, 10, 3)),
    "perceiver": (CLASSIC, lambda: torch.randn(2, 4, 4, 3)),
}


def build(name: str, **overrides):
    config, make = MODELS[name]
    torch.manual_seed(0)
    return perceiver.create_model(name, **{**config, **overrides}).eval(), make()


def logits(model, x):
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.mark.parametrize("name", sorted(MODELS))
def test_num_features_is_the_width_of_pre_logits_and_of_headless_logits(name):
    model, x = build(name)
    assert model.num_features == model.head_hidden_size == 16
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        # the class layer maps the pooled features to the logits
        torch.testing.assert_close(model.get_classifier()(pooled), model.forward_head(features).logits)
        model.reset_classifier(0)  # timm's feature extractor: the logits are the pooled features
        assert model.num_features == 16
        torch.testing.assert_close(logits(model, x), pooled)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 16)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_head_takes_the_latents_tensor(name):
    model, x = build(name)
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features.latents).logits, model.forward_head(features).logits)
        torch.testing.assert_close(
            model.forward_head(features.latents, pre_logits=True), model.forward_head(features, pre_logits=True)
        )
        with pytest.raises(ValueError, match=r"latents of shape \(B, N, 16\), got .*\(2, 6, 8\)"):
            model.forward_head(features.latents[..., :8])


def timm_decayed(model, no_weight_decay: set[str]) -> set[str]:
    """timm's `param_groups_weight_decay` rule: no decay for 1-D tensors, biases and the model's list."""
    return {
        name
        for name, p in model.named_parameters()
        if not (p.ndim <= 1 or name.endswith(".bias") or name in no_weight_decay)
    }


@pytest.mark.parametrize(
    ("name", "overrides"),
    [(name, {}) for name in sorted(MODELS)]
    + [("perceiver", dict(weight_tie_layers=True, depth=3)), ("vision-perceiver-learned", dict(num_cross_attends=3))],
)
def test_no_weight_decay_gives_the_projects_groups_under_timms_rule(name, overrides):
    model, _ = build(name, **overrides)
    nwd = model.no_weight_decay()
    assert "encoder.latents" in nwd
    names = {id(p): n for n, p in model.named_parameters()}
    ours = {names[id(p)] for p in param_groups(model, 0.05)[0]["params"]}
    assert timm_decayed(model, nwd) == ours


def timm_layer_ids(model, matcher: dict) -> dict[str, float]:
    """timm's `group_with_matcher`: the first matching spec gives (group ordinal, *regex groups, *suffix); unmatched
    parameters (the head) come last."""
    specs = []
    for ordinal, spec in enumerate(matcher.values()):
        for regex, suffix in spec if isinstance(spec, list) else [(spec, None)]:
            specs.append((re.compile(regex), (ordinal,), suffix))
    ids = {}
    for name, _ in model.named_parameters():
        ids[name] = next(
            (
                tuple(map(float, (*prefix, *m.groups(), *(suffix or ()))))
                for r, prefix, suffix in specs
                if (m := r.match(name))
            ),
            (float("inf"),),
        )
    order = sorted(set(ids.values()))
    return {name: order.index(key) for name, key in ids.items()}


def test_group_matcher_orders_the_layers_as_the_forward_pass_first_runs_them():
    model, _ = build("vision-perceiver-learned", num_cross_attends=3, num_blocks=2, num_self_attends_per_block=2)
    ids = timm_layer_ids(model, model.group_matcher())
    first = {prefix: ids[f"{prefix}.mlp.fc1.weight"] for prefix in [
        "encoder.cross_attends.0", "encoder.latent_blocks.0.0", "encoder.latent_blocks.0.1", "encoder.cross_attends.1"
    ]}  # fmt: skip
    # stem (adapter, latents) < cross-attend 0 < its latent layers < the shared cross-attend of steps 1, 2 < head
    assert ids["input_adapter.convnet_1x1.weight"] == ids["encoder.latents"] == 0
    assert list(first.values()) == [1, 2, 3, 4]
    assert ids["decoder.final_layer.weight"] == ids["decoder.cross_attention.q_norm.weight"] == 5
    coarse = timm_layer_ids(model, model.group_matcher(coarse=True))
    assert coarse["encoder.cross_attends.0.q_norm.weight"] == coarse["encoder.latent_blocks.0.1.norm.weight"] == 1
    assert coarse["encoder.cross_attends.1.q_norm.weight"] == 2
    assert coarse["decoder.final_layer.bias"] == 3


def test_group_matcher_of_the_classic_perceiver_with_tied_layers_and_residuals():
    model, _ = build("perceiver", depth=3, weight_tie_layers=True, attn_residual=True)
    ids = timm_layer_ids(model, model.group_matcher())
    order = ["encoder.cross_attends.0", "encoder.latent_blocks.0.0", "encoder.residuals.0", "encoder.cross_attends.1"]
    order += ["encoder.latent_blocks.1.0", "encoder.residuals.1"]
    groups = [{ids[n] for n in ids if n.startswith(prefix + ".")} for prefix in order]
    assert groups == [{i} for i in range(1, 7)]
    assert ids["encoder.latents"] == 0 and ids["head.fc.weight"] == ids["head.norm.weight"] == 7


def test_pretrained_cfg_describes_the_images_the_model_takes(tmp_path):
    learned, _ = build("vision-perceiver-learned")
    cfg = learned.pretrained_cfg
    assert cfg["input_size"] == (3, 8, 8) and cfg["fixed_input_size"] is True
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert (cfg["interpolation"], cfg["crop_pct"], cfg["crop_mode"]) == ("bicubic", 224 / 256, "center")
    assert (cfg["num_classes"], cfg["classifier"]) == (5, "decoder.final_layer")
    assert learned.get_submodule(cfg["first_conv"]).in_channels == 3
    assert learned.default_cfg == cfg
    fourier, _ = build("vision-perceiver-fourier", in_channels=1)
    assert fourier.pretrained_cfg["input_size"] == (1, 8, 8) and not fourier.pretrained_cfg["fixed_input_size"]
    assert fourier.pretrained_cfg["first_conv"] is None
    # a checkpoint's preprocessor_config.json (transformers' keys) is what the cfg says
    learned.save_pretrained(tmp_path)
    saved = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "size": 8, "crop_size": 10, "resample": 2}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(saved))
    cfg = perceiver.create_model(
        "vision-perceiver-learned", pretrained=True, checkpoint_path=str(tmp_path)
    ).pretrained_cfg
    assert (cfg["mean"], cfg["std"], cfg["interpolation"], cfg["crop_pct"]) == (
        (0.5,) * 3,
        (0.25,) * 3,
        "bilinear",
        0.8,
    )


def test_pretrained_cfg_builds_the_image_processor_the_checkpoint_used():
    pytest.importorskip("PIL")
    model, _ = build("vision-perceiver-fourier", image_size=224)
    cfg = model.pretrained_cfg
    size = cfg["input_size"][1:]
    proc = perceiver.ImageProcessor(
        size=size, crop_size=round(size[0] / cfg["crop_pct"]), image_mean=cfg["mean"], image_std=cfg["std"]
    )
    image = torch.randint(0, 256, (300, 400, 3), dtype=torch.uint8).numpy()
    torch.testing.assert_close(proc(image), perceiver.ImageProcessor()(image))


def test_reset_classifier_takes_timms_global_pool_argument():
    model, x = build("vision-perceiver-fourier")
    model.reset_classifier(3, None)
    assert logits(model, x).shape == (2, 3)
    with pytest.raises(ValueError, match="global_pool: expected None.*got 'avg'"):
        model.reset_classifier(3, "avg")
    classic, x = build("perceiver")
    classic.reset_classifier(0, global_pool=None)
    assert classic(x).shape == (2, classic.num_features)


@pytest.mark.parametrize("name", ["vision-perceiver-fourier", "perceiver"])
def test_forward_intermediates_gives_the_latents_after_chosen_encoder_steps(name):
    model, x = build(name, **({"num_blocks": 2, "num_self_attends_per_block": 2} if name != "perceiver" else {}))
    with torch.no_grad():
        final, states = model.forward_intermediates(x)
        out = model(x, return_hidden_states=True, **({"return_dict": True} if name == "perceiver" else {}))
        torch.testing.assert_close(final, out.last_hidden_state)
        assert len(states) == len(out.hidden_states) >= 4
        for got, want in zip(states, out.hidden_states):
            torch.testing.assert_close(got, want)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two, out.hidden_states[-2:])
        picked = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        torch.testing.assert_close(picked, [out.hidden_states[0], out.hidden_states[-1]])
    with pytest.raises(ValueError, match="output_fmt: expected 'NLC'.*got 'NCHW'"):
        model.forward_intermediates(x, output_fmt="NCHW")
    with pytest.raises(ValueError, match=r"indices: expected positions in \[-\d+, \d+\)"):
        model.forward_intermediates(x, indices=[99])
