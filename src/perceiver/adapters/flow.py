"""Optical flow pieces: 3x3 patch extraction, the flow input adapter and output adapter, tiled inference, colours.

    frames (B, 2, H, W, 3) --frames_to_patches--> (B, 2, 27, H, W)           (transformers' model input)
    --FlowAdapter--> concat frames on channels (B, H, W, 54) --Linear--> (B, H, W, 64)
                     tokens = [features | fourier(H, W; 64 bands, max_resolution=train_size)]  (B, H*W, 322)
    decoder queries = the tokens themselves; decoder output (B, H*W, 2)
    --FlowOutput--> / rescale_factor (100) * flow_scale_factor (20) --> flow in pixels (B, H, W, 2)

Input range: DeepMind's model takes frames in [-1, 1]; `normalize_frames` is the one place that maps uint8 frames
([0, 255]) and the data modules' float frames ([0, 1]) there (training, `perceiver predict` and `model.predict`).

Units: transformers' `PerceiverForOpticalFlow` returns `decoder / 100`; DeepMind's colab multiplies that by
`FLOW_SCALE_FACTOR = 20` to get pixels (the network was trained on flow / 20). `FlowOutput` applies both, so our
`.logits` are in pixels; `flow_scale_factor=1` gives transformers' numbers.

Patch channel order (DeepMind's `patches_for_flow`, i.e. `tf.image.extract_patches`, and transformers' colab):
channel `(dy * 3 + dx) * 3 + c` holds colour `c` of the pixel at offset `(dy - 1, dx - 1)`, zero outside the image
(for `k x k` patches: `(dy * k + dx) * 3 + c`, offset `(dy - k // 2, dx - k // 2)`).
"""

from __future__ import annotations

import itertools
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceiver.adapters.video import space_to_depth
from perceiver.checks import (
    InputTypeError,
    check_float_input,
    check_int_fields,
    check_int_tuple,
    check_number,
    to_bool_mask,
)
from perceiver.core.config import PartConfig
from perceiver.core.decoder import AdaptedInputs, Index
from perceiver.core.io import InputAdapter, OutputAdapter
from perceiver.nn.position import FourierPositionEncoding


def normalize_frames(frames: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Frames in DeepMind's input range [-1, 1]: uint8 frames (`[0, 255]`) as `x / 255 * 2 - 1` (DeepMind's colab),
    floating frames in [0, 1] (the data modules' batches) as `x * 2 - 1`; cast to `dtype` (default: float32 for
    uint8, else the frames' own) first.

    The one normalisation of the library: the training task, `perceiver predict` and `model.predict` (for uint8
    frames) all feed the model through it, so the inputs they give the model for the same images cannot diverge.
    """
    if frames.dtype == torch.uint8:
        return frames.to(dtype or torch.float32) / 255.0 * 2 - 1
    if not frames.is_floating_point():
        raise ValueError(f"expected uint8 frames in [0, 255] or floating frames in [0, 1], got dtype {frames.dtype}")
    return (frames if dtype is None else frames.to(dtype)) * 2 - 1


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_patch_size(patch_size: int) -> int:
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be an odd number >= 1, got {patch_size} (a patch centred on its pixel)")
    return patch_size


def frames_to_patches(frames: Tensor, channels_last: bool | None = None, patch_size: int = 3) -> Tensor:
    """Zero-padded `k x k` patches (`k = patch_size`, odd; DeepMind: 3) around each pixel of two frames:
    `(B, 2, H, W, 3)` -> `(B, 2, 3 * k * k, H, W)`, i.e. `(B, 2, 27, H, W)` for DeepMind's 3x3.

    Also takes channels-first `(B, 2, 3, H, W)`. `channels_last=None` guesses from the shape (last axis of size 3 ->
    channels-last); pass it explicitly when both axes have size 3.
    """
    check_patch_size(patch_size)
    if frames.ndim != 5 or frames.shape[1] != 2 or 3 not in (frames.shape[2], frames.shape[-1]):
        raise ValueError(f"expected frames of shape (B, 2, H, W, 3) or (B, 2, 3, H, W), got {tuple(frames.shape)}")
    if channels_last is None:
        channels_last = frames.shape[-1] == 3
    x = frames.permute(0, 1, 4, 2, 3) if channels_last else frames
    if x.shape[2] != 3:
        raise ValueError(f"expected 3 colour channels, got frames of shape {tuple(frames.shape)}")
    b, t, c, h, w = x.shape
    x = x.reshape(b * t, c, h, w)
    k2 = patch_size * patch_size
    cols = F.unfold(x if x.is_floating_point() else x.float(), patch_size, padding=patch_size // 2)  # (B*2, c*k2, H*W)
    # unfold orders channels (c, dy, dx); DeepMind / TF order is (dy, dx, c).
    cols = cols.view(b * t, c, k2, h * w).transpose(1, 2)
    return cols.reshape(b, t, k2 * c, h, w)


@dataclass
class FlowAdaptedInputs(AdaptedInputs):
    """`AdaptedInputs` plus the image grid `(H, W)` the flat tokens come from."""

    image_shape: tuple[int, int] = (0, 0)


class FlowAdapter(InputAdapter):
    """transformers' flow `PerceiverImagePreprocessor` (prep_type "patches", temporal_downsample 2,
    spatial_downsample 1, conv_after_patching, Fourier positions concatenated).

    `forward(inputs (B, 2, C_patch, H, W), mask (B, H*W) or None)` -> `FlowAdaptedInputs(tokens (B, H*W,
    out_channels + 2 * (1 + 2 * num_bands)), mask, without_pos (B, H*W, out_channels), image_shape (H, W))`, with
    `C_patch = patch_channels = 3 * patch_size ** 2` (27 for DeepMind's 3 x 3 patches).
    Positions are `linspace(-1, 1)` over the actual grid with bands up to `train_size / 2` (DeepMind's convention:
    the model is meant to see `train_size` inputs; see `predict_flow_tiled` for other sizes).

    `projection_hidden` (not in DeepMind's model; None keeps its single Linear, which the checkpoints need) makes the
    per-pixel projection an MLP `2 * C_patch -> projection_hidden -> GELU -> out_channels`. Motion is a nonlinear
    function of a pixel's two patches (intensity differences over gradients); with a linear projection nothing can
    form it before cross-attention averages pixels, and small models trained briefly stay at zero flow.

    `pyramid_scales` (not in DeepMind's model; empty by default) adds, for each scale `s`, the same `k x k` patches
    taken from both frames area-downsampled by `s` and bilinearly upsampled back to `(H, W)`: a pixel's features then
    see motions up to `s * (k // 2)` pixels, where the small-motion (linearised) relation between the two patches
    still holds at the coarse scale. The frames are read back from the patches' centre channels, so the model's
    input stays `(B, 2, C_patch, H, W)`; the projection takes `2 * C_patch * (1 + len(pyramid_scales))` channels.

    `difference_scale` (not in DeepMind's model; None by default) feeds the projection frame 1 and
    `difference_scale * (frame 2 - frame 1)` instead of the two frames: the same information, but the small temporal
    differences motion shows up in (std 0.12 against 0.54 for intensities on the synthetic pairs) get their own
    channels at a comparable scale, which gradient descent otherwise learns ~4x slower than the intensities.
    """

    projection: nn.Linear | nn.Sequential

    def __init__(
        self,
        train_size: Sequence[int] = (368, 496),
        patch_size: int = 3,
        out_channels: int = 64,
        num_bands: int = 64,
        concat_pos: bool = True,
        sine_only: bool = False,
        projection_hidden: int | None = None,
        pyramid_scales: Sequence[int] = (),
        difference_scale: float | None = None,
    ) -> None:
        super().__init__()
        if difference_scale is not None and not difference_scale > 0:
            raise ValueError(f"difference_scale must be None or > 0, got {difference_scale}")
        self.difference_scale = difference_scale
        self.train_size = (int(train_size[0]), int(train_size[1]))
        self.patch_size = check_patch_size(patch_size)
        self.patch_channels = patch_channels = 3 * patch_size**2
        self.pyramid_scales = tuple(int(v) for v in pyramid_scales)
        if any(v < 2 for v in self.pyramid_scales):
            raise ValueError(f"pyramid_scales must be integers >= 2, got {tuple(pyramid_scales)}")
        in_channels = 2 * patch_channels * (1 + len(self.pyramid_scales))
        if projection_hidden is None:
            self.projection = nn.Linear(in_channels, out_channels)
        elif projection_hidden < 1:
            raise ValueError(f"projection_hidden must be None or >= 1, got {projection_hidden}")
        else:
            self.projection = nn.Sequential(
                nn.Linear(in_channels, projection_hidden), nn.GELU(), nn.Linear(projection_hidden, out_channels)
            )
        self.position = FourierPositionEncoding(num_bands, self.train_size, concat_pos, sine_only)
        self.num_channels = out_channels + self.position.num_channels(2)

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> FlowAdaptedInputs:
        inputs = check_float_input(inputs, "patches", f"(B, 2, {self.patch_channels}, H, W)")
        if inputs.ndim != 5 or inputs.shape[1] != 2 or inputs.shape[2] != self.patch_channels:
            h, w = self.train_size
            raise ValueError(
                f"expected patches of shape (B, 2, {self.patch_channels}, H, W), e.g. (B, 2, {self.patch_channels}, "
                f"{h}, {w}) (use frames_to_patches on two frames), got {tuple(inputs.shape)}"
            )
        b, _, _, h, w = inputs.shape
        if mask is not None and tuple(mask.shape) != (b, h * w):
            raise ValueError(f"expected attention_mask of shape ({b}, {h * w}) (B, H*W), got {tuple(mask.shape)}")
        if self.pyramid_scales:  # (B, 2, C_patch * (1 + S), H, W)
            inputs = torch.cat([inputs, *self.coarse_patches(inputs, to_bool_mask(mask, "attention_mask"))], dim=2)
        x = space_to_depth(inputs, temporal_block_size=2)[:, 0]  # (B, H, W, 2 * C), frame-major channels
        if self.difference_scale is not None:
            c = x.shape[-1] // 2
            x = torch.cat([x[..., :c], (x[..., c:] - x[..., :c]) * self.difference_scale], dim=-1)
        x = self.projection(x).reshape(b, h * w, -1)
        pos = self.position((h, w), dtype=x.dtype).reshape(1, h * w, -1).expand(b, -1, -1)
        tokens = torch.cat([x, pos], dim=-1)
        return FlowAdaptedInputs(tokens=tokens, mask=mask, without_pos=x, image_shape=(h, w))

    def coarse_patches(self, inputs: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """Per pyramid scale, `(B, 2, C_patch, H, W)` patches of the downsampled frames, upsampled to `(H, W)`. With
        `mask` `(B, H*W)` (True = valid pixel) a coarse pixel averages the valid pixels under it only (0 where there
        are none), so that masked pixels never reach the valid outputs."""
        b, t, _, h, w = inputs.shape
        k = self.patch_size
        centre = (k * k) // 2 * 3
        frames = inputs[:, :, centre : centre + 3].reshape(b * t, 3, h, w)
        valid = None if mask is None else mask.view(b, 1, 1, h, w).expand(b, t, 1, h, w).reshape(b * t, 1, h, w)
        if valid is not None:
            # a masked pixel may hold anything, NaN included: zeroed by selection, not by multiplication
            frames = torch.where(valid, frames, torch.zeros((), dtype=frames.dtype, device=frames.device))
            valid = valid.to(frames.dtype)
        out = []
        for scale in self.pyramid_scales:
            size = (max(1, -(-h // scale)), max(1, -(-w // scale)))
            coarse = F.adaptive_avg_pool2d(frames, size)
            if valid is not None:  # the mean over the valid pixels: sum / count
                coarse = coarse / F.adaptive_avg_pool2d(valid, size).clamp_min(torch.finfo(frames.dtype).tiny)
            patches = frames_to_patches(coarse.view(b, t, 3, *coarse.shape[-2:]), channels_last=False, patch_size=k)
            up = F.interpolate(patches.flatten(0, 1), size=(h, w), mode="bilinear", align_corners=False)
            out.append(up.view(b, t, self.patch_channels, h, w))
        return out


@dataclass
class FlowAdapterConfig(PartConfig):
    """`FlowAdapter`'s keywords (see its docstring); defaults: `optical-flow-perceiver`'s (DeepMind's) adapter.

    `patch_channels` (the model input's channel count, `3 * patch_size ** 2`) follows `patch_size`.
    """

    part_class: ClassVar[type] = FlowAdapter

    train_size: tuple[int, int] = (368, 496)
    patch_size: int = 3
    out_channels: int = 64
    num_bands: int = 64
    concat_pos: bool = True
    sine_only: bool = False
    projection_hidden: int | None = None
    pyramid_scales: tuple[int, ...] = ()
    difference_scale: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.train_size, (tuple, list)) or len(self.train_size) != 2:
            raise ValueError(f"train_size must be (H, W), got {self.train_size!r}")
        h, w = check_int_tuple(self.train_size, "FlowAdapterConfig.train_size", 2)
        self.train_size = (h, w)
        check_int_fields(self, skip=("patch_size",))
        check_patch_size(self.patch_size)
        scales = tuple(self.pyramid_scales) if isinstance(self.pyramid_scales, (tuple, list)) else self.pyramid_scales
        if not isinstance(scales, tuple) or not all(_is_int(v) and v >= 2 for v in scales):
            error = ValueError if isinstance(scales, tuple) and all(_is_int(v) for v in scales) else InputTypeError
            raise error(f"FlowAdapterConfig.pyramid_scales must be integers >= 2, got {scales!r}")
        self.pyramid_scales = tuple(int(v) for v in scales)
        scale = self.difference_scale
        if scale is not None:
            check_number(scale, "FlowAdapterConfig.difference_scale", optional=True, check_range=False)
            if not scale > 0:
                raise ValueError(f"FlowAdapterConfig.difference_scale must be None or > 0, got {scale!r}")

    @property
    def patch_channels(self) -> int:
        """Channels per frame of the model input: `3 * patch_size ** 2`."""
        return 3 * self.patch_size**2


@dataclass
class FlowOutputConfig:
    """`FlowOutput`'s settings, read at every forward: the model config holds this object (`config.output`) and the
    output adapter the same one, so `model.config.output.flow_scale_factor = 1.0` switches a loaded model to
    transformers' units. Change the fields; replacing the object would detach it from the model.

    rescale_factor: the decoder output is divided by it (transformers' 100); flow_scale_factor: then multiplied by it
    (DeepMind's colab: 20 gives pixels, 1 transformers' logits).
    """

    rescale_factor: float = 100.0
    flow_scale_factor: float = 20.0

    def build(self) -> FlowOutput:
        return FlowOutput(self)


class FlowOutput(OutputAdapter):
    """Decoder output `(B, O, 2)` -> flow in pixels: `x / rescale_factor * flow_scale_factor` (`config`, a
    `FlowOutputConfig` kept by reference, so changes to it apply to the next forward).

    Per query chunk `forward` scales its rows (position-wise); `assemble` joins the chunks and shapes a whole decode
    `(B, H, W, 2)`, while subset decodes (`output_index` of flat pixel indices) stay flat `(B, O', 2)`.
    """

    def __init__(self, config: FlowOutputConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else FlowOutputConfig()

    def forward(self, x: Tensor, adapted: AdaptedInputs, index: Index = None) -> Tensor:
        x = x / self.config.rescale_factor
        if self.config.flow_scale_factor != 1.0:
            x = x * self.config.flow_scale_factor
        return x

    def assemble(self, pieces: list[Tensor], adapted: AdaptedInputs, output_index: Index = None) -> Tensor:
        x = super().assemble(pieces, adapted, output_index)
        if output_index is not None:
            return x
        h, w = cast(FlowAdaptedInputs, adapted).image_shape  # a whole decode of `FlowAdapter`'s inputs
        return x.reshape(x.shape[0], h, w, x.shape[-1])


def compute_grid_indices(
    image_shape: Sequence[int], tile: Sequence[int], min_overlap: int = 20
) -> list[tuple[int, int]]:
    """Top-left corners `(y, x)` of overlapping tiles covering `image_shape` `(H, W)`.

    DeepMind colab's `compute_grid_indices`: starts every `tile - min_overlap` pixels and a last tile flush with the
    border. Unlike the colab, starts past `H - tile` are dropped rather than left to run off the image (the colab
    only replaces the last one), so small strides work too; for the colab's settings the corners are the same.
    """
    (h, w), (th, tw) = image_shape, tile
    if h < th or w < tw:
        raise ValueError(
            f"expected frames of at least the tile size {th}x{tw}, got {h}x{w}; pad or resize the frames first"
        )
    if min_overlap >= th or min_overlap >= tw or min_overlap < 0:
        raise ValueError(f"min_overlap must be in [0, tile size), got {min_overlap} for tile {tuple(tile)}")
    ys = [*range(0, h - th, th - min_overlap), h - th]
    xs = [*range(0, w - tw, tw - min_overlap), w - tw]
    return list(itertools.product(ys, xs))


def tile_weights(tile: Sequence[int], device: torch.device | None = None) -> Tensor:
    """DeepMind's blending weights `(th, tw)`: distance (in pixels, from 1) to the nearest tile border."""
    th, tw = tile
    wy = torch.arange(th, device=device)
    wx = torch.arange(tw, device=device)
    wy = torch.minimum(wy + 1, th - wy)
    wx = torch.minimum(wx + 1, tw - wx)
    return torch.minimum(wy[:, None], wx[None, :]).float()


#: pixels run through the model at once by `predict_flow_tiled`: as many tiles as fit, at least one (DeepMind's
#: 368 x 496 tiles: one at a time, as before; a 32 x 32 model: 256 tiles per forward instead of 256 forwards)
TILE_PIXELS_PER_PASS = 1 << 18


@torch.no_grad()
def predict_flow_tiled(
    model: nn.Module,
    frame1: Tensor,
    frame2: Tensor,
    tile: Sequence[int] | None = None,
    min_overlap: int | None = None,
    tiles_per_pass: int | None = None,
    **forward_kwargs: Any,
) -> Tensor:
    """Flow for frames of any size >= `tile` by overlapping tiles blended with DeepMind's weights.

    `frame1`, `frame2`: `(B, H, W, 3)` channels-last, already normalised as the model expects (DeepMind: `[-1, 1]`,
    see `normalize_frames`). `tile` defaults to the model's `train_size`; `min_overlap` to DeepMind's 20 pixels (at
    most half the tile). Each pixel's flow is the average of the tiles covering it, weighted by the distance to each
    tile's border. `tiles_per_pass`: tile positions run through the model in one forward (`tiles_per_pass * B`
    samples), default as many as hold `TILE_PIXELS_PER_PASS` pixels (at least one); the result does not depend on
    it. `forward_kwargs` go to every forward (e.g. `query_chunk_size`); every tile is decoded whole.
    Returns `(B, H, W, 2)` float32 in the model's output units (pixels).
    """
    if frame1.shape != frame2.shape:
        raise ValueError(f"expected two frames of the same shape, got {tuple(frame1.shape)} and {tuple(frame2.shape)}")
    if frame1.ndim != 4 or frame1.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (B, H, W, 3), got {tuple(frame1.shape)}")
    for name in ("output_index", "attention_mask"):
        if forward_kwargs.get(name) is not None:
            raise ValueError(
                f"expected no {name} for a tiled prediction (each tile is a whole decode of its own pixels), "
                f"got one; call the model on frames_to_patches(...) of one tile to pass {name}"
            )
    if forward_kwargs.get("return_dict") is False:
        raise ValueError("expected return_dict None or True for a tiled prediction (it reads .logits), got False")
    adapter = cast(FlowAdapter, model.input_adapter)  # a flow model's (nn.Module types it as Tensor | Module)
    tile = tuple(tile) if tile is not None else tuple(adapter.train_size)
    if min_overlap is None:
        min_overlap = min(20, min(tile) // 2)
    if tiles_per_pass is None:
        tiles_per_pass = max(1, TILE_PIXELS_PER_PASS // (tile[0] * tile[1] * frame1.shape[0]))
    elif isinstance(tiles_per_pass, bool) or not isinstance(tiles_per_pass, int) or tiles_per_pass < 1:
        raise ValueError(f"tiles_per_pass must be an integer >= 1 or None, got {tiles_per_pass!r}")
    b, h, w, _ = frame1.shape
    frames = torch.stack([frame1, frame2], dim=1)  # (B, 2, H, W, 3)
    weights = tile_weights(tile, frame1.device)[None, :, :, None]
    flow = torch.zeros(b, h, w, 2, device=frame1.device)
    count = torch.zeros(1, h, w, 1, device=frame1.device)
    corners = compute_grid_indices((h, w), tile, min_overlap)
    for first in range(0, len(corners), tiles_per_pass):
        group = corners[first : first + tiles_per_pass]
        pieces = torch.cat([frames[:, :, y : y + tile[0], x : x + tile[1]] for y, x in group])  # (k * B, 2, th, tw, 3)
        patches = frames_to_patches(pieces, channels_last=True, patch_size=adapter.patch_size)
        out = model(patches, **forward_kwargs).logits.float().reshape(len(group), b, *tile, 2)
        for (y, x), piece in zip(group, out):
            flow[:, y : y + tile[0], x : x + tile[1]] += piece * weights
            count[:, y : y + tile[0], x : x + tile[1]] += weights
    return flow / count


def _colorwheel() -> Tensor:
    """Middlebury colour wheel (Baker et al.): 55 RGB hues, red -> yellow -> green -> cyan -> blue -> magenta."""
    segments = [(15, (255, None, 0)), (6, (None, 255, 0)), (4, (0, 255, None)), (11, (0, None, 255)),
                (13, (None, 0, 255)), (6, (255, 0, None))]  # fmt: skip
    rising = [True, False, True, False, True, False]
    rows = []
    for (n, spec), up in zip(segments, rising):
        ramp = torch.floor(255 * torch.arange(n) / n)
        ramp = ramp if up else 255 - ramp
        rows.append(torch.stack([ramp if v is None else torch.full((n,), float(v)) for v in spec], dim=1))
    return torch.cat(rows)


def flow_to_color(flow: Any, max_flow: float | None = None) -> Any:
    """Middlebury colour coding of a flow field `(H, W, 2)` -> uint8 RGB `(H, W, 3)` (numpy in, numpy out).

    Hue is the direction (as flow_vis / RAFT: +x red, +y (down) yellow, -x cyan-blue, -y violet), saturation the magnitude normalised by
    `max_flow` (default: the largest magnitude in `flow`); zero flow is white.
    """
    is_numpy = not isinstance(flow, Tensor)
    f = torch.as_tensor(flow).detach().float().cpu()
    if f.ndim != 3 or f.shape[-1] != 2:
        raise ValueError(f"expected flow of shape (H, W, 2), got {tuple(f.shape)}")
    u, v = f[..., 0], f[..., 1]
    rad = torch.sqrt(u * u + v * v)
    scale = (float(rad.max()) if max_flow is None else float(max_flow)) + 1e-5
    u, v, rad = u / scale, v / scale, rad / scale
    wheel = _colorwheel()
    n = wheel.shape[0]
    a = torch.atan2(-v, -u) / torch.pi
    fk = (a + 1) / 2 * (n - 1)
    k0 = fk.floor().long().clamp(0, n - 1)
    k1 = (k0 + 1) % n
    frac = (fk - k0)[..., None]
    col = (1 - frac) * wheel[k0] / 255 + frac * wheel[k1] / 255
    inside = (rad <= 1)[..., None]
    col = torch.where(inside, 1 - rad[..., None] * (1 - col), col * 0.75)
    img = torch.floor(255 * col).clamp(0, 255).to(torch.uint8)
    return img.numpy() if is_numpy else img


def write_flow_png(path: str | os.PathLike, flow: Any, max_flow: float | None = None) -> None:
    """Write the colour-coded flow `(H, W, 2)` as an RGB PNG (needs Pillow)."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("write_flow_png needs Pillow: pip install 'perceiver-torch[vision]'") from e
    img = torch.as_tensor(flow_to_color(torch.as_tensor(flow), max_flow))
    h, w, _ = img.shape
    Image.frombytes("RGB", (w, h), img.contiguous().numpy().tobytes()).save(os.fspath(path), format="PNG")
