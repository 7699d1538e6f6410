"""Rotary position embeddings (RoFormer, arXiv 2104.09864), partial: only the first `dim` channels of a head turn.

    positions (B, L) or (L,) --rotary_angles--> angles (B, L, dim) or (L, dim)
    q / k (B, H, L, Dh) --apply_rotary(cos, sin)--> same shape; channels [dim:] pass through unchanged

Two channel layouts:

- ``interleaved=False`` (GPT-NeoX, perceiver-ar-pytorch): channel `i` pairs with `i + dim/2`; the angles are
  `cat(freqs, freqs)` and the rotation is `x * cos + rotate_half(x) * sin`.
- ``interleaved=True`` (RoFormer, krasserm/perceiver-io): channels `(2i, 2i+1)` form a pair; the angles repeat each
  frequency twice.

Frequencies are `base ** (-2i / dim)` for `i < dim / 2` (base 10000). Plain tensor ops: compile- and export-friendly.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotary_dim(head_dim: int, fraction: float = 0.5, dim: int | None = None) -> int:
    """Channels of a head that rotate: `dim` if given, else `fraction * head_dim` rounded down to an even number.

    Raises ValueError unless the result is even, positive and at most `head_dim`.
    """
    rot = int(head_dim * fraction) // 2 * 2 if dim is None else dim
    if rot < 2 or rot % 2 or rot > head_dim:
        raise ValueError(f"rotary dim must be even and in [2, head_dim={head_dim}], got {rot}")
    return rot


def rotary_inv_freq(dim: int, base: float = 10000.0, device: torch.device | None = None) -> Tensor:
    """Inverse frequencies `(dim // 2,)`: `1 / base ** (arange(0, dim, 2) / dim)`."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))


def rotary_angles(positions: Tensor, inv_freq: Tensor, interleaved: bool = False) -> Tensor:
    """Angles `(..., L, dim)` for integer or float `positions` `(..., L)` (fp32)."""
    freqs = positions.to(torch.float32).unsqueeze(-1) * inv_freq
    if interleaved:
        return freqs.repeat_interleave(2, dim=-1)
    return torch.cat((freqs, freqs), dim=-1)


def rotate_half(x: Tensor, interleaved: bool = False) -> Tensor:
    """`(-x2, x1)` for the two halves (or for each interleaved pair) of the last dimension."""
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """Rotate the first `cos.shape[-1]` channels of `x` `(B, H, L, Dh)`; `cos` / `sin` broadcast to `(B, H, L, dim)`
    (e.g. `(L, dim)` or `(B, 1, L, dim)`). The rest of the channels pass through. A `dim` that is odd or wider than
    the head is a ValueError (shapes only: compile-friendly)."""
    dim = cos.shape[-1]
    if dim % 2 or dim > x.shape[-1] or sin.shape[-1] != dim:
        raise ValueError(
            f"expected cos / sin of the same even width <= the head width {x.shape[-1]}, got cos {tuple(cos.shape)}, "
            f"sin {tuple(sin.shape)} for x {tuple(x.shape)}"
        )
    x_rot, x_pass = x[..., :dim], x[..., dim:]
    x_rot = x_rot * cos.to(x.dtype) + rotate_half(x_rot, interleaved) * sin.to(x.dtype)
    return torch.cat((x_rot, x_pass), dim=-1)
