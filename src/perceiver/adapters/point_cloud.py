"""Point cloud input adapter: Fourier features of the xyz coordinates themselves, no position index.

    points (B, P, 3 + F) --> tokens [xyz | sin(pi f xyz) | cos(pi f xyz) | extra features]  (B, P, C_tok)
    mask (B, P), True = real point; padded points are zeroed and never attended to

The coordinates are continuous, so the Fourier features are computed from the actual xyz values (DeepMind's
`fourier_features` convention: bands `linspace(1, max_resolution / 2, K)` per axis, `sin(pi * f * x)`), expecting
coordinates normalised to about [-1, 1] (e.g. ModelNet40 scaled into the unit sphere). Nothing depends on a
point's index, so the encoder (cross-attention over the points) is invariant to the order of the points and to
extra masked padding points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from perceiver.checks import check_float_input, check_int, check_int_fields, check_number, to_bool_mask
from perceiver.core.config import PartConfig
from perceiver.core.decoder import AdaptedInputs
from perceiver.core.io import InputAdapter
from perceiver.nn.position import fourier_channels, fourier_features


class PointCloudAdapter(InputAdapter):
    """Point clouds of any size with a padding mask.

    Args:
        in_channels: channels per point: 3 coordinates first, then optional features (e.g. normals: 6).
        num_bands: Fourier bands per coordinate axis.
        max_resolution: Nyquist resolution per axis; the highest band is `max_resolution / 2` cycles over [-1, 1].
        concat_pos, sine_only: as `fourier_features` (concat_pos keeps the raw xyz in the tokens).

    `forward(inputs (B, P, in_channels), mask (B, P) or None)` -> `AdaptedInputs(tokens (B, P, num_channels),
    mask (B, P) or None, without_pos = inputs with padded points zeroed)`. Non-finite coordinates of real points
    raise a ValueError in eager mode (a compiled graph skips that value check); padded points may hold anything
    (NaN included).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_bands: int = 64,
        max_resolution: float = 64.0,
        concat_pos: bool = True,
        sine_only: bool = False,
    ) -> None:
        super().__init__()
        check_int(in_channels, "PointCloudAdapter.in_channels (xyz first)", minimum=3)
        check_int(num_bands, "PointCloudAdapter.num_bands")
        check_number(max_resolution, "PointCloudAdapter.max_resolution")
        self.in_channels = in_channels
        self.num_bands = num_bands
        self.max_resolution = float(max_resolution)
        self.concat_pos = concat_pos
        self.sine_only = sine_only
        self.num_channels = fourier_channels(3, num_bands, concat_pos, sine_only) + in_channels - 3

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> AdaptedInputs:
        inputs = check_float_input(inputs, "points", f"(B, P, {self.in_channels})")
        if inputs.ndim != 3 or inputs.shape[-1] != self.in_channels or inputs.shape[1] == 0:
            raise ValueError(
                f"expected points of shape (B, P, {self.in_channels}) with P >= 1 (xyz first), got {tuple(inputs.shape)}"
            )
        b, p, _ = inputs.shape
        # bool or 0 / 1 (True = real point); other values (an additive float mask) are an error, not a cast
        mask = to_bool_mask(mask, "mask", ((b, p),))
        valid = mask[..., None] if mask is not None else torch.ones_like(inputs[..., :1], dtype=torch.bool)
        bad = ~torch.isfinite(inputs) & valid
        if not torch.compiler.is_compiling() and bool(bad.any()):  # a value check (host sync): eager only
            rows = sorted({int(i) for i in bad.any(dim=-1).nonzero()[:, 0]})
            raise ValueError(
                f"point cloud has {int(bad.any(dim=-1).sum())} valid point(s) with NaN/inf values "
                f"(batch rows {rows[:8]}); drop them or set mask=False for them"
            )
        x = inputs if mask is None else inputs.masked_fill(~valid, 0.0)
        xyz = x[..., :3]
        res = (self.max_resolution,) * 3
        feats = fourier_features(xyz.float(), self.num_bands, res, self.concat_pos, self.sine_only).to(x.dtype)
        tokens = torch.cat([feats, x[..., 3:]], dim=-1) if self.in_channels > 3 else feats
        return AdaptedInputs(tokens=tokens, mask=mask, without_pos=x)


@dataclass
class PointCloudAdapterConfig(PartConfig):
    """`PointCloudAdapter`'s keywords; defaults: the `point-cloud-classifier` preset (xyz, 64 bands, resolution 64)."""

    part_class: ClassVar[type] = PointCloudAdapter

    in_channels: int = 3
    num_bands: int = 64
    max_resolution: float = 64.0
    concat_pos: bool = True
    sine_only: bool = False

    def __post_init__(self) -> None:
        check_int_fields(self, skip=("in_channels",))
        self.in_channels = check_int(self.in_channels, "PointCloudAdapterConfig.in_channels (xyz first)", minimum=3)
        self.max_resolution = check_number(self.max_resolution, "PointCloudAdapterConfig.max_resolution")
