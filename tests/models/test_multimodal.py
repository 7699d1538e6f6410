"""PerceiverForMultimodalAutoencoding: shapes, chunked / subsampled decoding, masking, classification, bad input."""

from __future__ import annotations

import json

import pytest
import torch

import perceiver
import perceiver.core.io
from perceiver.models.multimodal import (
    MultimodalAutoencodingConfig,
    PerceiverForMultimodalAutoencoding,
    multimodal_config,
)

T, HW, LABELS = 2, 16, 5
AUDIO = T * 32  # samples
IMAGE_POINTS, AUDIO_POINTS = T * HW * HW, AUDIO // 16
TINY = dict(
    num_frames=T,
    image_size=HW,
    audio_samples_per_frame=32,
    num_labels=LABELS,
    num_latents=8,
    latent_dim=32,
    num_self_attends_per_block=1,
    latent_heads=2,
    label_query_channels=24,
    output_num_channels=16,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny ops: a second intra-op thread only adds contention on the shared 2-core runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides) -> PerceiverForMultimodalAutoencoding:
    torch.manual_seed(0)
    return perceiver.create_model("multimodal-perceiver", **(TINY | overrides)).eval()


@pytest.fixture(scope="module")
def model():
    return tiny()


def make_inputs(batch=2, seed=1, frames=T, size=(HW, HW), samples=AUDIO):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(batch, frames, 3, *size, generator=g),
        "audio": torch.randn(batch, samples, 1, generator=g),
        "label": torch.zeros(batch, LABELS),
    }


def assert_close(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_preset_has_the_published_sizes():
    c = MultimodalAutoencodingConfig()
    assert (c.image.num_frames, c.image.image_size, c.audio.num_samples, c.num_classes) == (16, (224, 224), 30720, 700)
    assert (c.image.max_resolution, c.audio.max_resolution) == ((16, 224, 224), 30720)
    assert (c.image.spatial_block_size, c.image.num_bands, c.audio.samples_per_patch, c.audio.num_bands) == (
        4, 32, 16, 192
    )  # fmt: skip
    e = c.encoder
    assert (e.num_latents, e.latent_dim, e.num_self_attends_per_block, e.latent_heads) == (784, 512, 8, 8)
    assert (e.cross_heads, e.num_blocks, e.cross_attention_shape) == (1, 1, "kv")
    assert (c.decoder.output_dim, c.decoder.use_query_residual, c.inputs.min_padding_size) == (512, False, 4)
    assert (c.queries.label_channels, c.queries.min_padding_size) == (1024, 2)
    assert "multimodal-perceiver" in perceiver.list_models("multimodal*")


@pytest.mark.slow
def test_full_preset_matches_transformers_parameter_count():
    transformers = pytest.importorskip("transformers")
    ours = perceiver.create_model("multimodal-perceiver")
    hf_cfg = transformers.PerceiverConfig(
        num_latents=784, d_latents=512, d_model=704, num_self_attends_per_block=8, num_blocks=1,
        num_self_attention_heads=8, num_cross_attention_heads=1, num_labels=700, samples_per_patch=16,
    )  # fmt: skip
    hf = transformers.PerceiverForMultimodalAutoencoding(hf_cfg)
    assert (ours.input_adapter.num_channels, ours.query_builder.num_channels) == (704, 1026)
    assert ours.query_builder.sizes == {"audio": 1920, "image": 16 * 224 * 224, "label": 1}
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


def test_whole_decode_shapes(model):
    out = model(make_inputs())
    assert out.logits["image"].shape == (2, IMAGE_POINTS, 3)
    assert out.logits["audio"].shape == (2, AUDIO)
    assert out.logits["label"].shape == (2, LABELS)
    assert out.last_hidden_state.shape == (2, 8, 32)
    assert model.input_adapter.num_channels == 16 + 385 + 4  # widest: audio, 16 samples + 192-band positions
    assert model.query_builder.num_channels == 385 + 2


@pytest.mark.parametrize("chunk", [7, 100, IMAGE_POINTS + AUDIO_POINTS])
def test_chunked_decoding_equals_one_shot(model, chunk):
    x = make_inputs()
    with torch.no_grad():
        assert_close(model(x, query_chunk_size=chunk).logits, model(x).logits)


def test_whole_video_reconstruction_by_chunks_equals_one_shot(model):
    """DeepMind's colab: each chunk decodes a slice of the image and audio positions (and the label)."""
    x, nchunks = make_inputs(), 4
    image_chunk, audio_chunk = IMAGE_POINTS // nchunks, AUDIO_POINTS // nchunks
    with torch.no_grad():
        whole = model(x).logits
        parts = [
            model(
                x,
                subsampled_output_points={
                    "image": torch.arange(image_chunk * i, image_chunk * (i + 1)),
                    "audio": torch.arange(audio_chunk * i, audio_chunk * (i + 1)),
                    "label": None,
                },
            ).logits
            for i in range(nchunks)
        ]
        recon = model.reconstruct(x, query_chunk_size=50)
    torch.testing.assert_close(torch.cat([p["image"] for p in parts], 1), whole["image"], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat([p["audio"] for p in parts], 1), whole["audio"], atol=1e-5, rtol=0)
    for p in parts:
        torch.testing.assert_close(p["label"], whole["label"], atol=1e-5, rtol=0)
    # reconstruct: input layout, pixel (t, h, w) of the flat output index t*H*W + h*W + w.
    assert recon["image"].shape == x["image"].shape and recon["audio"].shape == x["audio"].shape
    t, h, w = 1, 3, 9
    torch.testing.assert_close(
        recon["image"][:, t, :, h, w], whole["image"][:, t * HW * HW + h * HW + w], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(recon["audio"][..., 0], whole["audio"], atol=1e-5, rtol=0)


def test_subsampled_rows_equal_whole_decode_in_grid_mode_only():
    model = tiny()
    x = make_inputs()
    idx = torch.tensor([511, 0, 37, 300])
    points = {"image": idx, "audio": torch.tensor([2]), "label": torch.empty(0, dtype=torch.long)}
    with torch.no_grad():
        whole = model(x).logits
        sub = model(x, subsampled_output_points=points).logits
        model.config.queries.subsampled_positions = "transformers"
        theirs = model(x, subsampled_output_points=points).logits
        theirs_whole = model(x).logits
    assert set(sub) == {"image", "audio"}  # an empty index leaves the modality out
    torch.testing.assert_close(sub["image"], whole["image"][:, idx], atol=1e-5, rtol=0)
    torch.testing.assert_close(sub["audio"], whole["audio"][:, 32:48], atol=1e-5, rtol=0)
    # transformers' -1 + 2i/n positions: other rows (index 0 coincides), but consistent with its own whole decode
    assert (theirs["image"][:, 0] - whole["image"][:, 511]).abs().max() > 1e-4
    torch.testing.assert_close(theirs["image"], theirs_whole["image"][:, idx], atol=1e-5, rtol=0)


def test_batch_entries_are_independent(model):
    x = make_inputs(batch=3)
    with torch.no_grad():
        full = model(x, query_chunk_size=200).logits
        for b in range(3):
            one = model({k: v[b : b + 1] for k, v in x.items()}).logits
            assert_close(one, {k: v[b : b + 1] for k, v in full.items()})


def test_classify_uses_video_and_audio_not_the_label(model):
    x = make_inputs()
    with torch.no_grad():
        logits = model.classify(x["image"], x["audio"])
        assert logits.shape == (2, LABELS)
        torch.testing.assert_close(logits, model(x).logits["label"], atol=1e-5, rtol=0)
        # label mask probability 1 (DeepMind): the label input is replaced by the mask token
        labelled = {**x, "label": torch.eye(LABELS)[:2] * 3}
        torch.testing.assert_close(model(labelled).logits["label"], model(x).logits["label"], atol=0, rtol=0)
        other_video = model.classify(x["image"].flip(-1), x["audio"])
    assert (other_video - logits).abs().max() > 1e-4


def test_eval_masking_modes():
    model = tiny(mask_probs={"audio": 0.0, "image": 0.5, "label": 1.0})
    reference = tiny(mask_probs={"audio": 0.0, "image": 0.0, "label": 1.0})
    x = make_inputs()
    with torch.no_grad():
        a, b = model(x).logits, model(x).logits
        assert_close(a, b, atol=0)  # deterministic: probabilities < 1 are not applied in eval
        assert_close(a, reference(x).logits, atol=0)
        model.config.inputs.eval_masking = "random"
        r1, r2 = model(x).logits, model(x).logits
        assert (r1["label"] - r2["label"]).abs().max() > 1e-6
        model.config.eval_masking = "none"  # the earlier flat name, same field: the label is seen now
        labelled = {**x, "label": torch.eye(LABELS)[:2]}
        assert (model(labelled).logits["label"] - model(x).logits["label"]).abs().max() > 1e-6


def test_training_masks_with_probability_one_regardless_of_content():
    model = tiny(mask_probs={"image": 1.0, "label": 1.0}).train()
    x = make_inputs()
    y = {**x, "image": torch.randn_like(x["image"])}
    points = {"image": torch.arange(10), "audio": None, "label": None}
    a, b = model(x, subsampled_output_points=points).logits, model(y, subsampled_output_points=points).logits
    assert_close(a, b, atol=0)


def test_attention_mask_hides_tokens(model):
    x = make_inputs()
    y = {**x, "image": torch.randn_like(x["image"])}
    tokens = AUDIO_POINTS + T * (HW // 4) ** 2 + 1
    mask = torch.ones(2, tokens, dtype=torch.bool)
    mask[:, AUDIO_POINTS:-1] = False  # all image tokens
    with torch.no_grad():
        assert_close(model(x, attention_mask=mask).logits, model(y, attention_mask=mask).logits, atol=1e-6)
    with pytest.raises(ValueError, match="attention_mask"):
        model(x, attention_mask=mask[:, 1:])


def test_return_attention_over_chunks(model):
    x = make_inputs()
    with torch.no_grad():
        one = model(x, return_attention=True)
        chunked = model(x, query_chunk_size=150, return_attention=True)
    assert one.decoder_attention.shape == (2, 1, AUDIO_POINTS + IMAGE_POINTS + 1, 8)
    torch.testing.assert_close(chunked.decoder_attention, one.decoder_attention, atol=1e-6, rtol=0)
    assert one.encoder_attentions[0].shape == (2, 1, 8, AUDIO_POINTS + T * 16 + 1)


def test_gradients_reach_every_trained_part():
    model = tiny().train()
    out = model(make_inputs(), subsampled_output_points={"image": torch.arange(64)}, query_chunk_size=30).logits
    sum(v.square().mean() for v in out.values()).backward()
    for name in ("encoder.latents", "query_builder.padding.image", "query_builder.modalities.label.encoding",
                 "input_adapter.padding.audio", "input_adapter.mask_tokens.label", "output_adapter.heads.image"):  # fmt: skip
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name


def test_bfloat16_forward_runs():
    model = tiny().to(torch.bfloat16)
    x = {k: v.to(torch.bfloat16) for k, v in make_inputs().items()}
    out = model(x, subsampled_output_points={"image": torch.arange(32)}).logits
    assert all(v.dtype == torch.bfloat16 and torch.isfinite(v).all() for v in out.values())


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path)
    again = perceiver.from_pretrained(tmp_path)
    assert isinstance(again, PerceiverForMultimodalAutoencoding) and again.config == model.config
    x = make_inputs()
    with torch.no_grad():
        assert_close(again(x).logits, model(x).logits, atol=0)


def _without(x, key):
    return {k: v for k, v in x.items() if k != key}


@pytest.mark.parametrize(
    "inputs, kwargs, match",
    [
        (make_inputs(size=(15, 16)), {}, "multiples of the space-to-depth factor 4, got 15 x 16"),
        (make_inputs(size=(20, 20)), {}, r"expected video of shape \(B, 2, 3, 16, 16\)"),
        (make_inputs(frames=3), {}, "expected 2 frames"),
        (make_inputs(samples=70), {}, "not a multiple of samples_per_patch=16"),
        (make_inputs(samples=80), {}, r"expected audio of shape \(B, 64\)"),
        (_without(make_inputs(), "label"), {}, r"missing \['label'\].*classify"),
        (_without(make_inputs(), "image"), {}, r"missing \['image'\]"),
        ({**make_inputs(), "text": torch.zeros(2, 3)}, {}, r"unexpected \['text'\]"),
        ({**make_inputs(), "label": torch.zeros(2, 7)}, {}, r"expected label of shape \(B, 5\)"),
        ({**make_inputs(), "label": torch.zeros(3, 5)}, {}, "same batch size"),
        (make_inputs()["image"], {}, "expected inputs as a dict"),
        (make_inputs(), {"subsampled_output_points": {"image": torch.tensor([512])}}, r"must lie in \[0, 512\)"),
        (make_inputs(), {"subsampled_output_points": {"video": None}}, "unknown modalities"),
        (make_inputs(), {"subsampled_output_points": {"audio": torch.tensor([0.5])}}, "integer indices"),
        # a selection mask: `.long()` made it 0 / 1 indices, decoding pixels 0 and 1 512 times, silently
        (make_inputs(), {"subsampled_output_points": {"image": torch.ones(512, dtype=torch.bool)}}, "nonzero"),
        (make_inputs(), {"query_chunk_size": 0}, "query_chunk_size must be >= 1"),
    ],
)
def test_bad_input_raises(model, inputs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model(inputs, **kwargs)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"image_size": 18}, r"image.image_size \(18, 18\) must be divisible by image.spatial_block_size 4"),
        ({"audio_samples_per_frame": 30}, r"audio.num_samples \(60\) must be a multiple of audio.samples_per_patch"),
        ({"num_frames": 0}, "num_frames must be an integer >= 1"),
        ({"image.channels_last": True}, "channels_last must be False"),
        ({"eval_masking": "sometimes"}, "eval_masking"),
        ({"subsampled_positions": "linspace"}, "subsampled_positions"),
        ({"mask_probs": {"label": 1.5}}, "mask_probs"),
        ({"mask_probs": {"text": 0.5}}, "mask_probs"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        multimodal_config(**(TINY | overrides))


def test_flat_preset_keywords_keep_their_meaning():
    """`num_frames` / `image_size` / `audio_samples_per_frame` (earlier releases' flat keywords) set the video grid,
    the audio length and both Fourier resolutions, as they did."""
    c = tiny().config
    assert (c.image.num_frames, c.image.image_size, c.image.max_resolution) == (T, (HW, HW), (T, HW, HW))
    assert (c.audio.num_samples, c.audio.max_resolution) == (AUDIO, AUDIO)
    assert (c.num_classes, c.queries.label_channels, c.decoder.output_dim) == (LABELS, 24, 16)
    longer = multimodal_config(**(TINY | {"num_frames": 4}))
    assert (longer.audio.num_samples, longer.image.max_resolution) == (4 * 32, (4, HW, HW))
    explicit = multimodal_config(**(TINY | {"image.max_resolution": (1, 2, 3)}))  # a dotted key wins
    assert explicit.image.max_resolution == (1, 2, 3)


def test_model_contract(model):
    assert model.num_classes == LABELS
    with pytest.raises(NotImplementedError, match="autoencoding"):
        model.reset_classifier(3)


def test_runtime_switches_are_the_shared_config_objects():
    """The input adapter and the query builder keep `config.inputs` / `config.queries` themselves: a change on the
    model's config is read by the next forward, which copies nothing into them."""
    model = tiny()
    assert model.input_adapter.config is model.config.inputs
    assert model.query_builder.config is model.config.queries
    x, points = make_inputs(), {"image": torch.tensor([37, 300]), "audio": torch.tensor([1]), "label": None}
    with torch.no_grad():
        grid = model(x, subsampled_output_points=points).logits
        model.config.subsampled_positions = "transformers"  # the flat name of earlier releases: the same field
        assert model.config.queries.subsampled_positions == "transformers"
        theirs = model(x, subsampled_output_points=points).logits
        model.config.queries.subsampled_positions = "grid"
        assert_close(model(x, subsampled_output_points=points).logits, grid, atol=0)
    assert (theirs["image"] - grid["image"]).abs().max() > 1e-6  # the switch was read (repeats above differ by 0)
    for module in (model.input_adapter, model.query_builder):
        assert not {"mask_probs", "eval_masking", "position_mode"} & set(vars(module))
    other = tiny()  # presets own their configs
    assert other.config.inputs is not model.config.inputs and other.config.queries.subsampled_positions == "grid"
    with pytest.raises(ValueError, match="eval_masking must be"):
        model.config.inputs.eval_masking = "sometimes"
        model(x, subsampled_output_points=points)
    model.config.inputs.eval_masking = "deterministic"


def test_loaded_model_switches_take_effect(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = perceiver.from_pretrained(tmp_path)
    x = make_inputs()
    with torch.no_grad():
        seen = loaded(x).logits["label"]
        loaded.config.inputs.eval_masking = "none"  # the label input is seen now
        labelled = loaded({**x, "label": torch.eye(LABELS)[:2]}).logits["label"]
    assert (labelled - seen).abs().max() > 1e-6


def _record_decode(monkeypatch) -> list:
    """The `query_chunk_size` of every call of the generic decoding loop (`perceiver.core.decoder.decode`)."""
    calls, decode = [], perceiver.core.io.decode

    def spy(*args, **kwargs):
        calls.append(args[5] if len(args) > 5 else kwargs.get("query_chunk_size"))
        return decode(*args, **kwargs)

    monkeypatch.setattr(perceiver.core.io, "decode", spy)
    return calls


def test_forward_is_the_generic_pipeline(model, monkeypatch):
    """One `PerceiverIO.forward_head` decode per forward, its chunk loop, no loop of the model's own."""
    calls = _record_decode(monkeypatch)
    x = make_inputs()
    with torch.no_grad():
        out = model(x, query_chunk_size=100)
        features = model.forward_features(x)
        head = model.forward_head(features, query_chunk_size=100)
    assert calls == [100, 100]
    assert_close(head.logits, out.logits, atol=0)


def test_classify_decodes_in_chunks_of_its_query_chunk_size(model, monkeypatch):
    """`classify(..., query_chunk_size=k)` passes `k` on (it used to be dropped)."""
    calls = _record_decode(monkeypatch)
    x = make_inputs()
    with torch.no_grad():
        logits = model.classify(x["image"], x["audio"], query_chunk_size=3)
        assert calls == [3]
        torch.testing.assert_close(logits, model.classify(x["image"], x["audio"]), atol=0, rtol=0)
    assert calls == [3, None]
    with pytest.raises(ValueError, match="query_chunk_size must be >= 1, got 0"):
        model.classify(x["image"], x["audio"], query_chunk_size=0)


def format1_config(**fields) -> dict:
    """config.json as the previous release wrote it: its flat `MultimodalAutoencodingConfig` (`git show
    HEAD~3:src/perceiver/models/multimodal.py`, the PerceiverIOConfig fields first), no format_version."""
    old = dict(
        num_latents=784, latent_dim=512, num_blocks=1, num_self_attends_per_block=8, cross_heads=1, latent_heads=8,
        cross_attention_shape="kv", cross_qk_channels=None, cross_v_channels=None, latent_qk_channels=None,
        latent_v_channels=None, cross_widening_factor=1, latent_widening_factor=1, use_query_residual=True,
        attn_dropout=0.0, ff_dropout=0.0, decoder_heads=1, decoder_qk_channels=None, decoder_v_channels=None,
        decoder_widening_factor=1, decoder_use_query_residual=False, num_frames=16, image_size=[224, 224],
        image_channels=3, spatial_downsample=4, temporal_downsample=1, image_num_bands=32,
        audio_samples_per_frame=1920, samples_per_patch=16, audio_num_bands=192, num_labels=700, input_padding=4,
        mask_probs={"audio": 0.0, "image": 0.0, "label": 1.0}, eval_masking="deterministic",
        label_query_channels=1024, query_padding=2, output_num_channels=512, subsampled_positions="grid",
    )  # fmt: skip
    assert set(fields) <= set(old)
    return {"model_type": "perceiver_multimodal_autoencoding", **old, **fields}


VARIANT = dict(
    num_frames=4, image_size=[8, 12], audio_samples_per_frame=8, samples_per_patch=4, num_labels=3,
    num_latents=8, latent_dim=32, num_self_attends_per_block=2, latent_heads=2, label_query_channels=12,
    output_num_channels=10, spatial_downsample=2, temporal_downsample=2, image_num_bands=3, audio_num_bands=5,
    input_padding=3, query_padding=5, decoder_heads=2, cross_attention_shape="q", decoder_use_query_residual=True,
    image_channels=2, eval_masking="none", mask_probs={"label": 0.5}, subsampled_positions="transformers",
)  # fmt: skip


@pytest.mark.parametrize("flat", [TINY | {"image_size": [HW, HW]}, VARIANT], ids=["preset", "variant"])
def test_format1_config_of_the_previous_release_loads(flat, tmp_path):
    """An old flat config.json with this model's weights: the same config and the same outputs as the model."""
    model = perceiver.create_model("multimodal-perceiver", **flat).eval()
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(format1_config(**flat)))
    loaded = perceiver.from_pretrained(tmp_path)
    assert isinstance(loaded, PerceiverForMultimodalAutoencoding) and loaded.config == model.config
    c = loaded.config
    t, ch, h, w = c.video_shape
    x = {
        "image": torch.randn(2, t, ch, h, w),
        "audio": torch.randn(2, c.audio.num_samples, 1),
        "label": torch.zeros(2, c.num_classes),
    }
    with torch.no_grad():
        assert_close(loaded(x, query_chunk_size=37).logits, model(x).logits, atol=1e-6)
    if flat is VARIANT:  # the renamed and derived keys landed where the previous release put them
        assert (c.image.in_channels, c.image.spatial_block_size, c.image.temporal_block_size) == (2, 2, 2)
        assert (c.image.max_resolution, c.audio.num_samples, c.audio.max_resolution) == ((4, 8, 12), 32, 32)
        assert (c.inputs.min_padding_size, c.queries.min_padding_size, c.queries.label_channels) == (3, 5, 12)
        assert (c.decoder.num_heads, c.decoder.output_dim, c.decoder.use_query_residual) == (2, 10, True)
        assert (c.encoder.cross_attention_shape, c.decoder.cross_attention_shape) == ("q", "q")
        assert (c.inputs.mask_probs, c.inputs.eval_masking, c.queries.subsampled_positions) == (
            {"label": 0.5}, "none", "transformers"
        )  # fmt: skip
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["format_version"] == 2
    assert perceiver.from_pretrained(tmp_path / "again").config == model.config
