"""Building blocks: SDPA attention, feed-forward, pre-LN layers, position encodings."""

from perceiver.nn.attention import MLP, CrossAttentionLayer, MultiHeadAttention, SelfAttentionLayer
from perceiver.nn.inference import CastCachingLinear, clear_cast_cache, optimize_for_inference
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
    "CastCachingLinear",
    "CrossAttentionLayer",
    "FourierPositionEncoding",
    "MultiHeadAttention",
    "SelfAttentionLayer",
    "TrainablePositionEncoding",
    "axial_fourier_features",
    "clear_cast_cache",
    "fourier_channels",
    "fourier_features",
    "linear_positions",
    "optimize_for_inference",
]
