"""Ready models built from the core parts; importing this package registers every preset and model type."""

from perceiver.models.ar import PerceiverAR, PerceiverARConfig
from perceiver.models.classic import Perceiver, PerceiverConfig
from perceiver.models.classifiers import (
    AudioClassifierConfig,
    PerceiverForAudioClassification,
    PerceiverForPointCloudClassification,
    PerceiverForVideoClassification,
    PointCloudClassifierConfig,
    VideoClassifierConfig,
)
from perceiver.models.flow import OpticalFlowConfig, PerceiverForOpticalFlow
from perceiver.models.lucidrains_io import LucidrainsPerceiverBlock, LucidrainsPerceiverIO, LucidrainsPerceiverLM
from perceiver.models.multimodal import MultimodalAutoencodingConfig, PerceiverForMultimodalAutoencoding
from perceiver.models.resampler import PerceiverResampler, PerceiverResamplerConfig
from perceiver.models.text import PerceiverForMaskedLM, PerceiverForSequenceClassification
from perceiver.models.token_heads import PerceiverForQuestionAnswering, PerceiverForTokenClassification
from perceiver.models.vision import ImageClassifierConfig, PerceiverForImageClassification

__all__ = [
    "AudioClassifierConfig",
    "ImageClassifierConfig",
    "LucidrainsPerceiverBlock",
    "LucidrainsPerceiverIO",
    "LucidrainsPerceiverLM",
    "MultimodalAutoencodingConfig",
    "OpticalFlowConfig",
    "Perceiver",
    "PerceiverAR",
    "PerceiverARConfig",
    "PerceiverConfig",
    "PerceiverForAudioClassification",
    "PerceiverForImageClassification",
    "PerceiverForMaskedLM",
    "PerceiverForMultimodalAutoencoding",
    "PerceiverForOpticalFlow",
    "PerceiverForPointCloudClassification",
    "PerceiverForQuestionAnswering",
    "PerceiverForSequenceClassification",
    "PerceiverForTokenClassification",
    "PerceiverForVideoClassification",
    "PerceiverResampler",
    "PerceiverResamplerConfig",
    "PointCloudClassifierConfig",
    "VideoClassifierConfig",
]
