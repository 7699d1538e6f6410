"""What transformers users read off a model and its output: `model.device` / `model.dtype`, and `ModelOutput`'s
dict interface (`keys()`, `values()`, `items()`, `in`, `dict(**out)`), which were AttributeErrors."""

from __future__ import annotations

import pytest
import torch
from tiny_models import inputs, tiny

NAMES = ["vision-perceiver-learned", "text-classifier", "perceiver-ar", "perceiver-resampler", "perceiver"]


@pytest.mark.parametrize("name", NAMES)
def test_device_and_dtype_follow_the_parameters(name):
    model = tiny(name)
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    model.to(torch.bfloat16)
    assert model.dtype == torch.bfloat16
    model.to("meta")
    assert model.device == torch.device("meta")


def same(a, b) -> bool:
    """`a` and `b` are the same tensor, or lists of the same tensors (`cross_attentions` is a list made on access)."""
    return a is b or (isinstance(a, list) and len(a) == len(b) and all(x is y for x, y in zip(a, b)))


def test_model_output_reads_as_transformers_dict():
    model = tiny("text-classifier")
    (ids,) = inputs("text-classifier")
    mask = torch.ones_like(ids, dtype=torch.bool)
    out = model(ids, mask, labels=torch.tensor([0, 1]), return_attention=True)
    assert out.keys()[:2] == ["loss", "logits"]
    assert out.keys() == ["loss", "logits", "attentions", "cross_attentions", "last_hidden_state"]
    for i, value in enumerate(out.to_tuple()):  # out[i] is the i-th value, as in transformers
        assert same(out.values()[i], value) and same(out[i], value)
    assert [k for k, _ in out.items()] == list(dict(**out)) == out.keys()
    assert "logits" in out and "last_hidden_state" in out and "hidden_states" not in out
    assert dict(**out)["last_hidden_state"] is out.last_hidden_state
    plain = model(ids, mask)
    assert plain.keys() == ["logits", "last_hidden_state"]
