"""Input checks of the perceiver-pytorch ports (`LucidrainsPerceiverIO`, `LucidrainsPerceiverLM`,
`LucidrainsPerceiverBlock`), the library's input policy (docs/reliability.md): floating inputs of another dtype are
cast to the model's, 0 / 1 masks act as booleans, and a bad input is a `ValueError` / `TypeError` naming what was
expected and what came, never an error from inside torch (they were `RuntimeError: masked_fill_ only supports
boolean masks`, `IndexError: index out of range in self`, `mixed dtype (CPU)`, `Given normalized_shape=[8]`)."""

from __future__ import annotations

import re

import pytest
import torch

from perceiver.checks import InputTypeError
from perceiver.models.lucidrains_io import LucidrainsPerceiverBlock, LucidrainsPerceiverIO, LucidrainsPerceiverLM

SIZES = dict(num_latents=4, latent_dim=16, latent_heads=2, cross_dim_head=8, latent_dim_head=8)


def io_model(**kwargs) -> LucidrainsPerceiverIO:
    return LucidrainsPerceiverIO(depth=2, dim=8, queries_dim=8, logits_dim=5, **SIZES, **kwargs).eval()


def lm_model() -> LucidrainsPerceiverLM:
    return LucidrainsPerceiverLM(num_tokens=20, max_seq_len=12, depth=1, dim=8, **SIZES).eval()


def block_model() -> LucidrainsPerceiverBlock:
    return LucidrainsPerceiverBlock(dim=16, context_dim=8, latent_heads=2, cross_dim_head=8, latent_dim_head=8).eval()


def padding_mask(dtype: torch.dtype = torch.bool) -> torch.Tensor:
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    return mask.to(dtype)


@pytest.mark.parametrize("dtype", [torch.long, torch.float32, torch.uint8])
def test_io_takes_zero_one_masks_as_booleans_also_with_sequence_dropout(dtype):
    model = io_model()
    x, q = torch.randn(2, 10, 8), torch.randn(2, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x, padding_mask(dtype), q), model(x, padding_mask(), q), atol=0, rtol=0)
    dropping = io_model(seq_dropout_prob=0.5).train()
    torch.manual_seed(0)
    expected = dropping(x, padding_mask(), q)
    torch.manual_seed(0)
    torch.testing.assert_close(dropping(x, padding_mask(dtype), q), expected, atol=0, rtol=0)


def test_io_casts_floating_data_and_queries_to_its_dtype():
    model = io_model()
    x, q = torch.randn(2, 10, 8), torch.randn(3, 8)
    with torch.no_grad():
        expected = model(x, queries=q)
        out = model(x.double(), queries=q.double())
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, expected)
        bf16 = io_model().to(torch.bfloat16)
        bf16.load_state_dict(model.state_dict())
        assert bf16(x, queries=q).dtype == torch.bfloat16


def test_io_errors_name_the_expected_shape():
    model = io_model()
    x, q = torch.randn(2, 10, 8), torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=re.escape("expected mask of shape (2, 10), got (2, 11)")):
        model(x, torch.ones(2, 11, dtype=torch.bool), q)
    with pytest.raises(ValueError, match=re.escape("expected queries of shape (2, O, 8) or (O, 8) (queries_dim=8)")):
        model(x, queries=torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match=re.escape("got (3, 3, 8)")):
        model(x, queries=torch.randn(3, 3, 8))
    with pytest.raises(InputTypeError, match="expected data as a floating-point tensor"):
        model(x.long(), queries=q)
    with pytest.raises(InputTypeError, match="expected queries as a floating-point tensor"):
        model(x, queries=q.long())


def test_lm_checks_ids_masks_and_labels():
    model = lm_model()
    ids = torch.randint(0, 20, (2, 10))
    with torch.no_grad():
        expected = model(ids, padding_mask())
        torch.testing.assert_close(model(ids, padding_mask(torch.long)), expected, atol=0, rtol=0)
        torch.testing.assert_close(model(ids.to(torch.uint8), padding_mask()), expected, atol=0, rtol=0)
        with pytest.raises(ValueError, match=re.escape("expected token ids in [0, 20), got values in [0, 20]")):
            model(torch.cat([torch.zeros(2, 1, dtype=torch.long), torch.full((2, 1), 20)], 1))
        with pytest.raises(InputTypeError, match="expected integer token ids"):
            model(ids.float())
        with pytest.raises(ValueError, match=re.escape("expected mask of shape (2, 10)")):
            model(ids, torch.ones(2, 9, dtype=torch.bool))
        with pytest.raises(ValueError, match=re.escape("expected labels (token ids) in [0, 20) or -100")):
            model(ids, labels=torch.full((2, 10), 25))
        with pytest.raises(ValueError, match=re.escape("expected labels of shape (2, 10) (input_ids'), got (2, 9)")):
            model(ids, labels=ids[:, :9])
        _, loss = model(ids, labels=ids.masked_fill(~padding_mask(), -100))
        assert torch.isfinite(loss)


def test_block_checks_and_casts_its_inputs():
    model = block_model()
    x, context = torch.randn(2, 4, 16), torch.randn(2, 10, 8)
    with torch.no_grad():
        expected = model(x, context, padding_mask())
        torch.testing.assert_close(model(x, context, padding_mask(torch.long)), expected, atol=0, rtol=0)
        torch.testing.assert_close(model(x.double(), context.double(), padding_mask()), expected)
        with pytest.raises(ValueError, match=re.escape("expected context of shape (2, M, 8) (context_dim=8)")):
            model(x, torch.randn(2, 10, 7))
        with pytest.raises(ValueError, match=re.escape("expected x of shape (B, N, 16), got (2, 4, 15)")):
            model(torch.randn(2, 4, 15), context)
        with pytest.raises(ValueError, match=re.escape("expected mask of shape (2, 10), got (10,)")):
            model(x, context, torch.ones(10, dtype=torch.bool))


def test_the_checks_keep_the_ports_compile_clean():
    """The boundary checks are plain Python on shapes and dtypes (the value checks run in eager mode only)."""
    import torch._dynamo

    ids, mask = torch.randint(0, 20, (2, 10)), padding_mask(torch.long)
    cases = [
        (io_model(), (torch.randn(2, 10, 8), mask, torch.randn(3, 8))),
        (lm_model(), (ids, mask)),
        (block_model(), (torch.randn(2, 4, 16), torch.randn(2, 10, 8), mask)),
    ]
    for model, args in cases:
        torch._dynamo.reset()
        assert torch._dynamo.explain(model)(*args).graph_break_count == 0, type(model).__name__


def test_an_empty_batch_is_an_error_as_in_every_model():
    with pytest.raises(ValueError, match=re.escape("expected data of shape (B, M, 8) with no zero-size axis")):
        io_model()(torch.randn(0, 10, 8), queries=torch.randn(3, 8))
    with pytest.raises(ValueError, match="no zero-size axis"):
        block_model()(torch.randn(0, 4, 16), torch.randn(0, 10, 8))
    with pytest.raises(ValueError, match="at least one token"):
        lm_model()(torch.zeros(0, 10, dtype=torch.long))
