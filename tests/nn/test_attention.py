"""MultiHeadAttention (SDPA) against an independent einsum reference, masks, attention maps, dropout, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from perceiver.core.encoder import EncoderConfig, PerceiverEncoder
from perceiver.nn import (
    MLP,
    CrossAttentionLayer,
    MultiHeadAttention,
    SelfAttentionLayer,
    normalize_inputs,
    reassociation_saves,
)


def reference_attention(mha: MultiHeadAttention, x_q, x_kv=None, mask=None, dtype=torch.float64):
    """Plain multi-head attention in `dtype` with the module's weights; fully masked query rows give zeros.

    Returns the output `(B, N, out_dim)` and the probabilities `(B, H, N, M)`.
    """
    x_kv = x_q if x_kv is None else x_kv
    h = mha.num_heads

    def proj(layer, x):
        bias = None if layer.bias is None else layer.bias.to(dtype)
        return F.linear(x.to(dtype), layer.weight.to(dtype), bias)

    q, k, v = proj(mha.q_proj, x_q), proj(mha.k_proj, x_kv), proj(mha.v_proj, x_kv)
    q, k, v = (t.reshape(*t.shape[:2], h, -1) for t in (q, k, v))  # (B, L, H, d)
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    probs = scores.softmax(dim=-1)
    if mask is not None:
        probs = torch.where(mask.any(-1)[:, None, None, None], probs, torch.zeros_like(probs))  # NaN rows -> 0
    out = torch.einsum("bhnm,bmhd->bnhd", probs, v).flatten(2)
    out = proj(mha.o_proj, out)
    if mask is not None:
        out = out * mask.any(-1)[:, None, None].to(dtype)
    return out, probs


def random_mask(b: int, m: int) -> torch.Tensor:
    """A key mask with a different number of valid keys per sample, at least one valid in each."""
    mask = torch.rand(b, m) > 0.4
    mask[:, 0] = True
    return mask


CASES = [
    # q_dim, kv_dim, heads, qk_channels, v_channels, out_dim, qkv_bias
    pytest.param(16, 16, 1, None, None, None, True, id="self-1head"),
    pytest.param(16, 16, 4, None, None, None, False, id="self-4heads-nobias"),
    pytest.param(16, 7, 2, 8, 12, 10, True, id="cross-qk8-v12-out10"),
    pytest.param(12, 5, 3, 6, 9, None, False, id="cross-3heads-nobias"),
]


@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize(("q_dim", "kv_dim", "heads", "qk", "v", "out_dim", "bias"), CASES)
def test_sdpa_matches_reference_fp32(q_dim, kv_dim, heads, qk, v, out_dim, bias, with_mask):
    mha = MultiHeadAttention(q_dim, kv_dim, heads, qk, v, out_dim, qkv_bias=bias).eval()
    x_q, x_kv = torch.randn(3, 5, q_dim), torch.randn(3, 11, kv_dim)
    mask = random_mask(3, 11) if with_mask else None
    out, probs = mha(x_q, x_kv, kv_mask=mask)
    expected, _ = reference_attention(mha, x_q, x_kv, mask)
    assert probs is None
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


def test_self_attention_defaults_kv_to_queries():
    mha = MultiHeadAttention(16, num_heads=2).eval()
    x = torch.randn(2, 6, 16)
    torch.testing.assert_close(mha(x)[0], mha(x, x)[0], atol=0, rtol=0)
    torch.testing.assert_close(mha(x)[0].double(), reference_attention(mha, x)[0], atol=1e-5, rtol=0)


def test_mask_changes_the_output():
    """The reference check above is only meaningful if masking matters for these inputs."""
    mha = MultiHeadAttention(16, 7, 2).eval()
    x_q, x_kv = torch.randn(2, 5, 16), torch.randn(2, 11, 7)
    mask = random_mask(2, 11)
    assert (mha(x_q, x_kv, mask)[0] - mha(x_q, x_kv)[0]).abs().max() > 1e-2


@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
def test_sdpa_bf16_weights_within_tolerance(with_mask):
    mha = MultiHeadAttention(32, 24, 4, 32, 16, qkv_bias=True).eval()
    x_q, x_kv = torch.randn(2, 8, 32), torch.randn(2, 40, 24)
    mask = random_mask(2, 40) if with_mask else None
    mha_bf16 = mha.to(torch.bfloat16)
    x_q, x_kv = x_q.bfloat16(), x_kv.bfloat16()
    out, _ = mha_bf16(x_q, x_kv, kv_mask=mask)
    assert out.dtype == torch.bfloat16
    expected, _ = reference_attention(mha_bf16, x_q, x_kv, mask)  # same bf16 weights and inputs, in fp64
    torch.testing.assert_close(out.double(), expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
def test_sdpa_bf16_autocast_within_tolerance(with_mask):
    mha = MultiHeadAttention(32, 24, 4, 32, 16).eval()
    x_q, x_kv = torch.randn(2, 8, 32), torch.randn(2, 40, 24)
    mask = random_mask(2, 40) if with_mask else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = mha(x_q, x_kv, kv_mask=mask)
    assert out.dtype == torch.bfloat16
    expected, _ = reference_attention(mha, x_q, x_kv, mask)
    torch.testing.assert_close(out.double(), expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("return_attention", [False, True])
def test_fully_masked_rows_give_zeros_not_nan(return_attention):
    mha = MultiHeadAttention(16, 8, 2).train()  # dropout 0: training mode must behave the same
    x_q = torch.randn(3, 4, 16, requires_grad=True)
    x_kv = torch.randn(3, 9, 8, requires_grad=True)
    mask = random_mask(3, 9)
    mask[1] = False  # sample 1 has no valid key at all
    out, probs = mha(x_q, x_kv, mask, return_attention=return_attention)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    expected, expected_probs = reference_attention(mha, x_q, x_kv, mask)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    if return_attention:
        assert torch.equal(probs[1], torch.zeros_like(probs[1]))
        torch.testing.assert_close(probs.double(), expected_probs, atol=1e-6, rtol=0)
    out.square().sum().backward()
    assert torch.isfinite(x_q.grad).all() and torch.isfinite(x_kv.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in mha.parameters())
    assert torch.equal(x_kv.grad[1], torch.zeros_like(x_kv.grad[1]))  # nothing flows from masked keys


def test_attention_maps_sum_to_one_over_valid_keys():
    mha = MultiHeadAttention(16, 8, 4, 16, 8).eval()
    x_q, x_kv = torch.randn(2, 5, 16), torch.randn(2, 12, 8)
    mask = random_mask(2, 12)
    out_maps, probs = mha(x_q, x_kv, mask, return_attention=True)
    assert probs.shape == (2, 4, 5, 12)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 5))
    masked = ~mask[:, None, None, :].expand_as(probs)
    assert torch.equal(probs[masked], torch.zeros_like(probs[masked]))
    assert (probs[~masked] > 0).all()
    _, expected_probs = reference_attention(mha, x_q, x_kv, mask)
    torch.testing.assert_close(probs.double(), expected_probs, atol=1e-6, rtol=0)
    # Asking for the maps does not change the output (materialising path == SDPA path).
    torch.testing.assert_close(out_maps, mha(x_q, x_kv, mask)[0], atol=1e-6, rtol=0)


def test_separate_qk_and_v_channel_shapes():
    mha = MultiHeadAttention(q_dim=20, kv_dim=6, num_heads=2, qk_channels=8, v_channels=14, out_dim=10)
    assert mha.q_proj.weight.shape == (8, 20)
    assert mha.k_proj.weight.shape == (8, 6)
    assert mha.v_proj.weight.shape == (14, 6)
    assert mha.o_proj.weight.shape == (10, 14)
    out, probs = mha(torch.randn(3, 4, 20), torch.randn(3, 9, 6), return_attention=True)
    assert out.shape == (3, 4, 10)
    assert probs.shape == (3, 2, 4, 9)


def test_defaults_follow_query_width():
    mha = MultiHeadAttention(12, 5, 3)
    assert mha.q_proj.weight.shape == (12, 12)
    assert mha.k_proj.weight.shape == (12, 5)
    assert mha.v_proj.weight.shape == (12, 5)
    assert mha.o_proj.weight.shape == (12, 12)


def test_bias_switches():
    no_bias = MultiHeadAttention(8, qkv_bias=False, out_bias=False)
    assert all(p.bias is None for p in (no_bias.q_proj, no_bias.k_proj, no_bias.v_proj, no_bias.o_proj))
    bias = MultiHeadAttention(8, qkv_bias=True, out_bias=True)
    assert all(p.bias is not None for p in (bias.q_proj, bias.k_proj, bias.v_proj, bias.o_proj))


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"q_dim": 16, "num_heads": 3}, ["16", "3"]),
        ({"q_dim": 16, "num_heads": 4, "qk_channels": 10}, ["qk_channels", "10", "4"]),
        ({"q_dim": 16, "num_heads": 4, "v_channels": 6}, ["v_channels", "6", "4"]),
        ({"q_dim": 16, "num_heads": 0}, ["num_heads", "0"]),
    ],
)
def test_heads_not_dividing_channels_raise(kwargs, fragments):
    with pytest.raises(ValueError) as info:
        MultiHeadAttention(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_bad_dropout_raises(p):
    with pytest.raises(ValueError, match=str(p)):
        MultiHeadAttention(8, dropout=p)
    with pytest.raises(ValueError, match=str(p)):
        MLP(8, dropout=p)
    with pytest.raises(ValueError, match=str(p)):
        CrossAttentionLayer(8, 4, attn_dropout=p)
    with pytest.raises(ValueError, match=str(p)):
        SelfAttentionLayer(8, 2, ff_dropout=p)


def test_dropout_only_in_train_mode():
    mha = MultiHeadAttention(16, 8, 2, dropout=0.5)
    x_q, x_kv = torch.randn(2, 6, 16), torch.randn(2, 30, 8)
    mha.eval()
    eval_out = mha(x_q, x_kv)[0]
    torch.testing.assert_close(mha(x_q, x_kv)[0], eval_out, atol=0, rtol=0)
    torch.testing.assert_close(eval_out.double(), reference_attention(mha, x_q, x_kv)[0], atol=1e-5, rtol=0)
    mha.train()
    train_a, train_b = mha(x_q, x_kv)[0], mha(x_q, x_kv)[0]
    assert (train_a - eval_out).abs().max() > 1e-3
    assert (train_a - train_b).abs().max() > 1e-3
    # The materialising path drops out too, but returns the undropped probabilities.
    out_maps, probs = mha(x_q, x_kv, return_attention=True)
    assert (out_maps - eval_out).abs().max() > 1e-3
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 6))


# ------------------------------------------------------------------------------------- reassociated attention


@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize(("q_dim", "kv_dim", "heads", "qk", "v", "out_dim", "bias"), CASES)
def test_reassociated_equals_reference_fp64(q_dim, kv_dim, heads, qk, v, out_dim, bias, with_mask):
    """The absorbed-query form is the same function: output to fp64 rounding, with a fully masked sample."""
    mha = MultiHeadAttention(q_dim, kv_dim, heads, qk, v, out_dim, qkv_bias=bias).double().eval()
    mha.reassociate = True
    x_q, x_kv = torch.randn(3, 5, q_dim, dtype=torch.double), torch.randn(3, 11, kv_dim, dtype=torch.double)
    mask = random_mask(3, 11) if with_mask else None
    if with_mask:
        mask[2] = False
    expected, _ = reference_attention(mha, x_q, x_kv, mask)
    torch.testing.assert_close(mha(x_q, x_kv, mask)[0], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_reassociated_gradients_equal_standard(bias):
    mha = MultiHeadAttention(24, 6, 2, 16, 20, qkv_bias=bias).double().train()
    x_q = torch.randn(2, 4, 24, dtype=torch.double, requires_grad=True)
    x_kv = torch.randn(2, 30, 6, dtype=torch.double, requires_grad=True)
    mask = random_mask(2, 30)
    grads = []
    for reassociate in (False, True):
        mha.reassociate = reassociate
        out = mha(x_q, x_kv, mask)[0]
        grads.append(torch.autograd.grad(out.square().sum(), [x_q, x_kv, *mha.parameters()]))
    for standard, reassociated in zip(*grads):
        torch.testing.assert_close(reassociated, standard, atol=1e-12, rtol=0)


def test_reassociation_is_chosen_once_by_cost():
    """The encoder reassociates where it saves work (latents <- 224x224 pixels, 3-channel points), not for byte-level
    MLM shapes; the choice is made at construction (the attention holds a plain bool) and can be forced."""
    assert reassociation_saves(512, 512, 1, 512, 512)  # vision-perceiver-learned's encoder cross-attention
    assert not reassociation_saves(256, 768, 8, 256, 1280)  # language-perceiver's
    vision = PerceiverEncoder(
        EncoderConfig(input_dim=512, num_latents=512, latent_dim=1024, num_self_attends_per_block=0)
    )
    assert vision.cross_attends[0].attention.reassociate is True
    text = PerceiverEncoder(
        EncoderConfig(
            768, 256, 1280, cross_heads=8, cross_qk_channels=256, cross_v_channels=1280, num_self_attends_per_block=0
        )
    )
    assert text.cross_attends[0].attention.reassociate is False
    forced = EncoderConfig(input_dim=512, num_latents=512, latent_dim=64, num_self_attends_per_block=0)
    forced.reassociate_cross_attention = False
    assert PerceiverEncoder(forced).cross_attends[0].attention.reassociate is False


def test_reassociated_maps_use_the_standard_form():
    """Attention maps are materialised from the standard form; the output agrees with the reassociated one."""
    small = MultiHeadAttention(64, 3, 1, reassociate=True).double().eval()
    x_q, x_kv = torch.randn(1, 4, 64, dtype=torch.double), torch.randn(1, 100, 3, dtype=torch.double)
    out = small(x_q, x_kv)[0]
    out_maps, probs = small(x_q, x_kv, return_attention=True)
    expected, expected_probs = reference_attention(small, x_q, x_kv)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(out_maps, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(probs, expected_probs, atol=1e-12, rtol=0)


def test_reassociated_dropout_drops_the_same_probabilities():
    """With the same dropout mask, both forms agree: the value bias is weighted by the dropped rows' sums."""
    mha = MultiHeadAttention(16, 4, 2, dropout=0.5).double().train()
    x_q, x_kv = torch.randn(2, 6, 16, dtype=torch.double), torch.randn(2, 25, 4, dtype=torch.double)
    outs = []
    for reassociate in (False, True):
        mha.reassociate = reassociate
        torch.manual_seed(3)
        outs.append(mha(x_q, x_kv)[0])
    torch.testing.assert_close(outs[1], outs[0], atol=1e-12, rtol=0)
    mha.eval()
    assert (outs[1] - mha(x_q, x_kv)[0]).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------- MLP and layers


def test_mlp_gelu_and_geglu():
    x = torch.randn(2, 3, 8)
    gelu = MLP(8, widening_factor=2, activation="gelu")
    assert gelu.fc1.weight.shape == (16, 8) and gelu.fc2.weight.shape == (8, 16)
    torch.testing.assert_close(gelu(x), gelu.fc2(F.gelu(gelu.fc1(x))))
    geglu = MLP(8, widening_factor=2, activation="geglu")
    assert geglu.fc1.weight.shape == (32, 8) and geglu.fc2.weight.shape == (8, 16)
    a, gates = geglu.fc1(x).split(16, dim=-1)
    torch.testing.assert_close(geglu(x), geglu.fc2(a * F.gelu(gates)))
    with pytest.raises(ValueError, match="relu"):
        MLP(8, activation="relu")


@pytest.mark.parametrize("use_query_residual", [True, False])
def test_cross_attention_layer_is_pre_ln(use_query_residual):
    layer = CrossAttentionLayer(16, 6, num_heads=2, widening_factor=2, use_query_residual=use_query_residual).eval()
    for norm in (layer.q_norm, layer.kv_norm, layer.mlp_norm):  # non-trivial affine LayerNorms
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x, kv, mask = torch.randn(2, 4, 16), torch.randn(2, 10, 6), random_mask(2, 10)
    out, probs = layer(x, kv, mask)
    h = reference_attention(layer.attention, layer.q_norm(x), layer.kv_norm(kv), mask)[0].float()
    if use_query_residual:
        h = h + x
    expected = h + layer.mlp(layer.mlp_norm(h))
    assert probs is None
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- inputs normalised once, LayerNorm affine folded


@pytest.mark.parametrize("dropout", [0.0, 0.5], ids=["nodrop", "drop"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("mode", ["standard", "reassociated", "maps", "inverted"])
def test_folded_layer_norm_is_the_same_layer(mode, bias, dropout):
    """`kv_normalized=True` (inputs normalised and zero-padded once, the layer's LayerNorm affine folded into its key
    and value projections) is the same function as normalising inside the layer: outputs, maps and the gradients of
    every parameter and input, to fp64 rounding, with a mask and with dropout (same seed, same masks)."""
    layer = CrossAttentionLayer(12, 5, num_heads=2, qk_channels=8, v_channels=6, qkv_bias=bias, attn_dropout=dropout)
    layer = layer.double().train(dropout > 0)
    layer.attention.reassociate = mode == "reassociated"
    torch.nn.init.normal_(layer.kv_norm.weight)
    torch.nn.init.normal_(layer.kv_norm.bias)
    x = torch.randn(2, 4, 12, dtype=torch.double, requires_grad=True)
    kv = torch.randn(2, 9, 5, dtype=torch.double, requires_grad=True)
    mask = random_mask(2, 9)
    runs = []
    for folded in (False, True):
        torch.manual_seed(0)
        z = normalize_inputs(kv, layer.kv_norm.eps) if folded else kv
        out, probs = layer(x, z, mask, mode == "maps", mode == "inverted", kv_normalized=folded)
        loss = out.square().sum() + (0 if probs is None else probs.square().sum())
        runs.append((out, probs, torch.autograd.grad(loss, [x, kv, *layer.parameters()], allow_unused=True)))
    (out0, p0, g0), (out1, p1, g1) = runs
    torch.testing.assert_close(out1, out0, atol=1e-12, rtol=0)
    if mode == "maps":
        torch.testing.assert_close(p1, p0, atol=1e-12, rtol=0)
    for a, b in zip(g1, g0):
        if b is None or a is None:
            assert a is None and b is None or (a if b is None else b).abs().max() < 1e-12
        else:
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_encoder_normalises_its_inputs_once_for_all_cross_attends(monkeypatch):
    """Six cross-attends over the same inputs (the classic Perceiver) normalise them once, and the encoder's output
    equals running each layer on the raw inputs (non-trivial LayerNorm affines, one eps)."""
    import perceiver.core.encoder as encoder_module

    cfg = EncoderConfig(input_dim=5, num_latents=4, latent_dim=16, num_cross_attends=3, num_self_attends_per_block=1)
    enc = PerceiverEncoder(cfg).double().eval()
    for layer in enc.cross_attends:
        torch.nn.init.normal_(layer.kv_norm.weight)
        torch.nn.init.normal_(layer.kv_norm.bias)
    calls = []
    real = encoder_module.normalize_inputs
    monkeypatch.setattr(encoder_module, "normalize_inputs", lambda t, eps: calls.append(eps) or real(t, eps))
    inputs, mask = torch.randn(2, 40, 5, dtype=torch.double), random_mask(2, 40)
    got = enc(inputs, mask)
    assert len(calls) == 1
    x = enc.latents.expand(2, -1, -1)
    for ci, li in zip(enc.cross_index, enc.latent_index):
        x = enc.cross_attends[ci](x, inputs, mask)[0]
        for layer in enc.latent_blocks[li]:
            x = layer(x)
    torch.testing.assert_close(got, x, atol=1e-12, rtol=0)


def test_folding_needs_separate_key_value_inputs():
    mha = MultiHeadAttention(8, 8, queries_contribute_kv=True)
    with pytest.raises(ValueError, match="kv_affine needs a separate key/value input"):
        mha(torch.randn(1, 2, 8), torch.randn(1, 3, 8), kv_affine=(torch.ones(8), torch.zeros(8)))


def test_self_attention_layer_is_pre_ln():
    layer = SelfAttentionLayer(16, num_heads=4, widening_factor=2).eval()
    torch.nn.init.normal_(layer.norm.weight)
    x, mask = torch.randn(2, 7, 16), random_mask(2, 7)
    h = x + reference_attention(layer.attention, layer.norm(x), mask=mask)[0].float()
    expected = h + layer.mlp(layer.mlp_norm(h))
    torch.testing.assert_close(layer(x, mask), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("reassociate", [False, True])
def test_non_finite_values_at_masked_keys_never_reach_the_output(reassociate):
    """NaN / inf at masked-out keys (padding) leave every valid output unchanged and finite."""
    mha = MultiHeadAttention(16, 6, 2, reassociate=reassociate).eval()
    x_q, x_kv = torch.randn(2, 3, 16), torch.randn(2, 9, 6)
    mask = random_mask(2, 9)
    mask[1] = False
    clean = mha(x_q, x_kv, mask)[0]
    dirty = x_kv.masked_fill(~mask[..., None], float("nan"))
    dirty[0, ~mask[0]] = float("inf")
    out = mha(x_q, dirty, mask)[0]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, clean, atol=1e-6, rtol=0)


@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_helper_equals_sdpa_for_unequal_head_widths(masked):
    """The language perceiver's 32-channel queries / keys and 160-channel values: same outputs and gradients as
    `F.scaled_dot_product_attention` (which runs its math path for these shapes off CUDA)."""
    from perceiver.nn.attention import scaled_dot_product_attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 4, 7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 4, 7, 40, generator=g, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(2, 1, 1, 7, generator=g) > 0.3) | (torch.arange(7) == 0) if masked else None
    ours = scaled_dot_product_attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = scaled_dot_product_attention(q.float(), k.float(), v.float(), mask)
    assert out.shape == (2, 4, 5, 40) and torch.isfinite(out).all()


@pytest.mark.parametrize("reassociate", [False, True])
def test_matmul_kernel_equals_sdpa_with_masks_and_gradients(reassociate):
    from perceiver.nn.attention import use_matmul_attention

    torch.manual_seed(0)
    mha = MultiHeadAttention(16, kv_dim=12, num_heads=2, qk_channels=8, v_channels=16, reassociate=reassociate)
    x_q, x_kv = torch.randn(3, 5, 16), torch.randn(3, 7, 12)
    mask = torch.rand(3, 7) > 0.4
    mask[1] = False  # a row without any valid key: zeros, never NaN
    twin = use_matmul_attention(mha)
    assert mha.kernel == "sdpa" and twin.kernel == "matmul"
    assert twin.q_proj.weight is mha.q_proj.weight  # parameters shared, the original untouched
    out, _ = mha(x_q, x_kv, mask)
    out.square().sum().backward()
    expected = {n: p.grad.clone() for n, p in mha.named_parameters()}
    mha.zero_grad()
    got, _ = twin(x_q, x_kv, mask)
    got.square().sum().backward()
    torch.testing.assert_close(got, out, atol=1e-5, rtol=1e-5)
    assert torch.all(got[1] == 0)
    for n, p in mha.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], atol=1e-5, rtol=1e-4, msg=n)
    ref, _ = reference_attention(mha, x_q, x_kv, mask)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_matmul_kernel_bad_value_and_model_without_attention():
    from perceiver.nn.attention import use_matmul_attention

    with pytest.raises(ValueError, match=r"kernel must be one of \('sdpa', 'matmul'\), got 'flash'"):
        MultiHeadAttention(8, kernel="flash")
    with pytest.raises(ValueError, match="has no attention with a kernel choice"):
        use_matmul_attention(torch.nn.Linear(2, 2))


def test_matmul_attention_is_causal_equals_sdpa_and_rejects_a_mask_beside_it():
    from perceiver.nn.attention import matmul_attention

    q, k, v = (torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(matmul_attention(q, k, v, is_causal=True), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="expected attn_mask or is_causal, got both"):
        matmul_attention(q, k, v, torch.ones(6, 6, dtype=torch.bool), is_causal=True)
