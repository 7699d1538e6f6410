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
from perceiver.interop.transformers import io_config_from_hf, load_converted
from perceiver.models.text import (
    PerceiverForMaskedLM,
    PerceiverForSequenceClassification,
    PerceiverMaskedLMConfig,
    PerceiverTextClassifierConfig,
)
from perceiver.pretrained import register_hf_converter

_PRE = "perceiver.input_preprocessor"


def _text_fields(
    config: dict[str, Any], sd: dict[str, Tensor], decoder_prefix: str, decoder_use_query_residual: bool
) -> tuple[dict[str, Any], dict[str, str]]:
    """Fields of our `TextConfig` and the key map for `input_adapter.*`, `encoder.*` and `decoder.*`."""
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"expected hidden_act 'gelu' (exact GELU, as DeepMind's checkpoints), got {act!r}")
    fields, _, _, keys = io_config_from_hf(config, sd, decoder_prefix, decoder_use_query_residual)
    vocab_size, d_model = sd[f"{_PRE}.embeddings.weight"].shape
    fields |= dict(
        vocab_size=vocab_size, max_seq_len=sd[f"{_PRE}.position_embeddings.weight"].shape[0], d_model=d_model
    )
    keys |= {
        "input_adapter.token_embedding.weight": f"{_PRE}.embeddings.weight",
        "input_adapter.position_encoding.position_embeddings": f"{_PRE}.position_embeddings.weight",
    }
    return fields, keys


def _unless(channels: int | None, default: int) -> int | None:
    """None (= our config's default) where the width read off the weights is the default anyway."""
    return None if channels == default else channels


@register_hf_converter("PerceiverForMaskedLM")
def convert_masked_lm(config: dict[str, Any], sd: dict[str, Tensor], **options: Any) -> PerceiverForMaskedLM:
    """Our `PerceiverForMaskedLM` with the weights of a transformers `PerceiverForMaskedLM`.

    `options` replace fields of our config, e.g. `decode_all_positions=True` (transformers' output length) or
    `attn_dropout=0.0`."""
    fields, keys = _text_fields(config, sd, "perceiver.decoder", decoder_use_query_residual=False)
    # transformers hard-codes the MLM decoder's 8 heads (not visible in the weights).
    fields |= dict(decoder_heads=8, decoder_v_channels=_unless(fields["decoder_v_channels"], fields["d_model"]))
    model = PerceiverForMaskedLM(config_from_dict(PerceiverMaskedLMConfig, fields | options))
    keys |= {
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
    prefix = "perceiver.decoder.decoder"
    fields, keys = _text_fields(config, sd, prefix, decoder_use_query_residual=True)
    qk = fields["decoder_qk_channels"]
    fields |= dict(
        num_labels=sd[f"{prefix}.final_layer.weight"].shape[0],
        decoder_qk_channels=_unless(qk, fields["latent_dim"]),
        decoder_v_channels=_unless(fields["decoder_v_channels"], qk),
    )
    model = PerceiverForSequenceClassification(config_from_dict(PerceiverTextClassifierConfig, fields | options))
    keys |= {"query_builder.encoding.position_embeddings": f"{prefix}.output_position_encodings.position_embeddings"}
    return load_converted(model, sd, keys)
