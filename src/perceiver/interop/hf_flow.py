"""Converter for transformers' `PerceiverForOpticalFlow` (the port of DeepMind's optical flow weights).

    perceiver.input_preprocessor.conv_after_patches  -> input_adapter.projection   (Linear 54 -> 64)
    perceiver.embeddings.latents, perceiver.encoder.* -> encoder.*                  (encoder_from_hf)
    perceiver.decoder.decoder.*                       -> decoder.*                  (decoder_from_hf)

The preprocessor and decoder settings (64 Fourier bands, max resolution `train_size`, one decoder head, no query
residual, rescale 100) are what transformers' head hard-codes; sizes come from the config dict and the weights.
The converted model returns flow in pixels (`flow_scale_factor=20`, DeepMind's colab); pass
`flow_scale_factor=1.0` to get transformers' logits.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from perceiver.interop.transformers import io_config_from_hf, load_converted
from perceiver.models.flow import OpticalFlowConfig, PerceiverForOpticalFlow
from perceiver.pretrained import register_hf_converter

PRE = "perceiver.input_preprocessor"
DEC = "perceiver.decoder.decoder"


@register_hf_converter("PerceiverForOpticalFlow")
def convert_optical_flow(hf_config: dict[str, Any], sd: dict[str, Tensor], **overrides: Any) -> PerceiverForOpticalFlow:
    """Build our `PerceiverForOpticalFlow` from a transformers checkpoint (`hf_config`: its config.json dict,
    `sd`: its state dict); `overrides` replace fields of our config (e.g. `flow_scale_factor=1.0`)."""
    proj = sd[f"{PRE}.conv_after_patches.weight"]  # (out_channels, 2 * patch_channels)
    io_fields, enc, _, keys = io_config_from_hf(hf_config, sd, DEC, decoder_use_query_residual=False)
    fields: dict[str, Any] = dict(
        train_size=tuple(hf_config.get("train_size", (368, 496))),
        patch_channels=proj.shape[1] // 2,
        out_channels=proj.shape[0],
        num_bands=64,
        **io_fields,
        output_init_zeros=False,
    )
    fields.update(overrides)
    model = PerceiverForOpticalFlow(OpticalFlowConfig(**fields))
    if model.input_adapter.num_channels != enc.input_dim:
        raise ValueError(
            f"checkpoint encoder takes {enc.input_dim} input channels, the flow preprocessing gives "
            f"{model.input_adapter.num_channels} (64 Fourier bands expected)"
        )
    keys |= {f"input_adapter.projection.{p}": f"{PRE}.conv_after_patches.{p}" for p in ("weight", "bias")}
    return load_converted(model, sd, keys)
