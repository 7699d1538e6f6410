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
    "num_labels": "num_classes",
}


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
    return DecoderConfig(**(dict(num_heads=1, cross_attention_shape="kv", use_query_residual=True) | fields))


def check_num_classes(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"num_classes must be an integer >= 0 (0: no head, pre-logits features), got {value!r}")


# TRANSITIONAL (issue 13): the flat config of the models not yet converted to nested part configs; deleted once
# text, token heads, flow and multimodal compose part configs.
from dataclasses import dataclass  # noqa: E402
from typing import Literal  # noqa: E402


@dataclass
class PerceiverIOConfig:
    """Encoder and decoder hyper-parameters of a Perceiver IO model with one cross-attend.

    cross_attention_shape: the q/k width of a cross-attention whose `*_qk_channels` is None: `'kv'` (DeepMind's
    default) the width of its keys / values (encoder: the inputs, decoder: the latents), `'q'` that of its queries.
    Channel counts left None otherwise follow `CrossAttentionLayer` / `SelfAttentionLayer` (v: the q/k width).
    `attn_dropout` / `ff_dropout` apply to the encoder and the decoder.
    """

    num_latents: int = 512
    latent_dim: int = 1024
    num_blocks: int = 8
    num_self_attends_per_block: int = 6
    cross_heads: int = 1
    latent_heads: int = 8
    cross_attention_shape: Literal["kv", "q"] = "kv"
    cross_qk_channels: int | None = None
    cross_v_channels: int | None = None
    latent_qk_channels: int | None = None
    latent_v_channels: int | None = None
    cross_widening_factor: int = 1
    latent_widening_factor: int = 1
    use_query_residual: bool = True
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    decoder_heads: int = 1
    decoder_qk_channels: int | None = None
    decoder_v_channels: int | None = None
    decoder_widening_factor: int = 1
    decoder_use_query_residual: bool = True

    def __post_init__(self) -> None:
        if self.cross_attention_shape not in ("kv", "q"):
            raise ValueError(f"cross_attention_shape must be 'kv' or 'q', got {self.cross_attention_shape!r}")

    def encoder_config(self, input_dim: int) -> EncoderConfig:
        """The `EncoderConfig` for inputs of `input_dim` channels."""
        cross_qk = self.cross_qk_channels
        if cross_qk is None:
            cross_qk = input_dim if self.cross_attention_shape == "kv" else self.latent_dim
        return EncoderConfig(
            input_dim=input_dim,
            num_latents=self.num_latents,
            latent_dim=self.latent_dim,
            num_self_attends_per_block=self.num_self_attends_per_block,
            num_blocks=self.num_blocks,
            cross_heads=self.cross_heads,
            latent_heads=self.latent_heads,
            cross_qk_channels=cross_qk,
            cross_v_channels=self.cross_v_channels,
            latent_qk_channels=self.latent_qk_channels,
            latent_v_channels=self.latent_v_channels,
            cross_widening_factor=self.cross_widening_factor,
            latent_widening_factor=self.latent_widening_factor,
            attn_dropout=self.attn_dropout,
            ff_dropout=self.ff_dropout,
            use_query_residual=self.use_query_residual,
        )

    def decoder_config(self, query_dim: int, output_dim: int | None) -> DecoderConfig:
        """The `DecoderConfig` for queries of `query_dim` channels, projected to `output_dim` (None: no projection)."""
        qk = self.decoder_qk_channels
        if qk is None:
            qk = self.latent_dim if self.cross_attention_shape == "kv" else query_dim
        return DecoderConfig(
            query_dim=query_dim,
            latent_dim=self.latent_dim,
            output_dim=output_dim,
            num_heads=self.decoder_heads,
            qk_channels=qk,
            v_channels=self.decoder_v_channels,
            widening_factor=self.decoder_widening_factor,
            use_query_residual=self.decoder_use_query_residual,
            attn_dropout=self.attn_dropout,
            ff_dropout=self.ff_dropout,
        )
