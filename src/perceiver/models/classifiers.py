"""Perceiver IO classifiers for raw audio, video and point clouds (the Perceiver paper's other modalities).

    inputs --AudioAdapter | VideoAdapter | PointCloudAdapter--> (B, M, C) (+ mask) --PerceiverEncoder--> (B, N, D)
    one trainable query (B, 1, D) --PerceiverDecoder(latents)--> (B, 1, K) --ClassificationOutput--> logits (B, K)

Head: the Perceiver IO classification decoder (one learned query cross-attends to the latents, query residual, a
final Linear), as transformers' / DeepMind's IO classifiers, rather than the Perceiver's mean-pool over latents. It
is a learned attention pooling (mean pooling is the special case of uniform attention), keeps one head design across
the library, and is invariant to the input order exactly like mean pooling, since the latents do not depend on it.

Presets (encoder of DeepMind's Perceiver IO ImageNet model: 512 x 1024 latents, one cross-attention head with
`'kv'` width, 8 weight-shared blocks of 6 self-attention layers with 8 heads, widening 1):
- `audio-classifier`: AudioSet-like, 527 classes (multi-label: apply a sigmoid), 61,440 samples (1.28 s at 48 kHz),
  16 samples per token (3,840 tokens), 192 Fourier bands with max resolution 61,440 (as Perceiver IO's audio);
- `video-classifier`: Kinetics-like, 700 classes, 16 frames of 224 x 224 (B, T, 3, H, W), space-to-depth 4
  (16 x 56 x 56 tokens of 48 values), 32 Fourier bands over (T, H, W) with max resolution (16, 224, 224) (as Perceiver
  IO's multimodal video);
- `point-cloud-classifier`: ModelNet40, 40 classes, xyz points of any number with a mask, 64 Fourier bands of the
  coordinates with max resolution 64 (the top band, 32 cycles over [-1, 1], about the spacing of 2,048 surface points
  on the unit sphere); no index positions, so logits are invariant to point order and to masked padding.
These are reasoned defaults for the modalities, not reproductions of published checkpoints (there are none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from perceiver.adapters.audio import AudioAdapterConfig
from perceiver.adapters.point_cloud import PointCloudAdapterConfig
from perceiver.adapters.video import VideoAdapterConfig
from perceiver.checks import check_float_input, check_nonempty, model_dtype, to_bool_mask
from perceiver.core.decoder import DecoderConfig
from perceiver.core.encoder import EncoderConfig
from perceiver.core.io import PerceiverIO
from perceiver.core.model import ModelOutput
from perceiver.models._io_config import IO_LEGACY_KEYS, check_num_classes, classifier_decoder, imagenet_encoder
from perceiver.models.registry import build_preset, register_model, register_model_type
from perceiver.models.timm_compat import IOClassifierMixin
from perceiver.models.vision import build_classifier_parts


@dataclass
class AudioClassifierConfig:
    """Raw audio `(B, S)` / `(B, S, 1)`: an `AudioAdapterConfig` (num_samples None: any multiple of the patch), the
    encoder, the classification decoder, 527 classes (AudioSet)."""

    adapter: AudioAdapterConfig = field(default_factory=AudioAdapterConfig)
    encoder: EncoderConfig = field(default_factory=imagenet_encoder)
    decoder: DecoderConfig = field(default_factory=classifier_decoder)
    num_classes: int = 527

    def __post_init__(self) -> None:
        check_num_classes(self.num_classes)


@dataclass
class VideoClassifierConfig:
    """Video `(B, T, C, H, W)` (or channels-last): a `VideoAdapterConfig`, the encoder, the classification decoder,
    700 classes (Kinetics-700)."""

    adapter: VideoAdapterConfig = field(default_factory=VideoAdapterConfig)
    encoder: EncoderConfig = field(default_factory=imagenet_encoder)
    decoder: DecoderConfig = field(default_factory=classifier_decoder)
    num_classes: int = 700

    def __post_init__(self) -> None:
        check_num_classes(self.num_classes)


@dataclass
class PointCloudClassifierConfig:
    """Point clouds `(B, P, in_channels)` with xyz first: a `PointCloudAdapterConfig`, the encoder, the
    classification decoder, 40 classes (ModelNet40)."""

    adapter: PointCloudAdapterConfig = field(default_factory=PointCloudAdapterConfig)
    encoder: EncoderConfig = field(default_factory=imagenet_encoder)
    decoder: DecoderConfig = field(default_factory=classifier_decoder)
    num_classes: int = 40

    def __post_init__(self) -> None:
        check_num_classes(self.num_classes)


class _ModalityClassifier(IOClassifierMixin, PerceiverIO):
    """Shared body: the config's adapter, the encoder, one trainable query and the decoder.

    `forward(inputs, mask=None, labels=None)` -> `ModelOutput` with `.logits` `(B, num_classes)` and
    `.last_hidden_state` `(B, num_latents, latent_dim)`; with `return_attention`, encoder `(B, H, N, M)` and
    decoder `(B, H, 1, N)` maps.
    """

    legacy_keys = IO_LEGACY_KEYS
    #: the input shape named in errors (set by each modality)
    expected_input: ClassVar[str] = "(B, ...)"

    def __init__(self, config: Any) -> None:
        super().__init__(
            *build_classifier_parts(config.adapter.build(), config.encoder, config.decoder, config.num_classes)
        )
        self.config = config

    def check_inputs(self, inputs: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """`inputs` of `expected_input` (floating; cast to the model's dtype), `mask` bool or 0 / 1."""
        inputs = check_float_input(inputs, "inputs", self.expected_input, model_dtype(self))
        check_nonempty(inputs, "inputs", self.expected_input)
        return inputs, to_bool_mask(mask, "mask")

    def forward(  # type: ignore[override]  # a classifier's arguments (no output_index, chunks)
        self,
        inputs: Tensor,
        mask: Tensor | None = None,
        return_attention: bool = False,
        labels: Tensor | None = None,
        return_hidden_states: bool = False,
    ) -> ModelOutput:
        """`inputs` of `expected_input`, `mask` over inputs or tokens -> `.logits` (and `.loss` with `labels`)."""
        return super().forward(
            inputs, mask, return_attention=return_attention, labels=labels, return_hidden_states=return_hidden_states
        )


# Legacy (format 1) files name the adapter fields flat; `apply_overrides` routes them into `adapter`.


@register_model_type
class PerceiverForAudioClassification(_ModalityClassifier):
    """Raw audio classifier: `model(inputs (B, S) or (B, S, 1), mask (B, S) or None)` -> `.logits` `(B, K)`."""

    expected_input = "(B, S) or (B, S, 1)"
    config_class = AudioClassifierConfig
    model_type = "perceiver-audio-classifier"


@register_model_type
class PerceiverForVideoClassification(_ModalityClassifier):
    """Video classifier: `model(inputs (B, T, C, H, W), mask (B, M) over tokens or None)` -> `.logits` `(B, K)`
    (`(B, T, H, W, C)` inputs with `config.adapter.channels_last=True`)."""

    config_class = VideoClassifierConfig
    model_type = "perceiver-video-classifier"

    @property
    def input_layout(self) -> str:  # the adapter's layout, not one per class
        """`"channels_first"` `(B, T, C, H, W)`, or `"channels_last"` `(B, T, H, W, C)` for an adapter built with
        `channels_last=True`: the layout trainers and `perceiver predict` convert video batches to."""
        return "channels_last" if self.config.adapter.channels_last else "channels_first"

    @property
    def expected_input(self) -> str:  # type: ignore[override]
        return "(B, T, H, W, C)" if self.config.adapter.channels_last else "(B, T, C, H, W)"


@register_model_type
class PerceiverForPointCloudClassification(_ModalityClassifier):
    """Point cloud classifier: `model(inputs (B, P, 3), mask (B, P) or None)` -> `.logits` `(B, K)`,
    invariant to the order of the points and to masked padding points."""

    expected_input = "(B, P, 3)"
    config_class = PointCloudClassifierConfig
    model_type = "perceiver-point-cloud-classifier"


@register_model("audio-classifier")
def audio_classifier(**overrides: Any) -> PerceiverForAudioClassification:
    """Raw audio Perceiver IO classifier (AudioSet-like: 527 classes, 61,440 samples, 16 samples per token)."""
    return build_preset(PerceiverForAudioClassification, AudioClassifierConfig(), overrides)


@register_model("video-classifier")
def video_classifier(**overrides: Any) -> PerceiverForVideoClassification:
    """Video Perceiver IO classifier (Kinetics-like: 700 classes, 16 x 224 x 224, space-to-depth 4)."""
    return build_preset(PerceiverForVideoClassification, VideoClassifierConfig(), overrides)


@register_model("point-cloud-classifier")
def point_cloud_classifier(**overrides: Any) -> PerceiverForPointCloudClassification:
    """Point cloud Perceiver IO classifier (ModelNet40: 40 classes, Fourier features of xyz, masks)."""
    return build_preset(PerceiverForPointCloudClassification, PointCloudClassifierConfig(), overrides)


__all__ = [
    "AudioClassifierConfig",
    "PerceiverForAudioClassification",
    "PerceiverForPointCloudClassification",
    "PerceiverForVideoClassification",
    "PointCloudClassifierConfig",
    "VideoClassifierConfig",
    "audio_classifier",
    "point_cloud_classifier",
    "video_classifier",
]
