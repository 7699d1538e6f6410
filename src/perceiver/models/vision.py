"""Perceiver IO image classifiers (DeepMind's ImageNet models): one class, configured by its adapter config.

    pixel_values (B, 3, H, W) --ImageAdapter--> (B, M, C) --PerceiverEncoder--> latents (B, N, D)
    one trainable query (B, 1, D) --PerceiverDecoder(latents)--> (B, 1, K) --> logits (B, K)

`ImageClassifierConfig(adapter=ImageAdapterConfig(...), encoder=EncoderConfig(...), decoder=DecoderConfig(...),
num_classes=K)`; presets take flat keywords too (`create_model("vision-perceiver-fourier", num_latents=64,
num_classes=10)`, see `perceiver.hub.apply_overrides`).

Presets at the published sizes (512 latents x 1024 channels, 8 blocks of 6 self-attention layers with 8 heads,
1 cross-attention head, widening 1, DeepMind's `cross_attention_shape_for_attention='kv'`):
- `vision-perceiver-learned`: 1x1 conv to 256 channels + 256 trainable positions (projected), concatenated (512);
- `vision-perceiver-fourier`: raw pixels + Fourier positions (64 bands, max resolution 224) (261 channels);
- `vision-perceiver-conv`: conv + max-pool stem to 64 channels at 56x56 + Fourier positions (max resolution 56) (322).

timm's classifier API (`perceiver.models.timm_compat`): `num_features`, `forward_head(features, pre_logits=True)`,
`forward_intermediates`, `no_weight_decay()` and `group_matcher()` for timm's optimizer factory (layer-wise decay),
and `pretrained_cfg` (input size, mean / std, crop) for `timm.data.resolve_data_config` or `ImageProcessor`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from perceiver.adapters.image import ImageAdapterConfig
from perceiver.adapters.outputs import ClassificationOutput
from perceiver.checks import check_float_input, check_nonempty, model_dtype, to_bool_mask
from perceiver.core.decoder import DecoderConfig, PerceiverDecoder, TrainableQueries
from perceiver.core.encoder import EncoderConfig, PerceiverEncoder
from perceiver.core.io import InputAdapter, PerceiverIO
from perceiver.core.model import ModelOutput, check_problem_type, hf_output_flags
from perceiver.models._io_config import IO_LEGACY_KEYS, check_num_classes, classifier_decoder, imagenet_encoder
from perceiver.models.registry import build_preset, register_model, register_model_type
from perceiver.models.timm_compat import IOClassifierMixin


@dataclass
class ImageClassifierConfig:
    """`PerceiverForImageClassification`: an `ImageAdapterConfig`, the encoder, the classification decoder and the
    class count; the defaults are `vision-perceiver-learned`'s (the published sizes).

    `problem_type` is transformers' config field of that name: None (default) picks the loss from the labels
    (`perceiver.core.model.classification_loss`: one output = MSE, class ids = cross-entropy, float targets
    `(B, K)` = multi-label BCE); `"regression"` (MSE on `K` outputs), `"single_label_classification"` or
    `"multi_label_classification"` fix it, as a transformers checkpoint that sets it trained with."""

    adapter: ImageAdapterConfig = field(default_factory=ImageAdapterConfig)
    encoder: EncoderConfig = field(default_factory=imagenet_encoder)
    decoder: DecoderConfig = field(default_factory=classifier_decoder)
    num_classes: int = 1000
    problem_type: str | None = None

    def __post_init__(self) -> None:
        check_num_classes(self.num_classes)
        check_problem_type(self.problem_type)


def build_classifier_parts(
    adapter: InputAdapter, encoder: EncoderConfig, decoder: DecoderConfig, num_classes: int
) -> tuple[InputAdapter, PerceiverEncoder, TrainableQueries, PerceiverDecoder, ClassificationOutput]:
    """The parts of a Perceiver IO classifier: the adapter, an encoder for its width, one trainable query (of the
    latents' width, or `decoder.query_dim` when set, as krasserm's `num_output_query_channels`) and a decoder
    projecting to `num_classes` (0: no projection), with the classification output."""
    enc = PerceiverEncoder(encoder.for_inputs(adapter.num_channels))
    d = enc.config.latent_dim
    q = decoder.query_dim or d
    dec = PerceiverDecoder(decoder.for_parts(query_dim=q, latent_dim=d, output_dim=num_classes or None))
    return adapter, enc, TrainableQueries(1, q), dec, ClassificationOutput()


@register_model_type
class PerceiverForImageClassification(IOClassifierMixin, PerceiverIO):
    """Perceiver IO image classifier; `model(pixel_values (B, 3, H, W))` -> `ModelOutput` with `.logits`
    `(B, num_classes)` and `.last_hidden_state` `(B, num_latents, latent_dim)`."""

    config_class = ImageClassifierConfig
    model_type = "perceiver-image-classifier"
    legacy_keys = IO_LEGACY_KEYS
    #: images come channels first, as transformers' `pixel_values` (trainers permute channels-last batches)
    input_layout: ClassVar[str] = "channels_first"

    def __init__(self, config: ImageClassifierConfig) -> None:
        super().__init__(
            *build_classifier_parts(config.adapter.build(), config.encoder, config.decoder, config.num_classes)
        )
        self.config = config

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's `pretrained_cfg` (`default_cfg`): how images are prepared for this model, so that
        `timm.data.resolve_data_config(model=model)` / `create_transform` and `perceiver.ImageProcessor` agree.

        `input_size` `(in_channels, H, W)` is the size the model is built for (`config.adapter.image_size`; fixed with
        trainable positions, `fixed_input_size`); `mean`, `std`, `interpolation` and `crop_pct` (the center crop's
        share of the short side, `size / crop_size` of `ImageProcessor`) are those of the checkpoint's
        `preprocessor_config.json` when it had one, else `ImageProcessor`'s defaults (DeepMind's ImageNet ones);
        `classifier` names the class layer, `first_conv` the stem's first conv (None: the stem has none)."""
        from perceiver.image_processing import ImageProcessor

        saved = getattr(self, "preprocessor_config", None)
        proc = ImageProcessor.from_dict(saved) if isinstance(saved, dict) else ImageProcessor()
        adapter = self.config.adapter
        convs = [name for name, m in self.input_adapter.named_modules() if isinstance(m, nn.Conv2d)]
        return {
            "input_size": (adapter.in_channels, *adapter.image_size),
            "fixed_input_size": adapter.position_encoding == "trainable",
            "interpolation": proc.resample,
            "crop_pct": proc.size[0] / proc.crop_size[0] if proc.do_center_crop else 1.0,
            "crop_mode": "center",
            "mean": proc.image_mean if proc.do_normalize else (0.0,) * 3,
            "std": proc.image_std if proc.do_normalize else (1.0,) * 3,
            "num_classes": self.num_classes,
            "first_conv": f"input_adapter.{convs[0]}" if convs else None,
            "classifier": self.classifier_name,
        }

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name of `pretrained_cfg`."""
        return self.pretrained_cfg

    def preset_mismatch(self, name: str, overrides: dict[str, Any]) -> str | None:
        """What this model is when it is not the preset `name` (its stem, `adapter.prep_type`, is another preset's),
        else None: `create_model(name, checkpoint_path=folder)` checks a folder with it."""
        base = PRESETS.get(name)
        prep = self.config.adapter.prep_type
        if base is None or prep == base.adapter.prep_type or {"prep_type", "adapter.prep_type"} & set(overrides):
            return None
        held = [n for n, c in PRESETS.items() if c.adapter.prep_type == prep]
        return (
            f"a {held[0] if held else 'custom'} model (adapter.prep_type={prep!r}), not a {name!r} one "
            f"(prep_type={base.adapter.prep_type!r})"
        )

    def check_inputs(self, inputs: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        inputs = check_float_input(inputs, "pixel_values", "(B, C, H, W)", model_dtype(self))
        check_nonempty(inputs, "pixel_values", "(B, C, H, W)")
        return inputs, to_bool_mask(mask, "attention_mask")

    def forward(  # type: ignore[override]  # the transformers head's arguments, not PerceiverIO's
        self,
        inputs: Tensor | None = None,
        attention_mask: Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        pixel_values: Tensor | None = None,
        return_attention: bool = False,
        labels: Tensor | None = None,
        return_hidden_states: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple[Any, ...]:
        """Classify `inputs` (alias `pixel_values`) `(B, in_channels, H, W)`, channels first.

        `attention_mask` `(B, M)` over the `M` input tokens (1/True = attend), as transformers' heads take it.
        `interpolate_pos_encoding` resizes learned positions bicubically to another image size (without it, trainable
        positions need `image_size` images). `labels` `(B,)` class ids give `.loss`. Returns logits
        `(B, num_classes)` and latents `(B, N, D)`; with `return_attention`, the encoder `(B, H, N, M)` and decoder
        `(B, H, 1, N)` attention maps (and each latent layer's `(B, H, N, N)`); with `return_hidden_states`, the
        latents after every encoder step (`ModelOutput.hidden_states`). transformers' spellings work too:
        `output_attentions` / `output_hidden_states` are `return_attention` / `return_hidden_states`, and
        `return_dict=False` returns `ModelOutput.to_tuple()` (loss first with labels, then logits, as transformers').
        """
        return_attention, return_hidden_states = hf_output_flags(
            return_attention, return_hidden_states, output_attentions, output_hidden_states, return_dict
        )
        if inputs is not None and pixel_values is not None:
            raise ValueError("pass the image as `inputs` or as `pixel_values`, not both")
        inputs = pixel_values if inputs is None else inputs
        if inputs is None:
            raise ValueError("expected pixel_values of shape (B, C, H, W), got None")
        out = super().forward(
            inputs,
            attention_mask,
            return_attention=return_attention,
            labels=labels,
            return_hidden_states=return_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
        )
        return out.to_tuple() if return_dict is False else out


def _preset(base: ImageClassifierConfig, overrides: dict[str, Any]) -> PerceiverForImageClassification:
    return build_preset(PerceiverForImageClassification, base, overrides)


LEARNED = ImageClassifierConfig()
FOURIER = ImageClassifierConfig(
    adapter=ImageAdapterConfig(
        prep_type="pixels",
        spatial_downsample=1,
        position_encoding="fourier",
        project_pos_dim=None,
        num_bands=64,
        max_resolution=(224, 224),
    )
)
CONV = ImageClassifierConfig(
    adapter=ImageAdapterConfig(
        prep_type="conv",
        spatial_downsample=4,
        out_channels=64,
        position_encoding="fourier",
        project_pos_dim=None,
        num_bands=64,
        max_resolution=(56, 56),
    )
)


#: the configs of the presets (`preset_mismatch` tells them apart by their stems)
PRESETS = {"vision-perceiver-learned": LEARNED, "vision-perceiver-fourier": FOURIER, "vision-perceiver-conv": CONV}


@register_model("vision-perceiver-learned", hub_id="deepmind/vision-perceiver-learned")
def vision_perceiver_learned(**overrides: Any) -> PerceiverForImageClassification:
    """DeepMind's ImageNet Perceiver IO with learned positions (deepmind/vision-perceiver-learned)."""
    return _preset(LEARNED, overrides)


@register_model("vision-perceiver-fourier", hub_id="deepmind/vision-perceiver-fourier")
def vision_perceiver_fourier(**overrides: Any) -> PerceiverForImageClassification:
    """DeepMind's ImageNet Perceiver IO on raw pixels with Fourier positions (deepmind/vision-perceiver-fourier)."""
    return _preset(FOURIER, overrides)


@register_model("vision-perceiver-conv", hub_id="deepmind/vision-perceiver-conv")
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
