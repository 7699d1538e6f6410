"""Perceiver IO on UTF-8 bytes: DeepMind's masked language model and a sequence classifier.

    input_ids (B, L) --TextAdapter--> (B, L, d_model) --PerceiverEncoder--> latents (B, N, latent_dim)
    masked LM:      learned position queries (L of max_seq_len, d_model) --decoder--> (B, L, d_model)
                    --tied embedding--> logits (B, L, vocab_size)
    classification: one learned query (1, latent_dim) --decoder + Linear--> logits (B, num_labels)

Presets: `language-perceiver` (DeepMind's published MLM: d_model 768, 256 latents x 1280, 26 self-attends, 8 heads,
qk 256 / v 1280, 2048 bytes, 262 ids) and `text-classifier` (the same encoder under transformers'
`PerceiverForSequenceClassification` head). The masked LM decodes the L input positions by default; transformers
always decodes all `max_seq_len` queries, which `decode_all_positions=True` reproduces (the first L rows are identical).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from perceiver.adapters.outputs import ClassificationOutput
from perceiver.adapters.text import TextAdapter, TiedEmbeddingOutput
from perceiver.checks import check_int_input
from perceiver.core.decoder import DecoderConfig, PerceiverDecoder, TrainableQueries
from perceiver.core.encoder import PerceiverEncoder
from perceiver.core.io import PerceiverIO, PerceiverIOOutput
from perceiver.hub import config_from_dict
from perceiver.models._io_config import PerceiverIOConfig
from perceiver.models.registry import register_model, register_model_type


@dataclass
class TextConfig(PerceiverIOConfig):
    """Text adapter fields plus `PerceiverIOConfig`'s encoder / decoder fields, with DeepMind's language model values
    as defaults (256 x 1280 latents, one block of 26 self-attends, 8 cross and 8 latent heads, qk 256 / v 1280).

    vocab_size: token ids (262 = 256 bytes + 6 special tokens); max_seq_len: learned input positions (and MLM
    queries); d_model: token embedding channels, the encoder's input width.
    """

    num_latents: int = 256
    latent_dim: int = 1280
    num_blocks: int = 1
    num_self_attends_per_block: int = 26
    cross_heads: int = 8
    latent_heads: int = 8
    cross_qk_channels: int | None = 256
    cross_v_channels: int | None = 1280
    latent_qk_channels: int | None = 256
    latent_v_channels: int | None = 1280
    vocab_size: int = 262
    max_seq_len: int = 2048
    d_model: int = 768

    def __post_init__(self) -> None:
        super().__post_init__()
        positive = ("vocab_size", "max_seq_len", "d_model", "num_latents", "latent_dim", "num_blocks")
        positive += ("cross_heads", "latent_heads", "decoder_heads", "cross_widening_factor", "latent_widening_factor")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("attn_dropout", "ff_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass
class PerceiverMaskedLMConfig(TextConfig):
    """`TextConfig` plus DeepMind's MLM decoder: `max_seq_len` learned queries of `d_model` channels, 8 heads, qk 256,
    v `d_model` (`decoder_v_channels=None` means `d_model` here), no query residual, output tied to the input
    embedding. `decode_all_positions=True` decodes all `max_seq_len` queries whatever the input length, as
    transformers does (its first L rows are what the default returns)."""

    decoder_heads: int = 8
    decoder_qk_channels: int | None = 256
    decoder_use_query_residual: bool = False
    decode_all_positions: bool = False

    def decoder_config(self, query_dim: int, output_dim: int | None) -> DecoderConfig:
        config = super().decoder_config(query_dim, output_dim)
        if self.decoder_v_channels is None:
            config.v_channels = query_dim  # values as wide as the queries (d_model), as DeepMind's MLM decoder
        return config


@dataclass
class PerceiverTextClassifierConfig(TextConfig):
    """`TextConfig` plus transformers' classification decoder (`PerceiverIOConfig`'s decoder defaults): one learned
    query of `latent_dim` channels, 1 head, query residual, final Linear to `num_labels`."""

    num_labels: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) or self.num_labels < 1:
            raise ValueError(f"num_labels must be a positive integer, got {self.num_labels!r}")


def _pick_inputs(inputs: Tensor | None, input_ids: Tensor | None) -> Tensor:
    if inputs is not None and input_ids is not None:
        raise ValueError("pass the token ids as `inputs` or as `input_ids`, not both")
    ids = inputs if inputs is not None else input_ids
    if ids is None:
        raise ValueError("expected token ids of shape (B, L) as `inputs` (or `input_ids`), got None")
    ids = check_int_input(ids, "input_ids", "(B, L)")
    if ids.ndim >= 1 and ids.shape[0] == 0:  # empty batches are an error in every model (docs/reliability.md)
        raise ValueError(f"expected at least one token sequence (B >= 1) in input_ids (B, L), got {tuple(ids.shape)}")
    return ids


@dataclass
class TextModelOutput(PerceiverIOOutput):
    """`PerceiverIOOutput` plus `loss` when `labels` were given."""

    loss: Tensor | None = None


@register_model_type
class PerceiverForMaskedLM(PerceiverIO):
    """Byte-level masked language model (DeepMind's `language-perceiver`).

    `forward(inputs (B, L), attention_mask (B, L))` -> `.logits` `(B, L, vocab_size)` (or `(B, O', V)` for
    `output_index` `(O',)`), `.last_hidden_state` `(B, num_latents, latent_dim)`.
    """

    config_class = PerceiverMaskedLMConfig
    model_type = "perceiver-masked-lm"

    def __init__(self, config: PerceiverMaskedLMConfig) -> None:
        c = config
        adapter = TextAdapter(c.vocab_size, c.max_seq_len, c.d_model)
        decoder = PerceiverDecoder(c.decoder_config(query_dim=c.d_model, output_dim=None))
        super().__init__(
            adapter,
            PerceiverEncoder(c.encoder_config(c.d_model)),
            TrainableQueries(c.max_seq_len, c.d_model),
            decoder,
            TiedEmbeddingOutput(adapter.token_embedding),
        )
        self.config = config

    def forward(
        self,
        inputs: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        input_ids: Tensor | None = None,
        output_index: Tensor | None = None,
        query_chunk_size: int | None = None,
        return_attention: bool = False,
    ) -> TextModelOutput:
        """Predict every decoded byte position.

        Args:
            inputs: token ids `(B, L)` (`input_ids` is an alias), L <= max_seq_len.
            attention_mask: `(B, L)`, True / 1 = token, False / 0 = padding (None: all tokens).
            labels: `(B, O)` target ids for the decoded positions, -100 = ignored; gives `.loss` (cross-entropy).
            output_index: positions `(O',)` in [0, max_seq_len) to decode (default: the L input positions, or all
                max_seq_len with `config.decode_all_positions`).
            query_chunk_size: decode at most this many positions at once (bounded memory, same result).
            return_attention: also return the encoder and decoder attention maps.
        """
        ids = _pick_inputs(inputs, input_ids)
        decode_inputs_only = output_index is None and not self.config.decode_all_positions
        if decode_inputs_only and isinstance(ids, Tensor) and ids.dim() == 2 and ids.shape[1] < self.config.max_seq_len:
            output_index = slice(0, ids.shape[1])  # the L input positions, not all max_seq_len
        out = super().forward(ids, attention_mask, output_index, query_chunk_size, return_attention)
        loss = None
        if labels is not None:
            if tuple(labels.shape) != tuple(out.logits.shape[:2]):
                raise ValueError(
                    f"expected labels of shape {tuple(out.logits.shape[:2])} (one per decoded position), "
                    f"got {tuple(labels.shape)}"
                )
            loss = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten().long(), ignore_index=-100)
        return TextModelOutput(out.logits, out.last_hidden_state, out.encoder_attentions, out.decoder_attention, loss)


@register_model_type
class PerceiverForSequenceClassification(PerceiverIO):
    """Text classifier: the text encoder and one learned decoder query.

    `forward(inputs (B, L), attention_mask (B, L))` -> `.logits` `(B, num_labels)`, `.last_hidden_state`
    `(B, num_latents, latent_dim)`.
    """

    config_class = PerceiverTextClassifierConfig
    model_type = "perceiver-text-classifier"

    def __init__(self, config: PerceiverTextClassifierConfig) -> None:
        c = config
        decoder = PerceiverDecoder(c.decoder_config(query_dim=c.latent_dim, output_dim=c.num_labels))
        super().__init__(
            TextAdapter(c.vocab_size, c.max_seq_len, c.d_model),
            PerceiverEncoder(c.encoder_config(c.d_model)),
            TrainableQueries(1, c.latent_dim),
            decoder,
            ClassificationOutput(),
        )
        self.config = config

    def forward(
        self,
        inputs: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        input_ids: Tensor | None = None,
        return_attention: bool = False,
    ) -> TextModelOutput:
        """Classify `inputs` `(B, L)` (`input_ids` is an alias) with `attention_mask` `(B, L)`.

        `labels` as in transformers: `(B,)` for one label (MSE), integer class ids `(B,)` (cross-entropy) or float
        multi-label targets `(B, num_labels)` (BCE with logits).
        """
        out = super().forward(_pick_inputs(inputs, input_ids), attention_mask, return_attention=return_attention)
        loss = None if labels is None else _classification_loss(out.logits, labels)
        return TextModelOutput(out.logits, out.last_hidden_state, out.encoder_attentions, out.decoder_attention, loss)


def _classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """transformers' automatic `problem_type`: regression, single-label or multi-label classification."""
    num_labels = logits.shape[-1]
    if num_labels == 1:
        return F.mse_loss(logits.squeeze(-1).float(), labels.reshape(-1).to(logits.dtype).float())
    if not labels.is_floating_point():
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"expected class ids of shape {tuple(logits.shape[:1])}, got {tuple(labels.shape)}")
        return F.cross_entropy(logits.float(), labels.long())
    if labels.shape != logits.shape:
        raise ValueError(f"expected multi-label targets of shape {tuple(logits.shape)}, got {tuple(labels.shape)}")
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def _build(cls: type, config_cls: type, **overrides: Any):
    return cls(config_from_dict(config_cls, overrides))


@register_model("language-perceiver")
def language_perceiver(**overrides: Any) -> PerceiverForMaskedLM:
    """DeepMind's byte-level masked LM (201M parameters), the size of `deepmind/language-perceiver`."""
    return _build(PerceiverForMaskedLM, PerceiverMaskedLMConfig, **overrides)


@register_model("text-classifier")
def text_classifier(**overrides: Any) -> PerceiverForSequenceClassification:
    """The language Perceiver's encoder with transformers' sequence-classification decoder (2 labels)."""
    return _build(PerceiverForSequenceClassification, PerceiverTextClassifierConfig, **overrides)
