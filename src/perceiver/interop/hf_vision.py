"""Converters for transformers' Perceiver image classifiers (the port of DeepMind's ImageNet weights).

    PerceiverForImageClassificationLearned        -> vision-perceiver-learned (conv1x1 + trainable positions)
    PerceiverForImageClassificationFourier        -> vision-perceiver-fourier (pixels + Fourier positions)
    PerceiverForImageClassificationConvProcessing -> vision-perceiver-conv    (conv stem + Fourier positions)

The preprocessor settings are those the transformers heads hard-code (read from their constructors); sizes come
from the config dict and the weights. The conv stem converts with DeepMind's SAME padding by default (56x56 tokens at
224, as the weights were trained); pass `same_padding=False` to reproduce transformers' 55x55 numbers.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from torch import Tensor

from perceiver.adapters.image import ImageAdapterConfig
from perceiver.hub import apply_overrides
from perceiver.interop.transformers import decoder_from_hf, encoder_from_hf, load_converted, required_keys
from perceiver.models.vision import CONV, FOURIER, LEARNED, ImageClassifierConfig, PerceiverForImageClassification
from perceiver.pretrained import register_hf_converter

PRE = "perceiver.input_preprocessor"
DEC = "perceiver.decoder.decoder"

# What each transformers head hard-codes for its PerceiverImagePreprocessor: the adapters of our presets.
# (transformers passes spatial_downsample=1 to the conv head, but its Conv2DDownsample always downsamples 4x.)
HEADS: dict[str, ImageAdapterConfig] = {
    "PerceiverForImageClassificationLearned": LEARNED.adapter,
    "PerceiverForImageClassificationFourier": FOURIER.adapter,
    "PerceiverForImageClassificationConvProcessing": CONV.adapter,
}


def _adapter_keys(prep_type: str, sd: dict[str, Tensor]) -> dict[str, str]:
    """Our `input_adapter.*` keys -> transformers' `perceiver.input_preprocessor.*` keys."""
    keys: dict[str, str] = {}
    if prep_type == "conv1x1":
        keys |= {f"input_adapter.convnet_1x1.{p}": f"{PRE}.convnet_1x1.{p}" for p in ("weight", "bias")}
        keys["input_adapter.trainable.position_embeddings"] = f"{PRE}.position_embeddings.position_embeddings"
        keys |= {
            f"input_adapter.positions_projection.{p}": f"{PRE}.positions_projection.{p}" for p in ("weight", "bias")
        }
    elif prep_type == "conv":
        keys["input_adapter.convnet.0.conv.weight"] = f"{PRE}.convnet.conv.weight"
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            if f"{PRE}.convnet.batchnorm.{p}" in sd:
                keys[f"input_adapter.convnet.0.batchnorm.{p}"] = f"{PRE}.convnet.batchnorm.{p}"
    return keys


def adapter_from_hf(arch: str, hf_config: dict[str, Any], sd: dict[str, Tensor]) -> ImageAdapterConfig:
    """The `ImageAdapterConfig` of a transformers image head: the head's hard-coded preprocessing, sizes from the
    config and the weights."""
    head = HEADS[arch]
    image_size = hf_config.get("image_size", 224)
    fields: dict[str, Any] = {}
    if head.prep_type == "conv1x1":  # the learned positions fix the image size: image_size ** 2 of them
        positions = sd[f"{PRE}.position_embeddings.position_embeddings"]
        image_size = math.isqrt(positions.shape[0])
        fields["out_channels"], fields["in_channels"] = sd[f"{PRE}.convnet_1x1.weight"].shape[:2]
        fields["trainable_pos_channels"] = positions.shape[1]
        fields["project_pos_dim"] = sd[f"{PRE}.positions_projection.weight"].shape[0]
    elif head.prep_type == "conv":
        fields["out_channels"], fields["in_channels"] = sd[f"{PRE}.convnet.conv.weight"].shape[:2]
        fields["use_batchnorm"] = f"{PRE}.convnet.batchnorm.weight" in sd
    else:  # pixels: the encoder's input width is C + the Fourier features of 2 axes
        width = sd["perceiver.encoder.cross_attention.attention.self.key.weight"].shape[1]
        fields["in_channels"] = width - 2 * (1 + 2 * head.num_bands)
    return replace(head, image_size=(image_size, image_size), **fields)


def convert_image_classifier(
    hf_config: dict[str, Any], sd: dict[str, Tensor], **overrides: Any
) -> PerceiverForImageClassification:
    """Build our `PerceiverForImageClassification` from a transformers image-classification checkpoint.

    `hf_config` is the checkpoint's config.json dict, `sd` its state dict; `overrides` replace fields of our config
    (flat or dotted keys, e.g. `same_padding=False` for transformers' conv-stem numbers).
    """
    archs = [a for a in hf_config.get("architectures", []) if a in HEADS]
    if not archs:
        raise ValueError(f"expected one of {sorted(HEADS)} in architectures, got {hf_config.get('architectures')}")
    adapter = adapter_from_hf(archs[0], hf_config, sd)
    encoder, enc_keys = encoder_from_hf(hf_config, sd)
    decoder, dec_keys = decoder_from_hf(hf_config, sd, DEC, num_heads=1, use_query_residual=True)
    if decoder.output_dim is None:  # the class count is read off the classifier's weight
        raise ValueError(f"cannot convert checkpoint: the classifier weight {DEC}.final_layer.weight is missing")
    config = ImageClassifierConfig(
        adapter,
        encoder,
        replace(decoder, output_dim=None),
        num_classes=decoder.output_dim,
        problem_type=hf_config.get("problem_type"),  # the loss the checkpoint trained with (None: from the labels)
    )
    model = PerceiverForImageClassification(apply_overrides(config, overrides))
    keys = _adapter_keys(adapter.prep_type, sd) | enc_keys | dec_keys
    keys["query_builder.encoding.position_embeddings"] = f"{DEC}.output_position_encodings.position_embeddings"
    return load_converted(model, sd, keys)


#: the preprocessor weights each head's converter reads (beyond the encoder's and the decoder's)
_ADAPTER_KEYS = {
    "conv1x1": (
        f"{PRE}.position_embeddings.position_embeddings",
        f"{PRE}.convnet_1x1.weight",
        f"{PRE}.positions_projection.weight",
    ),
    "conv": (f"{PRE}.convnet.conv.weight",),
}
for _arch, _head in HEADS.items():
    _keys = required_keys(DEC, *_ADAPTER_KEYS.get(_head.prep_type, ()))
    register_hf_converter(_arch, required_keys=_keys)(convert_image_classifier)
del _arch, _head, _keys
