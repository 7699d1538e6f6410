"""Perceiver AR's layers (`perceiver.models.ar`): pre-LN causal cross-attention of the latents to prefix + latents,
causal latent self-attention, their feed-forward, and the causal mask; attention over fresh keys / values or over the
generation cache (`PerceiverARCache`).

    latents (B, N, D), prefix (B, P, D) --CrossLayer--> (B, N, D) --SelfLayer x num_layers--> (B, N, D)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceiver.nn.activation import gelu_then
from perceiver.nn.attention import matmul_attention
from perceiver.nn.rotary import apply_rotary

if TYPE_CHECKING:
    from perceiver.models.ar import PerceiverARConfig


class FeedForward(nn.Module):
    """Pre-LN MLP `(B, N, D) -> (B, N, D)`: LayerNorm, Linear (no bias), GELU, dropout, Linear (no bias)."""

    def __init__(self, dim: int, mult: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * mult)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(self.norm(x))
        if self.training and self.dropout.p > 0:
            return self.fc2(self.dropout(F.gelu(h)))
        if self.training:  # save only h for backward, recompute the GELU
            return gelu_then(h, self.fc2)
        return self.fc2(F.gelu(h))


def _heads(x: Tensor, num_heads: int) -> Tensor:
    b, n, _ = x.shape
    return x.view(b, n, num_heads, -1).transpose(1, 2)


def _merge(x: Tensor) -> Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _write(buffer: Tensor, index: Tensor, values: Tensor) -> Tensor:
    """`buffer[:, :, index] = values` in place (a tensor index: no recompiles as it moves)."""
    return buffer.index_copy_(2, index, values.to(buffer.dtype))


class _Layer(nn.Module):
    """Shared parts of the cross- and self-attention layers: attention over fresh keys or over a cache, then FF.

    `kernel` (as `perceiver.nn.MultiHeadAttention`'s): `"sdpa"` (fused kernels) or `"matmul"` (written out, the
    same function up to rounding), set once on a copy by `perceiver.nn.attention.use_matmul_attention` and timed by
    `perceiver.optimize`. Under bf16 on the Zen 4 EPYC (forward + backward, batch 2, 4 heads of 64) the written-out
    form ran the cross-attention (512 latents over a 2048 window) in 44 against SDPA's 56 ms and the latent
    self-attention (512) in 8 against 14 ms; in fp32 SDPA was the faster (57 / 16 against 118 / 23 ms).
    """

    kernel: str = "sdpa"
    to_out: nn.Linear  # set by the subclasses
    ff: FeedForward

    def __init__(self, c: PerceiverARConfig) -> None:
        super().__init__()  # subclasses register their modules in init order (it decides init_weights' draws)
        self.num_heads, self.dropout_p, self.interleaved = c.num_heads, c.dropout, c.rotary_interleaved
        self.inner = c.num_heads * c.dim_head

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
        p = self.dropout_p if self.training else 0.0
        if self.kernel == "matmul":
            return matmul_attention(q, k, v, mask, p, is_causal=mask is None and is_causal)
        if mask is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=is_causal)

    def _attend_and_ff(
        self,
        x: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        q_rot: tuple[Tensor, Tensor] | None,
        k_rot: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        cache: tuple[Tensor, Tensor] | None,
        index: Tensor | None,
        attend_cache: bool,
        is_causal: bool,
    ) -> Tensor:
        """Rotate q / k `(B, H, N|K, d)` (unless their cos / sin are None), write k / v into the cache at `index`
        (and attend over the whole cache if `attend_cache`), then `x + to_out(attention)` and `x + ff(x)`
        `(B, N, D)`."""
        v = v.contiguous()  # SDPA saves v for backward: a view would keep all of the k / v projection alive
        if q_rot is not None:
            q = apply_rotary(q, *q_rot, interleaved=self.interleaved)
        if k_rot is not None:
            k = apply_rotary(k, *k_rot, interleaved=self.interleaved)
        if cache is not None and index is not None:
            ck, cv = _write(cache[0], index, k), _write(cache[1], index, v)
            if attend_cache:
                k, v = ck.to(q.dtype), cv.to(q.dtype)
        x = x + self.to_out(_merge(self._attend(q, k, v, mask, is_causal)))
        return x + self.ff(x)


class CrossLayer(_Layer):
    """Causal cross-attention of the latents `(B, N, D)` to prefix `(B, P, D)` + latents, then FF (residuals)."""

    def __init__(self, c: PerceiverARConfig) -> None:
        super().__init__(c)
        self.norm = nn.LayerNorm(c.d_model)
        self.context_norm = nn.LayerNorm(c.d_model)
        self.to_q = nn.Linear(c.d_model, self.inner, bias=False)
        self.to_kv = nn.Linear(c.d_model, 2 * self.inner, bias=False)
        self.to_out = nn.Linear(self.inner, c.d_model, bias=c.cross_out_bias)
        self.ff = FeedForward(c.d_model, c.cross_ff_mult if c.cross_ff_mult is not None else c.ff_mult, c.dropout)

    def forward(
        self,
        x: Tensor,
        prefix: Tensor | None,
        q_rot: tuple[Tensor, Tensor],
        k_rot: tuple[Tensor, Tensor],
        mask: Tensor | None,
        cache: tuple[Tensor, Tensor] | None = None,
        index: Tensor | None = None,
        attend_cache: bool = False,
    ) -> Tensor:
        h = self.norm(x)
        q = _heads(self.to_q(h), self.num_heads)
        if prefix is not None and prefix.shape[1] > 0:
            h = torch.cat((self.context_norm(prefix), h), dim=1)  # (B, P + N, D): one projection, half the copy
        k, v = (_heads(t, self.num_heads) for t in self.to_kv(h).chunk(2, dim=-1))
        return self._attend_and_ff(x, q, k, v, q_rot, k_rot, mask, cache, index, attend_cache, is_causal=False)


class SelfLayer(_Layer):
    """Causal self-attention of the latents `(B, N, D)`, then FF (residuals)."""

    def __init__(self, c: PerceiverARConfig) -> None:
        super().__init__(c)
        self.norm = nn.LayerNorm(c.d_model)
        self.to_qkv = nn.Linear(c.d_model, 3 * self.inner, bias=False)
        self.to_out = nn.Linear(self.inner, c.d_model, bias=False)
        self.ff = FeedForward(c.d_model, c.ff_mult, c.dropout)

    def forward(
        self,
        x: Tensor,
        rot: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        cache: tuple[Tensor, Tensor] | None = None,
        index: Tensor | None = None,
        attend_cache: bool = False,
    ) -> Tensor:
        q, k, v = (_heads(t, self.num_heads) for t in self.to_qkv(self.norm(x)).chunk(3, dim=-1))
        return self._attend_and_ff(x, q, k, v, rot, rot, mask, cache, index, attend_cache, is_causal=mask is None)


def causal_mask(q_index: Tensor, k_index: Tensor, k_valid: Tensor | None) -> Tensor:
    """Boolean `(B|1, 1, Q, K)`: key allowed if at or before the query in the window and valid; a query always sees
    itself (`q_index == k_index`), so padded rows stay finite and valid rows never see padding.

    q_index `(Q,)` or `(B, Q)`, k_index `(K,)` or `(B, K)` window indices; k_valid `(B, K)` or None.
    """
    qi, ki = q_index.unsqueeze(-1), k_index.unsqueeze(-2)  # (..., Q, 1), (..., 1, K)
    allowed = ki <= qi
    if k_valid is not None:
        allowed = (allowed & k_valid.unsqueeze(-2)) | (ki == qi)
    if allowed.dim() == 2:
        allowed = allowed.unsqueeze(0)
    return allowed.unsqueeze(1)
