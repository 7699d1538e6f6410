"""The key masks the layers of `perceiver.nn` take: bool, or 0 / 1 integer / float masks as tokenizers give them (the
models' policy, docs/reliability.md); other values or shapes are a ValueError naming what came. They failed inside
torch: `masked_fill_ only supports boolean masks` for integer masks, `"bitwise_or_cpu" not implemented for 'Float'`
for float ones, and an SDPA-style additive mask (0 / -inf) got the same unclear errors."""

from __future__ import annotations

import re

import pytest
import torch

from perceiver.nn import CrossAttentionLayer, MultiHeadAttention, SelfAttentionLayer


def key_mask() -> torch.Tensor:
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1] = False  # a row with no valid key: zeros, never NaN
    return mask


@pytest.mark.parametrize("reassociate", [False, True])
@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.uint8, torch.float32, torch.float16])
def test_zero_one_masks_act_as_the_boolean_mask(reassociate, dtype):
    attention = MultiHeadAttention(16, 5, num_heads=2, qk_channels=8, reassociate=reassociate).eval()
    q, kv = torch.randn(2, 4, 16), torch.randn(2, 7, 5)
    with torch.no_grad():
        expected, _ = attention(q, kv, key_mask())
        out, _ = attention(q, kv, key_mask().to(dtype))
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert (out[1] == 0).all()


def test_layers_take_zero_one_masks():
    x, kv = torch.randn(2, 7, 16), torch.randn(2, 7, 5)
    cross, self_attention = CrossAttentionLayer(16, 5, num_heads=2).eval(), SelfAttentionLayer(16, 2).eval()
    with torch.no_grad():
        torch.testing.assert_close(cross(x, kv, key_mask().long())[0], cross(x, kv, key_mask())[0])
        torch.testing.assert_close(self_attention(x, key_mask().float()), self_attention(x, key_mask()))


def test_additive_masks_and_masks_of_another_shape_are_an_error_naming_them():
    attention = MultiHeadAttention(16, 5, num_heads=2)
    q, kv = torch.randn(2, 4, 16), torch.randn(2, 7, 5)
    additive = torch.zeros(2, 7).masked_fill(~key_mask(), float("-inf"))
    with pytest.raises(ValueError, match="expected kv_mask as bool or values 0 .padding. or 1 .valid."):
        attention(q, kv, additive)
    with pytest.raises(ValueError, match="floating mask of zeros only, which masks every position"):
        attention(q, kv, torch.zeros(2, 7))  # torch's additive "mask nothing": here it would mask every key
    with pytest.raises(ValueError, match=re.escape("expected kv_mask of shape (2, 7), got (2, 4)")):
        attention(q, kv, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=re.escape("expected kv_mask of shape (2, 4), got (2, 7)")):
        attention(q, kv_mask=key_mask())  # self-attention: one entry per query
