"""Building blocks: SDPA attention, feed-forward, pre-LN layers, position encodings."""

from perceiver.nn.attention import MLP, CrossAttentionLayer, MultiHeadAttention, SelfAttentionLayer
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
    "MultiHeadAttention",
    "SelfAttentionLayer",
    "TrainablePositionEncoding",
    "axial_fourier_features",
    "fourier_channels",
    "fourier_features",
    "linear_positions",
]
