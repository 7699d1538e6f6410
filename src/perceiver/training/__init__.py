"""Training on PyTorch Lightning: task modules, the `perceiver` CLI, plots, the digits demo."""

from perceiver.training.segment_task import TokenClassificationTask
from perceiver.training.tasks import ClassificationTask, FlowTask, MaskedLMTask, PerceiverTask, build_model, logits_of

__all__ = [
    "ClassificationTask",
    "FlowTask",
    "MaskedLMTask",
    "PerceiverTask",
    "TokenClassificationTask",
    "build_model",
    "logits_of",
]
