"""Perceiver IO for optical flow (DeepMind's Sintel/KITTI model, transformers' `PerceiverForOpticalFlow`).

    patches (B, 2, 27, H, W) --FlowAdapter--> tokens (B, H*W, 322) --PerceiverEncoder--> latents (B, 2048, 512)
    queries = tokens (one per pixel) --PerceiverDecoder(latents), in chunks--> (B, H*W, 2) --FlowOutput--> (B, H, W, 2)

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

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from perceiver.adapters.flow import FlowAdapter, FlowOutput, frames_to_patches, predict_flow_tiled
from perceiver.checks import check_float_input, check_nonempty, model_dtype, to_bool_mask
from perceiver.core.decoder import InputQueries, PerceiverDecoder
from perceiver.core.encoder import PerceiverEncoder
from perceiver.core.io import PerceiverIO, PerceiverIOOutput
from perceiver.hub import config_from_dict
from perceiver.models._io_config import PerceiverIOConfig
from perceiver.models.registry import register_model, register_model_type


@dataclass
class OpticalFlowConfig(PerceiverIOConfig):
    """Flat configuration of `PerceiverForOpticalFlow`; the defaults are `optical-flow-perceiver`'s.

    train_size: the `(H, W)` the model is trained at (Fourier `max_resolution`, tiling size of `predict`).
    cross_attention_shape: q/k width of the cross-attentions when not given (see `PerceiverIOConfig`).
    flow_scale_factor: 20 gives pixels (DeepMind's colab), 1 transformers' logits.
    query_chunk_size: queries decoded at a time by default (None: all at once).
    output_init_zeros: zero-initialise the final Linear (DeepMind), so an untrained model predicts zero flow.
    projection_hidden: None (DeepMind) or the hidden width of an MLP per-pixel projection (see `FlowAdapter`).
    patch_size: side of the square patch around each pixel (DeepMind: 3); a wider patch lets each pixel's own
        features see motions up to `patch_size // 2` pixels. `patch_channels` follows: `3 * patch_size ** 2`.
    pyramid_scales: () (DeepMind) or downsampling factors whose patches are added per pixel (see `FlowAdapter`).
    difference_scale: None (DeepMind) or the factor on the frame-2-minus-frame-1 channels (see `FlowAdapter`).
    """

    train_size: tuple[int, int] = (368, 496)
    patch_size: int = 3
    patch_channels: int | None = None
    out_channels: int = 64
    num_bands: int = 64
    concat_pos: bool = True
    sine_only: bool = False
    # encoder / decoder (queries = the adapted inputs): PerceiverIOConfig's fields, at the published sizes
    num_latents: int = 2048
    latent_dim: int = 512
    num_blocks: int = 1
    num_self_attends_per_block: int = 24
    latent_heads: int = 16
    decoder_use_query_residual: bool = False
    # output
    rescale_factor: float = 100.0
    flow_scale_factor: float = 20.0
    query_chunk_size: int | None = 8192
    output_init_zeros: bool = True
    projection_hidden: int | None = None
    pyramid_scales: tuple[int, ...] = ()
    difference_scale: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.train_size) != 2:
            raise ValueError(f"train_size must be (H, W), got {self.train_size!r}")
        self.train_size = (int(self.train_size[0]), int(self.train_size[1]))
        self.pyramid_scales = tuple(int(v) for v in self.pyramid_scales)
        if self.patch_size < 1 or self.patch_size % 2 == 0:
            raise ValueError(f"patch_size must be an odd number >= 1, got {self.patch_size}")
        expected = 3 * self.patch_size**2
        if self.patch_channels is None:
            self.patch_channels = expected
        elif self.patch_channels != expected:
            raise ValueError(
                f"patch_channels must be 3 * patch_size ** 2 = {expected} for patch_size {self.patch_size}, "
                f"got {self.patch_channels}"
            )
        if self.query_chunk_size is not None and self.query_chunk_size < 1:
            raise ValueError(f"query_chunk_size must be >= 1 or None, got {self.query_chunk_size}")


@register_model_type
class PerceiverForOpticalFlow(PerceiverIO):
    """Perceiver IO optical flow: `model(inputs (B, 2, 27, H, W))` -> `.logits` flow `(B, H, W, 2)` in pixels
    (`(B, 2, 3 * k * k, H, W)` for `config.patch_size` k).

    `model.predict(frame1, frame2)` takes channels-last frames and tiles frames of other sizes.
    """

    config_class = OpticalFlowConfig
    model_type = "perceiver-optical-flow"

    def __init__(self, config: OpticalFlowConfig) -> None:
        c = config
        adapter = FlowAdapter(
            c.train_size,
            c.patch_channels,
            c.out_channels,
            c.num_bands,
            c.concat_pos,
            c.sine_only,
            c.projection_hidden,
            c.pyramid_scales,
            c.difference_scale,
        )
        d = adapter.num_channels
        encoder = PerceiverEncoder(c.encoder_config(d))
        decoder = PerceiverDecoder(c.decoder_config(query_dim=d, output_dim=2))
        if c.output_init_zeros:
            nn.init.zeros_(decoder.final_layer.weight)
            nn.init.zeros_(decoder.final_layer.bias)
        super().__init__(adapter, encoder, InputQueries(d), decoder, FlowOutput(c.rescale_factor, c.flow_scale_factor))
        self.config = c

    def forward(
        self,
        inputs: Tensor,
        attention_mask: Tensor | None = None,
        output_index: Tensor | None = None,
        query_chunk_size: int | None = None,
        return_attention: bool = False,
    ) -> PerceiverIOOutput:
        """Flow from patches `inputs` `(B, 2, 27, H, W)` (see `frames_to_patches`).

        attention_mask: `(B, H*W)` over the input pixels (True/1 = attend), as transformers takes it.
        output_index: flat pixel indices `(O',)` to decode only those pixels -> logits `(B, O', 2)`.
        query_chunk_size: pixels decoded at a time; None uses `config.query_chunk_size`, 0 decodes all at once.
        Returns `.logits` `(B, H, W, 2)` (pixels, see `config.flow_scale_factor`), `.last_hidden_state`
        `(B, N, D)`, and with `return_attention` the encoder `(B, H, N, H*W)` / decoder `(B, H, O, N)` maps.
        """
        if query_chunk_size is None:
            query_chunk_size = self.config.query_chunk_size
        self.output_adapter.flow_scale_factor = self.config.flow_scale_factor  # the config is the switch
        inputs = check_float_input(inputs, "inputs", "(B, 2, 27, H, W)", model_dtype(self))
        check_nonempty(inputs, "inputs", "(B, 2, 27, H, W)")
        attention_mask = to_bool_mask(attention_mask, "attention_mask")
        return super().forward(inputs, attention_mask, output_index, query_chunk_size or None, return_attention)

    @torch.no_grad()
    def predict(self, frame1: Tensor, frame2: Tensor, min_overlap: int | None = None, **forward_kwargs: Any) -> Tensor:
        """Flow in pixels from frame 1 to frame 2, channels-last `(H, W, 3)` or `(B, H, W, 3)`.

        uint8 frames are normalised to [-1, 1] (DeepMind's `im / 255 * 2 - 1`); float frames are taken as already
        normalised. Frames of `train_size` run in one pass, larger ones by overlapping tiles (`predict_flow_tiled`,
        `min_overlap` pixels, default 20), smaller ones raise (pad or resize them). Returns `(H, W, 2)` or `(B, H, W, 2)`.
        """
        if frame1.shape != frame2.shape:
            raise ValueError(
                f"expected two frames of the same shape, got {tuple(frame1.shape)} and {tuple(frame2.shape)}"
            )
        unbatched = frame1.ndim == 3
        f1, f2 = (frame1[None], frame2[None]) if unbatched else (frame1, frame2)
        if f1.ndim != 4 or f1.shape[-1] != 3:
            raise ValueError(f"expected frames of shape (H, W, 3) or (B, H, W, 3), got {tuple(frame1.shape)}")
        dtype = next(self.parameters()).dtype
        f1, f2 = (_normalise(f, dtype) for f in (f1, f2))
        if tuple(f1.shape[1:3]) == self.config.train_size:
            patches = frames_to_patches(
                torch.stack([f1, f2], dim=1), channels_last=True, patch_size=self.config.patch_size
            )
            flow = self(patches, **forward_kwargs).logits
        else:
            flow = predict_flow_tiled(self, f1, f2, self.config.train_size, min_overlap, **forward_kwargs)
        return flow[0] if unbatched else flow


def _normalise(frame: Tensor, dtype: torch.dtype) -> Tensor:
    if frame.dtype == torch.uint8:
        return frame.to(dtype) / 255.0 * 2 - 1
    return frame.to(dtype)


FLOW = OpticalFlowConfig()


@register_model("optical-flow-perceiver")
def optical_flow_perceiver(**overrides: Any) -> PerceiverForOpticalFlow:
    """DeepMind's Perceiver IO optical flow model (deepmind/optical-flow-perceiver), 368 x 496 input."""
    # patch_channels follows patch_size unless given
    return PerceiverForOpticalFlow(
        config_from_dict(OpticalFlowConfig, {**asdict(FLOW), "patch_channels": None, **overrides})
    )


__all__ = ["OpticalFlowConfig", "PerceiverForOpticalFlow", "optical_flow_perceiver"]
