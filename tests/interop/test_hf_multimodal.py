"""Parity with transformers' PerceiverForMultimodalAutoencoding on a tiny random checkpoint (max abs diff <= 1e-4).

transformers' whole decode (`subsampled_output_points=None`) crashes for this head (its per-modality queries are
built over the input's channel axis), so "whole" parity asks transformers for every index explicitly. Its masking
draws Bernoulli samples even in eval mode; with the published probabilities (audio 0, image 0, label 1) the draw is
deterministic, so the default parity needs no seeding; other probabilities are compared with identical seeds in
our "random" eval mode.
"""

from __future__ import annotations

import pytest
import torch

import perceiver
from perceiver.core.decoder import AdaptedInputs
from perceiver.models.multimodal import PerceiverForMultimodalAutoencoding

transformers = pytest.importorskip("transformers")

T, HW, SAMPLES_PER_FRAME, LABELS = 2, 16, 32, 5
IMAGE_POINTS, AUDIO_POINTS = T * HW * HW, T * SAMPLES_PER_FRAME // 16
ATOL = 1e-4


def hf_config(**overrides):
    kwargs = dict(
        num_latents=8,
        d_latents=32,
        num_self_attends_per_block=2,
        num_self_attention_heads=2,
        num_cross_attention_heads=1,
        num_labels=LABELS,
        num_frames=T,
        image_size=HW,
        audio_samples_per_frame=SAMPLES_PER_FRAME,
        samples_per_patch=16,
        output_shape=[1, T, HW, HW],
        output_num_channels=16,
        _label_trainable_num_channels=24,
    )
    return transformers.PerceiverConfig(**(kwargs | overrides))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny ops: a second intra-op thread only adds contention on the shared 2-core runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_(model: torch.nn.Module) -> None:
    """O(1) activations: transformers' init (std 0.02) leaves the attention nearly uniform, so outputs would hardly
    depend on the queries and a wrong position formula could pass."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "position_embeddings" not in name and "latents" not in name:
                p.normal_(0, p.shape[1] ** -0.5)
            elif "layernorm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0, 0.5)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.PerceiverForMultimodalAutoencoding(hf_config()).eval()
    randomize_(hf)
    path = tmp_path_factory.mktemp("hf_multimodal")
    hf.save_pretrained(path)
    ours = perceiver.from_pretrained(path)
    ours.config.queries.subsampled_positions = "transformers"
    return hf, ours, path


def make_inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(batch, T, 3, HW, HW, generator=g),
        "audio": torch.randn(batch, T * SAMPLES_PER_FRAME, 1, generator=g),
        "label": torch.zeros(batch, LABELS),
    }


def max_diff(a: dict, b: dict) -> dict:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, (k, a[k].shape, b[k].shape)
    return {k: (a[k] - b[k]).abs().max().item() for k in a}


def whole():
    return {"image": torch.arange(IMAGE_POINTS), "audio": torch.arange(AUDIO_POINTS), "label": None}


def test_converted_model_type_and_config(pair):
    _, ours, _ = pair
    assert isinstance(ours, PerceiverForMultimodalAutoencoding)
    c = ours.config
    assert (c.image.num_frames, c.image.image_size, c.num_classes) == (T, (HW, HW), LABELS)
    assert (c.encoder.num_latents, c.encoder.latent_dim, c.decoder.output_dim) == (8, 32, 16)
    assert (c.inputs.min_padding_size, c.queries.min_padding_size, c.queries.label_channels) == (4, 2, 24)
    assert (c.audio.num_samples, c.audio.max_resolution, c.image.max_resolution) == (
        T * SAMPLES_PER_FRAME, T * SAMPLES_PER_FRAME, (T, HW, HW)
    )  # fmt: skip
    assert not ours.training


@pytest.mark.parametrize(
    "points",
    [
        {"image": torch.arange(100, 230), "audio": torch.tensor([1, 3]), "label": None},
        {"image": torch.randperm(IMAGE_POINTS)[:64], "audio": torch.tensor([3, 0]), "label": None},
        {"image": torch.tensor([IMAGE_POINTS - 1]), "audio": torch.arange(AUDIO_POINTS), "label": None},
    ],
)
def test_parity_subsampled(pair, points):
    hf, ours, _ = pair
    x = make_inputs()
    with torch.no_grad():
        ref = hf(inputs=x, subsampled_output_points=points).logits
        got = ours(x, subsampled_output_points=points).logits
    assert max(max_diff(ref, got).values()) <= ATOL


@pytest.mark.parametrize("chunk", [None, 97])
def test_parity_whole_decode(pair, chunk):
    hf, ours, _ = pair
    x = make_inputs()
    with torch.no_grad():
        ref = hf(inputs=x, subsampled_output_points=whole()).logits
        got = ours(x, query_chunk_size=chunk).logits  # None: every position
        explicit = ours(x, subsampled_output_points=whole()).logits
    assert ref["image"].shape == (2, IMAGE_POINTS, 3) and ref["audio"].shape == (2, AUDIO_POINTS * 16)
    assert max(max_diff(ref, got).values()) <= ATOL
    assert max(max_diff(ref, explicit).values()) <= ATOL


def test_parity_batch_of_one_and_label_values(pair):
    hf, ours, _ = pair
    x = make_inputs(batch=1, seed=3)
    x["label"] = torch.nn.functional.one_hot(torch.tensor([2]), LABELS).float()
    points = {"image": torch.arange(0, 50), "audio": torch.arange(2), "label": None}
    with torch.no_grad():
        ref = hf(inputs=x, subsampled_output_points=points).logits
        got = ours(x, subsampled_output_points=points).logits
    assert max(max_diff(ref, got).values()) <= ATOL


def test_parity_attention_mask(pair):
    hf, ours, _ = pair
    x = make_inputs()
    tokens = AUDIO_POINTS + T * (HW // 4) ** 2 + 1
    mask = torch.ones(2, tokens, dtype=torch.long)
    mask[0, 5:20] = 0
    mask[1, -3:] = 0
    points = {"image": torch.arange(0, 64), "audio": torch.arange(AUDIO_POINTS), "label": None}
    with torch.no_grad():
        ref = hf(inputs=x, attention_mask=mask, subsampled_output_points=points).logits
        got = ours(x, attention_mask=mask, subsampled_output_points=points).logits
        unmasked = ours(x, subsampled_output_points=points).logits
    assert max(max_diff(ref, got).values()) <= ATOL
    assert (got["image"] - unmasked["image"]).abs().max() > 1e-4  # the mask did something


def test_random_mask_probabilities_match_with_identical_seeds(pair):
    hf, ours, _ = pair
    probs = {"audio": 0.5, "image": 0.3, "label": 1.0}
    saved = hf.perceiver.input_preprocessor.mask_probs
    hf.perceiver.input_preprocessor.mask_probs = probs
    ours.config.inputs.mask_probs, ours.config.inputs.eval_masking = probs, "random"
    try:
        x = make_inputs()
        points = {"image": torch.arange(0, 64), "audio": torch.arange(AUDIO_POINTS), "label": None}
        with torch.no_grad():
            torch.manual_seed(123)
            ref = hf(inputs=x, subsampled_output_points=points).logits
            torch.manual_seed(123)
            got = ours(x, subsampled_output_points=points).logits
            torch.manual_seed(124)
            other = ours(x, subsampled_output_points=points).logits
        assert max(max_diff(ref, got).values()) <= ATOL
        assert (other["audio"] - got["audio"]).abs().max() > 1e-4  # the draw matters
    finally:
        hf.perceiver.input_preprocessor.mask_probs = saved
        ours.config.inputs.mask_probs = {"audio": 0.0, "image": 0.0, "label": 1.0}
        ours.config.inputs.eval_masking = "deterministic"


def test_grid_positions_are_deepmind_full_grid_and_differ_from_transformers_subsampling(pair):
    hf, ours, _ = pair
    image_queries = ours.query_builder.modalities["image"]
    hf_image = hf.perceiver.decoder.modalities["image"].decoder
    full = hf_image.output_position_encodings((T, HW, HW), 1, device="cpu", dtype=torch.float32)[0]
    one = AdaptedInputs(torch.zeros(1, 1, 1))
    torch.testing.assert_close(image_queries(one, None, position_mode="grid")[0], full, atol=1e-6, rtol=0)
    idx = torch.tensor([0, 5, 300, IMAGE_POINTS - 1])
    torch.testing.assert_close(image_queries(one, idx, position_mode="grid")[0], full[idx], atol=1e-6, rtol=0)
    theirs = image_queries(one, idx, position_mode="transformers")[0]
    assert torch.equal(theirs[0], full[0])  # index 0 maps to -1 in both formulas
    assert (theirs[1:] - full[idx[1:]]).abs().max() > 1e-3


def test_default_grid_mode_differs_from_transformers_only_in_positions(pair):
    hf, ours, path = pair
    grid = perceiver.from_pretrained(path)
    assert grid.config.queries.subsampled_positions == "grid"
    x = make_inputs()
    points = {"image": torch.arange(10, 40), "audio": torch.tensor([0, 2]), "label": None}
    with torch.no_grad():
        ref = hf(inputs=x, subsampled_output_points=points).logits
        got = grid(x, subsampled_output_points=points).logits
    diff = max_diff(ref, got)
    assert diff["label"] <= ATOL  # label query has no positions
    assert diff["image"] > 1e-3


def test_save_load_round_trip_of_converted_model(pair, tmp_path):
    _, ours, _ = pair
    ours.save_pretrained(tmp_path / "ours")
    again = perceiver.from_pretrained(tmp_path / "ours")
    assert isinstance(again, PerceiverForMultimodalAutoencoding)
    assert again.config.queries.subsampled_positions == "transformers" and again.config == ours.config
    x = make_inputs()
    with torch.no_grad():
        a, b = ours(x).logits, again(x).logits
    assert max(max_diff(a, b).values()) == 0.0


def test_converter_rejects_inconsistent_output_shape(tmp_path):
    hf = transformers.PerceiverForMultimodalAutoencoding(hf_config(output_shape=[1, T, 8, 8]))
    hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="output_shape"):
        perceiver.from_pretrained(tmp_path)


def test_outputs_depend_on_the_inputs_and_queries(pair):
    """Guards the parity tests against a degenerate checkpoint."""
    _, ours, _ = pair
    x = make_inputs()
    with torch.no_grad():
        out = ours(x).logits
        y = {**x, "image": x["image"].flip(-1)}
        flipped = ours(y).logits
    assert out["image"].std(dim=1).min() > 1e-2  # varies over pixels (queries)
    assert (out["label"] - flipped["label"]).abs().max() > 1e-2  # depends on the video


def test_from_pretrained_overrides_reach_the_converter(pair):
    """`perceiver.from_pretrained(checkpoint, **overrides)` hands them to the converter (it used to take none, so
    any override raised a TypeError)."""
    hf, _, path = pair
    ours = perceiver.from_pretrained(path, subsampled_positions="transformers", **{"inputs.eval_masking": "none"})
    assert ours.config.queries.subsampled_positions == "transformers" and ours.config.inputs.eval_masking == "none"
    ours.config.inputs.eval_masking = "deterministic"
    x = make_inputs()
    points = {"image": torch.arange(10, 40), "audio": torch.tensor([0, 2]), "label": None}
    with torch.no_grad():
        ref = hf(inputs=x, subsampled_output_points=points).logits
        got = ours(x, subsampled_output_points=points).logits
    assert max(max_diff(ref, got).values()) <= ATOL
    with pytest.raises(ValueError, match="unknown keys"):
        perceiver.from_pretrained(path, subsampled_position="transformers")


def test_transformers_output_flags_and_return_dict(pair):
    """transformers' call form: output_attentions / output_hidden_states / return_dict=False."""
    hf, ours, _ = pair
    x = make_inputs(batch=1, seed=4)
    points = {"image": torch.arange(0, 16), "audio": torch.arange(2), "label": None}
    with torch.no_grad():
        ref = hf(inputs=x, subsampled_output_points=points, output_attentions=True, output_hidden_states=True)
        got = ours(inputs=x, subsampled_output_points=points, output_attentions=True, output_hidden_states=True)
        plain = ours(inputs=x, subsampled_output_points=points, return_dict=False)
    assert len(got.attentions) == len(ref.attentions) and len(got.cross_attentions) == len(ref.cross_attentions)
    for a, b in zip(got.attentions + got.cross_attentions, ref.attentions + ref.cross_attentions, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
    assert got.hidden_states is not None
    assert isinstance(plain, tuple) and max(max_diff(ref.logits, plain[0]).values()) <= ATOL
    with pytest.raises(TypeError, match="output_attentions must be True, False or None, got 'yes'"):
        ours(inputs=x, subsampled_output_points=points, output_attentions="yes")
