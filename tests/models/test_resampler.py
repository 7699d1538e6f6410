"""PerceiverResampler: shapes, padded media, time embeddings, bad input, save / load, compile."""

from __future__ import annotations

import pytest
import torch

import perceiver
from perceiver import PerceiverResampler
from perceiver.models.resampler import PerceiverResamplerConfig


def tiny(**overrides) -> PerceiverResampler:
    torch.manual_seed(0)
    kw = dict(dim=32, depth=2, num_latents=6, num_heads=2, head_dim=16, num_media_embeds=3, ff_mult=2.0)
    return PerceiverResampler(PerceiverResamplerConfig(**{**kw, **overrides})).eval()


@pytest.mark.parametrize(
    "variant",
    [
        {},
        dict(mlp="swiglu", norm="rmsnorm", num_kv_heads=1, num_media_embeds=0),  # Idefics2's
        dict(mlp="relu", qk_norm=True, num_kv_heads=1, num_media_embeds=0),  # IDEFICS's (and grouped-query)
    ],
)
def test_shapes_and_padded_media_equal_unpadded(variant):
    model = tiny(**variant)
    media = torch.randn(2, 3, 10, 32)
    assert model(media).last_hidden_state.shape == (2, 3, 6, 32)
    assert model(media[:, 0]).last_hidden_state.shape == (2, 6, 32)
    mask = torch.ones(2, 3, 10, dtype=torch.bool)
    mask[1, :, 7:] = False
    padded = media.clone()
    padded[1, :, 7:] = 1e4  # values at masked positions never reach the outputs
    out = model(padded, mask).last_hidden_state
    alone = model(media[1:, :, :7]).last_hidden_state
    assert torch.allclose(out[1], alone[0], atol=1e-5)
    assert torch.allclose(out[0], model(media[:1]).last_hidden_state[0], atol=1e-5)


def test_media_time_embeddings_distinguish_times_and_batches_are_independent():
    model = tiny()
    frame = torch.randn(1, 1, 10, 32).expand(1, 3, 10, 32)
    out = model(frame).last_hidden_state
    assert not torch.allclose(out[0, 0], out[0, 1])  # same features, different times
    media = torch.randn(3, 2, 10, 32)
    assert torch.allclose(model(media).last_hidden_state[2], model(media[2:]).last_hidden_state[0], atol=1e-5)


def test_gradients_reach_every_parameter():
    model = tiny().train()
    model(torch.randn(2, 3, 5, 32)).last_hidden_state.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (
            (torch.randn(2, 5, 31),),
            r"expected media of shape \(B, T, M, 32\), \(B, M, 32\) or \(B, T, F, V, 32\), got \(2, 5, 31\)",
        ),
        ((torch.randn(2, 4, 5, 32),), "at most num_media_embeds=3 media times, got T=4"),
        ((torch.randn(2, 5, 32), torch.ones(2, 4, dtype=torch.bool)), r"media_mask of shape \(2, 5\)"),
    ],
)
def test_bad_input_is_a_clear_value_error(args, match):
    with pytest.raises(ValueError, match=match):
        tiny()(*args)


def test_save_load_preset_and_compile(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "r")
    loaded = perceiver.from_pretrained(tmp_path / "r")
    media = torch.randn(2, 2, 5, 32)
    assert torch.equal(loaded(media).last_hidden_state, model(media).last_hidden_state)
    assert perceiver.create_model("perceiver-resampler", dim=64, depth=1).config.num_latents == 64
    explained = torch._dynamo.explain(model)(media, torch.ones(2, 2, 5, dtype=torch.bool))
    assert explained.graph_break_count == 0


def test_converters_name_what_they_expected_for_another_object():
    """A state_dict that is not a dict, or another module than an Idefics2 resampler (e.g. its connector), is a
    clear error rather than an AttributeError."""
    from perceiver.checks import InputTypeError

    with pytest.raises(InputTypeError, match="expected a flamingo-pytorch state_dict .a dict of tensors. or its mod"):
        PerceiverResampler.from_flamingo_pytorch([torch.zeros(1)], dim=32, depth=1)
    with pytest.raises(InputTypeError, match="expected an OpenFlamingo state_dict"):
        PerceiverResampler.from_open_flamingo("checkpoint.pt", dim=32)
    for other in (torch.nn.Linear(2, 2), {"latents": torch.zeros(1)}):
        with pytest.raises(InputTypeError, match=f"Idefics2PerceiverResampler .* got {type(other).__name__}"):
            PerceiverResampler.from_idefics2(other)


def test_transformers_keyword_names_of_media_and_mask():
    """`model(context=..., attention_mask=...)` as transformers' Idefics2PerceiverResampler is called (its connector
    passes both by name; 1 = valid) was a TypeError."""
    model = tiny(mlp="swiglu", norm="rmsnorm", num_kv_heads=1, num_media_embeds=0)
    media = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    expected = model(media, mask.bool()).last_hidden_state
    torch.testing.assert_close(model(context=media, attention_mask=mask).last_hidden_state, expected)
    torch.testing.assert_close(model(media, attention_mask=mask).last_hidden_state, expected)
    with pytest.raises(ValueError, match="pass media or its transformers name context, not both"):
        model(media, context=media)
    with pytest.raises(ValueError, match="pass media_mask or its transformers name attention_mask, not both"):
        model(media, mask, attention_mask=mask)
    with pytest.raises(TypeError, match=r"expected media of shape \(B, T, M, 32\) \(or context=\), got None"):
        model(attention_mask=mask)
