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
from typing import Any

from torch import Tensor

from perceiver.interop.transformers import io_config_from_hf, load_converted
from perceiver.models.vision import CONV, FOURIER, LEARNED, ImageClassifierConfig, PerceiverForImageClassification
from perceiver.pretrained import register_hf_converter

PRE = "perceiver.input_preprocessor"
DEC = "perceiver.decoder.decoder"

# What each transformers head hard-codes for its PerceiverImagePreprocessor: the preprocessing of our presets.
# (transformers passes spatial_downsample=1 to the conv head, but its Conv2DDownsample always downsamples 4x.)
_PREP_FIELDS = (
    "prep_type",
    "spatial_downsample",
    "position_encoding",
    "project_pos_dim",
    "num_bands",
    "max_resolution",
)
HEADS: dict[str, dict[str, Any]] = {
    arch: {name: getattr(preset, name) for name in _PREP_FIELDS}
    for arch, preset in (
        ("PerceiverForImageClassificationLearned", LEARNED),
        ("PerceiverForImageClassificationFourier", FOURIER),
        ("PerceiverForImageClassificationConvProcessing", CONV),
    )
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


def convert_image_classifier(
    hf_config: dict[str, Any], sd: dict[str, Tensor], **overrides: Any
) -> PerceiverForImageClassification:
    """Build our `PerceiverForImageClassification` from a transformers image-classification checkpoint.

    `hf_config` is the checkpoint's config.json dict, `sd` its state dict; `overrides` replace fields of our config
    (e.g. `same_padding=False` for transformers' conv-stem numbers).
    """
    archs = [a for a in hf_config.get("architectures", []) if a in HEADS]
    if not archs:
        raise ValueError(f"expected one of {sorted(HEADS)} in architectures, got {hf_config.get('architectures')}")
    head = HEADS[archs[0]]
    io_fields, enc, dec, io_keys = io_config_from_hf(hf_config, sd, DEC, decoder_use_query_residual=True)
    image_size = hf_config.get("image_size", 224)
    if head["prep_type"] == "conv1x1":  # the learned positions fix the image size: image_size ** 2 of them
        image_size = math.isqrt(sd[f"{PRE}.position_embeddings.position_embeddings"].shape[0])
    fields: dict[str, Any] = dict(
        num_labels=dec.output_dim,
        image_size=(image_size, image_size),
        **head,
        **io_fields,
    )
    if head["prep_type"] == "conv1x1":
        fields["out_channels"], fields["in_channels"] = sd[f"{PRE}.convnet_1x1.weight"].shape[:2]
        fields["trainable_pos_channels"] = sd[f"{PRE}.position_embeddings.position_embeddings"].shape[1]
        fields["project_pos_dim"] = sd[f"{PRE}.positions_projection.weight"].shape[0]
    elif head["prep_type"] == "conv":
        fields["out_channels"], fields["in_channels"] = sd[f"{PRE}.convnet.conv.weight"].shape[:2]
        fields["use_batchnorm"] = f"{PRE}.convnet.batchnorm.weight" in sd
    if head["prep_type"] == "pixels":
        fields["in_channels"] = enc.input_dim - 2 * (1 + 2 * head["num_bands"])
    fields.update(overrides)
    model = PerceiverForImageClassification(ImageClassifierConfig(**fields))
    keys = _adapter_keys(head["prep_type"], sd) | io_keys
    keys["query_builder.encoding.position_embeddings"] = f"{DEC}.output_position_encodings.position_embeddings"
    return load_converted(model, sd, keys)


register_hf_converter(*HEADS)(convert_image_classifier)
