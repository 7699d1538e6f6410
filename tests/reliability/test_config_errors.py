"""Bad sizes in configs are a clear error when the config (or preset) is made, naming the config class, the field,
what was expected and what came; valid unusual values (numpy ints, 0 where it means "none") keep working."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from tiny_models import TINY, inputs, tiny

import perceiver
from perceiver.adapters.audio import AudioAdapterConfig
from perceiver.adapters.flow import FlowAdapterConfig
from perceiver.adapters.image import ImageAdapterConfig
from perceiver.adapters.video import VideoAdapterConfig
from perceiver.core.decoder import DecoderConfig
from perceiver.core.encoder import EncoderConfig
from perceiver.models.classic import Perceiver

IO_PRESETS = [
    "vision-perceiver-learned",
    "vision-perceiver-fourier",
    "vision-perceiver-conv",
    "optical-flow-perceiver",
    "multimodal-perceiver",
    "audio-classifier",
    "video-classifier",
    "point-cloud-classifier",
    "language-perceiver",
    "text-classifier",
    "token-classifier",
    "question-answering",
]
FOURIER_PRESETS = {
    "vision-perceiver-fourier": "ImageAdapterConfig",
    "vision-perceiver-conv": "ImageAdapterConfig",
    "optical-flow-perceiver": "FlowAdapterConfig",
    "audio-classifier": "AudioAdapterConfig",
    "video-classifier": "VideoAdapterConfig",
    "point-cloud-classifier": "PointCloudAdapterConfig",
}


def message(field: str, value: object) -> str:
    """The pattern of an error naming `field` and the bad `value` with its type."""
    return rf"{re.escape(field)} must be .*got {re.escape(repr(value))} \({type(value).__name__}\)"


def create(name: str, **overrides: object) -> torch.nn.Module:
    return perceiver.create_model(name, **(TINY[name][0] | overrides))


@pytest.mark.parametrize("name", IO_PRESETS)
@pytest.mark.parametrize(
    "key, value",
    [
        ("latent_dim", 8.0),
        ("num_latents", 8.0),
        ("num_latents", "8"),
        ("num_self_attends_per_block", 8.0),
        ("num_self_attends_per_block", -1),
        ("num_blocks", 2.0),
        ("latent_heads", 2.0),
    ],
)
def test_io_preset_encoder_sizes(name, key, value):
    with pytest.raises(ValueError, match=message(f"EncoderConfig.{key}", value)):
        create(name, **{key: value})


@pytest.mark.parametrize("name, owner", FOURIER_PRESETS.items())
@pytest.mark.parametrize("value", [8.0, "8", 0, -1])
def test_fourier_bands(name, owner, value):
    with pytest.raises(ValueError, match=message(f"{owner}.num_bands", value)):
        create(name, num_bands=value)


@pytest.mark.parametrize(
    "name, key, field, value",
    [
        ("video-classifier", "spatial_block_size", "VideoAdapterConfig.spatial_block_size", 0),
        ("video-classifier", "spatial_block_size", "VideoAdapterConfig.spatial_block_size", -1),
        ("video-classifier", "temporal_block_size", "VideoAdapterConfig.temporal_block_size", 0),
        ("video-classifier", "temporal_block_size", "VideoAdapterConfig.temporal_block_size", -1),
        ("video-classifier", "temporal_block_size", "VideoAdapterConfig.temporal_block_size", 2.0),
        ("video-classifier", "num_frames", "VideoAdapterConfig.num_frames", 0),
        ("video-classifier", "num_frames", "VideoAdapterConfig.num_frames", 4.0),
        ("video-classifier", "image_size", "VideoAdapterConfig.image_size[0]", (0, 12)),
        ("video-classifier", "max_resolution", "VideoAdapterConfig.max_resolution[2]", (4, 8, -1)),
        ("optical-flow-perceiver", "out_channels", "FlowAdapterConfig.out_channels", -1),
        ("optical-flow-perceiver", "out_channels", "FlowAdapterConfig.out_channels", 0),
        ("optical-flow-perceiver", "query_chunk_size", "OpticalFlowConfig.query_chunk_size", 2.5),
        ("optical-flow-perceiver", "train_size", "FlowAdapterConfig.train_size[1]", (12, 16.0)),
        ("multimodal-perceiver", "output_num_channels", "DecoderConfig.output_dim", -1),
        ("multimodal-perceiver", "output_num_channels", "DecoderConfig.output_dim", 8.0),
        ("multimodal-perceiver", "image_size", "multimodal-perceiver image_size", 0),
        ("multimodal-perceiver", "image_size", "multimodal-perceiver image_size", 16.0),
        ("multimodal-perceiver", "label_query_channels", "MultimodalQueryConfig.label_channels", 8.0),
        ("audio-classifier", "max_resolution", "AudioAdapterConfig.max_resolution", -1),
        ("audio-classifier", "max_resolution", "AudioAdapterConfig.max_resolution", 0),
        ("audio-classifier", "max_resolution", "AudioAdapterConfig.max_resolution", "8"),
        ("audio-classifier", "samples_per_patch", "AudioAdapterConfig.samples_per_patch", 4.0),
        ("point-cloud-classifier", "max_resolution", "PointCloudAdapterConfig.max_resolution", 0),
        ("vision-perceiver-learned", "image_size", "ImageAdapterConfig.image_size", 0),
        ("vision-perceiver-learned", "image_size", "ImageAdapterConfig.image_size[0] (height)", (16.0, 16)),
        ("vision-perceiver-learned", "trainable_pos_channels", "ImageAdapterConfig.trainable_pos_channels", 8.0),
        ("language-perceiver", "decoder.qk_channels", "DecoderConfig.qk_channels", 8.0),
        ("language-perceiver", "decoder.num_heads", "DecoderConfig.num_heads", 2.0),
    ],
)
def test_preset_sizes(name, key, field, value):
    index = re.search(r"\[(\d)\]", field)  # an element of a size tuple: the message names that one
    bad = value[int(index[1])] if index else value
    with pytest.raises(ValueError, match=message(field, bad)):
        create(name, **{key: value})


def test_wrong_types_are_type_errors_too():
    """Built directly, a size of the wrong type is a TypeError (and a ValueError, the library's habit)."""
    for make, field in [
        (lambda: EncoderConfig(num_latents=8.0), "EncoderConfig.num_latents"),
        (lambda: DecoderConfig(widening_factor="2"), "DecoderConfig.widening_factor"),
        (lambda: VideoAdapterConfig(spatial_block_size=True), "VideoAdapterConfig.spatial_block_size"),
        (lambda: AudioAdapterConfig(max_resolution="8"), "AudioAdapterConfig.max_resolution"),
    ]:
        with pytest.raises(TypeError, match=re.escape(field)) as e:
            make()
        assert isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match=message("EncoderConfig.num_blocks", 0)):
        EncoderConfig(num_blocks=0)
    with pytest.raises(TypeError, match=r"FlowAdapterConfig.pyramid_scales must be integers >= 2, got \(1\.5,\)"):
        FlowAdapterConfig(pyramid_scales=[1.5])
    with pytest.raises(TypeError, match=message("FlowAdapterConfig.difference_scale", "2")):
        FlowAdapterConfig(difference_scale="2")


@pytest.mark.parametrize(
    "name, value",
    [  # (the flow model's forward takes 0 as "all at once")
        ("optical-flow-perceiver", 2.5),
        ("optical-flow-perceiver", "4"),
        ("multimodal-perceiver", 2.5),
        ("multimodal-perceiver", "4"),
    ],
)
def test_forward_query_chunk_size(name, value):
    model = tiny(name)
    with pytest.raises(ValueError, match=rf"query_chunk_size must be .*got {re.escape(repr(value))}"):
        model(*inputs(name), query_chunk_size=value)


@pytest.mark.parametrize(
    "key, value",
    [
        ("num_freq_bands", 8.0),
        ("num_freq_bands", -1),
        ("max_freq", "10"),
        ("depth", 2.0),
        ("depth", 0),
        ("num_latents", -4),
        ("latent_dim", 16.0),
        ("self_per_cross_attn", 1.0),
        ("self_per_cross_attn", -1),
        ("cross_heads", 0),
    ],
)
def test_classic_perceiver_keywords(key, value):
    with pytest.raises(ValueError, match=message(f"PerceiverConfig.{key}", value)):
        Perceiver(**(TINY["perceiver"][0] | {key: value}))


def test_image_processor_mean_and_std():
    processor = perceiver.ImageProcessor(image_mean=0.5, image_std=0.25)
    assert processor.image_mean == (0.5, 0.5, 0.5) and processor.image_std == (0.25, 0.25, 0.25)
    assert perceiver.ImageProcessor(image_mean=np.array([0.1, 0.2, 0.3])).image_mean == pytest.approx((0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match=r"image_mean must be a number or 3 numbers .*got \(0\.5, 0\.5\) \(tuple\)"):
        perceiver.ImageProcessor(image_mean=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"image_std must be a number or 3 numbers .*got 'abc' \(str\)"):
        perceiver.ImageProcessor(image_std="abc")


def test_valid_unusual_values_still_build():
    """numpy integers are plain ints in the config; 0 keeps its meaning where it has one."""
    encoder = EncoderConfig(num_latents=np.int64(8), num_self_attends_per_block=0)
    assert type(encoder.num_latents) is int and encoder.num_latents == 8
    assert ImageAdapterConfig(project_pos_dim=0, image_size=np.int32(16)).image_size == (16, 16)
    assert VideoAdapterConfig(max_resolution=(4.0, 8, 12.5)).max_resolution == (4.0, 8, 12.5)
    for name, overrides in [
        ("audio-classifier", {"max_resolution": 64.5}),
        ("video-classifier", {"num_self_attends_per_block": 0}),
        ("optical-flow-perceiver", {"query_chunk_size": None}),
        ("text-classifier", {"num_labels": 0}),
    ]:
        create(name, **overrides)
    Perceiver(**(TINY["perceiver"][0] | {"fourier_encode_data": False, "num_freq_bands": 0}))
