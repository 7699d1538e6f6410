"""Converter for transformers' `PerceiverForOpticalFlow` (the port of DeepMind's optical flow weights).

    perceiver.input_preprocessor.conv_after_patches  -> input_adapter.projection   (Linear 54 -> 64)
    perceiver.embeddings.latents, perceiver.encoder.* -> encoder.*                  (encoder_from_hf)
    perceiver.decoder.decoder.*                       -> decoder.*                  (decoder_from_hf)

The preprocessor and decoder settings (64 Fourier bands, max resolution `train_size`, one decoder head, no query
residual, rescale 100) are what transformers' head hard-codes; sizes come from the config dict and the weights.
The converted model returns flow in pixels (`flow_scale_factor=20`, DeepMind's colab); pass
`flow_scale_factor=1.0` to get transformers' logits (or set `model.config.output.flow_scale_factor = 1.0` later).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from torch import Tensor

from perceiver.adapters.flow import FlowAdapterConfig
from perceiver.hub import apply_overrides
from perceiver.interop.transformers import decoder_from_hf, encoder_from_hf, load_converted, required_keys
from perceiver.models.flow import OpticalFlowConfig, PerceiverForOpticalFlow
from perceiver.pretrained import register_hf_converter

PRE = "perceiver.input_preprocessor"
DEC = "perceiver.decoder.decoder"
NUM_BANDS = 64  # hard-coded in transformers' PerceiverForOpticalFlow


@register_hf_converter("PerceiverForOpticalFlow", required_keys=required_keys(DEC, f"{PRE}.conv_after_patches.weight"))
def convert_optical_flow(hf_config: dict[str, Any], sd: dict[str, Tensor], **overrides: Any) -> PerceiverForOpticalFlow:
    """Build our `PerceiverForOpticalFlow` from a transformers checkpoint (`hf_config`: its config.json dict,
    `sd`: its state dict); `overrides` replace fields of our config (flat or dotted keys, e.g.
    `flow_scale_factor=1.0`)."""
    proj = sd[f"{PRE}.conv_after_patches.weight"]  # (out_channels, 2 * 3 * patch_size ** 2)
    patch_size = math.isqrt(proj.shape[1] // 6)
    if 6 * patch_size**2 != proj.shape[1]:
        raise ValueError(
            f"{PRE}.conv_after_patches takes {proj.shape[1]} channels, expected 2 * 3 * k * k (k x k patches)"
        )
    adapter = FlowAdapterConfig(
        train_size=tuple(hf_config.get("train_size", (368, 496))),
        patch_size=patch_size,
        out_channels=proj.shape[0],
        num_bands=NUM_BANDS,
    )
    encoder, enc_keys = encoder_from_hf(hf_config, sd)
    decoder, dec_keys = decoder_from_hf(hf_config, sd, DEC, num_heads=1, use_query_residual=False)
    # the model sets the widths and the 2 output channels from its parts; the encoder's input width is checked below
    config = OpticalFlowConfig(
        adapter=adapter,
        encoder=replace(encoder, input_dim=None),
        decoder=replace(decoder, query_dim=None, output_dim=None),
        output_init_zeros=False,
    )
    model = PerceiverForOpticalFlow(apply_overrides(config, overrides))
    if model.input_adapter.num_channels != encoder.input_dim:
        raise ValueError(
            f"checkpoint encoder takes {encoder.input_dim} input channels, the flow preprocessing gives "
            f"{model.input_adapter.num_channels} ({NUM_BANDS} Fourier bands expected)"
        )
    keys = enc_keys | dec_keys
    keys |= {f"input_adapter.projection.{p}": f"{PRE}.conv_after_patches.{p}" for p in ("weight", "bias")}
    return load_converted(model, sd, keys)
