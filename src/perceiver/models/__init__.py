"""Ready models built from the core parts."""

from perceiver.models.classic import Perceiver, PerceiverConfig

__all__ = ["Perceiver", "PerceiverConfig"]
