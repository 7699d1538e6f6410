"""Perceiver IO for optical flow (DeepMind's Sintel/KITTI model, transformers' `PerceiverForOpticalFlow`).

    patches (B, 2, 27, H, W) --FlowAdapter--> tokens (B, H*W, 322) --PerceiverEncoder--> latents (B, 2048, 512)
    queries = tokens (one per pixel) --PerceiverDecoder(latents), in chunks--> (B, H*W, 2) --FlowOutput--> (B, H, W, 2)

`OpticalFlowConfig(adapter=FlowAdapterConfig(...), encoder=EncoderConfig(...), decoder=DecoderConfig(...),
output=FlowOutputConfig(...))`; the preset takes flat keywords too (`create_model("optical-flow-perceiver",
train_size=(32, 32), num_latents=128)`, see `perceiver.hub.apply_overrides`).

Preset `optical-flow-perceiver` at the published size (DeepMind's colab / transformers): 368 x 496 training size,
a Linear 54 -> 64 after patching, 64 Fourier bands (max resolution 368 x 496), 2048 x 512 latents, one
cross-attention head with `cross_attention_shape_for_attention='kv'` (q/k width = input width 322), 1 block of 24
self-attention layers with 16 heads, widening 1; decoder with one head, q/k/v width 512 (the latents'), no query
residual, a final Linear 322 -> 2 (zero-initialised as DeepMind's `output_w_init`).

Memory: transformers decodes all 182,528 pixel queries at once, materialising a (182528 x 2048) attention matrix
(1.5 GB fp32) twice plus (182528 x 512) projections. We decode `query_chunk_size` queries at a time (default 8192,
23 chunks at 368 x 496): a chunk's activations are ~14 KB per query (~115 MB), below the encoder's own (H*W x 322)
input arrays, so the decoder no longer sets the peak; chunking is exact and costs no measurable time.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from perceiver.adapters.flow import (
    FlowAdapter,
    FlowAdapterConfig,
    FlowOutputConfig,
    normalize_frames,
    predict_flow_tiled,
)
from perceiver.checks import (
    InputTypeError,
    check_float_input,
    check_int_fields,
    check_nonempty,
    model_dtype,
    to_bool_mask,
)
from perceiver.core.config import rename_keys
from perceiver.core.decoder import DecoderConfig, InputQueries, PerceiverDecoder
from perceiver.core.encoder import EncoderConfig, PerceiverEncoder
from perceiver.core.io import PerceiverIO
from perceiver.core.model import ModelOutput, hf_output_flags
from perceiver.hub import apply_overrides
from perceiver.models._io_config import IO_LEGACY_KEYS, classifier_decoder, imagenet_encoder
from perceiver.models.registry import register_model, register_model_type


def flow_encoder(**fields: Any) -> EncoderConfig:
    """DeepMind's flow encoder: 2048 x 512 latents, one block of 24 self-attention layers with 16 heads (the rest as
    the ImageNet encoder: one `'kv'` cross-attention head, widening 1)."""
    base = dict(num_latents=2048, latent_dim=512, num_blocks=1, num_self_attends_per_block=24, latent_heads=16)
    return imagenet_encoder(**(base | fields))


def flow_decoder(**fields: Any) -> DecoderConfig:
    """DeepMind's flow decoder: one head, q/k as wide as the latents, no query residual (projection to 2 added by
    the model)."""
    return classifier_decoder(**(dict(use_query_residual=False) | fields))


@dataclass
class OpticalFlowConfig:
    """`PerceiverForOpticalFlow`: the flow adapter, the encoder, the decoder (its queries are the adapted pixels, its
    output 2 channels) and the output scaling; the defaults are `optical-flow-perceiver`'s.

    output: a `FlowOutputConfig` the model's output adapter reads at every forward (shared by reference):
        `model.config.output.flow_scale_factor = 1.0` gives transformers' units on a loaded model.
    query_chunk_size: pixels decoded at a time by default (None: all at once).
    output_init_zeros: zero-initialise the final Linear (DeepMind), so an untrained model predicts zero flow.

    `train_size`, `patch_size`, `patch_channels` read the adapter's (`config.adapter.*`); `flow_scale_factor` is
    `output.flow_scale_factor` (the name earlier releases documented for switching units on a loaded model).
    """

    adapter: FlowAdapterConfig = field(default_factory=FlowAdapterConfig)
    encoder: EncoderConfig = field(default_factory=flow_encoder)
    decoder: DecoderConfig = field(default_factory=flow_decoder)
    output: FlowOutputConfig = field(default_factory=FlowOutputConfig)
    query_chunk_size: int | None = 8192
    output_init_zeros: bool = True

    def __post_init__(self) -> None:
        check_int_fields(self)  # query_chunk_size: a positive integer or None

    @property
    def train_size(self) -> tuple[int, int]:
        return self.adapter.train_size

    @property
    def patch_size(self) -> int:
        return self.adapter.patch_size

    @property
    def patch_channels(self) -> int:
        return self.adapter.patch_channels

    @property
    def flow_scale_factor(self) -> float:
        return self.output.flow_scale_factor

    @flow_scale_factor.setter
    def flow_scale_factor(self, value: float) -> None:
        self.output.flow_scale_factor = value


def check_patch_channels(config: OpticalFlowConfig, patch_channels: Any, source: Any = None) -> None:
    """`patch_channels` of a format-1 file or a preset keyword (now derived from `patch_size`) must agree."""
    if patch_channels is None or patch_channels == config.adapter.patch_channels:
        return
    where = f"{source}: " if source is not None else ""
    k = config.adapter.patch_size
    raise ValueError(
        f"{where}patch_channels must be 3 * patch_size ** 2 = {3 * k * k} for patch_size {k}, got {patch_channels}"
    )


@register_model_type
class PerceiverForOpticalFlow(PerceiverIO):
    """Perceiver IO optical flow: `model(inputs (B, 2, 27, H, W))` -> `.logits` flow `(B, H, W, 2)` in pixels
    (`(B, 2, 3 * k * k, H, W)` for `config.adapter.patch_size` k).

    `model.predict(frame1, frame2)` takes channels-last frames and tiles frames of other sizes.
    """

    config_class = OpticalFlowConfig
    model_type = "perceiver-optical-flow"
    legacy_keys = IO_LEGACY_KEYS
    classifier_name = None
    head_kind = "optical flow (B, H, W, 2)"

    input_adapter: FlowAdapter  # built from `config.adapter`

    @property
    def num_classes(self) -> int:
        """2: the logits' last axis is the flow `(dx, dy)`; there is no class head to reset."""
        return 2

    def __init__(self, config: OpticalFlowConfig) -> None:
        config = copy.deepcopy(config)  # the model's own: the output adapter keeps `config.output` by reference
        adapter = config.adapter.build()
        d = adapter.num_channels
        encoder = PerceiverEncoder(config.encoder.for_inputs(d))
        decoder = PerceiverDecoder(
            config.decoder.for_parts(query_dim=d, latent_dim=encoder.config.latent_dim, output_dim=2)
        )
        if config.output_init_zeros:
            assert isinstance(decoder.final_layer, nn.Linear)  # output_dim=2
            nn.init.zeros_(decoder.final_layer.weight)
            nn.init.zeros_(decoder.final_layer.bias)
        super().__init__(adapter, encoder, InputQueries(d), decoder, config.output.build())
        self.config = config

    @classmethod
    def config_from_file(cls, data: dict[str, Any], source: str | os.PathLike, overrides: dict[str, Any]) -> Any:
        if data.get("format_version", 1) != 1:
            return super().config_from_file(data, source, overrides)
        data = dict(data)
        channels = data.pop("patch_channels", None)  # format 1 stored it beside patch_size
        config = super().config_from_file(data, source, overrides)
        check_patch_channels(config, channels, source)
        return config

    def check_inputs(self, inputs: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        k = self.input_adapter.patch_channels
        inputs = check_float_input(inputs, "inputs", f"(B, 2, {k}, H, W)", model_dtype(self))
        check_nonempty(inputs, "inputs", f"(B, 2, {k}, H, W)")
        return inputs, to_bool_mask(mask, "attention_mask")

    def forward(  # type: ignore[override]  # the transformers head's arguments, not PerceiverIO's
        self,
        inputs: Tensor,
        attention_mask: Tensor | None = None,
        output_index: Tensor | None = None,
        query_chunk_size: int | None = None,
        return_attention: bool = False,
        return_hidden_states: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        labels: Tensor | None = None,
    ) -> ModelOutput | tuple[Any, ...]:
        """Flow from patches `inputs` `(B, 2, 27, H, W)` (see `frames_to_patches`).

        attention_mask: `(B, H*W)` over the input pixels (True/1 = attend), as transformers takes it.
        output_index: flat pixel indices `(O',)` to decode only those pixels -> logits `(B, O', 2)`.
        query_chunk_size: pixels decoded at a time; None uses `config.query_chunk_size`, 0 decodes all at once.
        Returns `.logits` `(B, H, W, 2)` (pixels, see `config.output.flow_scale_factor`), `.last_hidden_state`
        `(B, N, D)`, and with `return_attention` the encoder `(B, H, N, H*W)` / decoder `(B, H, O, N)` maps;
        `return_hidden_states`: the latents after every encoder step. transformers' `output_attentions` /
        `output_hidden_states` / `return_dict` are taken (`return_dict=False`: `ModelOutput.to_tuple()`).
        labels: ground-truth flow in the logits' shape and units (`(B, H, W, 2)` pixels, `(B, O', 2)` with
        `output_index`) -> `.loss`, the mean end-point error (`FlowTask`'s loss; transformers' head raises for
        labels), first in the tuple of `return_dict=False` as transformers' `Trainer` reads it.
        """
        return_attention, return_hidden_states = hf_output_flags(
            return_attention, return_hidden_states, output_attentions, output_hidden_states, return_dict
        )
        if query_chunk_size is None:
            query_chunk_size = self.config.query_chunk_size
        out = super().forward(
            inputs,
            attention_mask,
            output_index,
            query_chunk_size or None,
            return_attention,
            labels=labels,
            return_hidden_states=return_hidden_states,
        )
        return out.to_tuple() if return_dict is False else out

    def compute_loss(self, logits: Any, labels: Tensor) -> Tensor:
        """Mean end-point error `||logits - labels||` over the pixels of `logits` `(B, H, W, 2)` or `(B, O', 2)`,
        `labels` of the same shape (float32 math, as `FlowTask`)."""
        expected = (
            f"{tuple(logits.shape)} (the flow logits' shape: (B, H, W, 2) in pixels, (B, O', 2) for output_index)"
        )
        labels = check_float_input(labels, "labels", expected)
        if tuple(labels.shape) != tuple(logits.shape):
            raise ValueError(f"expected labels of shape {expected}, got {tuple(labels.shape)}")
        return (logits.float() - labels.to(logits.device).float()).norm(dim=-1).mean()

    @torch.no_grad()
    def predict(
        self,
        frame1: Tensor | np.ndarray,
        frame2: Tensor | np.ndarray,
        min_overlap: int | None = None,
        tiles_per_pass: int | None = None,
        **forward_kwargs: Any,
    ) -> Tensor:
        """Flow in pixels from frame 1 to frame 2, channels-last `(H, W, 3)` or `(B, H, W, 3)` tensors or arrays
        (numpy, or anything `np.asarray` takes, e.g. an RGB PIL image); moved to the model's device.

        uint8 frames are normalised to [-1, 1] (`normalize_frames`: DeepMind's `im / 255 * 2 - 1`, the training
        task's normalisation); floating frames are taken as already normalised (a UserWarning when they look like
        [0, 1] or [0, 255] pixels: none negative, or some above 1); both frames must be uint8 or both floating.
        Frames of `train_size` run in one pass, larger ones by overlapping tiles (`predict_flow_tiled`,
        `min_overlap` pixels, default 20; `tiles_per_pass` tiles per forward), smaller ones raise (pad or resize
        them). `forward_kwargs`: e.g. `query_chunk_size`. Returns float32 `(H, W, 2)` or `(B, H, W, 2)`.
        """
        f1, f2 = (self._frames(f, name) for f, name in ((frame1, "frame1"), (frame2, "frame2")))
        if f1.shape != f2.shape:
            raise ValueError(f"expected two frames of the same shape, got {tuple(f1.shape)} and {tuple(f2.shape)}")
        if (f1.dtype == torch.uint8) != (f2.dtype == torch.uint8):
            raise ValueError(
                f"expected both frames uint8 (in [0, 255]) or both floating (normalised to [-1, 1]), got {f1.dtype} "
                f"and {f2.dtype}: they would be normalised differently"
            )
        if f1.ndim not in (3, 4) or f1.shape[-1] != 3:
            raise ValueError(f"expected frames of shape (H, W, 3) or (B, H, W, 3), got {tuple(f1.shape)}")
        unbatched = f1.ndim == 3
        f1, f2 = (f1[None], f2[None]) if unbatched else (f1, f2)
        if f1.is_floating_point() and f1.numel() > 3:
            lo, hi = min(float(f1.min()), float(f2.min())), max(float(f1.max()), float(f2.max()))
            if lo >= 0.0 or hi > 1.01:  # [0, 1] or [0, 255] floats: the model would see a shifted / huge range
                warnings.warn(
                    f"floating frames are taken as normalised to [-1, 1] (DeepMind's range), but these lie in "
                    f"[{lo:.3g}, {hi:.3g}]; pass uint8 frames for [0, 255] pixels, or normalize_frames(frames) for "
                    f"frames in [0, 1]",
                    UserWarning,
                    stacklevel=3,  # the caller of the no_grad-wrapped predict
                )
        dtype = model_dtype(self)
        f1, f2 = (f.to(dtype) if f.is_floating_point() else normalize_frames(f, dtype) for f in (f1, f2))
        adapter = self.input_adapter
        # one code path for every size: frames of `train_size` are a single tile, the same forward as a direct call
        flow = predict_flow_tiled(self, f1, f2, adapter.train_size, min_overlap, tiles_per_pass, **forward_kwargs)
        return flow[0] if unbatched else flow

    def _frames(self, frame: Any, name: str) -> Tensor:
        """`frame` as a tensor on the model's device: uint8 or floating, else a clear error."""
        if not isinstance(frame, Tensor):
            if isinstance(frame, (str, os.PathLike)):
                raise InputTypeError(
                    f"expected {name} as pixels (a tensor or array (H, W, 3)), got the path {os.fspath(frame)!r}; "
                    f"load the image first, e.g. np.asarray(PIL.Image.open(path).convert('RGB'))"
                )
            try:
                frame = torch.from_numpy(np.array(frame, copy=True))
            except (TypeError, ValueError, RuntimeError) as e:
                raise InputTypeError(
                    f"expected {name} as a tensor or array (H, W, 3) or (B, H, W, 3), got {type(frame).__name__}"
                ) from e
        if frame.dtype != torch.uint8 and not frame.is_floating_point():
            raise InputTypeError(
                f"expected {name} as uint8 (in [0, 255]) or floating (normalised to [-1, 1]) pixels, got dtype "
                f"{frame.dtype}"
            )
        return frame.to(self.encoder.latents.device)


@register_model("optical-flow-perceiver", hub_id="deepmind/optical-flow-perceiver")
def optical_flow_perceiver(**overrides: Any) -> PerceiverForOpticalFlow:
    """DeepMind's Perceiver IO optical flow model (deepmind/optical-flow-perceiver), 368 x 496 input."""
    overrides = dict(overrides)
    channels = overrides.pop("patch_channels", None)  # follows patch_size; accepted when it agrees
    config = apply_overrides(OpticalFlowConfig(), rename_keys(PerceiverForOpticalFlow.legacy_keys, overrides))
    check_patch_channels(config, channels)
    return PerceiverForOpticalFlow(config)


__all__ = ["OpticalFlowConfig", "PerceiverForOpticalFlow", "flow_decoder", "flow_encoder", "optical_flow_perceiver"]
