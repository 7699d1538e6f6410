"""Convert transformers' `PerceiverForMaskedLM` and `PerceiverForSequenceClassification` checkpoints.

transformers builds the two heads as (modeling_perceiver.py):
- masked LM: `PerceiverTextPreprocessor` (token + position `nn.Embedding`s), `PerceiverBasicDecoder` with trainable
  queries `(max_position_embeddings, d_model)`, 8 heads, qk 256, v `d_model`, widening 1, no query residual, no final
  projection; logits from `PerceiverEmbeddingDecoder` (`x @ embeddings.T + bias`, tied to the input embedding).
- sequence classification: the same preprocessor, `PerceiverClassificationDecoder` wrapping a `PerceiverBasicDecoder`
  with one trainable query `(1, d_latents)`, 1 head, qk/v from `cross_attention_shape_for_attention`, query
  residual, final Linear to `num_labels`.
Channel widths are read off the weights (`encoder_from_hf` / `decoder_from_hf`), so every `PerceiverConfig` converts;
widths that equal what our config derives anyway are left None, as in our presets.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import Tensor

from perceiver.adapters.text import TextAdapterConfig
from perceiver.core.config import rename_keys
from perceiver.core.decoder import DecoderConfig
from perceiver.core.encoder import EncoderConfig
from perceiver.hub import apply_overrides
from perceiver.interop.transformers import decoder_from_hf, encoder_from_hf, load_converted, required_keys
from perceiver.models.text import (
    PerceiverForMaskedLM,
    PerceiverForSequenceClassification,
    PerceiverMaskedLMConfig,
    PerceiverTextClassifierConfig,
)
from perceiver.pretrained import register_hf_converter

_PRE = "perceiver.input_preprocessor"
_TEXT_KEYS = (f"{_PRE}.embeddings.weight", f"{_PRE}.position_embeddings.weight")


def _text_parts(
    config: dict[str, Any], sd: dict[str, Tensor], decoder_prefix: str, num_heads: int, use_query_residual: bool
) -> tuple[TextAdapterConfig, EncoderConfig, DecoderConfig, dict[str, str]]:
    """The adapter, encoder and decoder configs of a transformers text head and the key map for `input_adapter.*`,
    `encoder.*` and `decoder.*`. The widths the model takes from its parts (encoder input, decoder query / latent
    widths, the classifier's output) are left to it."""
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"expected hidden_act 'gelu' (exact GELU, as DeepMind's checkpoints), got {act!r}")
    encoder, enc_keys = encoder_from_hf(config, sd)
    decoder, dec_keys = decoder_from_hf(config, sd, decoder_prefix, num_heads, use_query_residual)
    shape = config.get("cross_attention_shape_for_attention", "kv")  # explicit widths: only documents the default
    encoder = replace(encoder, input_dim=None, cross_attention_shape=shape)
    decoder = replace(decoder, query_dim=None, latent_dim=None, output_dim=None, cross_attention_shape=shape)
    vocab_size, d_model = sd[f"{_PRE}.embeddings.weight"].shape
    adapter = TextAdapterConfig(
        vocab_size=vocab_size, max_seq_len=sd[f"{_PRE}.position_embeddings.weight"].shape[0], num_channels=d_model
    )
    keys = enc_keys | dec_keys
    keys |= {
        "input_adapter.token_embedding.weight": f"{_PRE}.embeddings.weight",
        "input_adapter.position_encoding.position_embeddings": f"{_PRE}.position_embeddings.weight",
    }
    return adapter, encoder, decoder, keys


def _unless(channels: int | None, default: int | None) -> int | None:
    """None (= our config's default) where the width read off the weights is the default anyway."""
    return None if channels == default else channels


@register_hf_converter(
    "PerceiverForMaskedLM", required_keys=required_keys("perceiver.decoder", *_TEXT_KEYS, "embedding_decoder.bias")
)
def convert_masked_lm(config: dict[str, Any], sd: dict[str, Tensor], **options: Any) -> PerceiverForMaskedLM:
    """Our `PerceiverForMaskedLM` with the weights of a transformers `PerceiverForMaskedLM`.

    `options` replace fields of our config (flat or dotted keys), e.g. `decode_all_positions=True` (transformers'
    output length) or `attn_dropout=0.0`."""
    # transformers hard-codes the MLM decoder's 8 heads (not visible in the weights).
    adapter, encoder, decoder, keys = _text_parts(config, sd, "perceiver.decoder", 8, use_query_residual=False)
    decoder = replace(decoder, v_channels=_unless(decoder.v_channels, adapter.num_channels))  # None: d_model
    model_config = PerceiverMaskedLMConfig(adapter, encoder, decoder)
    model = PerceiverForMaskedLM(apply_overrides(model_config, rename_keys(PerceiverForMaskedLM.legacy_keys, options)))
    keys |= {
        "query_builder.encoding.position_embeddings": "perceiver.decoder.output_position_encodings.position_embeddings",
        "output_adapter.embedding.weight": f"{_PRE}.embeddings.weight",
        "output_adapter.bias": "embedding_decoder.bias",
    }
    return load_converted(model, sd, keys)


@register_hf_converter(
    "PerceiverForSequenceClassification",
    required_keys=required_keys(
        "perceiver.decoder.decoder", *_TEXT_KEYS, "perceiver.decoder.decoder.final_layer.weight"
    ),
)
def convert_sequence_classification(
    config: dict[str, Any], sd: dict[str, Tensor], **options: Any
) -> PerceiverForSequenceClassification:
    """Our `PerceiverForSequenceClassification` with the weights of the transformers head of the same name;
    `options` replace fields of our config (flat or dotted keys, e.g. `attn_dropout=0.0`)."""
    prefix = "perceiver.decoder.decoder"
    adapter, encoder, decoder, keys = _text_parts(config, sd, prefix, 1, use_query_residual=True)
    # the query is as wide as the latents, so both shapes derive qk = latent_dim; v defaults to qk
    qk = decoder.qk_channels
    decoder = replace(decoder, qk_channels=_unless(qk, encoder.latent_dim), v_channels=_unless(decoder.v_channels, qk))
    num_classes = sd[f"{prefix}.final_layer.weight"].shape[0]
    model_config = PerceiverTextClassifierConfig(
        adapter, encoder, decoder, num_classes=num_classes, problem_type=config.get("problem_type")
    )  # problem_type: the loss the checkpoint trained with (None: from the labels)
    cls = PerceiverForSequenceClassification
    model = cls(apply_overrides(model_config, rename_keys(cls.legacy_keys, options)))
    keys |= {"query_builder.encoding.position_embeddings": f"{prefix}.output_position_encodings.position_embeddings"}
    return load_converted(model, sd, keys)
