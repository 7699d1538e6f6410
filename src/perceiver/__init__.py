"""perceiver-torch: Perceiver, Perceiver IO and friends in PyTorch."""

from perceiver.encoder import EncoderConfig, PerceiverEncoder
from perceiver.models.classic import Perceiver, PerceiverConfig

__version__ = "0.1.0"

__all__ = ["EncoderConfig", "Perceiver", "PerceiverConfig", "PerceiverEncoder", "__version__"]
