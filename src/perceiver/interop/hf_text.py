"""Convert transformers' `PerceiverForMaskedLM` and `PerceiverForSequenceClassification` checkpoints.

transformers builds the two heads as (modeling_perceiver.py):
- masked LM: `PerceiverTextPreprocessor` (token + position `nn.Embedding`s), `PerceiverBasicDecoder` with trainable
  queries `(max_position_embeddings, d_model)`, 8 heads, qk 256, v `d_model`, widening 1, no query residual, no final
  projection; logits from `PerceiverEmbeddingDecoder` (`x @ embeddings.T + bias`, tied to the input embedding).
- sequence classification: the same preprocessor, `PerceiverClassificationDecoder` wrapping a `PerceiverBasicDecoder`
  with one trainable query `(1, d_latents)`, 1 head, qk/v from `cross_attention_shape_for_attention`, query
  residual, final Linear to `num_labels`.
Channel widths are read off the weights, so every `PerceiverConfig` converts.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from perceiver.hub import config_from_dict
from perceiver.interop.transformers import decoder_from_hf, encoder_from_hf, load_converted
from perceiver.models.text import (
    PerceiverForMaskedLM,
    PerceiverForSequenceClassification,
    PerceiverMaskedLMConfig,
    PerceiverTextClassifierConfig,
)
from perceiver.pretrained import register_hf_converter

_PRE = "perceiver.input_preprocessor"


def _text_fields(config: dict[str, Any], sd: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, str]]:
    """Fields of our `TextEncoderConfig` and the key map for `input_adapter.*` and `encoder.*`."""
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"expected hidden_act 'gelu' (exact GELU, as DeepMind's checkpoints), got {act!r}")
    enc, keys = encoder_from_hf(config, sd)
    vocab_size, d_model = sd[f"{_PRE}.embeddings.weight"].shape
    fields = dict(
        vocab_size=vocab_size,
        max_seq_len=sd[f"{_PRE}.position_embeddings.weight"].shape[0],
        d_model=d_model,
        num_latents=enc.num_latents,
        d_latents=enc.latent_dim,
        num_blocks=enc.num_blocks,
        num_self_attends_per_block=enc.num_self_attends_per_block,
        num_self_attention_heads=enc.latent_heads,
        num_cross_attention_heads=enc.cross_heads,
        cross_qk_channels=enc.cross_qk_channels,
        cross_v_channels=enc.cross_v_channels,
        latent_qk_channels=enc.latent_qk_channels,
        latent_v_channels=enc.latent_v_channels,
        cross_attention_widening_factor=enc.cross_widening_factor,
        self_attention_widening_factor=enc.latent_widening_factor,
        use_query_residual=enc.use_query_residual,
        attn_dropout=enc.attn_dropout,
    )
    keys |= {
        "input_adapter.token_embedding.weight": f"{_PRE}.embeddings.weight",
        "input_adapter.position_encoding.position_embeddings": f"{_PRE}.position_embeddings.weight",
    }
    return fields, keys


def _unless(channels: int | None, default: int) -> int | None:
    """None (= our layer default) where the width read off the weights is the default anyway."""
    return None if channels == default else channels


@register_hf_converter("PerceiverForMaskedLM")
def convert_masked_lm(config: dict[str, Any], sd: dict[str, Tensor], **options: Any) -> PerceiverForMaskedLM:
    """Our `PerceiverForMaskedLM` with the weights of a transformers `PerceiverForMaskedLM`.

    `options` replace fields of our config, e.g. `decode_all_positions=True` (transformers' output length) or
    `attn_dropout=0.0`."""
    fields, keys = _text_fields(config, sd)
    dec, dec_keys = decoder_from_hf(config, sd, "perceiver.decoder", num_heads=8, use_query_residual=False)
    fields |= dict(
        decoder_num_heads=dec.num_heads,
        decoder_qk_channels=dec.qk_channels,
        decoder_v_channels=_unless(dec.v_channels, fields["d_model"]),
        decoder_widening_factor=dec.widening_factor,
        decoder_use_query_residual=dec.use_query_residual,
    )
    model = PerceiverForMaskedLM(config_from_dict(PerceiverMaskedLMConfig, fields | options))
    keys |= dec_keys | {
        "query_builder.encoding.position_embeddings": "perceiver.decoder.output_position_encodings.position_embeddings",
        "output_adapter.embedding.weight": f"{_PRE}.embeddings.weight",
        "output_adapter.bias": "embedding_decoder.bias",
    }
    return load_converted(model, sd, keys)


@register_hf_converter("PerceiverForSequenceClassification")
def convert_sequence_classification(
    config: dict[str, Any], sd: dict[str, Tensor], **options: Any
) -> PerceiverForSequenceClassification:
    """Our `PerceiverForSequenceClassification` with the weights of the transformers head of the same name;
    `options` replace fields of our config (e.g. `attn_dropout=0.0`)."""
    fields, keys = _text_fields(config, sd)
    prefix = "perceiver.decoder.decoder"
    dec, dec_keys = decoder_from_hf(config, sd, prefix, num_heads=1, use_query_residual=True)
    fields |= dict(
        num_labels=dec.output_dim,
        decoder_num_heads=dec.num_heads,
        decoder_qk_channels=_unless(dec.qk_channels, fields["d_latents"]),
        decoder_v_channels=_unless(dec.v_channels, dec.qk_channels),
        decoder_widening_factor=dec.widening_factor,
        decoder_use_query_residual=dec.use_query_residual,
    )
    model = PerceiverForSequenceClassification(config_from_dict(PerceiverTextClassifierConfig, fields | options))
    keys |= dec_keys | {
        "query_builder.encoding.position_embeddings": f"{prefix}.output_position_encodings.position_embeddings"
    }
    return load_converted(model, sd, keys)
