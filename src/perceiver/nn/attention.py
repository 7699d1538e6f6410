"""Attention and the pre-LN layers every Perceiver is built from.

One `MultiHeadAttention` serves cross-attention (latents <- inputs, queries <- latents) and self-attention.
It runs through `F.scaled_dot_product_attention`, which picks fused kernels (flash / memory-efficient on GPU, a
fused flash kernel on CPU), so the `(B, H, N, M)` attention matrix is not materialised, except when a caller asks
for attention maps, and when training on CPU, where the fused kernel's backward is several times slower than plain
matmul attention (see `_prefer_math_kernel`).

Cross-attention from few queries to many narrow inputs (latents <- pixels) is computed in reassociated form when
that is cheaper, see `MultiHeadAttention.reassociate`.

Shapes: queries `(B, N, Cq)`, keys/values `(B, M, Ckv)`, key mask `(B, M)` boolean with True = valid.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceiver.nn.inference import CastCachingLinear, Linear, autograd_records, grad_reaches

Activation = Literal["gelu", "geglu"]


def _check_heads(channels: int, num_heads: int, what: str) -> None:
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    if channels < 1 or channels % num_heads != 0:
        raise ValueError(f"{what} ({channels}) must be a positive multiple of num_heads ({num_heads})")


def _check_dropout(p: float, what: str) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {p}")


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query and key/value widths.

    Args:
        q_dim: channels of the query input `Cq`.
        kv_dim: channels of the key/value input `Ckv` (defaults to `q_dim`).
        num_heads: number of heads `H`; must divide `qk_channels` and `v_channels`.
        qk_channels: total channels of queries and keys (defaults to `q_dim`).
        v_channels: total channels of values (defaults to `qk_channels`).
        out_dim: output channels (defaults to `q_dim`).
        qkv_bias: bias on the q, k and v projections (perceiver-pytorch has none, DeepMind/HF have them).
        out_bias: bias on the output projection.
        dropout: dropout on the attention probabilities (training only).

    Reassociated attention (`reassociate`): per head, `q_h K_h^T = (q_h W_k,h) X^T + const` and
    `P_h V_h = (P_h X) W_v,h^T + b_v,h`, where `X` `(B, M, Ckv)` is the key/value input and the row constant
    `q_h . b_k,h` does not change a softmax (biases are carried exactly, see `_reassociated_attention`). Attending
    with the `(N, Ckv)` "absorbed" queries to `X` itself skips projecting all `M` inputs to keys and values: the
    same function (up to rounding) in `2 H N M Ckv` multiply-adds instead of `M Ckv (Dqk + Dv) + N M (Dqk + Dv)`.
    vision-perceiver-learned's encoder (N=512 latents, M=50176 pixels of 512 channels, Dqk=Dv=512) needs half, and
    its `(B, M, Dqk + Dv)` keys and values are never stored for backward. `None` (default) picks the form with at
    least 20% fewer multiply-adds for each call; True / False force one (attention maps always use the standard
    form). The cost model counts multiply-adds only; its choices were measured on CPU.
    """

    def __init__(
        self,
        q_dim: int,
        kv_dim: int | None = None,
        num_heads: int = 1,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        out_dim: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        kv_dim = q_dim if kv_dim is None else kv_dim
        qk_channels = q_dim if qk_channels is None else qk_channels
        v_channels = qk_channels if v_channels is None else v_channels
        out_dim = q_dim if out_dim is None else out_dim
        _check_heads(qk_channels, num_heads, "qk_channels")
        _check_heads(v_channels, num_heads, "v_channels")
        _check_dropout(dropout, "attention dropout")
        self.num_heads = num_heads
        self.qk_channels = qk_channels
        self.v_channels = v_channels
        self.dropout = dropout
        self.reassociate: bool | None = None
        self.q_proj = Linear(q_dim, qk_channels, bias=qkv_bias)
        self.k_proj = Linear(kv_dim, qk_channels, bias=qkv_bias)
        self.v_proj = Linear(kv_dim, v_channels, bias=qkv_bias)
        self.o_proj = Linear(v_channels, out_dim, bias=out_bias)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self,
        x_q: Tensor,
        x_kv: Tensor | None = None,
        kv_mask: Tensor | None = None,
        return_attention: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from `x_q` `(B, N, Cq)` to `x_kv` `(B, M, Ckv)` (self-attention when None).

        `kv_mask` `(B, M)` is boolean, True = valid. A query row without any valid key returns zeros.
        Returns the output `(B, N, out_dim)` and, if `return_attention`, the probabilities `(B, H, N, M)`.
        """
        x_kv = x_q if x_kv is None else x_kv
        attn_mask = has_valid = None
        if kv_mask is not None and kv_mask.device.type == "cpu" and bool(kv_mask.all()):
            kv_mask = None  # every key valid (an unpadded batch): same result without masking; a free check on CPU
        if kv_mask is not None:
            # Rows with no valid key would softmax over nothing (NaN). Let them attend everywhere, then zero them.
            # Elementwise on (B, M): no host sync, so this stays cheap on GPU as well.
            has_valid = kv_mask.any(dim=-1)
            attn_mask = (kv_mask | ~has_valid[:, None])[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        probs = None
        q = self._heads(self.q_proj(x_q))
        if not return_attention and self._use_reassociated(x_q.shape[1], x_kv.shape[1], x_kv.shape[2]):
            out = self._reassociated_attention(q, x_kv, attn_mask, dropout)
        else:
            k = self._heads(self.k_proj(x_kv))
            v = self._heads(self.v_proj(x_kv))
            if return_attention or _prefer_math_kernel(q, k, v):
                out, probs = _reference_attention(q, k, v, attn_mask, dropout)
                probs = probs if return_attention else None
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        b, h, n, d = out.shape
        out = self.o_proj(out.transpose(1, 2).reshape(b, n, h * d))
        if has_valid is not None:
            out = out * has_valid[:, None, None].to(out.dtype)
            if probs is not None:
                probs = probs * has_valid[:, None, None, None].to(probs.dtype)
        return out, probs

    def _use_reassociated(self, n: int, m: int, kv_dim: int) -> bool:
        """Whether this call runs in reassociated form: forced by `reassociate`, else if it saves >= 20% of MACs."""
        if self.reassociate is not None:
            return self.reassociate
        channels = self.qk_channels + self.v_channels
        standard = m * kv_dim * channels + n * m * channels
        reassociated = n * kv_dim * channels + 2 * self.num_heads * n * m * kv_dim
        return reassociated <= 0.8 * standard

    def _reassociated_attention(self, q: Tensor, x_kv: Tensor, attn_mask: Tensor | None, dropout: float) -> Tensor:
        """`q` `(B, H, N, Dqk/H)`, `x_kv` `(B, M, Ckv)` -> per-head values `(B, H, N, Dv/H)`, without k and v.

        When gradients can reach the projections or dropout is on, biases ride along as an extra input channel of
        ones (`[X, 1] [W; b]^T = X W^T + b`), so the key bias keeps its (zero) gradient, which DDP expects of every
        parameter, and dropout on the probabilities stays exact. Otherwise (inference) the key bias is dropped (it
        adds `q_h . b_k,h` to a whole row of scores, which a softmax ignores) and the value bias is added after
        mixing (the probabilities sum to 1), which saves copying the inputs once more.
        """
        h = self.num_heads
        x = x_kv.to(q.dtype)
        b_v = None
        if dropout == 0.0 and not grad_reaches(self.k_proj, self.v_proj):
            w_k, _ = _params_in(self.k_proj, q.dtype)
            w_v, b_v = _params_in(self.v_proj, q.dtype)
            b_v = None if b_v is None else b_v.view(h, 1, self.v_channels // h)
        else:
            w_k, w_v = self.k_proj.weight, self.v_proj.weight
            if self.k_proj.bias is not None:  # qkv_bias sets both
                w_k = torch.cat([w_k, self.k_proj.bias[:, None]], dim=1)
                w_v = torch.cat([w_v, self.v_proj.bias[:, None]], dim=1)
                x = torch.cat([x, x.new_ones(*x.shape[:-1], 1)], dim=-1)
            w_k, w_v = w_k.to(q.dtype), w_v.to(q.dtype)
        q_abs = q @ w_k.view(h, self.qk_channels // h, -1)  # (B, H, N, Ckv [+1])
        x = x[:, None]  # (B, 1, M, Ckv [+1]): keys and values, shared by all heads
        scale = 1.0 / math.sqrt(q.shape[-1])
        if _prefer_math_kernel(q_abs, x, x):
            mixed, _ = _reference_attention(q_abs, x, x, attn_mask, dropout, scale)
        else:
            x = x.expand(-1, h, -1, -1)
            mixed = F.scaled_dot_product_attention(q_abs, x, x, attn_mask=attn_mask, dropout_p=dropout, scale=scale)
        out = mixed @ w_v.view(h, self.v_channels // h, -1).transpose(-1, -2)  # (B, H, N, Dv/H)
        return out if b_v is None else out + b_v


def _params_in(linear: nn.Linear, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """`linear`'s weight and bias in `dtype`: the kept copies of a `CastCachingLinear` (`optimize_for_inference`)."""
    if isinstance(linear, CastCachingLinear) and linear.weight.dtype != dtype:
        return linear.cast_weights(dtype)
    return linear.weight.to(dtype), None if linear.bias is None else linear.bias.to(dtype)


# Attention-matrix elements (B * H * N * M) we materialise for speed at inference: 128 MB in fp32.
MATH_KERNEL_MAX_SCORES = 1 << 25


def _prefer_math_kernel(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """True where plain matmul attention beats SDPA's fused kernel on CPU (benchmarks/attention_kernels.py).

    - Training: the fused flash kernel wins the forward (1.3-5x) but its backward is 1.7-3.3x slower than the backward
      of two GEMMs and a softmax, so when gradients flow we materialise the attention matrix, as the peers do.
    - Value heads wider or narrower than query heads (language-perceiver: 32 vs 160): the flash kernel does not
      apply and SDPA's own fallback upcasts bf16 to fp32 and adds NaN guards (1.5-5x slower than `_reference_attention`).
    - bf16 / fp16 with wide heads (>= 128 channels): the fused kernel does not use the reduced-precision matmul units
      (up to 7x slower than bf16 GEMMs), so small enough attention matrices go through matmuls.
    On GPU the fused kernels win both ways.
    """
    if q.device.type != "cpu":
        return False
    if autograd_records(q, k, v):
        return True
    if q.shape[-1] != v.shape[-1]:
        return True
    b, h, n, d = q.shape
    return q.dtype in (torch.bfloat16, torch.float16) and d >= 128 and b * h * n * k.shape[2] <= MATH_KERNEL_MAX_SCORES


def _reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    dropout: float = 0.0,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Plain attention that materialises the probabilities `(B, H, N, M)` (in the dtype of `q`).

    The scale is applied to `q` (`N x d` multiplies instead of `N x M`). CPU and CUDA softmax kernels accumulate
    bf16 / fp16 in fp32, so this equals an fp32 softmax of the same (reduced-precision) scores, without the copies.
    `k` and `v` may have a head dimension of 1 that broadcasts over the heads of `q`. Without autograd, masking and
    softmax run in place in the scores.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q * scale) @ k.transpose(-1, -2)
    if autograd_records(scores):
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        probs = scores.softmax(dim=-1)
    else:  # inference: mask and softmax in the fresh (B, H, N, M) scores, not in two more buffers of that size
        if attn_mask is not None:
            scores.masked_fill_(~attn_mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1, out=scores)
    dropped = F.dropout(probs, dropout) if dropout > 0 else probs
    return dropped @ v, probs


class MLP(nn.Module):
    """Position-wise feed-forward: `dim -> widening_factor * dim -> dim` with GELU, or GEGLU gating.

    GEGLU (perceiver-pytorch) projects to twice the hidden width and computes `a * gelu(b)` from the two halves.
    Shapes: `(..., dim) -> (..., dim)`.
    """

    def __init__(
        self, dim: int, widening_factor: int = 4, activation: Activation = "gelu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        if activation not in ("gelu", "geglu"):
            raise ValueError(f"activation must be 'gelu' or 'geglu', got {activation!r}")
        if widening_factor < 1:
            raise ValueError(f"widening_factor must be >= 1, got {widening_factor}")
        _check_dropout(dropout, "feed-forward dropout")
        hidden = dim * widening_factor
        self.activation = activation
        self.fc1 = Linear(dim, hidden * (2 if activation == "geglu" else 1))
        self.fc2 = Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        if self.activation == "geglu":
            a, gates = h.chunk(2, dim=-1)
            h = a * F.gelu(gates)
        elif autograd_records(h):
            h = F.gelu(h)
        else:
            h = torch.ops.aten.gelu_(h)  # fc1's fresh output: no second (N, hidden) buffer at inference
        return self.dropout(self.fc2(h))


class CrossAttentionLayer(nn.Module):
    """Pre-LN cross-attention block: `x = x + attn(ln_q(x), ln_kv(kv)); x = x + mlp(ln(x))`.

    Queries `(B, N, q_dim)` attend to `(B, M, kv_dim)`; the output has the queries' shape. With
    `use_query_residual=False` the first residual is dropped (DeepMind's decoders, where queries are only positions).
    """

    def __init__(
        self,
        q_dim: int,
        kv_dim: int,
        num_heads: int = 1,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        widening_factor: int = 1,
        activation: Activation = "gelu",
        qkv_bias: bool = True,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
        use_query_residual: bool = True,
    ) -> None:
        super().__init__()
        self.use_query_residual = use_query_residual
        self.q_norm = nn.LayerNorm(q_dim)
        self.kv_norm = nn.LayerNorm(kv_dim)
        self.attention = MultiHeadAttention(
            q_dim, kv_dim, num_heads, qk_channels, v_channels, out_dim=q_dim, qkv_bias=qkv_bias, dropout=attn_dropout
        )
        self.mlp_norm = nn.LayerNorm(q_dim)
        self.mlp = MLP(q_dim, widening_factor, activation, ff_dropout)

    def forward(
        self, x: Tensor, kv: Tensor, kv_mask: Tensor | None = None, return_attention: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """`x` `(B, N, q_dim)`, `kv` `(B, M, kv_dim)`, `kv_mask` `(B, M)` -> `(B, N, q_dim)`, maps or None."""
        h, probs = self.attention(self.q_norm(x), self.kv_norm(kv), kv_mask, return_attention)
        if self.use_query_residual:
            h = residual_add(h, x)
        return residual_add(self.mlp(self.mlp_norm(h)), h), probs


class SelfAttentionLayer(nn.Module):
    """Pre-LN Transformer layer on the latents: `x = x + attn(ln(x)); x = x + mlp(ln(x))`, `(B, N, D)`."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        widening_factor: int = 1,
        activation: Activation = "gelu",
        qkv_bias: bool = True,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(
            dim, dim, num_heads, qk_channels, v_channels, out_dim=dim, qkv_bias=qkv_bias, dropout=attn_dropout
        )
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = MLP(dim, widening_factor, activation, ff_dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """`x` `(B, N, D)`, optional `mask` `(B, N)` over the keys -> `(B, N, D)`."""
        x = residual_add(self.attention(self.norm(x), kv_mask=mask)[0], x)
        return residual_add(self.mlp(self.mlp_norm(x)), x)


def residual_add(out: Tensor, x: Tensor) -> Tensor:
    """`x + out` for a block output `out` the block just made: added in place into `out` when autograd does not
    record it and the result keeps `out`'s dtype and shape (bit-identical, one fewer activation-sized buffer per
    residual at inference); otherwise out of place (under autocast `out` may be bf16 and `x` fp32)."""
    if out.dtype == x.dtype and out.shape == x.shape and not autograd_records(out, x):
        return out.add_(x)
    return x + out
