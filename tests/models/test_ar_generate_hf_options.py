"""PerceiverAR.generate takes transformers' `max_length` (prompt included) as well as `max_new_tokens`, and an
`eos_token_id` list (models with several end tokens), as transformers' `generate` does."""

from __future__ import annotations

import pytest
import torch
from ar_util import ids, tiny


def test_max_length_counts_the_prompt_as_in_transformers():
    model = tiny()
    prompt = ids(3, 5)
    expected = model.generate(prompt, 7)
    assert torch.equal(model.generate(prompt, max_length=12), expected)
    assert torch.equal(model.generate(prompt, max_length=12, use_cache=False), expected)
    assert torch.equal(model.generate(prompt, max_length=5), prompt)  # already that long: nothing new


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(), "max_new_tokens .tokens to add. or max_length .prompt \\+ new tokens., got neither"),
        (dict(max_new_tokens=3, max_length=9), "max_new_tokens or max_length, not both"),
        (dict(max_length=4), "max_length >= the prompt length 5 .max_length counts the prompt., got 4"),
        (dict(max_length=8.0), r"max_length >= 1 \(an int\), got 8.0 \(float\)"),
    ],
)
def test_bad_lengths_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny().generate(ids(1, 5), **kwargs)


def test_an_eos_token_id_list_stops_a_row_at_any_of_them():
    model = tiny()
    prompt = ids(2, 5)
    free = model.generate(prompt, 10)
    first, second = int(free[0, 7]), int(free[1, 9])  # row 0's 3rd new token, row 1's 5th
    out = model.generate(prompt, 10, eos_token_id=[first, second], pad_token_id=0)
    for row in range(2):
        new = free[row, 5:].tolist()
        stop = min(i for i, t in enumerate(new) if t in (first, second))  # the first end token of the row
        assert out[row, 5 : 5 + stop + 1].tolist() == new[: stop + 1]
        assert (out[row, 5 + stop + 1 :] == 0).all()
    single = model.generate(prompt, 10, eos_token_id=first, pad_token_id=0)
    assert torch.equal(model.generate(prompt, 10, eos_token_id=[first], pad_token_id=0), single)
    assert torch.equal(model.generate(prompt, 10, eos_token_id=torch.tensor([first]), pad_token_id=0), single)


def test_min_new_tokens_holds_back_every_eos_id_of_a_list():
    model = tiny()
    prompt = ids(1, 5)
    free = model.generate(prompt, 6)
    ends = sorted({int(t) for t in free[0, 5:8]})  # the first three new tokens
    out = model.generate(prompt, 6, eos_token_id=ends, pad_token_id=0, min_new_tokens=3)
    assert not any(int(t) in ends for t in out[0, 5:8])


@pytest.mark.parametrize(
    ("row", "how"),
    [
        ([1, 1, 1, 0], "row 1 with right padding .pad on the left, e.g. tokenizer.padding_side = 'left'"),
        ([1, 0, 1, 1], "row 1 with padding between or after its tokens"),
        ([0, 0, 0, 0], "row 1 with no token at all"),
    ],
)
def test_a_mask_that_is_not_left_padding_names_the_row_and_the_fix(row, how):
    mask = torch.tensor([[0, 1, 1, 1], row], dtype=torch.bool)
    with pytest.raises(ValueError, match=r"expected a left-padded attention_mask .*" + how):
        tiny().generate(ids(2, 4), 2, attention_mask=mask)
