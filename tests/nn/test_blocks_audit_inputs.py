"""The attention blocks check the inputs a researcher composing them hands over, by shape and dtype only: an unbatched
`(N, C)` input, a wrong width, a batch that does not match the keys, integer or mismatched-dtype inputs and zero or
non-integer sizes are a ValueError / TypeError naming what was expected and what came. Before, they failed deep in
torch (`mat1 and mat2 shapes cannot be multiplied (20x8 and 32x32)`, `The size of tensor a (2) must match ...`,
`mat1 and mat2 must have the same dtype`), and `kv_dim=0` built a module. Valid inputs (autocast included) and
`torch.compile(fullgraph=True)` are unchanged."""

from __future__ import annotations

import re

import pytest
import torch

from perceiver.checks import InputTypeError
from perceiver.nn import MLP, CrossAttentionLayer, MultiHeadAttention, SelfAttentionLayer


def test_unbatched_inputs_are_an_error_that_says_to_add_a_batch_axis():
    attention, layer = MultiHeadAttention(32, num_heads=4), SelfAttentionLayer(32, num_heads=4)
    hint = re.escape("got (5, 32) (one sequence: add a batch axis")
    with pytest.raises(ValueError, match=re.escape("expected x_q of shape (B, N, 32), ") + hint):
        attention(torch.randn(5, 32))
    with pytest.raises(ValueError, match=re.escape("expected x of shape (B, N, 32), ") + hint):
        layer(torch.randn(5, 32))
    cross = CrossAttentionLayer(32, 16, num_heads=2)
    with pytest.raises(ValueError, match=re.escape("expected x of shape (B, N, 32), ") + hint):
        cross(torch.randn(5, 32), torch.randn(7, 16))
    with pytest.raises(ValueError, match=re.escape("expected x_q of shape (B, N, 32), got (2, 3, 5, 32)")):
        attention(torch.randn(2, 3, 5, 32))


def test_wrong_widths_and_batches_are_named():
    attention = MultiHeadAttention(32, 16, num_heads=2)
    q, kv = torch.randn(2, 5, 32), torch.randn(2, 7, 16)
    with pytest.raises(ValueError, match=re.escape("expected x_kv of shape (2, M, 16), got (2, 7, 17)")):
        attention(q, torch.randn(2, 7, 17))
    with pytest.raises(ValueError, match=re.escape("expected x_q of shape (B, N, 32), got (2, 5, 31)")):
        attention(torch.randn(2, 5, 31), kv)
    for batch in (1, 3):  # no silent broadcast of one batch's keys to all queries
        with pytest.raises(ValueError, match=re.escape(f"expected x_kv of shape (2, M, 16), got ({batch}, 7, 16)")):
            attention(q, torch.randn(batch, 7, 16))
    cross = CrossAttentionLayer(32, 16, num_heads=2)
    with pytest.raises(ValueError, match=re.escape("expected kv of shape (2, M, 16), got (3, 7, 16)")):
        cross(q, torch.randn(3, 7, 16))
    with pytest.raises(ValueError, match=re.escape("expected an input of shape (..., 32), got (2, 5, 31)")):
        MLP(32)(torch.randn(2, 5, 31))


def test_integer_and_mismatched_dtype_inputs_are_a_type_error_naming_both():
    attention = MultiHeadAttention(32, 16, num_heads=2)
    q, kv = torch.randn(2, 5, 32), torch.randn(2, 7, 16)
    with pytest.raises(InputTypeError, match="expected x_q as a floating-point tensor .* got dtype torch.int64"):
        attention(q.long(), kv)
    with pytest.raises(TypeError, match="expected x_q of dtype torch.float32 .the weights'., got torch.bfloat16"):
        attention(q.bfloat16(), kv.bfloat16())
    with pytest.raises(TypeError, match="expected x_kv of dtype torch.float32 .the weights'., got torch.float16"):
        attention(q, kv.half())
    layer, mlp = SelfAttentionLayer(32, num_heads=4), MLP(32)  # the layers name their own arguments
    with pytest.raises(TypeError, match="expected x of dtype torch.float32 .the weights'., got torch.bfloat16"):
        layer(q.bfloat16())
    with pytest.raises(TypeError, match="expected x of dtype torch.float32 .the weights'., got torch.float16"):
        CrossAttentionLayer(32, 16, num_heads=2)(q.half(), kv.half())
    with pytest.raises(TypeError, match="expected the input of dtype torch.float32 .the weights'., got torch.bfloat16"):
        mlp(q.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what autocast is for: low-precision inputs, fp32 weights
        out, _ = attention(q.bfloat16(), kv.bfloat16())
    assert out.shape == (2, 5, 32)
    bf16 = MultiHeadAttention(32, 16, num_heads=2).to(torch.bfloat16)
    assert bf16(q.bfloat16(), kv.bfloat16())[0].dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"q_dim": 32, "kv_dim": 0}, "kv_dim must be a positive integer, got 0"),
        ({"q_dim": 32.0}, "q_dim must be a positive integer, got 32.0"),
        ({"q_dim": 32, "out_dim": -1}, "out_dim must be a positive integer, got -1"),
    ],
)
def test_sizes_are_checked_when_the_module_is_built(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MultiHeadAttention(**kwargs)


def test_layers_check_their_sizes_when_built():
    with pytest.raises(ValueError, match="kv_dim must be a positive integer, got 0"):
        CrossAttentionLayer(32, 0)
    with pytest.raises(ValueError, match="dim must be a positive integer, got 0"):
        SelfAttentionLayer(0)


@pytest.mark.parametrize("reassociate", [False, True])
def test_valid_compositions_still_run_and_compile_whole(reassociate):
    torch.manual_seed(0)
    cross = CrossAttentionLayer(32, 16, num_heads=2, reassociate=reassociate).eval()
    latent = SelfAttentionLayer(32, num_heads=4).eval()

    def forward(x, kv, mask):
        h, _ = cross(x, kv, mask)
        return latent(h, None)

    x, kv = torch.randn(2, 4, 32), torch.randn(2, 9, 16)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        expected = forward(x, kv, mask)
        compiled = torch.compile(forward, fullgraph=True, dynamic=False)(x, kv, mask)
    torch.testing.assert_close(compiled, expected, atol=1e-5, rtol=1e-5)


def test_cross_attention_repr_shows_a_dropped_query_residual():
    assert "use_query_residual=False" in repr(CrossAttentionLayer(8, 4, use_query_residual=False))
    assert "use_query_residual" not in repr(CrossAttentionLayer(8, 4))


def test_the_checks_run_on_the_meta_device_for_shape_inference():
    with torch.device("meta"):
        layer = SelfAttentionLayer(32, num_heads=4)
        assert layer(torch.randn(2, 5, 32)).shape == (2, 5, 32)
        with pytest.raises(TypeError, match="expected x of dtype torch.float32"):
            layer(torch.randn(2, 5, 32, dtype=torch.bfloat16))
