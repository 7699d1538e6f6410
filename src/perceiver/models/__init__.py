"""Ready models built from the core parts."""

from perceiver.models.classic import Perceiver, PerceiverConfig

__all__ = ["Perceiver", "PerceiverConfig"]
from perceiver.models.vision import ImageClassifierConfig, PerceiverForImageClassification  # noqa: E402

__all__ += ["ImageClassifierConfig", "PerceiverForImageClassification"]
from perceiver.models.text import PerceiverForMaskedLM, PerceiverForSequenceClassification  # noqa: E402

__all__ += ["PerceiverForMaskedLM", "PerceiverForSequenceClassification"]
from perceiver.models.multimodal import MultimodalAutoencodingConfig, PerceiverForMultimodalAutoencoding  # noqa: E402

__all__ += ["MultimodalAutoencodingConfig", "PerceiverForMultimodalAutoencoding"]
from perceiver.models.flow import OpticalFlowConfig, PerceiverForOpticalFlow  # noqa: E402

__all__ += ["OpticalFlowConfig", "PerceiverForOpticalFlow"]
from perceiver.models.classifiers import (  # noqa: E402
    PerceiverForAudioClassification,
    PerceiverForPointCloudClassification,
    PerceiverForVideoClassification,
)

__all__ += ["PerceiverForAudioClassification", "PerceiverForPointCloudClassification", "PerceiverForVideoClassification"]
