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

from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

from perceiver.adapters.audio import AudioAdapter
from perceiver.adapters.outputs import ClassificationOutput
from perceiver.adapters.point_cloud import PointCloudAdapter
from perceiver.adapters.video import VideoAdapter
from perceiver.checks import check_float_input, check_nonempty, model_dtype, to_bool_mask
from perceiver.core.decoder import PerceiverDecoder, TrainableQueries
from perceiver.core.encoder import PerceiverEncoder
from perceiver.core.io import InputAdapter, PerceiverIO, PerceiverIOOutput
from perceiver.hub import PretrainedMixin, config_from_dict
from perceiver.models._io_config import PerceiverIOConfig
from perceiver.models.registry import register_model, register_model_type


@dataclass
class ClassifierConfig(PerceiverIOConfig):
    """`PerceiverIOConfig` (whose defaults are the encoder in the module docstring) plus the class count."""

    num_classes: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {self.num_classes!r}")


@dataclass
class AudioClassifierConfig(ClassifierConfig):
    """Raw audio `(B, S)` / `(B, S, 1)`: `AudioAdapter` fields (num_samples None: any multiple of the patch)."""

    num_classes: int = 527
    num_samples: int | None = 61440
    samples_per_patch: int = 16
    num_bands: int = 192
    max_resolution: float | None = 61440


@dataclass
class VideoClassifierConfig(ClassifierConfig):
    """Video `(B, T, C, H, W)` (or channels-last): `VideoAdapter` fields."""

    num_classes: int = 700
    num_frames: int = 16
    image_size: tuple[int, int] = (224, 224)
    in_channels: int = 3
    temporal_block_size: int = 1
    spatial_block_size: int = 4
    num_bands: int = 32
    max_resolution: tuple[float, float, float] | None = (16, 224, 224)
    project_dim: int | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        if self.max_resolution is not None:
            self.max_resolution = tuple(self.max_resolution)


@dataclass
class PointCloudClassifierConfig(ClassifierConfig):
    """Point clouds `(B, P, in_channels)` with xyz first: `PointCloudAdapter` fields."""

    num_classes: int = 40
    in_channels: int = 3
    num_bands: int = 64
    max_resolution: float = 64.0


class _ModalityClassifier(PretrainedMixin, PerceiverIO):
    """Shared body: an input adapter (from `build_adapter`), the encoder, one trainable query and the decoder.

    `forward(inputs, mask=None)` -> `PerceiverIOOutput` with `.logits` `(B, num_classes)` and `.last_hidden_state`
    `(B, num_latents, latent_dim)`; with `return_attention`, encoder `(B, H, N, M)` and decoder `(B, H, 1, N)` maps.
    """

    def build_adapter(self, config: Any) -> InputAdapter:
        raise NotImplementedError

    def __init__(self, config: ClassifierConfig) -> None:
        c = config
        adapter = self.build_adapter(c)
        encoder = PerceiverEncoder(c.encoder_config(adapter.num_channels))
        decoder = PerceiverDecoder(c.decoder_config(query_dim=c.latent_dim, output_dim=c.num_classes))
        super().__init__(adapter, encoder, TrainableQueries(1, c.latent_dim), decoder, ClassificationOutput())
        self.config = c

    #: the input shape named in errors (set by each modality)
    expected_input: str = "(B, ...)"

    def forward(self, inputs: Tensor, mask: Tensor | None = None, return_attention: bool = False) -> PerceiverIOOutput:
        """`inputs` of `expected_input` (floating; cast to the model's dtype), `mask` bool or 0 / 1 -> `.logits`."""
        inputs = check_float_input(inputs, "inputs", self.expected_input, model_dtype(self))
        check_nonempty(inputs, "inputs", self.expected_input)
        mask = to_bool_mask(mask, "mask")
        return super().forward(inputs, mask, return_attention=return_attention)


@register_model_type
class PerceiverForAudioClassification(_ModalityClassifier):
    """Raw audio classifier: `model(inputs (B, S) or (B, S, 1), mask (B, S) or None)` -> `.logits` `(B, K)`."""

    expected_input = "(B, S) or (B, S, 1)"
    config_class = AudioClassifierConfig
    model_type = "perceiver-audio-classifier"

    def build_adapter(self, c: AudioClassifierConfig) -> AudioAdapter:
        return AudioAdapter(c.num_samples, c.samples_per_patch, c.num_bands, c.max_resolution)


@register_model_type
class PerceiverForVideoClassification(_ModalityClassifier):
    """Video classifier: `model(inputs (B, T, C, H, W), mask (B, M) over tokens or None)` -> `.logits` `(B, K)`."""

    expected_input = "(B, T, C, H, W)"
    config_class = VideoClassifierConfig
    model_type = "perceiver-video-classifier"

    def build_adapter(self, c: VideoClassifierConfig) -> VideoAdapter:
        return VideoAdapter(
            c.in_channels,
            c.num_frames,
            c.image_size,
            c.temporal_block_size,
            c.spatial_block_size,
            c.num_bands,
            c.max_resolution,
            c.project_dim,
            c.channels_last,
        )


@register_model_type
class PerceiverForPointCloudClassification(_ModalityClassifier):
    """Point cloud classifier: `model(inputs (B, P, 3), mask (B, P) or None)` -> `.logits` `(B, K)`,
    invariant to the order of the points and to masked padding points."""

    expected_input = "(B, P, 3)"
    config_class = PointCloudClassifierConfig
    model_type = "perceiver-point-cloud-classifier"

    def build_adapter(self, c: PointCloudClassifierConfig) -> PointCloudAdapter:
        return PointCloudAdapter(c.in_channels, c.num_bands, c.max_resolution)


def _preset(cls: type, base: ClassifierConfig, overrides: dict[str, Any]) -> _ModalityClassifier:
    overrides = dict(overrides)
    if "num_labels" in overrides:  # the name transformers' heads use
        overrides["num_classes"] = overrides.pop("num_labels")
    return cls(config_from_dict(type(base), {**asdict(base), **overrides}))


@register_model("audio-classifier")
def audio_classifier(**overrides: Any) -> PerceiverForAudioClassification:
    """Raw audio Perceiver IO classifier (AudioSet-like: 527 classes, 61,440 samples, 16 samples per token)."""
    return _preset(PerceiverForAudioClassification, AudioClassifierConfig(), overrides)


@register_model("video-classifier")
def video_classifier(**overrides: Any) -> PerceiverForVideoClassification:
    """Video Perceiver IO classifier (Kinetics-like: 700 classes, 16 x 224 x 224, space-to-depth 4)."""
    return _preset(PerceiverForVideoClassification, VideoClassifierConfig(), overrides)


@register_model("point-cloud-classifier")
def point_cloud_classifier(**overrides: Any) -> PerceiverForPointCloudClassification:
    """Point cloud Perceiver IO classifier (ModelNet40: 40 classes, Fourier features of xyz, masks)."""
    return _preset(PerceiverForPointCloudClassification, PointCloudClassifierConfig(), overrides)


__all__ = [
    "AudioClassifierConfig",
    "ClassifierConfig",
    "PerceiverForAudioClassification",
    "PerceiverForPointCloudClassification",
    "PerceiverForVideoClassification",
    "PointCloudClassifierConfig",
    "VideoClassifierConfig",
    "audio_classifier",
    "point_cloud_classifier",
    "video_classifier",
]
