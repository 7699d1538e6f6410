"""PerceiverAR: rotary frequencies under a dtype cast, and the types of `generate` / `init_cache` arguments (bad
input is a clear error naming the argument)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ar_util import V, ids, tiny

from perceiver.checks import InputTypeError
from perceiver.models.ar import PerceiverARConfig


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_dtype_cast_keeps_the_rotary_frequencies_exact(dtype):
    """`.to(bf16)` also rounds the `inv_freq` buffer (2^-9 relative in bf16): position x frequency is then off by
    a large angle at long positions. The model computes what it computes with the fp32 frequencies."""
    model = tiny(max_seq_len=256, num_latents=8)
    cast = copy.deepcopy(model).to(dtype)
    exact = copy.deepcopy(cast)
    exact.inv_freq = model.inv_freq.clone()  # fp32
    x = torch.randint(6, V, (1, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(cast(x).logits, exact(x).logits)
        assert torch.equal(cast.generate(x[:, :250], 4), exact.generate(x[:, :250], 4))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(eos_token_id=[5, "6"]), InputTypeError, r"eos_token_id as one token id \(an int\), got '6' \(str\)"),
        (dict(eos_token_id=[]), ValueError, "eos_token_id as an id or a non-empty list of ids"),
        (dict(eos_token_id=[5, V]), ValueError, r"eos_token_id in \[0, 41\), got 41"),
        (dict(eos_token_id=True), InputTypeError, r"eos_token_id as one token id \(an int\), got True"),
        (dict(eos_token_id=5, pad_token_id=None), InputTypeError, "pad_token_id as one token id"),
        (dict(eos_token_id=5, pad_token_id=V), ValueError, r"pad_token_id in \[0, 41\), got 41"),
        (dict(do_sample=True, temperature="0.7"), InputTypeError, "temperature as a number, got '0.7' .str."),
        (dict(do_sample=True, temperature=None), ValueError, "temperature > 0 for sampling, got None"),
        (dict(do_sample=True, top_p="0.9"), InputTypeError, "top_p as a number"),
        (dict(repetition_penalty=None), InputTypeError, "repetition_penalty as a number, got None"),
        (dict(max_latents=12.0, use_cache=False), InputTypeError, r"max_latents must be a positive integer, got 12.0"),
    ],
)
def test_bad_generate_arguments_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        tiny().generate(ids(1, 3), 2, **kwargs)


def test_token_ids_as_numpy_ints_or_tensors_and_no_pad_without_eos_are_fine():
    model = tiny()
    prompt = ids(2, 5)
    free = model.generate(prompt, 8)
    eos = int(free[0, 7])
    expected = model.generate(prompt, 8, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(model.generate(prompt, 8, eos_token_id=np.int64(eos), pad_token_id=torch.tensor(0)), expected)
    assert torch.equal(model.generate(prompt, 8, pad_token_id=None, temperature=None), free)  # greedy: unused


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((2.5,), r"batch_size must be a positive integer, got 2.5 \(float\)"),
        ((True,), r"batch_size must be a positive integer, got True \(bool\)"),
        ((2, 8.0), r"max_latents must be a positive integer, got 8.0 \(float\)"),
    ],
)
def test_init_cache_argument_types_are_clear_errors(args, match):
    with pytest.raises(InputTypeError, match=match):
        tiny().init_cache(*args)
    assert tiny().init_cache(np.int64(2), np.int64(8)).batch_size == 2


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_token_ids_of_any_integer_dtype_work_as_int64(dtype):
    """uint8 bytes (a raw-byte model's natural input) and other integer ids pass `check_token_ids`; nn.Embedding
    takes int32 / int64 only, so the model converts them."""
    model = tiny()
    x = ids(2, 10)
    with torch.no_grad():
        assert torch.equal(model(x.to(dtype), labels=x.to(dtype)).logits, model(x).logits)
    out = model.generate(x.to(dtype), 4, repetition_penalty=1.3, eos_token_id=7)
    assert out.dtype == torch.int64 and torch.equal(out, model.generate(x, 4, repetition_penalty=1.3, eos_token_id=7))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(ff_mult=0.01), r"ff_mult must be >= 1 / d_model = 0.03125 \(a hidden width >= 1\), got 0.01"),
        (dict(cross_ff_mult=0.01), "cross_ff_mult must be >= 1 / d_model"),
        (dict(dropout="0.1"), r"dropout must be in \[0, 1\), got '0.1'"),
        (dict(rotary_base=0), "rotary_base must be a positive number, got 0"),  # else NaN logits
        (dict(init_std=-1.0), r"init_std must be in \[0, inf\), got -1.0"),
    ],
)
def test_config_values_that_cannot_build_a_model_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PerceiverARConfig(d_model=32, num_heads=2, **kwargs)


def test_a_logits_processor_that_returns_no_scores_is_a_clear_error():
    def in_place(ids, scores):  # forgot to return the scores
        scores[:, 0] = float("-inf")

    with pytest.raises(ValueError, match=r"logits_processor to return scores of shape \(1, 41\), got NoneType"):
        tiny().generate(ids(1, 3), 2, logits_processor=in_place)
    with pytest.raises(ValueError, match=r"logits_processor to return scores of shape \(1, 41\), got \(41,\)"):
        tiny().generate(ids(1, 3), 2, logits_processor=lambda ids, scores: scores[0])


def test_a_loss_needs_two_latent_positions():
    """With one latent (or a one-token input) no position predicts a token inside the window: a clear error, not a NaN
    loss that training would log silently."""
    model, x = tiny(), ids(2, 10)
    with pytest.raises(ValueError, match="at least 2 latent positions.*got N=1"):
        model(x, labels=x, num_latents=1)
    with pytest.raises(ValueError, match="got N=1"):
        model(x[:, :1], labels=x[:, :1])
    assert torch.isfinite(model(x, labels=x, num_latents=2).loss)


def test_a_cached_step_past_the_capacity_is_a_clear_error_and_changes_nothing():
    """Stepping a manually driven cache past its latent slots failed inside `index_copy_` (IndexError "index 4 is
    out of bounds"); now a ValueError names the room left, and the cache is left as it was."""
    model = tiny()
    cache = model.init_cache(1, max_latents=4)
    with torch.no_grad():
        model(ids(1, 8), cache=cache, num_latents=3)
        model(ids(1, 1), cache=cache)
        before = cache.self_valid.clone(), cache.self_len.clone(), cache.filled
        with pytest.raises(ValueError, match=r"at most 0 more tokens in this cache \(window 9/\d+, latents 4/4"):
            model(ids(1, 1), cache=cache)
        with pytest.raises(ValueError, match="at most 0 more tokens"):
            model(ids(1, 2), cache=cache)
    assert torch.equal(cache.self_valid, before[0]) and int(cache.self_len) == 4 and cache.filled == before[2]
