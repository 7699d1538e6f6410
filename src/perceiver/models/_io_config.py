"""Part defaults shared by the Perceiver IO task models, and the flat keys of format-1 config files.

The defaults are DeepMind's Perceiver IO ImageNet model: 512 x 1024 latents, 8 weight-shared blocks of 6
self-attention layers with 8 heads, one cross-attention head with `cross_attention_shape_for_attention='kv'`,
widening 1, a one-head decoder with a query residual. Task configs compose an adapter config with
`imagenet_encoder()` / `classifier_decoder()` (or their own part values) and add their head's fields.
"""

from __future__ import annotations

from typing import Any

from perceiver.core.decoder import DecoderConfig
from perceiver.core.encoder import EncoderConfig

#: flat keys of format-1 files (and of earlier preset keywords) whose field moved or was renamed
IO_LEGACY_KEYS: dict[str, str | tuple[str, ...]] = {
    "decoder_heads": "decoder.num_heads",
    "decoder_qk_channels": "decoder.qk_channels",
    "decoder_v_channels": "decoder.v_channels",
    "decoder_widening_factor": "decoder.widening_factor",
    "decoder_use_query_residual": "decoder.use_query_residual",
    "use_query_residual": "encoder.use_query_residual",
    "cross_attention_shape": ("encoder.cross_attention_shape", "decoder.cross_attention_shape"),
}  # (`num_labels` -> `num_classes` is an alias of every config: `perceiver.hub.ALIASES`)


def imagenet_encoder(**fields: Any) -> EncoderConfig:
    """DeepMind's Perceiver IO ImageNet encoder (input width from the adapter), with `fields` replaced."""
    base: dict[str, Any] = dict(
        num_latents=512,
        latent_dim=1024,
        num_blocks=8,
        num_self_attends_per_block=6,
        cross_heads=1,
        latent_heads=8,
        cross_attention_shape="kv",
        use_query_residual=True,
    )
    return EncoderConfig(**(base | fields))


def classifier_decoder(**fields: Any) -> DecoderConfig:
    """The Perceiver IO classification decoder: one head, q/k as wide as the latents, query residual."""
    base: dict[str, Any] = dict(num_heads=1, cross_attention_shape="kv", use_query_residual=True)
    return DecoderConfig(**(base | fields))


def check_num_classes(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"num_classes must be an integer >= 0 (0: no head, pre-logits features), got {value!r}")
