"""Building blocks: SDPA attention, feed-forward, pre-LN layers, position encodings. Plain PyTorch only.

`perceiver.nn.cpu_kernels` (not imported here) holds the one private-op kernel, which only `perceiver.optimize` uses.
"""

from perceiver.nn.attention import MultiHeadAttention, attention_with_probs, reassociation_saves
from perceiver.nn.inputs import InputFactors, normalize_factored, normalize_inputs, padded_width
from perceiver.nn.layers import MLP, CrossAttentionLayer, SelfAttentionLayer
from perceiver.nn.position import (
    FourierPositionEncoding,
    TrainablePositionEncoding,
    axial_fourier_features,
    fourier_channels,
    fourier_features,
    linear_positions,
)

__all__ = [
    "MLP",
    "CrossAttentionLayer",
    "FourierPositionEncoding",
    "InputFactors",
    "MultiHeadAttention",
    "SelfAttentionLayer",
    "TrainablePositionEncoding",
    "attention_with_probs",
    "axial_fourier_features",
    "fourier_channels",
    "fourier_features",
    "linear_positions",
    "normalize_factored",
    "normalize_inputs",
    "padded_width",
    "reassociation_saves",
]
