"""Position encodings: Fourier features in both published conventions, and trainable ones.

Fourier encodings depend only on the index shape. They are computed on every call (a few elementwise ops, about 1%
of a forward at 224 x 224): no cache to invalidate or to guard across threads, and `torch.compile` with Inductor
freezing folds them into constants. An empty anchor buffer gives the device and default dtype (it follows `.to()`).

Conventions
- DeepMind / HF transformers (`fourier_features`): positions `linspace(-1, 1, n)` per axis, bands
  `linspace(1, max_resolution / 2, K)` per axis, output `[pos (d) | sin (d*K) | cos (d*K)]` with axis-major bands;
  `sine_only` drops the cosines, `concat_pos=False` drops the raw positions.
- perceiver-pytorch (`axial_fourier_features`): bands `linspace(1, max_freq / 2, K)`, per axis `[sin (K) | cos (K) | x]`.
Both multiply by pi: `sin(pi * f * x)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from perceiver.checks import InputTypeError, check_int, check_number, check_number_tuple


def check_index_dims(index_dims: object) -> tuple[int, ...]:
    """`index_dims` as a tuple of one or more sizes >= 0 (plain ints are checked; symbolic sizes of a compiled graph
    pass as they are): `(n,)`, `(H, W)`, `(T, H, W)`."""
    if isinstance(index_dims, (str, bytes)) or not isinstance(index_dims, Sequence) or not index_dims:
        raise InputTypeError(
            f"expected index_dims as a non-empty sequence of sizes, e.g. (n,) or (H, W), got {index_dims!r}"
        )
    for n in index_dims:
        if isinstance(n, bool) or not isinstance(n, (int, torch.SymInt)):
            raise InputTypeError(f"expected index_dims of integer sizes, got {tuple(index_dims)!r}")
        if isinstance(n, int) and n < 0:
            raise ValueError(f"expected index_dims of sizes >= 0, got {tuple(index_dims)}")
    return tuple(index_dims)


def linear_positions(
    index_dims: Sequence[int], device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Grid of positions in [-1, 1] per axis: `(*index_dims, len(index_dims))`, 'ij' order."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) for n in check_index_dims(index_dims)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def fourier_features(
    pos: Tensor,
    num_bands: int,
    max_resolution: Sequence[float],
    concat_pos: bool = True,
    sine_only: bool = False,
) -> Tensor:
    """DeepMind's Fourier features of positions `pos` `(..., d)` -> `(..., C)`.

    `C = d * (concat_pos + num_bands * (1 if sine_only else 2))`.
    """
    d = pos.shape[-1]
    if len(max_resolution) != d:
        raise ValueError(f"max_resolution needs one entry per position axis ({d}), got {tuple(max_resolution)}")
    bands = torch.stack(
        [torch.linspace(1.0, res / 2, num_bands, device=pos.device, dtype=pos.dtype) for res in max_resolution]
    )  # (d, K)
    feats = (pos[..., :, None] * bands).flatten(-2) * math.pi  # (..., d*K), axis-major
    parts = [feats.sin()] if sine_only else [feats.sin(), feats.cos()]
    if concat_pos:
        parts.insert(0, pos)
    return torch.cat(parts, dim=-1)


def fourier_channels(num_axes: int, num_bands: int, concat_pos: bool = True, sine_only: bool = False) -> int:
    """Channels produced by `fourier_features` for `num_axes` position axes."""
    return num_axes * (int(concat_pos) + num_bands * (1 if sine_only else 2))


def axial_fourier_features(pos: Tensor, num_bands: int, max_freq: float) -> Tensor:
    """perceiver-pytorch's Fourier features of `pos` `(..., d)` -> `(..., d * (2K + 1))`, per axis `[sin|cos|x]`."""
    x = pos[..., None]  # (..., d, 1)
    bands = torch.linspace(1.0, max_freq / 2, num_bands, device=pos.device, dtype=pos.dtype)
    scaled = x * bands * math.pi
    return torch.cat([scaled.sin(), scaled.cos(), x], dim=-1).flatten(-2)


class FourierPositionEncoding(nn.Module):
    """Fourier position encoding of an index grid.

    Args:
        num_bands: frequency bands `K` per axis.
        max_resolution: DeepMind convention: the Nyquist resolution per axis (defaults to the grid shape).
        concat_pos, sine_only: DeepMind convention switches.
        max_freq: if given, use perceiver-pytorch's convention with this maximum frequency instead.

    `forward(index_dims)` returns `(*index_dims, C)`; the caller broadcasts over the batch.
    """

    anchor: Tensor

    def __init__(
        self,
        num_bands: int,
        max_resolution: Sequence[float] | None = None,
        concat_pos: bool = True,
        sine_only: bool = False,
        max_freq: float | None = None,
    ) -> None:
        super().__init__()
        self.num_bands = check_int(num_bands, "num_bands")
        if max_resolution is not None:
            if isinstance(max_resolution, (str, bytes)) or not isinstance(max_resolution, Sequence):
                raise InputTypeError(
                    f"max_resolution must be a sequence (one per axis) or None, got {max_resolution!r}"
                )
            max_resolution = check_number_tuple(max_resolution, "max_resolution", len(max_resolution))
        self.max_resolution = tuple(max_resolution) if max_resolution is not None else None
        self.concat_pos = concat_pos
        self.sine_only = sine_only
        self.max_freq = check_number(max_freq, "max_freq", optional=True)
        self.register_buffer("anchor", torch.empty(0), persistent=False)  # device and default dtype

    def extra_repr(self) -> str:
        if self.max_freq is not None:
            return f"num_bands={self.num_bands}, max_freq={self.max_freq}"
        res = "the index shape" if self.max_resolution is None else self.max_resolution
        return f"num_bands={self.num_bands}, max_resolution={res}, concat_pos={self.concat_pos}, sine_only={self.sine_only}"

    def num_channels(self, num_axes: int) -> int:
        if self.max_freq is not None:
            return num_axes * (2 * self.num_bands + 1)
        return fourier_channels(num_axes, self.num_bands, self.concat_pos, self.sine_only)

    def build(
        self, index_dims: Sequence[int], device: torch.device | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        pos = linear_positions(index_dims, device=device, dtype=dtype)
        if self.max_freq is not None:
            return axial_fourier_features(pos, self.num_bands, self.max_freq)
        res = self.max_resolution if self.max_resolution is not None else tuple(index_dims)
        return fourier_features(pos, self.num_bands, res, self.concat_pos, self.sine_only)

    def forward(self, index_dims: Sequence[int], dtype: torch.dtype | None = None) -> Tensor:
        """Features `(*index_dims, C)`, built in fp32 and cast to `dtype` (default: the module's), so the values do
        not depend on the dtype they are asked in. `index_dims` is a sequence of sizes, `(n,)` for one axis; with
        `max_resolution` set it needs one size per entry (a ValueError otherwise)."""
        dtype = dtype or self.anchor.dtype
        return self.build(check_index_dims(index_dims), device=self.anchor.device).to(dtype)


class TrainablePositionEncoding(nn.Module):
    """Learned position embeddings `(num_positions, num_channels)`, e.g. for text or a fixed image grid.

    `forward()` returns `(num_positions, num_channels)`, `forward(n)` the first `n` rows `(n, num_channels)`.
    `interpolate(index_dims, new_dims)` resizes a grid-shaped table bicubically (for another image size).
    `reset_parameters()` draws the table again, `N(0, init_scale^2)` (as `torch.nn` layers, e.g. after building on
    the meta device and `to_empty()`).
    """

    def __init__(self, num_positions: int, num_channels: int, init_scale: float = 0.02) -> None:
        super().__init__()
        check_int(num_positions, "num_positions")
        check_int(num_channels, "num_channels")
        self.init_scale = init_scale
        self.position_embeddings = nn.Parameter(torch.empty(num_positions, num_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.position_embeddings, std=self.init_scale)  # = randn * init_scale; skipped for a load

    @property
    def num_positions(self) -> int:
        return self.position_embeddings.shape[0]

    def extra_repr(self) -> str:
        return f"num_positions={self.num_positions}, num_channels={self.position_embeddings.shape[1]}"

    def forward(self, num_positions: int | None = None) -> Tensor:
        """The whole table `(num_positions, C)`, or its first `num_positions` rows (0 to `self.num_positions`)."""
        if num_positions is None:
            return self.position_embeddings
        if isinstance(num_positions, bool) or not isinstance(num_positions, (int, torch.SymInt)):
            raise TypeError(f"expected num_positions as an int or None, got {type(num_positions).__name__}")
        if num_positions < 0 or num_positions > self.num_positions:  # [:-1] would silently drop the last row
            raise ValueError(f"expected 0 to {self.num_positions} positions, got {num_positions}")
        return self.position_embeddings[:num_positions]

    def interpolate(self, index_dims: Sequence[int], new_dims: Sequence[int]) -> Tensor:
        """The table seen as a 2-D grid `index_dims`, resized to `new_dims`: `(prod(new_dims), C)`."""
        index_dims, new_dims = tuple(index_dims), tuple(new_dims)
        if index_dims == new_dims:
            return self.position_embeddings
        if len(index_dims) != 2 or len(new_dims) != 2:
            raise ValueError(f"interpolation needs 2-D grids, got {index_dims} -> {new_dims}")
        if index_dims[0] * index_dims[1] != self.num_positions:
            raise ValueError(
                f"expected index_dims whose product is the table's {self.num_positions} positions, got {index_dims}"
            )
        c = self.position_embeddings.shape[-1]
        grid = self.position_embeddings.reshape(1, *index_dims, c).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(grid.float(), size=new_dims, mode="bicubic", align_corners=False)
        return grid.to(self.position_embeddings.dtype).permute(0, 2, 3, 1).reshape(-1, c)
