"""perceiver-torch: Perceiver, Perceiver IO and friends in PyTorch.

Every name of `__all__` is imported on first use (PEP 562 `__getattr__`): `import perceiver` itself imports
neither torch nor any model module, so what needs only a corner of the package (the `perceiver --help` command)
starts fast. `from perceiver import Perceiver` and `perceiver.create_model(...)` work as usual; so do the subpackages
(`perceiver.models.PerceiverForSequenceClassification`, `perceiver.data`, ...), imported when first looked up.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: exported name -> module that defines it, or "module:attribute" (imported when the name is first looked up)
_LAZY: dict[str, str] = {
    "AdaptedInputs": "perceiver.core.decoder",
    "DecoderConfig": "perceiver.core.decoder",
    "FourierQueries": "perceiver.core.decoder",
    "InputQueries": "perceiver.core.decoder",
    "PerceiverDecoder": "perceiver.core.decoder",
    "QueryBuilder": "perceiver.core.decoder",
    "TrainableQueries": "perceiver.core.decoder",
    "EncoderConfig": "perceiver.core.encoder",
    "PerceiverEncoder": "perceiver.core.encoder",
    "InputAdapter": "perceiver.core.io",
    "ModelOutput": "perceiver.core.model",
    "OutputAdapter": "perceiver.core.io",
    "PerceiverIO": "perceiver.core.io",
    "PerceiverIOOutput": "perceiver.core.io",
    "ImageProcessor": "perceiver.image_processing",
    "Perceiver": "perceiver.models",
    "PerceiverLM": "perceiver.models.lucidrains_io:LucidrainsPerceiverLM",  # perceiver-pytorch's, by its name
    "PerceiverConfig": "perceiver.models",
    "PerceiverAR": "perceiver.models.ar",
    "create_model": "perceiver.models.registry",
    "list_models": "perceiver.models.registry",
    "register_model": "perceiver.models.registry",
    "PerceiverResampler": "perceiver.models.resampler",
    "OptimizedModel": "perceiver.optimization",
    "OptimizeReport": "perceiver.optimization",
    "optimize": "perceiver.optimization",
    "from_pretrained": "perceiver.pretrained",
    "ByteTokenizer": "perceiver.tokenizer",
}

__all__ = [
    "AdaptedInputs",
    "ByteTokenizer",
    "DecoderConfig",
    "EncoderConfig",
    "FourierQueries",
    "ImageProcessor",
    "InputAdapter",
    "InputQueries",
    "ModelOutput",
    "OptimizeReport",
    "OptimizedModel",
    "OutputAdapter",
    "Perceiver",
    "PerceiverAR",
    "PerceiverConfig",
    "PerceiverDecoder",
    "PerceiverEncoder",
    "PerceiverIO",
    "PerceiverIOOutput",
    "PerceiverLM",
    "PerceiverResampler",
    "QueryBuilder",
    "TrainableQueries",
    "__version__",
    "create_model",
    "from_pretrained",
    "list_models",
    "optimize",
    "register_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(
                f"{__name__}.{name}"
            )  # a subpackage: `perceiver.models.X` after `import perceiver`
        raise AttributeError(f"module 'perceiver' has no attribute {name!r}")
    module, _, attribute = module.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from perceiver.core.decoder import (
        AdaptedInputs,
        DecoderConfig,
        FourierQueries,
        InputQueries,
        PerceiverDecoder,
        QueryBuilder,
        TrainableQueries,
    )
    from perceiver.core.encoder import EncoderConfig, PerceiverEncoder
    from perceiver.core.io import InputAdapter, OutputAdapter, PerceiverIO, PerceiverIOOutput
    from perceiver.core.model import ModelOutput
    from perceiver.image_processing import ImageProcessor
    from perceiver.models import Perceiver, PerceiverConfig
    from perceiver.models.ar import PerceiverAR
    from perceiver.models.lucidrains_io import LucidrainsPerceiverLM as PerceiverLM
    from perceiver.models.registry import create_model, list_models, register_model
    from perceiver.models.resampler import PerceiverResampler
    from perceiver.optimization import OptimizedModel, OptimizeReport, optimize
    from perceiver.pretrained import from_pretrained
    from perceiver.tokenizer import ByteTokenizer
