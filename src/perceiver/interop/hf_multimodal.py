"""Convert transformers' `PerceiverForMultimodalAutoencoding` (e.g. `deepmind/multimodal-perceiver`).

Key map (transformers -> ours):

    perceiver.input_preprocessor.padding.{m}               -> input_adapter.padding.{m}
    perceiver.input_preprocessor.mask.{m}                  -> input_adapter.mask_tokens.{m}
    perceiver.embeddings.latents, perceiver.encoder.*      -> encoder.*                     (`encoder_from_hf`)
    perceiver.decoder.modalities.label.decoder.output_position_encodings.position_embeddings
                                                           -> query_builder.modalities.label.encoding.position_embeddings
    perceiver.decoder.padding.{m}                          -> query_builder.padding.{m}
    perceiver.decoder.decoder.*                            -> decoder.*                     (`decoder_from_hf`)
    perceiver.output_postprocessor.modalities.{m}.classifier.* -> output_adapter.heads.{m}.*

Sizes are read off the weights where they are visible (label count, query / output widths, paddings), the rest
from the config (frames, image size, audio samples); the part configs (audio, video, inputs, queries, encoder,
decoder) are built directly. transformers hard-codes 32 / 192 Fourier bands and the mask probabilities (audio 0,
image 0, label 1), which are our defaults. The converted model uses our defaults for the two switches; pass
`subsampled_positions="transformers"` (or `eval_masking="random"`) to `perceiver.from_pretrained`, or set
`model.config.queries.subsampled_positions = "transformers"` later, to reproduce transformers' subsampled decodes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import Tensor

from perceiver.adapters.multimodal import MultimodalInputConfig, MultimodalQueryConfig
from perceiver.hub import apply_overrides
from perceiver.interop.transformers import decoder_from_hf, encoder_from_hf, load_converted, required_keys
from perceiver.models.multimodal import (
    MODALITIES,
    MultimodalAutoencodingConfig,
    PerceiverForMultimodalAutoencoding,
    multimodal_audio,
    multimodal_video,
)
from perceiver.nn.position import fourier_channels
from perceiver.pretrained import register_hf_converter

IMAGE_BANDS, AUDIO_BANDS = 32, 192  # hard-coded in transformers' PerceiverForMultimodalAutoencoding
SPATIAL_BLOCK = 4  # transformers' image preprocessor: space-to-depth 4 x 4, one frame per token


_LABEL_KEYS = (
    "perceiver.output_postprocessor.modalities.label.classifier.weight",
    "perceiver.decoder.modalities.label.decoder.output_position_encodings.position_embeddings",
)


@register_hf_converter(
    "PerceiverForMultimodalAutoencoding", required_keys=required_keys("perceiver.decoder.decoder", *_LABEL_KEYS)
)
def multimodal_from_hf(
    config: dict[str, Any], sd: dict[str, Tensor], **overrides: Any
) -> PerceiverForMultimodalAutoencoding:
    """Our `PerceiverForMultimodalAutoencoding` with the weights of a transformers checkpoint (config dict + state
    dict); `overrides` replace fields of our config (flat or dotted keys, e.g. `subsampled_positions="transformers"`)."""
    pre, dec, post = "perceiver.input_preprocessor", "perceiver.decoder", "perceiver.output_postprocessor"
    encoder, enc_keys = encoder_from_hf(config, sd)
    decoder, dec_keys = decoder_from_hf(config, sd, f"{dec}.decoder", num_heads=1, use_query_residual=False)

    image_size = config.get("image_size", 224)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    num_frames = config.get("num_frames", 16)
    output_shape = tuple(config.get("output_shape", (1, 16, 224, 224)))
    if tuple(output_shape[1:]) != (num_frames, *size):
        raise ValueError(
            f"cannot convert: output_shape {output_shape} must be (batch, num_frames, H, W) = (*, {num_frames}, "
            f"{size[0]}, {size[1]}) for our video decoder"
        )
    assert encoder.input_dim is not None and decoder.query_dim is not None  # read off the weights
    spp = config.get("samples_per_patch", 16)
    samples = num_frames * config.get("audio_samples_per_frame", 1920)
    num_labels = sd[f"{post}.modalities.label.classifier.weight"].shape[0]
    label_q = sd[f"{dec}.modalities.label.decoder.output_position_encodings.position_embeddings"].shape[1]

    # Paddings: common width minus the widest modality (min_padding_size 4 and 2 in transformers).
    widths_in = (
        spp + fourier_channels(1, AUDIO_BANDS),
        3 * SPATIAL_BLOCK**2 + fourier_channels(3, IMAGE_BANDS),
        num_labels,
    )
    widths_q = (fourier_channels(1, AUDIO_BANDS), fourier_channels(3, IMAGE_BANDS), label_q)
    ours = MultimodalAutoencodingConfig(
        audio=multimodal_audio(
            num_samples=samples, samples_per_patch=spp, num_bands=AUDIO_BANDS, max_resolution=samples
        ),
        image=multimodal_video(
            in_channels=3,
            num_frames=num_frames,
            image_size=size,
            temporal_block_size=1,
            spatial_block_size=SPATIAL_BLOCK,
            num_bands=IMAGE_BANDS,
            max_resolution=(num_frames, *size),
        ),
        inputs=MultimodalInputConfig(min_padding_size=encoder.input_dim - max(widths_in)),
        queries=MultimodalQueryConfig(label_channels=label_q, min_padding_size=decoder.query_dim - max(widths_q)),
        encoder=replace(encoder, input_dim=None),  # widths the model sets from its parts (and checks on load)
        decoder=replace(decoder, query_dim=None),
        num_classes=num_labels,
    )
    model = PerceiverForMultimodalAutoencoding(apply_overrides(ours, overrides))

    keys = enc_keys | dec_keys
    keys["query_builder.modalities.label.encoding.position_embeddings"] = (
        f"{dec}.modalities.label.decoder.output_position_encodings.position_embeddings"
    )
    for m in MODALITIES:
        keys[f"input_adapter.padding.{m}"] = f"{pre}.padding.{m}"
        keys[f"input_adapter.mask_tokens.{m}"] = f"{pre}.mask.{m}"
        keys[f"query_builder.padding.{m}"] = f"{dec}.padding.{m}"
        for p in ("weight", "bias"):
            keys[f"output_adapter.heads.{m}.{p}"] = f"{post}.modalities.{m}.classifier.{p}"
    return load_converted(model, sd, keys)
