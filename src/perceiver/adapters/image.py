"""`ImageAdapter`: channels-first images `(B, C, H, W)` -> encoder tokens `(B, M, C')`, as DeepMind's
`ImagePreprocessor` (and transformers' `PerceiverImagePreprocessor`) do it.

    pixel_values (B, C, H, W) --prep--> features (B, h, w, F) --flatten--> (B, h*w, F)
        --[concat | add] positions (h*w, P) (Fourier of the (h, w) grid, or trainable, optionally projected)-->
        tokens (B, h*w, F + P) or (B, h*w, F)

Preprocessing types (`prep_type`):
- `conv`: per 4x of `spatial_downsample` one 7x7 stride-2 conv (no bias), BatchNorm, ReLU, 3x3 stride-2 max-pool.
  `same_padding=True` (default) pads as DeepMind / XLA `SAME` (conv (2, 3) and max-pool (0, 1) at even sizes, so
  224 -> 112 -> 56); `same_padding=False` pads as transformers' `Conv2DDownsample` does (conv 3 on every side,
  max-pool unpadded: 224 -> 112 -> 55).
- `conv1x1`: a 1x1 conv with stride `spatial_downsample`.
- `patches`: space-to-depth in `spatial_downsample` blocks (channels ordered (dh, dw, C)), then an optional Linear
  (`conv_after_patching`).
- `pixels`: the raw pixels, spatially subsampled with stride `spatial_downsample`.

Position encodings (`position_encoding`): `fourier` (DeepMind's features of the token grid: they follow the input
size), `trainable` (one learned vector per token of the `image_size` grid; another size needs
`interpolate_pos_encoding=True`, which resizes the grid bicubically) or `none`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceiver.adapters.video import space_to_depth
from perceiver.checks import InputTypeError, check_float_input, check_int, check_int_fields, to_bool_mask
from perceiver.core.config import PartConfig
from perceiver.core.decoder import AdaptedInputs, FactoredInputs
from perceiver.core.io import InputAdapter
from perceiver.nn.activation import is_dense
from perceiver.nn.inputs import InputFactors
from perceiver.nn.position import FourierPositionEncoding, TrainablePositionEncoding

PrepType = Literal["conv", "conv1x1", "patches", "pixels"]
PositionType = Literal["fourier", "trainable", "none"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """XLA / TensorFlow `SAME` padding (before, after) of one axis: output `ceil(size / stride)`."""
    out = _cdiv(size, stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvDownsample(nn.Module):
    """One 4x downsampling step: 7x7 stride-2 conv (no bias), BatchNorm, ReLU, 3x3 stride-2 max-pool.

    `(B, C, H, W)` -> `(B, F, H', W')` with `H' = ceil(ceil(H / 2) / 2)` under SAME padding (`same_padding=True`),
    or transformers' `floor((ceil(H / 2) - 3) / 2) + 1` (conv padded 3 on every side, max-pool unpadded).
    """

    def __init__(self, in_channels: int, out_channels: int, use_batchnorm: bool = True, same_padding: bool = True):
        super().__init__()
        self.same_padding = same_padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=7, stride=2, bias=False)
        self.batchnorm = nn.BatchNorm2d(out_channels) if use_batchnorm else nn.Identity()

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        if self.same_padding:
            return _cdiv(_cdiv(h, 2), 2), _cdiv(_cdiv(w, 2), 2)
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        return (h - 3) // 2 + 1, (w - 3) // 2 + 1

    def forward(self, x: Tensor) -> Tensor:
        if self.same_padding:
            (top, bottom), (left, right) = same_pads(x.shape[2], 7, 2), same_pads(x.shape[3], 7, 2)
            x = F.pad(x, (left, right, top, bottom))
        else:
            x = F.pad(x, (3, 3, 3, 3))
        x = torch.relu(self.batchnorm(self.conv(x)))
        if self.same_padding:
            (top, bottom), (left, right) = same_pads(x.shape[2], 3, 2), same_pads(x.shape[3], 3, 2)
            x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, kernel_size=3, stride=2)


class ImageAdapter(InputAdapter):
    """Images `(B, in_channels, H, W)` -> `AdaptedInputs(tokens (B, h*w, num_channels), mask, without_pos)`.

    Args:
        image_size: `(H, W)` the model is built for; fixes the trainable position grid.
        in_channels: image channels (3).
        prep_type: `conv` | `conv1x1` | `patches` | `pixels` (see the module docstring).
        spatial_downsample: downsampling factor (a power of 4 for `conv`, the block size for `patches`, the stride for
            `conv1x1` and `pixels`).
        out_channels: features `F` of `conv` / `conv1x1` (and of the Linear after patching).
        conv_after_patching: a Linear `b*b*C -> out_channels` after space-to-depth (`patches` only).
        use_batchnorm, same_padding: for `conv` (see `ConvDownsample`).
        position_encoding: `fourier` | `trainable` | `none`.
        concat_or_add_pos: `concat` positions to the features or `add` them (then positions need `F` channels).
        project_pos_dim: project the positions with a Linear to this many channels (None: no projection).
        trainable_pos_channels: channels of the trainable positions (before projection).
        num_bands, max_resolution, concat_pos, sine_only: Fourier features (DeepMind convention); `max_resolution`
            None uses the token grid at `image_size`.
    """

    def __init__(
        self,
        image_size: Sequence[int] = (224, 224),
        in_channels: int = 3,
        prep_type: PrepType = "conv",
        spatial_downsample: int = 4,
        out_channels: int = 64,
        conv_after_patching: bool = False,
        use_batchnorm: bool = True,
        same_padding: bool = True,
        position_encoding: PositionType = "fourier",
        concat_or_add_pos: Literal["concat", "add"] = "concat",
        project_pos_dim: int | None = None,
        trainable_pos_channels: int = 256,
        num_bands: int = 64,
        max_resolution: Sequence[int] | None = None,
        concat_pos: bool = True,
        sine_only: bool = False,
        pos_init_scale: float = 0.02,
    ) -> None:
        super().__init__()
        # sizes checked here too, not only in `ImageAdapterConfig`: a direct construction failed deep inside torch
        image_size = pair("ImageAdapter.image_size", image_size)
        if isinstance(max_resolution, numbers.Integral):
            max_resolution = pair("ImageAdapter.max_resolution", max_resolution)
        sizes = dict(
            in_channels=in_channels,
            spatial_downsample=spatial_downsample,
            out_channels=out_channels,
            trainable_pos_channels=trainable_pos_channels,
            num_bands=num_bands,
        )
        for name, value in sizes.items():
            check_int(value, f"ImageAdapter.{name}")
        check_int(project_pos_dim, "ImageAdapter.project_pos_dim", minimum=0, optional=True)
        if prep_type not in ("conv", "conv1x1", "patches", "pixels"):
            raise ValueError(f"prep_type must be 'conv', 'conv1x1', 'patches' or 'pixels', got {prep_type!r}")
        if position_encoding not in ("fourier", "trainable", "none"):
            raise ValueError(f"position_encoding must be 'fourier', 'trainable' or 'none', got {position_encoding!r}")
        if concat_or_add_pos not in ("concat", "add"):
            raise ValueError(f"concat_or_add_pos must be 'concat' or 'add', got {concat_or_add_pos!r}")
        if spatial_downsample < 1:
            raise ValueError(f"spatial_downsample must be >= 1, got {spatial_downsample}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.in_channels = in_channels
        self.prep_type = prep_type
        self.spatial_downsample = spatial_downsample
        self.position_encoding = position_encoding
        self.concat_or_add_pos = concat_or_add_pos

        if prep_type == "conv":
            layers = math.log(spatial_downsample, 4)
            if spatial_downsample < 4 or layers != round(layers):
                raise ValueError(f"prep_type 'conv' downsamples by a power of 4 (>= 4), got {spatial_downsample}")
            self.convnet = nn.Sequential(
                *(
                    ConvDownsample(in_channels if i == 0 else out_channels, out_channels, use_batchnorm, same_padding)
                    for i in range(round(layers))
                )
            )
            features = out_channels
        elif prep_type == "conv1x1":
            self.convnet_1x1 = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=spatial_downsample)
            features = out_channels
        elif prep_type == "patches":
            patch_dim = in_channels * spatial_downsample**2
            self.conv_after_patches = nn.Linear(patch_dim, out_channels) if conv_after_patching else None
            features = out_channels if conv_after_patching else patch_dim
        else:
            features = in_channels
        self.grid = self.token_grid(*self.image_size)

        pos_raw = 0
        self.fourier = self.trainable = self.positions_projection = None
        if position_encoding == "fourier":
            self.fourier = FourierPositionEncoding(num_bands, max_resolution or self.grid, concat_pos, sine_only)
            pos_raw = self.fourier.num_channels(2)
        elif position_encoding == "trainable":
            self.trainable = TrainablePositionEncoding(math.prod(self.grid), trainable_pos_channels, pos_init_scale)
            pos_raw = trainable_pos_channels
        pos_dim = pos_raw
        if project_pos_dim and position_encoding != "none":
            self.positions_projection = nn.Linear(pos_raw, project_pos_dim)
            pos_dim = project_pos_dim
        if concat_or_add_pos == "add" and position_encoding != "none" and pos_dim != features:
            raise ValueError(f"concat_or_add_pos='add' needs positions of {features} channels, got {pos_dim}")
        self.num_features = features
        self.num_channels = features + pos_dim if concat_or_add_pos == "concat" else features

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid `(h, w)` of an `(height, width)` image after preprocessing."""
        s = self.spatial_downsample
        if self.prep_type == "conv":
            for layer in self.convnet:  # built of `ConvDownsample` layers (nn.Sequential types them as Module)
                height, width = cast(ConvDownsample, layer).output_size(height, width)
            return height, width
        if self.prep_type == "patches":
            return height // s, width // s
        return _cdiv(height, s), _cdiv(width, s)  # strided 1x1 conv and pixel subsampling

    def _check(self, x: Tensor, interpolate_pos_encoding: bool) -> None:
        # only learned positions (without interpolation) fix the size; Fourier positions follow any image
        fixed = self.trainable is not None and not interpolate_pos_encoding
        size = f"{self.image_size[0]}, {self.image_size[1]}" if fixed else "H, W"
        expected = f"(B, {self.in_channels}, {size})"
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected pixel_values of shape {expected} (channels first), got {got}")
        h, w = x.shape[2:]
        if self.prep_type == "patches" and (h % self.spatial_downsample or w % self.spatial_downsample):
            raise ValueError(
                f"expected an image size divisible by the patch size {self.spatial_downsample}, got {h}x{w}"
            )
        if min(self.token_grid(h, w)) < 1:
            raise ValueError(f"image of {h}x{w} is too small for prep_type {self.prep_type!r}")
        if self.trainable is not None and (h, w) != self.image_size and not interpolate_pos_encoding:
            raise ValueError(
                f"expected pixel_values of shape {expected}, got {tuple(x.shape)}; the learned positions are for "
                f"{self.image_size[0]}x{self.image_size[1]} images: pass interpolate_pos_encoding=True to resize them"
            )

    def positions(self, grid: tuple[int, int], interpolate_pos_encoding: bool = False) -> Tensor | None:
        """Position features `(h*w, P)` of a token grid (None without positions)."""
        if self.fourier is not None:
            pos = self.fourier(grid).reshape(math.prod(grid), -1)
        elif self.trainable is not None:
            pos = self.trainable.interpolate(self.grid, grid) if interpolate_pos_encoding else self.trainable()
        else:
            return None
        return self.positions_projection(pos) if self.positions_projection is not None else pos

    def features(self, x: Tensor) -> Tensor:
        """Preprocess `(B, C, H, W)` -> channels-last features `(B, h, w, F)` (no positions)."""
        if self.prep_type == "conv":
            return self.convnet(x).permute(0, 2, 3, 1)
        if self.prep_type == "conv1x1":
            # A strided 1x1 conv is a Linear on the subsampled pixels; channels-last straight from the GEMM, where
            # the conv's (B, F, h, w) output would be copied once more by the flattening in `forward`.
            conv = self.convnet_1x1
            if not is_dense(conv, nn.Conv2d):  # wrapped or replaced (peft's LoRA), quantised: through the module
                s = self.spatial_downsample
                return conv(x[:, :, ::s, ::s]).permute(0, 2, 3, 1)
            return F.linear(self._subsampled(x), conv.weight.flatten(1), conv.bias)
        if self.prep_type == "patches":
            x = space_to_depth(x, spatial_block_size=self.spatial_downsample)  # channels (dh, dw, C)
            return self.conv_after_patches(x) if self.conv_after_patches is not None else x
        return self._subsampled(x)

    def _subsampled(self, x: Tensor) -> Tensor:
        """Every `spatial_downsample`-th pixel of `(B, C, H, W)`, channels last `(B, h, w, C)`."""
        s = self.spatial_downsample
        return x[:, :, ::s, ::s].permute(0, 2, 3, 1)

    def forward(
        self, inputs: Tensor, mask: Tensor | None = None, interpolate_pos_encoding: bool = False
    ) -> AdaptedInputs:
        """`inputs` pixel_values `(B, C, H, W)`; `mask` `(B, h*w)` boolean over tokens (True = valid) or None.

        Returns tokens `(B, h*w, num_channels)` and `without_pos` `(B, h*w, F)`. `interpolate_pos_encoding`
        resizes trainable positions to another image size (Fourier positions always follow the token grid).
        """
        inputs = check_float_input(inputs, "pixel_values", f"(B, {self.in_channels}, H, W)")
        self._check(inputs, interpolate_pos_encoding)
        if mask is not None:  # bool or 0 / 1 (True = valid); other values (an additive float mask) are an error
            b, (h, w) = inputs.shape[0], self.token_grid(*inputs.shape[2:])
            mask = to_bool_mask(mask, "token mask", ((b, h * w),))
        factorable = self.prep_type == "conv1x1" and is_dense(self.convnet_1x1, nn.Conv2d)
        if factorable and self.concat_or_add_pos == "concat" and self.position_encoding != "none":
            # The tokens are [pixels W^T + b, positions]: the encoder can attend in narrower exact coordinates, and
            # the tokens are only formed if something reads them (FactoredInputs).
            conv, raw = self.convnet_1x1, self._subsampled(inputs)
            b, h, w, _ = raw.shape
            pos = self.positions((h, w), interpolate_pos_encoding)
            assert pos is not None  # position_encoding is not "none"
            factors = InputFactors(raw.reshape(b, h * w, -1), conv.weight.flatten(1), conv.bias, pos.to(raw.dtype))
            return FactoredInputs(None, mask, factors=factors)
        feats = self.features(inputs)
        b, h, w, _ = feats.shape
        feats = feats.reshape(b, h * w, -1)
        pos = self.positions((h, w), interpolate_pos_encoding)
        if pos is None:
            tokens = feats
        elif self.concat_or_add_pos == "concat":
            tokens = torch.cat([feats, pos.to(feats.dtype).expand(b, -1, -1)], dim=-1)
        else:
            tokens = feats + pos.to(feats.dtype)
        return AdaptedInputs(tokens, mask, without_pos=feats)


@dataclass
class ImageAdapterConfig(PartConfig):
    """`ImageAdapter`'s keywords (see its docstring); defaults: `vision-perceiver-learned`'s adapter."""

    part_class: ClassVar[type] = ImageAdapter
    #: fields that take an int for a square (H, W), also where overrides are type-checked (`hub.apply_overrides`)
    square_fields: ClassVar[tuple[str, ...]] = ("image_size", "max_resolution")

    image_size: tuple[int, int] = (224, 224)
    in_channels: int = 3
    prep_type: PrepType = "conv1x1"
    spatial_downsample: int = 1
    out_channels: int = 256
    conv_after_patching: bool = False
    use_batchnorm: bool = True
    same_padding: bool = True
    position_encoding: PositionType = "trainable"
    concat_or_add_pos: Literal["concat", "add"] = "concat"
    project_pos_dim: int | None = 256
    trainable_pos_channels: int = 256
    num_bands: int = 64
    max_resolution: tuple[int, int] | None = None
    concat_pos: bool = True
    sine_only: bool = False
    pos_init_scale: float = 0.02

    def __post_init__(self) -> None:
        check_int_fields(self, zero_ok=("project_pos_dim",))  # project_pos_dim 0 or None: no projection
        self.image_size = pair("ImageAdapterConfig.image_size", self.image_size)
        if self.max_resolution is not None:
            self.max_resolution = pair("ImageAdapterConfig.max_resolution", self.max_resolution)


def pair(name: str, value: Any) -> tuple[int, int]:
    """A positive int or a `(height, width)` pair of them as a tuple of two ints; `InputTypeError` /
    `ValueError` naming `name` otherwise."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (check_int(value, name),) * 2
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InputTypeError(
            f"{name} must be a positive int or (height, width), got {value!r} ({type(value).__name__})"
        )
    return check_int(value[0], f"{name}[0] (height)"), check_int(value[1], f"{name}[1] (width)")
