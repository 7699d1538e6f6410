"""Video input adapter: space-to-depth patches plus 3-D Fourier positions over (T, H, W).

    frames (B, T, C, H, W) --space_to_depth(t, s)--> (B, T/t, H/s, W/s, t*s*s*C) --[Linear]--> patches
    tokens = [patches | fourier(T/t, H/s, W/s)]  flattened to (B, M, C_tok), M = T/t * H/s * W/s

Layout: channels-first frames `(B, T, C, H, W)`, as transformers' `PerceiverImagePreprocessor` and the `image` input
of `PerceiverForMultimodalAutoencoding`; `channels_last=True` takes `(B, T, H, W, C)` instead. `space_to_depth`
equals transformers' function (same channel order `(t, s_h, s_w, C)`), so converted weights see the same features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from perceiver.checks import check_float_input, check_int_fields, check_int_tuple, check_number_tuple
from perceiver.core.config import PartConfig
from perceiver.core.decoder import AdaptedInputs
from perceiver.core.io import InputAdapter
from perceiver.nn.position import FourierPositionEncoding


def space_to_depth(frames: Tensor, temporal_block_size: int = 1, spatial_block_size: int = 1) -> Tensor:
    """Move blocks of pixels into channels (transformers' / DeepMind's `space_to_depth`), channels-first in, last out.

    `(B, C, H, W)` -> `(B, H/s, W/s, s*s*C)`; `(B, T, C, H, W)` -> `(B, T/t, H/s, W/s, t*s*s*C)` with the new channel
    index ordered `(t, s_h, s_w, C)` (C fastest). Raises ValueError when a size is not divisible by its block.

    The one implementation of the library: images (`ImageAdapter`'s `patches`), video and flow frames all use it.
    Name the block of an image `spatial_block_size=`: the second positional argument is the temporal block, and a
    temporal block other than 1 for `(B, C, H, W)` images is an error rather than ignored.
    """
    if temporal_block_size < 1 or spatial_block_size < 1:
        raise ValueError(f"block sizes must be >= 1, got t={temporal_block_size}, s={spatial_block_size}")
    s = spatial_block_size
    if frames.ndim == 4:
        if temporal_block_size != 1:
            raise ValueError(
                f"temporal_block_size={temporal_block_size} needs frames (B, T, C, H, W), got an image of shape "
                f"{tuple(frames.shape)}; pass the block of an image as spatial_block_size="
            )
        b, c, h, w = frames.shape
        _check_divisible((h, w), (s, s), ("height", "width"), tuple(frames.shape))
        x = frames.reshape(b, c, h // s, s, w // s, s).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, h // s, w // s, s * s * c)
    if frames.ndim == 5:
        t = temporal_block_size
        b, n, c, h, w = frames.shape
        _check_divisible((n, h, w), (t, s, s), ("frames", "height", "width"), tuple(frames.shape))
        x = frames.reshape(b, n // t, t, c, h // s, s, w // s, s).permute(0, 1, 4, 6, 2, 5, 7, 3)
        return x.reshape(b, n // t, h // s, w // s, t * s * s * c)
    raise ValueError(f"expected frames of shape (B, C, H, W) or (B, T, C, H, W), got {tuple(frames.shape)}")


def _check_divisible(sizes: Sequence[int], blocks: Sequence[int], names: Sequence[str], shape: tuple) -> None:
    for size, block, name in zip(sizes, blocks, names):
        if size % block:
            raise ValueError(f"{name} ({size}) must be divisible by the space-to-depth block {block}, got {shape}")


class VideoAdapter(InputAdapter):
    """Space-to-depth video patches with 3-D Fourier positions.

    Args:
        in_channels: colour channels `C` of each frame.
        num_frames, image_size: expected `T` and `(H, W)`; inputs of another size raise a ValueError (None: any).
        temporal_block_size, spatial_block_size: space-to-depth factors `t`, `s` (DeepMind's temporal/spatial
            downsampling of `prep_type="patches"`).
        num_bands: Fourier bands per axis; max_resolution: Nyquist resolution per axis (T, H, W) — transformers'
            multimodal model uses `(num_frames, image_size, image_size)`, i.e. the pixel grid, not the token grid;
            default: the token grid `(T/t, H/s, W/s)` of the expected (else the actual) size.
        project_dim: if set, a Linear `t*s*s*C -> project_dim` after patching (transformers' `conv_after_patching`).
        channels_last: take `(B, T, H, W, C)` instead of `(B, T, C, H, W)`.

    `forward(inputs (B, T, C, H, W), mask (B, M) or None)` -> `AdaptedInputs(tokens (B, M, num_channels), mask,
    without_pos (B, M, C_patch))`.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_frames: int | None = None,
        image_size: Sequence[int] | None = None,
        temporal_block_size: int = 1,
        spatial_block_size: int = 1,
        num_bands: int = 32,
        max_resolution: Sequence[float] | None = None,
        project_dim: int | None = None,
        channels_last: bool = False,
        concat_pos: bool = True,
        sine_only: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_frames = num_frames
        self.image_size = tuple(image_size) if image_size is not None else None
        self.temporal_block_size = temporal_block_size
        self.spatial_block_size = spatial_block_size
        self.channels_last = channels_last
        t, s = temporal_block_size, spatial_block_size
        if num_frames is not None and num_frames % t:
            raise ValueError(f"num_frames ({num_frames}) must be divisible by temporal_block_size ({t})")
        if self.image_size is not None and (len(self.image_size) != 2 or any(n % s for n in self.image_size)):
            raise ValueError(f"image_size must be (H, W) divisible by spatial_block_size ({s}), got {image_size}")
        if max_resolution is None and num_frames is not None and self.image_size is not None:
            max_resolution = (num_frames // t, self.image_size[0] // s, self.image_size[1] // s)
        if max_resolution is not None and len(max_resolution) != 3:
            raise ValueError(f"max_resolution needs 3 entries (T, H, W), got {tuple(max_resolution)}")
        self.patch_channels = t * s * s * in_channels
        self.projection = nn.Linear(self.patch_channels, project_dim) if project_dim else None
        self.position = FourierPositionEncoding(num_bands, max_resolution, concat_pos, sine_only)
        self.num_channels = (project_dim or self.patch_channels) + self.position.num_channels(3)

    def expected_shape(self) -> str:
        t = self.num_frames if self.num_frames is not None else "T"
        h, w = self.image_size if self.image_size is not None else ("H", "W")
        c = self.in_channels
        return f"(B, {t}, {h}, {w}, {c})" if self.channels_last else f"(B, {t}, {c}, {h}, {w})"

    def patches(self, inputs: Tensor) -> Tensor:
        """Validated space-to-depth patches `(B, T/t, H/s, W/s, C_patch)` (projected when `project_dim` is set)."""
        if inputs.ndim != 5:
            raise ValueError(f"expected video of shape {self.expected_shape()}, got {tuple(inputs.shape)}")
        x = inputs.permute(0, 1, 4, 2, 3) if self.channels_last else inputs
        _, n, c, h, w = x.shape
        wrong = (
            c != self.in_channels
            or (self.num_frames is not None and n != self.num_frames)
            or (self.image_size is not None and (h, w) != self.image_size)
        )
        if wrong:
            raise ValueError(f"expected video of shape {self.expected_shape()}, got {tuple(inputs.shape)}")
        x = space_to_depth(x, self.temporal_block_size, self.spatial_block_size)
        return self.projection(x) if self.projection is not None else x

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> AdaptedInputs:
        inputs = check_float_input(inputs, "video", self.expected_shape())
        x = self.patches(inputs)
        b, grid = x.shape[0], tuple(x.shape[1:4])
        x = x.reshape(b, -1, x.shape[-1])
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"expected mask of shape {tuple(x.shape[:2])} (B, tokens), got {tuple(mask.shape)}")
        pos = self.position(grid, dtype=x.dtype).reshape(1, x.shape[1], -1).expand(b, -1, -1)
        return AdaptedInputs(tokens=torch.cat([x, pos], dim=-1), mask=mask, without_pos=x)


@dataclass
class VideoAdapterConfig(PartConfig):
    """`VideoAdapter`'s keywords; defaults: the `video-classifier` preset (16 x 224 x 224, space-to-depth 4)."""

    part_class: ClassVar[type] = VideoAdapter

    in_channels: int = 3
    num_frames: int | None = 16
    image_size: tuple[int, int] | None = (224, 224)
    temporal_block_size: int = 1
    spatial_block_size: int = 4
    num_bands: int = 32
    max_resolution: tuple[float, ...] | None = (16, 224, 224)
    project_dim: int | None = None
    channels_last: bool = False
    concat_pos: bool = True
    sine_only: bool = False

    def __post_init__(self) -> None:
        check_int_fields(self, zero_ok=("project_dim",))  # project_dim 0 or None: no projection
        if self.image_size is not None:
            h, w = check_int_tuple(self.image_size, "VideoAdapterConfig.image_size", 2)
            self.image_size = (h, w)
        if self.max_resolution is not None:
            self.max_resolution = check_number_tuple(self.max_resolution, "VideoAdapterConfig.max_resolution", 3)
