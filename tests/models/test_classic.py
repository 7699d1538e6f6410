"""The classic `Perceiver`: the README snippet, shapes, masks, invariances, weight sharing, save/load, errors."""

import json
import re

import pytest
import torch

from perceiver import EncoderConfig, Perceiver, PerceiverEncoder
from perceiver.nn import MultiHeadAttention


def tiny(**overrides) -> Perceiver:
    """A small classic Perceiver in eval mode (dropout 0)."""
    kwargs = dict(
        input_channels=3,
        input_axis=2,
        num_freq_bands=2,
        max_freq=4.0,
        depth=2,
        num_latents=4,
        latent_dim=16,
        cross_heads=1,
        latent_heads=2,
        cross_dim_head=8,
        latent_dim_head=8,
        num_classes=5,
    )
    kwargs.update(overrides)
    return Perceiver(**kwargs).eval()


def assert_raises(exc, fn, *fragments):
    """`fn()` raises `exc` and the message contains every fragment (what was expected and what came)."""
    with pytest.raises(exc) as info:
        fn()
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


# ----------------------------------------------------------------------------- the snippet, shapes


def test_readme_snippet():
    from perceiver import Perceiver  # noqa: I001  (the snippet's own import order)
    import torch

    model = Perceiver(
        input_channels=3,  # channels of each input token
        input_axis=2,  # 1 for audio, 2 for images, 3 for video
        num_freq_bands=6,  # Fourier feature bands
        max_freq=10.0,  # maximum frequency
        depth=6,  # cross-attend + latent block, repeated
        num_latents=256,
        latent_dim=512,
        cross_heads=1,
        latent_heads=8,
        cross_dim_head=64,
        latent_dim_head=64,
        num_classes=1000,
        attn_dropout=0.0,
        ff_dropout=0.0,
    )
    img = torch.randn(1, 224, 224, 3)  # channels last
    out = model(img)  # (1, 1000)
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


def test_snippet_defaults():
    """The constructor defaults are those of the snippet, so `Perceiver()` is the snippet's model."""
    config = Perceiver().config
    expected = dict(input_channels=3, input_axis=2, num_freq_bands=6, max_freq=10.0, depth=6, num_latents=256)
    expected |= dict(latent_dim=512, cross_heads=1, latent_heads=8, cross_dim_head=64, latent_dim_head=64)
    expected |= dict(num_classes=1000, attn_dropout=0.0, ff_dropout=0.0, weight_tie_layers=False)
    expected |= dict(fourier_encode_data=True, self_per_cross_attn=1, final_classifier_head=True)
    assert {k: getattr(config, k) for k in expected} == expected


@pytest.mark.parametrize(
    ("input_axis", "shape"),
    [(1, (2, 10, 4)), (2, (2, 6, 5, 4)), (3, (2, 3, 4, 5, 4))],
    ids=["audio", "image", "video"],
)
def test_output_shapes_per_axis(input_axis, shape):
    model = tiny(input_axis=input_axis, input_channels=4)
    data = torch.randn(shape)
    assert model(data).shape == (2, 5)
    assert model(data, return_embeddings=True).shape == (2, 4, 16)
    tokens = model.prepare_inputs(data)
    assert tokens.shape == (2, torch.Size(shape[1:-1]).numel(), 4 + input_axis * (2 * 2 + 1))
    torch.testing.assert_close(tokens[..., :4], data.reshape(2, -1, 4), atol=0, rtol=0)  # data first, then Fourier


def test_return_embeddings_and_no_head():
    model = tiny(num_latents=6, latent_dim=24)
    data = torch.randn(3, 5, 4, 3)
    latents = model(data, return_embeddings=True)
    assert latents.shape == (3, 6, 24)
    features = model.forward_features(data)
    torch.testing.assert_close(features.latents, latents, atol=0, rtol=0)
    torch.testing.assert_close(model.forward_head(features).logits, model(data), atol=0, rtol=0)
    out = model(data, labels=torch.tensor([0, 1, 2]))
    assert out.logits.shape == (3, 5) and out.loss.ndim == 0 and out.last_hidden_state.shape == (3, 6, 24)
    with pytest.raises(ValueError, match="expected labels or return_embeddings=True, got both"):
        model(data, labels=torch.tensor([0, 1, 2]), return_embeddings=True)  # returned the latents, no loss
    headless = tiny(num_latents=6, latent_dim=24, final_classifier_head=False)
    assert headless.head is None
    assert headless(data).shape == (3, 6, 24)


def test_attention_maps_of_every_cross_attend():
    model = tiny(depth=3, cross_heads=2)
    data, mask = torch.randn(2, 4, 5, 3), torch.rand(2, 4, 5) > 0.3
    features = model.forward_features(data, mask, return_attention=True)
    latents, maps = features.latents, features.encoder_attentions
    torch.testing.assert_close(latents, model(data, mask, return_embeddings=True), atol=1e-6, rtol=0)
    assert len(maps) == 3
    flat = mask.reshape(2, 1, 1, 20)
    for probs in maps:
        assert probs.shape == (2, 2, 4, 20)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 4))
        assert (probs.masked_select(~flat) == 0).all()


# ----------------------------------------------------------------------------- masks


def test_masked_junk_tokens_do_not_change_the_output():
    model = tiny(input_axis=1, fourier_encode_data=False, depth=3)
    data = torch.randn(2, 7, 3)
    junk = 1e3 * torch.randn(2, 5, 3)
    padded = torch.cat([data, junk], dim=1)
    mask = torch.cat([torch.ones(2, 7, dtype=torch.bool), torch.zeros(2, 5, dtype=torch.bool)], dim=1)
    expected = model(data)
    torch.testing.assert_close(model(padded, mask), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model(padded, mask, return_embeddings=True), model(data, return_embeddings=True))
    assert (model(padded) - expected).abs().max() > 1e-2  # the junk matters without the mask


def test_masked_tokens_do_not_matter_with_fourier_features():
    model = tiny(depth=2)
    data = torch.randn(2, 4, 6, 3)
    mask = torch.rand(2, 4, 6) > 0.5
    mask[:, 0, 0] = True
    changed = torch.where(mask[..., None], data, 1e3 * torch.randn_like(data))
    expected = model(data, mask)
    torch.testing.assert_close(model(changed, mask), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(model(data, mask.reshape(2, 24)), expected, atol=0, rtol=0)  # (B, M) mask is the same
    assert (model(data) - expected).abs().max() > 1e-3  # the mask matters


def test_fully_masked_sample_gives_finite_output():
    model = tiny()
    data = torch.randn(3, 4, 5, 3)
    mask = torch.ones(3, 4, 5, dtype=torch.bool)
    mask[1] = False
    out = model(data, mask)
    assert torch.isfinite(out).all()
    # The other samples are untouched by their fully masked neighbour.
    torch.testing.assert_close(out[[0, 2]], model(data[[0, 2]]), atol=1e-5, rtol=0)
    # A fully masked sample sees no input: its output does not depend on the data.
    data[1] = 1e3 * torch.randn(4, 5, 3)
    torch.testing.assert_close(model(data, mask)[1], out[1], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- invariances


def test_batch_invariance():
    model = tiny(depth=2)
    data = torch.randn(4, 5, 3, 3)
    mask = torch.rand(4, 5, 3) > 0.3
    mask[:, 0, 0] = True
    batched, batched_masked = model(data), model(data, mask)
    for i in range(4):
        torch.testing.assert_close(model(data[i : i + 1]), batched[i : i + 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            model(data[i : i + 1], mask[i : i + 1]), batched_masked[i : i + 1], atol=1e-5, rtol=0
        )


def test_token_permutation_invariance_without_fourier_features():
    model = tiny(input_axis=1, fourier_encode_data=False, depth=2)
    data = torch.randn(2, 11, 3)
    mask = torch.rand(2, 11) > 0.3
    mask[:, 0] = True
    perm = torch.randperm(11)
    torch.testing.assert_close(model(data[:, perm]), model(data), atol=1e-5, rtol=0)
    torch.testing.assert_close(model(data[:, perm], mask[:, perm]), model(data, mask), atol=1e-5, rtol=0)
    # With Fourier features the token order matters, so the check above can fail.
    encoded = tiny(input_axis=1, depth=2)
    assert (encoded(data[:, perm]) - encoded(data)).abs().max() > 1e-3


# ----------------------------------------------------------------------------- weight sharing


def expected_num_parameters(c: dict, tied: bool) -> int:
    """Parameters of a classic Perceiver, counted by hand (GEGLU x4 feed-forwards, no q/kv bias)."""
    d, n, k = c["latent_dim"], c["num_latents"], c["num_classes"]
    ctx = c["input_channels"] + (c["input_axis"] * (2 * c["num_freq_bands"] + 1) if c["fourier_encode_data"] else 0)
    ci, li = c["cross_heads"] * c["cross_dim_head"], c["latent_heads"] * c["latent_dim_head"]
    layer_norm = lambda width: 2 * width  # noqa: E731
    feed_forward = layer_norm(d) + (d * 8 * d + 8 * d) + (4 * d * d + d)
    cross = layer_norm(d) + layer_norm(ctx) + d * ci + 2 * ctx * ci + (ci * d + d) + feed_forward
    latent = layer_norm(d) + 3 * d * li + (li * d + d) + feed_forward
    block = cross + c["self_per_cross_attn"] * latent
    blocks = min(c["depth"], 2) if tied else c["depth"]
    head = layer_norm(d) + d * k + k if c["final_classifier_head"] else 0
    return n * d + blocks * block + head


@pytest.mark.parametrize("self_per_cross_attn", [1, 2])
@pytest.mark.parametrize("fourier_encode_data", [True, False])
def test_parameter_counts(self_per_cross_attn, fourier_encode_data):
    kwargs = dict(depth=4, self_per_cross_attn=self_per_cross_attn, fourier_encode_data=fourier_encode_data)
    untied, tied = tiny(**kwargs), tiny(weight_tie_layers=True, **kwargs)
    config = vars(untied.config)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) == expected_num_parameters(config, tied=False)
    assert count(tied) == expected_num_parameters(config, tied=True)
    # Tied at depth 4: steps 3 and 4 reuse the modules of step 2, so two blocks of duplicates are gone.
    duplicate = count(tied.encoder.cross_attends[1]) + count(tied.encoder.latent_blocks[1])
    assert count(tied) == count(untied) - (4 - 2) * duplicate
    headless = tiny(final_classifier_head=False, **kwargs)
    assert count(headless) == expected_num_parameters(vars(headless.config), tied=False)


def test_weight_tie_layers_shares_modules():
    model = tiny(depth=4, self_per_cross_attn=2, weight_tie_layers=True)
    enc = model.encoder
    assert enc.cross_index == [0, 1, 1, 1]
    assert enc.latent_index == [0, 1, 1, 1]
    assert len(enc.cross_attends) == 2 and len(enc.latent_blocks) == 2
    assert enc.cross_attends[0] is not enc.cross_attends[1]
    steps = [enc.cross_attends[i] for i in enc.cross_index]
    assert steps[1] is steps[2] is steps[3]
    # The forward really runs the shared modules: count the calls.
    calls = {0: 0, 1: 0}
    for i in (0, 1):
        enc.cross_attends[i].register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    model(torch.randn(2, 3, 4, 3))
    assert calls == {0: 1, 1: 3}
    # Shared parameters are counted and updated once.
    ids = [id(p) for p in model.parameters()]
    assert len(ids) == len(set(ids))


def test_untied_layers_are_distinct():
    model = tiny(depth=3)
    enc = model.encoder
    assert enc.cross_index == [0, 1, 2] and enc.latent_index == [0, 1, 2]
    assert len({id(m) for m in enc.cross_attends}) == 3 and len({id(m) for m in enc.latent_blocks}) == 3


def test_paper_sharing_in_the_encoder():
    """Paper sharing: cross-attends 2..n share weights, every latent block shares one set."""
    enc = PerceiverEncoder(EncoderConfig(input_dim=5, num_latents=4, latent_dim=8, latent_heads=2, num_cross_attends=3))
    assert enc.cross_index == [0, 1, 1] and enc.latent_index == [0, 0, 0]
    assert len(enc.cross_attends) == 2 and len(enc.latent_blocks) == 1


# ----------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("weight_tie_layers", [False, True], ids=["untied", "tied"])
def test_save_pretrained_round_trip(tmp_path, weight_tie_layers):
    model = tiny(depth=3, self_per_cross_attn=2, weight_tie_layers=weight_tie_layers, input_axis=1)
    data, mask = torch.randn(2, 9, 3), torch.rand(2, 9) > 0.3
    mask[:, 0] = True
    path = model.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["weight_tie_layers"] is weight_tie_layers and config["depth"] == 3
    loaded = Perceiver.from_pretrained(path)
    assert not loaded.training
    assert vars(loaded.config) == vars(model.config)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(loaded(data), model(data))
    assert torch.equal(loaded(data, mask), model(data, mask))
    if weight_tie_layers:
        assert len(loaded.encoder.cross_attends) == 2
        assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


def test_from_pretrained_overrides_and_missing_directory(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    loaded = Perceiver.from_pretrained(tmp_path / "m", attn_dropout=0.1)
    assert loaded.config.attn_dropout == 0.1
    with pytest.raises(FileNotFoundError):
        Perceiver.from_pretrained(tmp_path / "missing")


# ----------------------------------------------------------------------------- bad input


def test_wrong_number_of_axes():
    model = tiny(input_axis=2, input_channels=3)
    assert_raises(ValueError, lambda: model(torch.randn(1, 8, 3)), "(B, d1, d2, 3)", "got (1, 8, 3)", "input_axis=2")
    assert_raises(ValueError, lambda: model(torch.randn(1, 2, 8, 8, 3)), "(B, d1, d2, 3)", "got (1, 2, 8, 8, 3)")


def test_wrong_channel_count():
    model = tiny(input_axis=2, input_channels=3)
    assert_raises(ValueError, lambda: model(torch.randn(1, 8, 8, 4)), "(B, d1, d2, 3)", "got (1, 8, 8, 4)")
    video = tiny(input_axis=3, input_channels=2)
    assert_raises(ValueError, lambda: video(torch.randn(1, 2, 3, 4, 3)), "(B, d1, d2, d3, 2)", "got (1, 2, 3, 4, 3)")


def test_mask_of_wrong_shape():
    model = tiny()
    data = torch.randn(2, 4, 5, 3)
    for bad in [(2, 19), (2, 5, 4), (1, 4, 5), (2, 4, 5, 1)]:
        mask = torch.ones(bad, dtype=torch.bool)
        assert_raises(ValueError, lambda mask=mask: model(data, mask), "(2, 4, 5)", "(2, 20)", f"got {bad}")


def test_mask_of_wrong_dtype():
    """Masks are bool or 0 / 1 integers / floats (docs/reliability.md); other values and non-tensors are errors."""
    model = tiny().eval()
    data = torch.randn(2, 4, 5, 3)
    mask = torch.rand(2, 4, 5) > 0.3
    want = model(data, mask)
    assert torch.equal(model(data, mask.float()), want) and torch.equal(model(data, mask.long()), want)
    assert_raises(ValueError, lambda: model(data, torch.full((2, 4, 5), 0.5)), "bool", "torch.float32")
    assert_raises(ValueError, lambda: model(data, torch.full((2, 4, 5), 2)), "bool", "torch.int64")
    assert_raises(ValueError, lambda: model(data, [[True] * 20] * 2), "bool", "list")


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_non_floating_data(dtype):
    model = tiny()
    data = torch.ones(1, 4, 5, 3, dtype=dtype)
    assert_raises(ValueError, lambda: model(data), "floating", str(dtype))


def test_non_tensor_data():
    model = tiny()
    assert_raises(TypeError, lambda: model([[[[0.0] * 3] * 5] * 4]), "torch.Tensor", "got list")


def test_empty_axis():
    model = tiny()
    assert_raises(ValueError, lambda: model(torch.randn(1, 0, 5, 3)), "non-empty", "got (1, 0, 5, 3)")
    assert_raises(ValueError, lambda: model(torch.randn(1, 4, 0, 3)), "non-empty", "got (1, 4, 0, 3)")


def test_heads_not_dividing_channels():
    # nn level
    assert_raises(ValueError, lambda: MultiHeadAttention(20, num_heads=3), "20", "3")
    # config level: the encoder's latent width must split into the heads
    config = EncoderConfig(input_dim=5, num_latents=4, latent_dim=20, latent_heads=3)
    assert_raises(ValueError, lambda: PerceiverEncoder(config), "20", "3")
    config = EncoderConfig(input_dim=5, num_latents=4, latent_dim=16, cross_heads=3, cross_qk_channels=16)
    assert_raises(ValueError, lambda: PerceiverEncoder(config), "16", "3")
    # classic API: channels are heads * dim_head, so only non-positive heads can fail
    assert_raises(ValueError, lambda: tiny(cross_heads=0), "cross_heads", "0")
    assert_raises(ValueError, lambda: tiny(latent_heads=0), "latent_heads", "0")
    assert_raises(ValueError, lambda: tiny(latent_dim_head=0), "latent_dim_head", "0")


def test_depth_zero():
    assert_raises(ValueError, lambda: tiny(depth=0), "depth", "0")
    assert_raises(ValueError, lambda: tiny(depth=-1), "depth", "-1")
    assert_raises(ValueError, lambda: PerceiverEncoder(EncoderConfig(input_dim=3, num_cross_attends=0)), "0")


@pytest.mark.parametrize("name", ["attn_dropout", "ff_dropout"])
@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_bad_dropout(name, value):
    assert_raises(ValueError, lambda: tiny(**{name: value}), name, str(value))


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"input_axis": 0}, ["input_axis", "0"]),
        ({"input_channels": 0}, ["input_channels", "0"]),
        ({"num_latents": 0}, ["num_latents", "0"]),
        ({"num_freq_bands": 0}, ["num_freq_bands=0"]),
        ({"max_freq": 0.0}, ["max_freq=0.0"]),
        ({"self_per_cross_attn": -1}, ["self_per_cross_attn", "-1"]),
    ],
)
def test_other_impossible_settings(kwargs, fragments):
    assert_raises(ValueError, lambda: tiny(**kwargs), *fragments)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("weight_tie_layers", [False, True], ids=["untied", "tied"])
def test_gradient_reaches_every_parameter(weight_tie_layers):
    model = tiny(depth=3, self_per_cross_attn=2, weight_tie_layers=weight_tie_layers, attn_dropout=0.1).train()
    data, mask = torch.randn(3, 4, 5, 3), torch.rand(3, 4, 5) > 0.3
    mask[:, 0, 0] = True
    loss = torch.nn.functional.cross_entropy(model(data, mask), torch.tensor([0, 3, 4]))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_no_model_buffers_in_checkpoint_keys():
    """Only parameters are saved: the Fourier cache must not leak into state dicts (it depends on the input)."""
    model = tiny()
    model(torch.randn(1, 4, 5, 3))
    keys = set(model.state_dict())
    assert keys == {name for name, _ in model.named_parameters()}
    assert not any(re.search("position_encoding", k) for k in keys)


# ----------------------------------------------------------------------------- perceiver-pytorch's later options

LATER = [
    dict(inverted_cross_attn=True),
    dict(inverted_cross_attn=(True, False)),
    dict(attn_residual=True, attn_residual_rank=4),
    dict(attn_residual=True, attn_residual_norm=False, weight_tie_layers=True, depth=3),
]


@pytest.mark.parametrize("options", LATER, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_later_options_masks_gradients_and_round_trip(options, tmp_path):
    model = tiny(**options)
    data = torch.randn(2, 4, 6, 3)
    mask = torch.rand(2, 4, 6) > 0.5
    mask[:, 0, 0] = True
    changed = torch.where(mask[..., None], data, 1e3 * torch.randn_like(data))
    expected = model(data, mask)
    torch.testing.assert_close(model(changed, mask), expected, atol=1e-5, rtol=0)  # masked values never leak
    plain = tiny(**{k: v for k, v in options.items() if k in ("weight_tie_layers", "depth")})
    plain.load_state_dict(model.state_dict(), strict=False)
    assert (plain(data, mask) - expected).abs().max() > 1e-4  # the option changes the function
    model.train()
    torch.nn.functional.cross_entropy(model(data, mask), torch.tensor([0, 3])).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    model.save_pretrained(tmp_path / "m")
    loaded = Perceiver.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(data, mask), model.eval()(data, mask), atol=0, rtol=0)


def test_attention_residuals_are_shared_like_the_layers():
    tied = tiny(depth=4, attn_residual=True, weight_tie_layers=True)
    assert len(tied.encoder.residuals) == 2 and tied.encoder.residual_index == [0, 1, 1, 1]
    untied = tiny(depth=4, attn_residual=True)
    assert len(untied.encoder.residuals) == 4


def test_later_options_compile_whole():
    model = tiny(inverted_cross_attn=(True, False), attn_residual=True)
    data = torch.randn(2, 4, 5, 3)
    mask = torch.rand(2, 4, 5) > 0.3
    mask[:, 0, 0] = True
    compiled = torch.compile(model.encoder, fullgraph=True, backend="eager")
    tokens = model.prepare_inputs(data)
    torch.testing.assert_close(compiled(tokens, mask.reshape(2, -1)), model.encoder(tokens, mask.reshape(2, -1)))
