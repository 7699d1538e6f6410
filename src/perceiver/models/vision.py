"""Perceiver IO image classifiers (DeepMind's ImageNet models): one class, configured by the preprocessing type.

    pixel_values (B, 3, H, W) --ImageAdapter--> (B, M, C) --PerceiverEncoder--> latents (B, N, D)
    one trainable query (B, 1, D) --PerceiverDecoder(latents)--> (B, 1, K) --> logits (B, K)

Presets at the published sizes (512 latents x 1024 channels, 8 blocks of 6 self-attention layers with 8 heads,
1 cross-attention head, widening 1, DeepMind's `cross_attention_shape_for_attention='kv'`):
- `vision-perceiver-learned`: 1x1 conv to 256 channels + 256 trainable positions (projected), concatenated (512);
- `vision-perceiver-fourier`: raw pixels + Fourier positions (64 bands, max resolution 224) (261 channels);
- `vision-perceiver-conv`: conv + max-pool stem to 64 channels at 56x56 + Fourier positions (max resolution 56) (322).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from torch import Tensor

from perceiver.adapters.image import ImageAdapter, PositionType, PrepType
from perceiver.adapters.outputs import ClassificationOutput
from perceiver.checks import check_float_input, check_nonempty, model_dtype, to_bool_mask
from perceiver.core.decoder import PerceiverDecoder, TrainableQueries, decode
from perceiver.core.encoder import PerceiverEncoder
from perceiver.core.io import PerceiverIO, PerceiverIOOutput
from perceiver.hub import PretrainedMixin, config_from_dict
from perceiver.models._io_config import PerceiverIOConfig
from perceiver.models.registry import register_model, register_model_type


@dataclass
class ImageClassifierConfig(PerceiverIOConfig):
    """Flat configuration of `PerceiverForImageClassification`; the defaults are `vision-perceiver-learned`'s.

    Adapter fields mirror `ImageAdapter`; the encoder / decoder fields (and their defaults, the published sizes) are
    `PerceiverIOConfig`'s. The decoder has one trainable query of `latent_dim` channels.
    """

    num_labels: int = 1000
    image_size: tuple[int, int] = (224, 224)
    in_channels: int = 3
    # input adapter
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

    def __post_init__(self) -> None:
        super().__post_init__()
        self.image_size = _pair("image_size", self.image_size)
        if self.max_resolution is not None:
            self.max_resolution = _pair("max_resolution", self.max_resolution)
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")


def _pair(name: str, value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or (height, width), got {value!r}")
    return int(value[0]), int(value[1])


def build_adapter(c: ImageClassifierConfig) -> ImageAdapter:
    return ImageAdapter(
        image_size=c.image_size,
        in_channels=c.in_channels,
        prep_type=c.prep_type,
        spatial_downsample=c.spatial_downsample,
        out_channels=c.out_channels,
        conv_after_patching=c.conv_after_patching,
        use_batchnorm=c.use_batchnorm,
        same_padding=c.same_padding,
        position_encoding=c.position_encoding,
        concat_or_add_pos=c.concat_or_add_pos,
        project_pos_dim=c.project_pos_dim,
        trainable_pos_channels=c.trainable_pos_channels,
        num_bands=c.num_bands,
        max_resolution=c.max_resolution,
        concat_pos=c.concat_pos,
        sine_only=c.sine_only,
    )


@register_model_type
class PerceiverForImageClassification(PretrainedMixin, PerceiverIO):
    """Perceiver IO image classifier; `model(pixel_values (B, 3, H, W))` -> `PerceiverIOOutput` with
    `.logits` `(B, num_labels)` and `.last_hidden_state` `(B, num_latents, latent_dim)`."""

    config_class = ImageClassifierConfig
    model_type = "perceiver-image-classifier"

    def __init__(self, config: ImageClassifierConfig) -> None:
        c = config
        adapter = build_adapter(c)
        encoder = PerceiverEncoder(c.encoder_config(adapter.num_channels))
        decoder = PerceiverDecoder(c.decoder_config(query_dim=c.latent_dim, output_dim=c.num_labels))
        super().__init__(adapter, encoder, TrainableQueries(1, c.latent_dim), decoder, ClassificationOutput())
        self.config = c

    def forward(
        self,
        inputs: Tensor | None = None,
        attention_mask: Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        pixel_values: Tensor | None = None,
        return_attention: bool = False,
    ) -> PerceiverIOOutput:
        """Classify `inputs` (alias `pixel_values`) `(B, in_channels, H, W)`, channels first.

        `attention_mask` `(B, M)` over the `M` input tokens (1/True = attend), as transformers' heads take it.
        `interpolate_pos_encoding` resizes learned positions bicubically to another image size (without it, trainable
        positions need `image_size` images). Returns logits `(B, num_labels)` and latents `(B, N, D)`; with
        `return_attention`, the encoder `(B, H, N, M)` and decoder `(B, H, 1, N)` attention maps.
        """
        if inputs is not None and pixel_values is not None:
            raise ValueError("pass the image as `inputs` or as `pixel_values`, not both")
        inputs = pixel_values if inputs is None else inputs
        if inputs is None:
            raise ValueError("expected pixel_values of shape (B, C, H, W), got None")
        inputs = check_float_input(inputs, "pixel_values", "(B, C, H, W)", model_dtype(self))
        check_nonempty(inputs, "pixel_values", "(B, C, H, W)")
        attention_mask = to_bool_mask(attention_mask, "attention_mask")
        adapted = self.input_adapter(inputs, attention_mask, interpolate_pos_encoding=interpolate_pos_encoding)
        encoded = self.encoder(adapted.tokens, adapted.mask, return_attention=return_attention)
        latents, enc_maps = encoded if return_attention else (encoded, None)
        out, dec_map = decode(self.decoder, self.query_builder, adapted, latents, return_attention=return_attention)
        return PerceiverIOOutput(self.output_adapter(out, adapted), latents, enc_maps, dec_map)


def _preset(base: ImageClassifierConfig, overrides: dict[str, Any]) -> PerceiverForImageClassification:
    return PerceiverForImageClassification(config_from_dict(ImageClassifierConfig, {**asdict(base), **overrides}))


LEARNED = ImageClassifierConfig()
FOURIER = ImageClassifierConfig(
    prep_type="pixels",
    spatial_downsample=1,
    position_encoding="fourier",
    project_pos_dim=None,
    num_bands=64,
    max_resolution=(224, 224),
)
CONV = ImageClassifierConfig(
    prep_type="conv",
    spatial_downsample=4,
    out_channels=64,
    position_encoding="fourier",
    project_pos_dim=None,
    num_bands=64,
    max_resolution=(56, 56),
)


@register_model("vision-perceiver-learned")
def vision_perceiver_learned(**overrides: Any) -> PerceiverForImageClassification:
    """DeepMind's ImageNet Perceiver IO with learned positions (deepmind/vision-perceiver-learned)."""
    return _preset(LEARNED, overrides)


@register_model("vision-perceiver-fourier")
def vision_perceiver_fourier(**overrides: Any) -> PerceiverForImageClassification:
    """DeepMind's ImageNet Perceiver IO on raw pixels with Fourier positions (deepmind/vision-perceiver-fourier)."""
    return _preset(FOURIER, overrides)


@register_model("vision-perceiver-conv")
def vision_perceiver_conv(**overrides: Any) -> PerceiverForImageClassification:
    """DeepMind's ImageNet Perceiver IO with a conv + max-pool stem (deepmind/vision-perceiver-conv)."""
    return _preset(CONV, overrides)


__all__ = [
    "ImageClassifierConfig",
    "PerceiverForImageClassification",
    "vision_perceiver_conv",
    "vision_perceiver_fourier",
    "vision_perceiver_learned",
]
