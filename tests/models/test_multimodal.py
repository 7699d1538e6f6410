"""PerceiverForMultimodalAutoencoding: shapes, chunked / subsampled decoding, masking, classification, bad input."""

from __future__ import annotations

import pytest
import torch

import perceiver
from perceiver.models.multimodal import MultimodalAutoencodingConfig, PerceiverForMultimodalAutoencoding

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
    assert (c.num_frames, c.image_size, c.num_audio_samples, c.num_labels) == (16, (224, 224), 30720, 700)
    assert (c.num_latents, c.latent_dim, c.num_self_attends_per_block, c.latent_heads) == (784, 512, 8, 8)
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
        model.config.subsampled_positions = "transformers"
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
        model.config.eval_masking = "random"
        r1, r2 = model(x).logits, model(x).logits
        assert (r1["label"] - r2["label"]).abs().max() > 1e-6
        model.config.eval_masking = "none"  # the label is seen: outputs depend on it
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
        (make_inputs(), {"query_chunk_size": 0}, "query_chunk_size must be >= 1"),
    ],
)
def test_bad_input_raises(model, inputs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model(inputs, **kwargs)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"image_size": 18}, "divisible by spatial_downsample"),
        ({"audio_samples_per_frame": 30}, "multiple of samples_per_patch"),
        ({"eval_masking": "sometimes"}, "eval_masking"),
        ({"subsampled_positions": "linspace"}, "subsampled_positions"),
        ({"mask_probs": {"label": 1.5}}, "mask_probs"),
        ({"mask_probs": {"text": 0.5}}, "mask_probs"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        MultimodalAutoencodingConfig(**(TINY | overrides))
