"""Attention: the one `MultiHeadAttention` and the attention kernels (SDPA, written out, with maps, inverted).

One `MultiHeadAttention` serves cross-attention (latents <- inputs, queries <- latents) and self-attention. It runs
through `F.scaled_dot_product_attention`, which picks the fused kernel the device has (flash / memory-efficient on GPU,
a fused flash kernel on CPU), so the `(B, H, N, M)` attention matrix is only materialised when a caller asks for the
attention maps. The code is plain PyTorch with no data-dependent branches: `torch.compile(fullgraph=True)`,
`torch.export` and ONNX take it whole. Machine-specific choices live in `perceiver.optimization` (`perceiver.optimize`), made by timing.

Cross-attention from few queries to many narrow inputs (latents <- pixels) can be computed in reassociated form, a
change of the arithmetic that halves the FLOPs of vision-perceiver-learned's encoder cross-attention; it is chosen
once, when the layer is built (`reassociate`, see `MultiHeadAttention` and `reassociation_saves`).

Shapes: queries `(B, N, Cq)`, keys/values `(B, M, Ckv)`, key mask `(B, M)` boolean with True = valid. The pre-LN
layers built on it (`CrossAttentionLayer`, `SelfAttentionLayer`, `MLP`) are in `perceiver.nn.layers`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceiver.checks import InputTypeError, check_int, to_bool_mask
from perceiver.nn.activation import is_dense


def _check_heads(channels: int, num_heads: int, what: str) -> None:
    check_int(num_heads, "num_heads")
    check_int(channels, what)
    if channels < 1 or channels % num_heads != 0:
        raise ValueError(f"{what} ({channels}) must be a positive multiple of num_heads ({num_heads})")


def check_tokens(x: object, name: str, channels: int | str, axis: str = "N", batch: int | None = None) -> Tensor:
    """`x` as a floating tensor of shape `(B, axis, channels)` (`channels` a width, or a name for any width; `batch`:
    the `B` it must have). Shape and dtype metadata only (no values), so compiled graphs stay whole: `ValueError` for
    another shape (an unbatched `(N, C)` input included), `InputTypeError` for a non-tensor or a non-floating dtype."""
    expected = f"(B, {axis}, {channels})" if batch is None else f"({batch}, {axis}, {channels})"
    if not isinstance(x, Tensor):
        raise InputTypeError(f"expected {name} as a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputTypeError(f"expected {name} as a floating-point tensor of shape {expected}, got dtype {x.dtype}")
    width_ok = isinstance(channels, str) or (x.dim() > 0 and x.shape[-1] == channels)
    if x.dim() != 3 or not width_ok or (batch is not None and x.shape[0] != batch):
        hint = f" (one sequence: add a batch axis, {name}[None])" if x.dim() == 2 and width_ok else ""
        raise ValueError(f"expected {name} of shape {expected}, got {tuple(x.shape)}{hint}")
    return x


def check_linear_dtype(x: Tensor, name: str, linear: nn.Module) -> None:
    """`TypeError` (an `InputTypeError`) naming both dtypes where `linear`, a dense `nn.Linear`, would fail on `x` of
    another floating dtype outside autocast (`F.linear`'s `mat1 and mat2 must have the same dtype`)."""
    weight = linear.weight if is_dense(linear) else None
    if not isinstance(weight, Tensor) or x.dtype == weight.dtype:
        return
    device = x.device.type  # autocast is asked only on a mismatch; the meta device has none
    if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
        raise InputTypeError(
            f"expected {name} of dtype {weight.dtype} (the weights'), got {x.dtype}: cast the input "
            f"(x.to({weight.dtype})) or the module (.to({x.dtype})), or run under torch.autocast"
        )


def check_dropout(p: float, what: str) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {p}")


def reassociation_saves(
    num_queries: int, kv_dim: int, num_heads: int, qk_channels: int, v_channels: int, threshold: float = 0.8
) -> bool:
    """Whether reassociated attention needs at most `threshold` of the standard form's multiply-adds per input token.

    Per key/value token the standard form projects keys and values (`Ckv (Dqk + Dv)`) and attends (`N (Dqk + Dv)`);
    the reassociated form attends with `N` absorbed queries of `Ckv` channels per head (`2 H N Ckv`). The ratio does
    not depend on the number of inputs `M` (the `N Ckv (Dqk + Dv)` absorption cost is paid once per call), so the
    choice can be made when the layer is built.
    """
    standard = kv_dim * (qk_channels + v_channels) + num_queries * (qk_channels + v_channels)
    return 2 * num_heads * num_queries * kv_dim <= threshold * standard


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
        reassociate: compute in reassociated form (see below); fixed at construction.
        inverted: inverted attention (slot attention, perceiver-pytorch's `inverted_cross_attn`): softmax over the
            queries, masked keys zeroed, then each query's weights renormalised to sum 1 over the keys; the
            standard (non-reassociated) form is used.
        queries_contribute_kv: the queries join the keys/values, `[x_q, x_kv]` (the Flamingo resampler,
            perceiver-pytorch's `queries_contribute_kv`); needs `kv_dim == q_dim`; maps are then `(B, H, N, N + M)`.
        kernel: `"sdpa"` (default: `F.scaled_dot_product_attention`, fused kernels, no `(B, H, N, M)` matrix) or
            `"matmul"` (`matmul_attention`: two matmuls and a softmax in the compute dtype; the same function, up to
            rounding). A choice made once (`use_matmul_attention` sets it on a copy; `perceiver.optimize` times it):
            under bf16 on a CPU the written-out form's backward ran 1.5-2.3x faster than SDPA's fused one.

    Reassociated form: per head, `q_h K_h^T = (q_h W_k,h) X^T + q_h . b_k,h` and `P_h V_h = (P_h X) W_v,h^T + b_v,h`,
    where `X` `(B, M, Ckv)` is the key/value input; the key bias adds a constant to a row of scores, which the softmax
    ignores, and the value bias comes after mixing since the probabilities sum to 1 (with dropout, which breaks that,
    both ride along as a channel of ones). Attending with the `(N, Ckv)` absorbed queries to `X` itself skips
    projecting all `M` inputs to keys and values: the same
    function (up to rounding; gradients and dropout included) in `2 H N M Ckv` multiply-adds instead of
    `M Ckv (Dqk + Dv) + N M (Dqk + Dv)`, and the `(B, M, Dqk + Dv)` keys and values are never stored for backward.
    Attention maps always use the standard form.

    Folding (`kv_affine`, `kv_basis`) and the reassociated form compute with `k_proj.weight` / `v_proj.weight`; they
    apply while `k_proj` and `v_proj` are `nn.Linear`s with dense weights. Where a module wraps or replaces them (peft's
    LoRA layers) or the weight is a tensor subclass (torchao's int8 weights), the key/value input is formed and passed through the modules instead (`folds_kv`): the
    replacement is never bypassed.
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
        reassociate: bool = False,
        inverted: bool = False,
        queries_contribute_kv: bool = False,
        kernel: str = "sdpa",
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.kernel = kernel
        check_int(q_dim, "q_dim")
        kv_dim = q_dim if kv_dim is None else check_int(kv_dim, "kv_dim")
        if queries_contribute_kv and kv_dim != q_dim:
            raise ValueError(f"queries_contribute_kv needs kv_dim == q_dim, got kv_dim={kv_dim}, q_dim={q_dim}")
        qk_channels = q_dim if qk_channels is None else qk_channels
        v_channels = qk_channels if v_channels is None else v_channels
        out_dim = q_dim if out_dim is None else check_int(out_dim, "out_dim")
        _check_heads(qk_channels, num_heads, "qk_channels")
        _check_heads(v_channels, num_heads, "v_channels")
        check_dropout(dropout, "attention dropout")
        self.num_heads = num_heads
        self.q_dim = q_dim
        self.kv_dim = kv_dim
        self.qk_channels = qk_channels
        self.v_channels = v_channels
        self.dropout = dropout
        self.reassociate = bool(reassociate)
        self.inverted = bool(inverted)
        self.queries_contribute_kv = bool(queries_contribute_kv)
        self.q_proj = nn.Linear(q_dim, qk_channels, bias=qkv_bias)
        self.k_proj = nn.Linear(kv_dim, qk_channels, bias=qkv_bias)
        self.v_proj = nn.Linear(kv_dim, v_channels, bias=qkv_bias)
        self.o_proj = nn.Linear(v_channels, out_dim, bias=out_bias)

    def extra_repr(self) -> str:
        options = [f"num_heads={self.num_heads}", f"qk_channels={self.qk_channels}", f"v_channels={self.v_channels}"]
        options += [f"dropout={self.dropout}"] if self.dropout else []
        flags = ("reassociate", "inverted", "queries_contribute_kv")
        options += [f"{name}=True" for name in flags if getattr(self, name)]
        options += [f"kernel={self.kernel!r}"] if self.kernel != "sdpa" else []
        return ", ".join(options)

    def _heads(self, x: Tensor) -> Tensor:
        """`(B, N, H * d)` -> `(B, H, N, d)`."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    @property
    def folds_kv(self) -> bool:
        """Whether `k_proj` and `v_proj` compute `F.linear` of their dense `.weight` (`perceiver.nn.activation.is_dense`),
        so that a LayerNorm affine and input coordinates can be folded into those weights and the reassociated form can
        apply."""
        return is_dense(self.k_proj) and is_dense(self.v_proj)

    def _unfolded(
        self, x_kv: Tensor, kv_affine: tuple[Tensor | None, Tensor | None] | None, kv_basis: Tensor | None
    ) -> Tensor:
        """The key/value input `(B, M, Ckv)` itself from normalised coordinates: `z = k T^T` (or `z` without its zero
        padding), then `gamma * z + beta`."""
        z = x_kv @ kv_basis.to(x_kv.dtype).T if kv_basis is not None else x_kv[..., : self.kv_dim]
        gamma, beta = kv_affine if kv_affine is not None else (None, None)
        if gamma is not None:
            z = z * gamma.to(z.dtype)
        return z if beta is None else z + beta.to(z.dtype)

    def kv_projections(
        self,
        kv_affine: tuple[Tensor | None, Tensor | None] | None = None,
        width: int | None = None,
        kv_basis: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """The key and value projections `(w_k, b_k, w_v, b_v)`, with a LayerNorm's affine folded in.

        With `kv_affine = (gamma, beta)` the key/value input is the normalised `z` before that affine:
        `W (gamma * z + beta) + b = (W gamma) z + (W beta + b)`, the same function (gradients reach `gamma` and `beta`
        through the folded weights). `width` > `Ckv`: the weights get zero columns for a zero-padded input. With
        `kv_basis` `T` `(Ckv, K)` the input is given in coordinates `k` with `z = k T^T` (`perceiver.nn.inputs`):
        the weights become `W gamma T` `(D, K)`.
        """
        w_k, b_k, w_v, b_v = self.k_proj.weight, self.k_proj.bias, self.v_proj.weight, self.v_proj.bias
        if kv_affine is None and kv_basis is None:
            return w_k, b_k, w_v, b_v
        gamma, beta = kv_affine if kv_affine is not None else (None, None)

        def fold(w: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor | None]:
            if beta is not None:
                b = w @ beta if b is None else torch.addmv(b, w, beta)
            if gamma is not None:
                w = w * gamma
            if kv_basis is not None:
                return w @ kv_basis.to(w.dtype), b
            if width is not None and width > w.shape[1]:
                w = F.pad(w, (0, width - w.shape[1]))
            return w, b

        return *fold(w_k, b_k), *fold(w_v, b_v)

    def forward(
        self,
        x_q: Tensor,
        x_kv: Tensor | None = None,
        kv_mask: Tensor | None = None,
        return_attention: bool = False,
        inverted: bool | None = None,
        kv_affine: tuple[Tensor | None, Tensor | None] | None = None,
        kv_basis: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from `x_q` `(B, N, Cq)` to `x_kv` `(B, M, Ckv)` (self-attention when None).

        `inverted` overrides the constructor's choice for this call (a Python bool, so compiled graphs stay static).
        `kv_affine` `(gamma, beta)`: `x_kv` is LayerNormed without this affine (and may be zero-padded to more than
        `Ckv` channels, see `perceiver.nn.inputs`); it is folded into the key and value projections, and so is
        `kv_basis` `(Ckv, K)` when `x_kv` `(B, M, K)` holds coordinates of the normalised inputs (`kv_projections`).

        `kv_mask` `(B, M)` is boolean, True = valid (0 / 1 integer or float masks are taken as such; other values and
        shapes are a ValueError). A query row without any valid key returns zeros (never NaN), and
        values at masked-out keys never reach the output. Returns the output `(B, N, out_dim)` and, if
        `return_attention`, the probabilities `(B, H, N, M)` (else None; before attention dropout, so each row sums
        to 1, or is zero for a row without a valid key).

        Inputs are checked by shape and dtype only (compile-friendly): `x_q` must be `(B, N, q_dim)` and `x_kv`
        `(B, M, kv_dim)` with the same `B` (no unbatched `(N, C)` inputs), both floating; outside autocast `x_q` (and
        `x_kv` where it meets the key projection) must have the weights' dtype. Otherwise a `ValueError` / `TypeError`
        names what was expected and what came.
        """
        if kv_affine is not None and (x_kv is None or self.queries_contribute_kv):
            raise ValueError("kv_affine needs a separate key/value input (no self-attention, no queries_contribute_kv)")
        check_tokens(x_q, "x_q", self.q_dim)
        check_linear_dtype(x_q, "x_q", self.q_proj)
        if x_kv is not None:  # the same batch; kv_dim channels, or padded normalised inputs / their coordinates
            width = kv_basis.shape[-1] if kv_basis is not None else "C" if kv_affine is not None else self.kv_dim
            check_tokens(x_kv, "x_kv", width, "M", x_q.shape[0])
            if kv_affine is not None and kv_basis is None and x_kv.shape[-1] < self.kv_dim:
                raise ValueError(f"expected x_kv with at least kv_dim={self.kv_dim} channels, got {tuple(x_kv.shape)}")
        if kv_mask is not None:  # bool or 0 / 1 (as the models take it), one entry per key
            keys = x_q if x_kv is None else x_kv
            kv_mask = to_bool_mask(kv_mask, "kv_mask", (tuple(keys.shape[:2]),))
        if x_kv is not None and self.queries_contribute_kv:
            x_kv = torch.cat([x_q, x_kv], dim=1)
            if kv_mask is not None:
                kv_mask = torch.cat([kv_mask.new_ones(kv_mask.shape[0], x_q.shape[1]), kv_mask], dim=1)
        x_kv = x_q if x_kv is None else x_kv
        attn_mask = has_valid = None
        if kv_mask is not None:
            # Rows with no valid key would softmax over nothing (NaN): let them attend everywhere, then zero them.
            has_valid = kv_mask.any(dim=-1)
            attn_mask = (kv_mask | ~has_valid[:, None])[:, None, None, :]
        dropout = self.dropout if self.training else 0.0
        probs = None
        inverted = self.inverted if inverted is None else inverted
        q = self._heads(self.q_proj(x_q))
        folds = self.folds_kv
        if (kv_affine is not None or kv_basis is not None) and not folds:
            x_kv, kv_affine, kv_basis = self._unfolded(x_kv, kv_affine, kv_basis), None, None
        if self.reassociate and folds and not return_attention and not inverted:
            weights = self.kv_projections(kv_affine, x_kv.shape[-1], kv_basis)
            out = self._reassociated(q, x_kv, kv_mask, attn_mask, dropout, weights)
        else:
            if kv_mask is not None:
                x_kv = x_kv.masked_fill(~kv_mask[..., None], 0.0)  # NaN / inf at masked keys must not leak via 0 * v
            if kv_affine is None and kv_basis is None:  # through the modules, so a swapped-in Linear kernel applies
                check_linear_dtype(x_kv, "x_kv", self.k_proj)
                k, v = self._heads(self.k_proj(x_kv)), self._heads(self.v_proj(x_kv))
            else:
                w_k, b_k, w_v, b_v = self.kv_projections(kv_affine, x_kv.shape[-1], kv_basis)
                k, v = self._heads(F.linear(x_kv, w_k, b_k)), self._heads(F.linear(x_kv, w_v, b_v))
            if inverted:
                out, probs = inverted_attention(q, k, v, attn_mask, dropout)
                probs = probs if return_attention else None
            elif return_attention:
                out, probs = attention_with_probs(q, k, v, attn_mask, dropout)
            elif self.kernel == "matmul":
                out = matmul_attention(q, k, v, attn_mask, dropout)
            else:
                out = scaled_dot_product_attention(q, k, v, attn_mask, dropout)
        out = self.o_proj(out.transpose(1, 2).flatten(2))
        if has_valid is not None:
            out = out * has_valid[:, None, None].to(out.dtype)
            if probs is not None:
                probs = probs * has_valid[:, None, None, None].to(probs.dtype)
        return out, probs

    def _reassociated(
        self,
        q: Tensor,
        x_kv: Tensor,
        kv_mask: Tensor | None,
        attn_mask: Tensor | None,
        dropout: float,
        weights: tuple[Tensor, Tensor | None, Tensor, Tensor | None],
    ) -> Tensor:
        """`q` `(B, H, N, Dqk/H)`, `x_kv` `(B, M, Ckv)` -> per-head values `(B, H, N, Dv/H)`, without k and v.

        `weights`: `(w_k, b_k, w_v, b_v)` from `kv_projections` (both biases or neither)."""
        h = self.num_heads
        x = x_kv.to(q.dtype)
        if kv_mask is not None:
            x = x.masked_fill(~kv_mask[..., None], 0.0)
        w_k, b_k, w_v, b_v = weights
        bias_channel = b_k is not None and dropout > 0.0
        if bias_channel:  # dropped probabilities no longer sum to 1: the biases ride along as a channel of ones
            assert b_k is not None and b_v is not None  # both biases or neither
            w_k = torch.cat([w_k, b_k[:, None]], dim=1)
            w_v = torch.cat([w_v, b_v[:, None]], dim=1)
            x = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)
        w_k, w_v = w_k.to(q.dtype), w_v.to(q.dtype)
        q_abs = q @ w_k.unflatten(0, (h, -1))  # (B, H, N, Ckv [+1])
        xh = x[:, None].expand(-1, h, -1, -1)  # (B, H, M, Ckv [+1]): keys and values, shared by all heads
        scale = 1.0 / math.sqrt(q.shape[-1])
        if self.kernel == "matmul":
            mixed = matmul_attention(q_abs, xh, xh, attn_mask, dropout, scale)
        else:
            mixed = F.scaled_dot_product_attention(q_abs, xh, xh, attn_mask=attn_mask, dropout_p=dropout, scale=scale)
        out = mixed @ w_v.unflatten(0, (h, -1)).transpose(-1, -2)  # (B, H, N, Dv/H)
        if b_k is not None and not bias_channel:
            assert b_v is not None  # both biases or neither
            # The key bias adds q_h . b_k,h to a whole row of scores, which the softmax ignores, so its exact gradient
            # is zero (`0 * b_k.sum()` gives it that, DDP expects one); the probabilities sum to 1, so the value bias
            # is added after mixing. No ones channel: the keys keep Ckv channels (512, not 513, for vision-learned).
            out = out + b_v.to(out.dtype).view(h, 1, -1) + 0 * b_k.sum().to(out.dtype)
        return out


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout: float = 0.0
) -> Tensor:
    """`F.scaled_dot_product_attention`, except where it has no fused kernel for the shapes: `(B, H, N, d)`,
    `(B, H, M, d)`, `(B, H, M, dv)` -> `(B, H, N, dv)`.

    Queries / keys and values of different head widths (the language perceiver's 32 and 160) have a fused kernel on
    CUDA only; elsewhere SDPA falls back to its math path, which computes in fp32 even under bf16 autocast and adds
    a guarded softmax. There the plain `softmax(q k^T / sqrt(d)) v` of `attention_with_probs` computes the same
    function with less work (language-perceiver, 2048 bytes, bf16 autocast, 2-core Xeon with AMX: 0.275 -> 0.233 s
    per forward; fp32: within noise). The choice depends on the device type and shapes only, so compiled graphs
    stay static.
    """
    if q.shape[-1] != v.shape[-1] and q.device.type != "cuda":
        return attention_with_probs(q, k, v, attn_mask, dropout)[0]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)


def matmul_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    dropout: float = 0.0,
    scale: float | None = None,
    is_causal: bool = False,
) -> Tensor:
    """`softmax(q k^T * scale) v` written out: `(B, H, N, d)`, `(B, H, M, d)`, `(B, H, M, dv)` -> `(B, H, N, dv)`.

    The scores and probabilities stay in the compute dtype (under bf16 autocast: bf16 GEMMs, a bf16 `(B, H, N, M)`
    matrix, the softmax accumulating in fp32 inside the kernel), as transformers' Perceiver computes them. On the
    Zen 4 EPYC (2 threads, bf16, forward + backward) it ran the vision latent self-attention (2, 8, 512, 512, 128) in
    22 ms against SDPA's fused 52 ms and the reassociated cross-attention (2, 1, 512, 50176, 264) in 0.80 against
    1.17 s; in fp32 SDPA was as fast or faster. `attn_mask` boolean, True = attend; `is_causal` (instead of a
    mask, as SDPA's): query i attends to keys <= i.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q * scale) @ k.transpose(-1, -2)
    if is_causal:
        if attn_mask is not None:
            raise ValueError("expected attn_mask or is_causal, got both (as F.scaled_dot_product_attention)")
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:  # in place: the product's backward needs q and k, not its output (no copy of scores)
        scores.masked_fill_(~attn_mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    if dropout > 0:
        probs = F.dropout(probs, dropout)
    return probs @ v


KERNELS = ("sdpa", "matmul")


def use_matmul_attention(model: nn.Module) -> nn.Module:
    """A copy of `model` whose attention modules use `kernel="matmul"`, sharing every parameter and buffer with
    `model`, which is not changed.

    Attention modules are those with a `kernel` attribute in `KERNELS`: `MultiHeadAttention` and the layers of
    models that call attention themselves (Perceiver AR's causal layers). Raises `ValueError` if `model` has none."""
    import copy

    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    twin = copy.deepcopy(model, memo)
    found = [m for m in twin.modules() if getattr(m, "kernel", None) in KERNELS]
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no attention with a kernel choice (perceiver.nn.MultiHeadAttention or "
            f"Perceiver AR's layers) to switch to matmul attention"
        )
    for module in found:
        module.kernel = "matmul"  # type: ignore[assignment]  # torch types Module.__setattr__ as Tensor | Module only
    return twin


def _scores(q: Tensor, k: Tensor, scale: float | None = None) -> Tensor:
    """Scaled scores `(B, H, N, M)` in at least fp32; the scale (default `1 / sqrt(d)`) is applied to the smaller
    `q` `(B, H, N, d)` before the product."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return ((q * scale) @ k.transpose(-1, -2)).to(torch.promote_types(q.dtype, torch.float32))


def attention_with_probs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    dropout: float = 0.0,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Plain attention that also returns the probabilities: `(B, H, N, d)`, `(B, H, M, d)`, `(B, H, M, dv)` ->
    `(B, H, N, dv)`, `(B, H, N, M)`. The softmax runs in at least fp32 (as SDPA's); the maps come back in `q`'s dtype."""
    scores = _scores(q, k, scale)
    if attn_mask is not None:  # in place: the product's backward needs q and k, not its output (no copy of scores)
        scores.masked_fill_(~attn_mask, float("-inf"))
    probs = scores.softmax(dim=-1).to(q.dtype)
    dropped = F.dropout(probs, dropout) if dropout > 0 else probs
    return dropped @ v, probs


def inverted_attention(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout: float = 0.0, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """Inverted attention (slot attention; perceiver-pytorch's `inverted_cross_attn`): the softmax runs over the
    queries, masked keys get weight 0 and each query's weights are L1-renormalised over the keys (`eps` as the peer).
    `(B, H, N, d)`, `(B, H, M, d)`, `(B, H, M, dv)`, mask `(B, 1, 1, M)` -> `(B, H, N, dv)`, `(B, H, N, M)`."""
    scores = _scores(q, k)
    probs = scores.softmax(dim=-2)
    if attn_mask is not None:
        probs = probs.masked_fill(~attn_mask, 0.0)
    probs = (probs / probs.sum(dim=-1, keepdim=True).clamp_min(eps)).to(q.dtype)
    dropped = F.dropout(probs, dropout) if dropout > 0 else probs
    return dropped @ v, probs
