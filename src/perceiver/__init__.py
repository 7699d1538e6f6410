"""perceiver-torch: Perceiver, Perceiver IO and friends in PyTorch."""

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
from perceiver.image_processing import ImageProcessor
from perceiver.models import Perceiver, PerceiverConfig
from perceiver.models.ar import PerceiverAR
from perceiver.models.registry import create_model, list_models, register_model
from perceiver.models.resampler import PerceiverResampler
from perceiver.optimization import OptimizedModel, OptimizeReport, optimize
from perceiver.pretrained import from_pretrained
from perceiver.tokenizer import ByteTokenizer

__version__ = "0.1.0"

__all__ = [
    "AdaptedInputs",
    "ByteTokenizer",
    "DecoderConfig",
    "EncoderConfig",
    "FourierQueries",
    "ImageProcessor",
    "InputAdapter",
    "InputQueries",
    "OutputAdapter",
    "Perceiver",
    "PerceiverAR",
    "PerceiverConfig",
    "PerceiverDecoder",
    "PerceiverEncoder",
    "PerceiverIO",
    "PerceiverIOOutput",
    "PerceiverResampler",
    "OptimizeReport",
    "OptimizedModel",
    "QueryBuilder",
    "TrainableQueries",
    "__version__",
    "create_model",
    "from_pretrained",
    "list_models",
    "optimize",
    "register_model",
]
