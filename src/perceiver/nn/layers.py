"""The pre-LN layers every Perceiver is built from: `MLP` (GELU or GEGLU), `CrossAttentionLayer` (queries <- inputs,
then MLP) and `SelfAttentionLayer` (attention, then MLP), each with residuals, on `perceiver.nn.attention`'s
`MultiHeadAttention`.

Shapes: queries `(B, N, Cq)`, keys/values `(B, M, Ckv)`, key mask `(B, M)` boolean with True = valid.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from perceiver.checks import check_int
from perceiver.nn.activation import gelu_then
from perceiver.nn.attention import MultiHeadAttention, check_dropout, check_linear_dtype, check_tokens

Activation = Literal["gelu", "geglu"]


class MLP(nn.Module):
    """Position-wise feed-forward: `dim -> widening_factor * dim -> dim` with GELU, or GEGLU gating.

    GEGLU (perceiver-pytorch) projects to twice the hidden width and computes `a * gelu(b)` from the two halves.
    Shapes: `(..., dim) -> (..., dim)` (another last axis is a ValueError naming it).
    """

    def __init__(
        self, dim: int, widening_factor: int = 4, activation: Activation = "gelu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        if activation not in ("gelu", "geglu"):
            raise ValueError(f"activation must be 'gelu' or 'geglu', got {activation!r}")
        check_int(dim, "dim")
        check_int(widening_factor, "widening_factor")
        check_dropout(dropout, "feed-forward dropout")
        hidden = dim * widening_factor
        self.dim = dim
        self.activation = activation
        self.fc1 = nn.Linear(dim, hidden * (2 if activation == "geglu" else 1))
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"expected an input of shape (..., {self.dim}), got {tuple(x.shape)}")
        check_linear_dtype(x, "the input", self.fc1)
        h = self.fc1(x)
        if self.activation == "geglu":
            a, gates = h.chunk(2, dim=-1)
            return self.dropout(self.fc2(a * F.gelu(gates)))
        if self.training:  # save only h for backward, recompute the GELU
            return self.dropout(gelu_then(h, self.fc2))
        return self.dropout(self.fc2(F.gelu(h)))  # through the module, so a swapped-in Linear kernel applies


class CrossAttentionLayer(nn.Module):
    """Pre-LN cross-attention block: `x = x + attn(ln_q(x), ln_kv(kv)); x = x + mlp(ln(x))`.

    Queries `(B, N, q_dim)` attend to `(B, M, kv_dim)`; the output has the queries' shape. With
    `use_query_residual=False` the first residual is dropped (DeepMind's decoders, where queries are only positions).
    `reassociate`, `inverted` and `queries_contribute_kv` are passed to the attention (see `MultiHeadAttention`);
    with `queries_contribute_kv` the normalised queries join the normalised keys/values.
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
        reassociate: bool = False,
        inverted: bool = False,
        queries_contribute_kv: bool = False,
    ) -> None:
        super().__init__()
        self.q_dim, self.kv_dim = check_int(q_dim, "q_dim"), check_int(kv_dim, "kv_dim")
        self.use_query_residual = use_query_residual
        self.q_norm = nn.LayerNorm(q_dim)
        self.kv_norm = nn.LayerNorm(kv_dim)
        self.attention = MultiHeadAttention(
            q_dim,
            kv_dim,
            num_heads,
            qk_channels,
            v_channels,
            out_dim=q_dim,
            qkv_bias=qkv_bias,
            dropout=attn_dropout,
            reassociate=reassociate,
            inverted=inverted,
            queries_contribute_kv=queries_contribute_kv,
        )
        self.mlp_norm = nn.LayerNorm(q_dim)
        self.mlp = MLP(q_dim, widening_factor, activation, ff_dropout)

    def extra_repr(self) -> str:
        return "" if self.use_query_residual else "use_query_residual=False"  # the one setting the children hide

    def forward(
        self,
        x: Tensor,
        kv: Tensor,
        kv_mask: Tensor | None = None,
        return_attention: bool = False,
        inverted: bool | None = None,
        kv_normalized: bool = False,
        kv_basis: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """`x` `(B, N, q_dim)`, `kv` `(B, M, kv_dim)`, `kv_mask` `(B, M)` -> `(B, N, q_dim)`, maps or None.

        `inverted` (a Python bool or None for the constructor's) selects inverted attention for this call.
        `kv_normalized`: `kv` is `perceiver.nn.normalize_inputs(kv, self.kv_norm.eps)` (normalised without an affine,
        maybe zero-padded), computed once by the caller for several layers; this layer's `kv_norm` affine is folded
        into its key and value projections instead of applied to `kv`: the same function. With `kv_basis` `T`, `kv`
        holds coordinates `k` of the normalised inputs, `z = k T^T` (`perceiver.nn.normalize_factored`).

        Shapes are checked (compile-friendly): another width, batch or an unbatched `(N, C)` input is a ValueError."""
        check_tokens(x, "x", self.q_dim)
        check_tokens(kv, "kv", "C" if kv_normalized else self.kv_dim, "M", x.shape[0])
        check_linear_dtype(x, "x", self.attention.q_proj)  # named here: the attention sees it LayerNormed
        if kv_normalized:
            affine = (self.kv_norm.weight, self.kv_norm.bias)
        else:
            kv, affine = self.kv_norm(kv), None
        if kv_basis is not None and not kv_normalized:
            raise ValueError("kv_basis needs kv_normalized=True (coordinates of normalised inputs)")
        h, probs = self.attention(self.q_norm(x), kv, kv_mask, return_attention, inverted, affine, kv_basis)
        if self.use_query_residual:
            h = h + x
        return h + self.mlp(self.mlp_norm(h)), probs


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
        self.dim = check_int(dim, "dim")
        self.norm = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(
            dim, dim, num_heads, qk_channels, v_channels, out_dim=dim, qkv_bias=qkv_bias, dropout=attn_dropout
        )
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = MLP(dim, widening_factor, activation, ff_dropout)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_attention: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """`x` `(B, N, D)`, optional `mask` `(B, N)` over the keys -> `(B, N, D)`; with `return_attention`,
        `(output, probabilities (B, H, N, N))`. Another width or an unbatched `(N, D)` input is a ValueError."""
        check_tokens(x, "x", self.dim)
        check_linear_dtype(x, "x", self.attention.q_proj)
        h, probs = self.attention(self.norm(x), kv_mask=mask, return_attention=return_attention)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return (x, probs) if return_attention else x
