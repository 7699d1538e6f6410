"""Property tests over the classic model and every registry preset at tiny sizes (docs/reliability.md).

Every call with random shapes, dtypes, batch sizes and masks gives a correct (finite, right-batch) output or a
`ValueError` / `TypeError` of this library that says what was expected; never an error from inside torch. And the
invariances of the model contract hold for every model family: masked junk (NaN included) never reaches valid
outputs, batching does not change a sample's output, fully masked samples are finite and do not affect the others,
save / load is bit-exact, eval is deterministic.

The fast profile runs a few examples per property (`make test`); `-m slow` runs the long profile.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import TINY, inputs, tiny
from tiny_models import flat as _flat

import perceiver

NAMES = list(TINY)
FAST = settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))

#: models taking a padding mask over their raw inputs: name -> (inputs of length n, mask keyword)
MASKED = {
    "perceiver": "mask",
    "audio-classifier": "mask",
    "point-cloud-classifier": "mask",
    "text-classifier": "attention_mask",
    "language-perceiver": "attention_mask",
}


@cache
def model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny(name)


def flat(out) -> list[torch.Tensor]:
    """The task tensors of an output (`last_hidden_state` for models without logits, e.g. the resampler)."""
    if not isinstance(out, torch.Tensor) and not hasattr(out, "logits"):
        return [out.last_hidden_state]
    return _flat(out)


def call(m: torch.nn.Module, *args, **kwargs):
    with torch.no_grad():
        return m(*args, **kwargs)


def primary(args: tuple) -> tuple[torch.Tensor, callable]:
    """The main input tensor of `args` and a function putting a replacement back."""
    first = args[0]
    if isinstance(first, dict):
        return first["image"], lambda x: ({**first, "image": x}, *args[1:])
    return first, lambda x: (x, *args[1:])


def outcome(m: torch.nn.Module, args: tuple, kwargs: dict | None = None):
    """The output, or None after a clear ValueError / TypeError; anything else fails the test."""
    try:
        return call(m, *args, **(kwargs or {}))
    except (ValueError, TypeError) as e:
        assert "expected" in str(e), f"unclear error: {type(e).__name__}: {e}"
        return None


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.bool]


@st.composite
def bad_or_good_inputs(draw):
    name = draw(st.sampled_from(NAMES))
    batch = draw(st.integers(0, 3))
    size = draw(st.integers(1, 20))
    try:
        args = inputs(name, max(batch, 1), size=size)
    except TypeError:  # makers without a size
        args = inputs(name, max(batch, 1))
    x, put = primary(args)
    if batch == 0:
        x = x[:0]
    dtype = draw(st.sampled_from(DTYPES))
    x = x.to(dtype) if dtype != torch.bool else x > 0
    shape_change = draw(st.sampled_from(["none", "drop_batch", "add_axis", "drop_last", "list"]))
    if shape_change == "drop_batch" and x.ndim > 1 and len(x):
        x = x[0]
    elif shape_change == "add_axis":
        x = x.unsqueeze(-1)
    elif shape_change == "drop_last" and x.shape[-1] > 1:
        x = x[..., :-1]
    elif shape_change == "list":
        x = x.tolist()
    return name, put(x)


def check_outcome(name: str, args: tuple) -> None:
    out = outcome(model(name), args)
    if out is None:
        return
    x, _ = primary(args)
    batch = len(x)
    for t in flat(out):
        assert t.shape[0] == batch, f"{name}: output of shape {tuple(t.shape)} for a batch of {batch}"
        assert torch.isfinite(t.float()).all(), f"{name}: non-finite output"


@FAST
@given(bad_or_good_inputs())
def test_any_input_gives_an_output_or_a_clear_error(case):
    check_outcome(*case)


@pytest.mark.slow
@SLOW
@given(bad_or_good_inputs())
def test_any_input_gives_an_output_or_a_clear_error_long(case):
    check_outcome(*case)


@st.composite
def masks(draw):
    name = draw(st.sampled_from(sorted(MASKED)))
    args = inputs(name, 3)
    x = args[0]
    flat_len = x[0, ..., 0].numel() if name in ("perceiver", "point-cloud-classifier") else x[0].numel()
    valid = draw(st.lists(st.booleans(), min_size=flat_len * 3, max_size=flat_len * 3))
    mask = torch.tensor(valid).reshape(3, flat_len)
    mask[:, 0] = True  # every sample keeps a valid position (fully masked samples: their own test)
    kind = draw(st.sampled_from(["bool", "int", "float", "bad"]))
    return name, args, mask, kind


def as_kind(mask: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "int":
        return mask.long()
    if kind == "float":
        return mask.float()
    if kind == "bad":
        return mask.long() * 2
    return mask


def junk_at(x: torch.Tensor, mask: torch.Tensor, name: str, value: float) -> torch.Tensor:
    """`x` with `value` (or a junk token id for text) at the masked-out positions."""
    x = x.clone()
    if x.is_floating_point():
        shaped = mask.reshape(x.shape[:2]) if name == "audio-classifier" else mask.reshape(x.shape[:-1])
        x[~shaped] = value
    else:
        x[~mask] = 7
    return x


def check_masked_junk(name: str, args: tuple, mask: torch.Tensor, kind: str) -> None:
    m, key = model(name), MASKED[name]
    x = args[0]
    if name == "perceiver":
        mask = mask.reshape(x.shape[:-1])
    a = outcome(m, (junk_at(x, mask, name, 0.0),), {key: as_kind(mask, kind)})
    if kind == "bad":
        assert a is None, f"{name}: a mask holding 2 was accepted"
        return
    b = call(m, junk_at(x, mask, name, float("nan")), **{key: as_kind(mask, kind)})
    for ta, tb in zip(flat(a), flat(b), strict=True):
        if name == "language-perceiver":  # per-position outputs: compare the valid positions only
            ta, tb = ta[mask], tb[mask]
        assert torch.isfinite(tb).all(), f"{name}: NaN at masked positions leaked into the output"
        torch.testing.assert_close(ta, tb, rtol=1e-5, atol=1e-5)


@FAST
@given(masks())
def test_masked_junk_never_reaches_valid_outputs(case):
    check_masked_junk(*case)


@pytest.mark.slow
@SLOW
@given(masks())
def test_masked_junk_never_reaches_valid_outputs_long(case):
    check_masked_junk(*case)


def test_padding_with_masked_nan_points_does_not_change_outputs():
    """Point clouds and text: appended padding (NaN points, junk ids), masked out, leaves the output unchanged."""
    m = model("point-cloud-classifier")
    x = inputs("point-cloud-classifier", 2)[0]
    padded = torch.cat([x, torch.full((2, 5, 3), float("nan"))], dim=1)
    mask = torch.cat([torch.ones(2, x.shape[1]), torch.zeros(2, 5)], dim=1).bool()
    torch.testing.assert_close(call(m, padded, mask).logits, call(m, x).logits, rtol=1e-5, atol=1e-5)
    m = model("text-classifier")
    ids = inputs("text-classifier", 2)[0]
    padded = torch.cat([ids, torch.full((2, 4), 9)], dim=1)
    mask = torch.cat([torch.ones(2, ids.shape[1]), torch.zeros(2, 4)], dim=1).long()
    torch.testing.assert_close(call(m, padded, attention_mask=mask).logits, call(m, ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MASKED))
def test_fully_masked_samples_are_finite_and_do_not_affect_others(name):
    m, key = model(name), MASKED[name]
    x = inputs(name, 2)[0]
    shape = x.shape[:-1] if name in ("perceiver", "point-cloud-classifier") else x.shape
    mask = torch.ones(shape, dtype=torch.bool)
    mask[0] = False
    both = flat(call(m, x, **{key: mask}))
    alone = flat(call(m, x[1:], **{key: mask[1:]}))
    for t, u in zip(both, alone, strict=True):
        assert torch.isfinite(t).all(), f"{name}: a fully masked sample gave non-finite outputs"
        torch.testing.assert_close(t[1:], u, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(TINY))
def test_batch_invariance_determinism_and_save_load(name, tmp_path):
    m = model(name)
    args = inputs(name, 3)
    x, put = primary(args)
    full = flat(call(m, *args))
    again = flat(call(m, *args))
    for a, b in zip(full, again, strict=True):
        assert torch.equal(a, b), f"{name}: two eval calls differ"
    for i in range(3):
        one = flat(call(m, *put(x[i : i + 1]) if not isinstance(args[0], dict) else single(args, i)))
        for a, b in zip(full, one, strict=True):
            torch.testing.assert_close(a[i : i + 1], b, rtol=1e-4, atol=1e-5)
    loaded = perceiver.from_pretrained(m.save_pretrained(tmp_path / name))
    for a, b in zip(full, flat(call(loaded, *args)), strict=True):
        assert torch.equal(a, b), f"{name}: outputs differ after save / load"


def single(args: tuple, i: int) -> tuple:
    return ({k: v[i : i + 1] for k, v in args[0].items()}, *args[1:])
