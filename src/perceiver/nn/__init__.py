"""Building blocks: SDPA attention, feed-forward, pre-LN layers, position encodings."""

from perceiver.nn.attention import MLP, CrossAttentionLayer, MultiHeadAttention, SelfAttentionLayer
from perceiver.nn.inference import (
    CastCachingLinear,
    Linear,
    clear_cast_cache,
    linear,
    optimize_for_inference,
    use_onednn_fp32_linear,
)
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
    "Linear",
    "MultiHeadAttention",
    "SelfAttentionLayer",
    "TrainablePositionEncoding",
    "axial_fourier_features",
    "clear_cast_cache",
    "fourier_channels",
    "fourier_features",
    "linear",
    "linear_positions",
    "optimize_for_inference",
    "use_onednn_fp32_linear",
]
