"""Training on PyTorch Lightning: task modules, the `perceiver` CLI, plots, the digits demo.

The names below are imported on first use (PEP 562 `__getattr__`): importing `perceiver.training.cli` (the
`perceiver` console script) must not import Lightning, so that `perceiver --help` starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "ClassificationTask": "perceiver.training.classification_task",
    "FlowTask": "perceiver.training.flow_task",
    "MaskedLMTask": "perceiver.training.mlm_task",
    "PerceiverTask": "perceiver.training.tasks",
    "TokenClassificationTask": "perceiver.training.segment_task",
    "build_model": "perceiver.training.tasks",
    "logits_of": "perceiver.training.tasks",
}

__all__ = [
    "ClassificationTask",
    "FlowTask",
    "MaskedLMTask",
    "PerceiverTask",
    "TokenClassificationTask",
    "build_model",
    "logits_of",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'perceiver.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


if TYPE_CHECKING:
    from perceiver.training.classification_task import ClassificationTask
    from perceiver.training.flow_task import FlowTask
    from perceiver.training.mlm_task import MaskedLMTask
    from perceiver.training.segment_task import TokenClassificationTask
    from perceiver.training.tasks import PerceiverTask, build_model, logits_of
