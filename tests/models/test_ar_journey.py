"""PerceiverAR.generate as a transformers user calls it: processors in a plain list, counts as numpy integers, and the
sampling filters checked against transformers' own processors (the reference the docstring names)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ar_util import ids, tiny

from perceiver.checks import InputTypeError

transformers = pytest.importorskip("transformers")


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_plain_list_of_transformers_processors_works_as_its_generate_takes_it():
    """transformers' `generate(logits_processor=[...])` merges a plain list into its processors; here a list failed
    with "TypeError: 'list' object is not callable". Now the items apply in order, as a `LogitsProcessorList`."""
    model, prompt = tiny(), ids(2, 5)
    eos = int(model.generate(prompt, 1)[0, -1])
    processors = [
        transformers.RepetitionPenaltyLogitsProcessor(2.0),
        transformers.MinNewTokensLengthLogitsProcessor(5, 3, eos),
    ]
    kw = dict(do_sample=True, eos_token_id=eos, max_latents=9)  # slides the window too
    as_list = model.generate(prompt, 20, logits_processor=processors, generator=_seeded(), **kw)
    wrapped = transformers.LogitsProcessorList(processors)
    assert torch.equal(as_list, model.generate(prompt, 20, logits_processor=wrapped, generator=_seeded(), **kw))
    built_in = model.generate(prompt, 20, repetition_penalty=2.0, min_new_tokens=3, generator=_seeded(), **kw)
    assert torch.equal(as_list, built_in)
    assert torch.equal(model.generate(prompt, 4, logits_processor=[]), model.generate(prompt, 4))
    with pytest.raises(InputTypeError, match="logits_processor as a callable .* or a list of them, got str"):
        model.generate(prompt, 4, logits_processor=[processors[0], "top_k"])


def test_counts_as_numpy_integers_are_ints():
    """`max_new_tokens=np.int64(3)` (e.g. from a numpy computation; transformers takes it) was "expected
    max_new_tokens >= 0 (an int), got np.int64(3)", and likewise top_k, min_new_tokens, num_return_sequences and
    num_latents; they are integers. A float is still an error that names its type."""
    model, prompt = tiny(), ids(2, 5)
    kw = dict(do_sample=True, top_k=5, min_new_tokens=2, num_return_sequences=2, num_latents=3, eos_token_id=7)
    expected = model.generate(prompt, 6, generator=_seeded(), **kw)
    as_numpy = {k: np.int64(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in kw.items()}
    assert torch.equal(model.generate(prompt, np.int64(6), generator=_seeded(), **as_numpy), expected)
    with torch.no_grad():
        assert torch.equal(model(prompt, num_latents=np.int32(3)).logits, model(prompt, num_latents=3).logits)
    with pytest.raises(ValueError, match=r"max_new_tokens >= 0 \(an int\), got 3.0 \(float\)"):
        model.generate(prompt, 3.0)
    with pytest.raises(ValueError, match=r"top_k >= 0 \(an int\), got True \(bool\)"):
        model.generate(prompt, 3, do_sample=True, top_k=True)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "penalty"),
    [(0.7, None, 0.9, 1.0), (1.3, 20, None, 1.2), (0.5, 5, 0.5, 0.8), (2.0, 30, 0.3, 1.5)],
)
def test_sampling_filters_are_transformers_processors(temperature, top_k, top_p, penalty):
    """temperature / top-k / top-p / repetition_penalty draw exactly what transformers' processors in the order its
    `generate` applies them draw, with the same generator."""
    model, prompt = tiny(), ids(3, 6)
    kw = dict(do_sample=True, max_latents=9)
    ours = model.generate(
        prompt, 24, temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=penalty,
        generator=_seeded(1), **kw,
    )  # fmt: skip
    processors: list = [transformers.RepetitionPenaltyLogitsProcessor(penalty)] if penalty != 1.0 else []
    processors.append(transformers.TemperatureLogitsWarper(temperature))
    processors += [transformers.TopKLogitsWarper(top_k)] if top_k else []
    processors += [transformers.TopPLogitsWarper(top_p)] if top_p else []
    reference = model.generate(prompt, 24, logits_processor=processors, generator=_seeded(1), **kw)
    assert torch.equal(ours, reference)


def test_top_k_0_is_no_top_k_filter_as_in_transformers():
    """transformers' `generate` skips its top-k processor for `top_k=0` (its docs' nucleus sampling example passes
    `top_p=0.92, top_k=0`); here it was "expected top_k >= 1". Now 0 filters nothing, as None."""
    model, prompt = tiny(), ids(2, 5)
    kw = dict(do_sample=True, top_p=0.92, max_latents=9)
    off = model.generate(prompt, 16, top_k=None, generator=_seeded(2), **kw)
    assert torch.equal(model.generate(prompt, 16, top_k=0, generator=_seeded(2), **kw), off)
    processors = [transformers.TopPLogitsWarper(0.92)]  # what transformers applies for top_k=0, top_p=0.92
    by_processor = model.generate(prompt, 16, True, logits_processor=processors, generator=_seeded(2), max_latents=9)
    assert torch.equal(by_processor, off)
