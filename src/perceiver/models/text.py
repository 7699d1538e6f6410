"""Perceiver IO on UTF-8 bytes: DeepMind's masked language model and a sequence classifier.

    input_ids (B, L) --TextAdapter--> (B, L, d_model) --PerceiverEncoder--> latents (B, N, latent_dim)
    masked LM:      learned position queries (L of max_seq_len, d_model) --decoder--> (B, L, d_model)
                    --tied embedding--> logits (B, L, vocab_size)
    classification: one learned query (1, latent_dim) --decoder + Linear--> logits (B, num_classes)

Configs compose part configs: `PerceiverMaskedLMConfig(adapter=TextAdapterConfig(...), encoder=EncoderConfig(...),
decoder=DecoderConfig(...))` and `PerceiverTextClassifierConfig(adapter, encoder, decoder, num_classes)`. Presets take
the flat keywords of earlier releases too (`create_model("language-perceiver", d_model=128, decoder_heads=4)`: see
`TEXT_LEGACY_KEYS` and `perceiver.hub.apply_overrides`).

Presets: `language-perceiver` (DeepMind's published MLM: d_model 768, 256 latents x 1280, 26 self-attends, 8 heads,
qk 256 / v 1280, 2048 bytes, 262 ids) and `text-classifier` (the same encoder under transformers'
`PerceiverForSequenceClassification` head). The masked LM decodes the L input positions by default; transformers
always decodes all `max_seq_len` queries, which `decode_all_positions=True` reproduces (the first L rows are identical).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from perceiver.adapters.outputs import ClassificationOutput
from perceiver.adapters.text import TextAdapter, TextAdapterConfig, TiedEmbeddingOutput
from perceiver.checks import InputTypeError, check_int_input
from perceiver.core.config import rename_keys
from perceiver.core.decoder import AdaptedInputs, DecoderConfig, Index, PerceiverDecoder, TrainableQueries
from perceiver.core.encoder import EncoderConfig, PerceiverEncoder
from perceiver.core.io import PerceiverIO
from perceiver.core.model import (
    ModelOutput,
    check_class_ids,
    check_labels,
    check_problem_type,
    hf_output_flags,
    token_cross_entropy,
)
from perceiver.hub import apply_overrides
from perceiver.models._io_config import IO_LEGACY_KEYS, check_num_classes, classifier_decoder, imagenet_encoder
from perceiver.models.mlm_start import StartsFromMaskedLM, check_kept_shapes
from perceiver.models.registry import build_preset, register_model, register_model_type
from perceiver.tokenizer import VOCAB_SIZE, ByteTokenizer

#: flat keys of format-1 files and earlier preset keywords whose field moved: the Perceiver IO ones and `d_model`
TEXT_LEGACY_KEYS: dict[str, str | tuple[str, ...]] = IO_LEGACY_KEYS | {"d_model": "adapter.num_channels"}


def language_encoder(**fields: Any) -> EncoderConfig:
    """DeepMind's language Perceiver encoder: 256 x 1280 latents, one block of 26 self-attends, 8 cross and 8 latent
    heads, qk 256 / v 1280 (input width from the adapter), with `fields` replaced."""
    base: dict[str, Any] = dict(
        num_latents=256,
        latent_dim=1280,
        num_blocks=1,
        num_self_attends_per_block=26,
        cross_heads=8,
        latent_heads=8,
        cross_qk_channels=256,
        cross_v_channels=1280,
        latent_qk_channels=256,
        latent_v_channels=1280,
    )
    return imagenet_encoder(**(base | fields))


def masked_lm_decoder(**fields: Any) -> DecoderConfig:
    """DeepMind's MLM decoder: 8 heads, qk 256, no query residual; `v_channels=None` means values as wide as the
    queries (`d_model`) in the models that use it."""
    base: dict[str, Any] = dict(num_heads=8, qk_channels=256, cross_attention_shape="kv", use_query_residual=False)
    return DecoderConfig(**(base | fields))


def check_text_parts(encoder: EncoderConfig, decoder: DecoderConfig) -> None:
    """The positive sizes and dropout ranges of a text model's encoder and decoder (errors name the field)."""
    names = ("num_latents", "latent_dim", "num_blocks", "cross_heads", "latent_heads")
    positive = [(n, getattr(encoder, n)) for n in (*names, "cross_widening_factor", "latent_widening_factor")]
    positive += [("decoder_heads", decoder.num_heads), ("decoder_widening_factor", decoder.widening_factor)]
    for name, value in positive:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for part in (encoder, decoder):
        for name in ("attn_dropout", "ff_dropout"):
            if not 0.0 <= getattr(part, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(part, name)}")


class _TextConfigViews:
    """Read-only views of the adapter's sizes that code reading any text model's config uses."""

    adapter: TextAdapterConfig

    @property
    def vocab_size(self) -> int:
        return self.adapter.vocab_size

    @property
    def max_seq_len(self) -> int:
        return self.adapter.max_seq_len


@dataclass
class PerceiverMaskedLMConfig(_TextConfigViews):
    """`PerceiverForMaskedLM`: the text adapter, the encoder and DeepMind's MLM decoder (`max_seq_len` learned queries
    of the adapter's width, 8 heads, qk 256, v = the query width when `v_channels` is None, no query residual, output
    tied to the input embedding); the defaults are `language-perceiver`'s (the published sizes).

    `decode_all_positions=True` decodes all `max_seq_len` queries whatever the input length, as transformers does
    (its first L rows are what the default returns).

    `decoder.output_dim=vocab_size` replaces the tied output by the decoder's own Linear (krasserm's
    `TokenOutputAdapter`), and `decoder.query_dim` then sets the queries' width (default: the adapter's)."""

    adapter: TextAdapterConfig = field(default_factory=TextAdapterConfig)
    encoder: EncoderConfig = field(default_factory=language_encoder)
    decoder: DecoderConfig = field(default_factory=masked_lm_decoder)
    decode_all_positions: bool = False

    def __post_init__(self) -> None:
        check_text_parts(self.encoder, self.decoder)


@dataclass
class PerceiverTextClassifierConfig(_TextConfigViews):
    """`PerceiverForSequenceClassification`: the text adapter, the encoder, transformers' classification decoder (one
    learned query of the latents' width or `decoder.query_dim`, 1 head, query residual, a final Linear) and the class
    count (0: no projection, the logits are the pre-logits features); `problem_type` as transformers' config field
    (None: the loss follows the labels, see `perceiver.core.model.classification_loss`)."""

    adapter: TextAdapterConfig = field(default_factory=TextAdapterConfig)
    encoder: EncoderConfig = field(default_factory=language_encoder)
    decoder: DecoderConfig = field(default_factory=classifier_decoder)
    num_classes: int = 2
    problem_type: str | None = None

    def __post_init__(self) -> None:
        check_text_parts(self.encoder, self.decoder)
        check_num_classes(self.num_classes)
        check_problem_type(self.problem_type)


def build_text_encoder(adapter: TextAdapter, encoder: EncoderConfig) -> PerceiverEncoder:
    return PerceiverEncoder(encoder.for_inputs(adapter.num_channels))


def per_byte_decoder(decoder: DecoderConfig, d_model: int, latent_dim: int) -> PerceiverDecoder:
    """The MLM's decoder for queries of `d_model` channels: values as wide as the queries when `v_channels` is None
    (DeepMind's MLM decoder); a final projection only where `decoder.output_dim` is set."""
    config = decoder.for_parts(query_dim=d_model, latent_dim=latent_dim)
    if config.v_channels is None:
        config = replace(config, v_channels=d_model)
    return PerceiverDecoder(config)


def _pick_inputs(inputs: Tensor | None, input_ids: Tensor | None) -> Tensor:
    if inputs is not None and input_ids is not None:
        raise ValueError("pass the token ids as `inputs` or as `input_ids`, not both")
    ids = inputs if inputs is not None else input_ids
    if ids is None:
        raise ValueError("expected token ids of shape (B, L) as `inputs` (or `input_ids`), got None")
    return ids


class TextModel(PerceiverIO):
    """Shared checks of the models on the text adapter: integer token ids `(B, L)` with `B >= 1`."""

    legacy_keys = TEXT_LEGACY_KEYS

    def check_inputs(self, inputs: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        ids = check_int_input(inputs, "input_ids", "(B, L)")
        if ids.ndim >= 1 and ids.shape[0] == 0:  # empty batches are an error in every model (docs/reliability.md)
            raise ValueError(
                f"expected at least one token sequence (B >= 1) in input_ids (B, L), got {tuple(ids.shape)}"
            )
        return ids, mask  # the adapter checks the ids' values and the mask (shape, 0 / 1 values)


@register_model_type
class PerceiverForMaskedLM(TextModel):
    """Byte-level masked language model (DeepMind's `language-perceiver`).

    `forward(inputs (B, L), attention_mask (B, L))` -> `ModelOutput` with `.logits` `(B, L, vocab_size)` (or
    `(B, O', V)` for `output_index` `(O',)`), `.last_hidden_state` `(B, num_latents, latent_dim)`, `.loss` given
    `labels`. Its output is a distribution over the vocabulary, not a class head: `num_classes` is the vocabulary
    size and `reset_classifier` raises.
    """

    config_class = PerceiverMaskedLMConfig
    model_type = "perceiver-masked-lm"
    classifier_name = None
    head_kind = "logits over the vocabulary (vocab_size)"

    def __init__(self, config: PerceiverMaskedLMConfig) -> None:
        c = config
        adapter = c.adapter.build()
        q = c.decoder.query_dim or adapter.num_channels
        tied = c.decoder.output_dim is None
        if tied and q != adapter.num_channels:
            raise ValueError(
                f"expected decoder.query_dim = adapter.num_channels ({adapter.num_channels}) for the output tied to "
                f"the input embedding, got {q}; set decoder.output_dim=vocab_size for an untied output Linear"
            )
        if not tied and c.decoder.output_dim != adapter.vocab_size:
            raise ValueError(
                f"expected decoder.output_dim = vocab_size ({adapter.vocab_size}) or None (tied output), "
                f"got {c.decoder.output_dim}"
            )
        super().__init__(
            adapter,
            build_text_encoder(adapter, c.encoder),
            TrainableQueries(adapter.max_seq_len, q),
            per_byte_decoder(c.decoder, q, c.encoder.latent_dim),
            TiedEmbeddingOutput(adapter.token_embedding) if tied else None,
        )
        self.config = config

    @property
    def num_classes(self) -> int:
        """The size of the logits' last axis: the vocabulary."""
        return self.config.adapter.vocab_size

    def reset_classifier(self, num_classes: int) -> None:
        """Not supported: the logits are over the vocabulary; the text heads start from a masked LM instead."""
        raise NotImplementedError(
            f"the logits of {type(self).__name__} are over its vocabulary ({self.num_classes} ids), not classes; for "
            f"a classifier of {num_classes!r} classes on its encoder load the model with "
            f"PerceiverForSequenceClassification.from_pretrained(path, num_labels=K) (a class per byte: "
            f"PerceiverForTokenClassification)"
        )

    def default_output_index(self, adapted: AdaptedInputs) -> Index:
        """The L input positions (all `max_seq_len` with `config.decode_all_positions`)."""
        if self.config.decode_all_positions:
            return None
        return slice(0, adapted.tokens.shape[1])  # all at max_seq_len; no comparison that would fix a traced length

    @torch.no_grad()
    def fill_mask(self, text: str | Sequence[str], tokenizer: Any = None) -> str | list[str]:
        """`text` (or a batch) with every mask token replaced by the model's most likely token, as transformers' docs
        use the language Perceiver: each `[MASK]` stands for one byte, so a masked span of n bytes is n `[MASK]`s.

            model.fill_mask("This is an incomplete sentence where some words are" + "[MASK]" * 9)

        `tokenizer`: default a `perceiver.ByteTokenizer` (the byte vocabulary, 262 ids); for another vocabulary pass
        its tokenizer (transformers' interface: `__call__`, `mask_token_id`, `all_special_ids`, `decode`; its
        padding side does not matter). Special tokens are never predicted. Call it on the model in eval mode
        (dropout); texts longer than `max_seq_len` ids (special tokens included) are an error."""
        if tokenizer is None:
            if self.config.adapter.vocab_size != VOCAB_SIZE:
                raise ValueError(
                    f"expected a tokenizer for this model's {self.config.adapter.vocab_size}-token vocabulary (the "
                    f"default ByteTokenizer has {VOCAB_SIZE}), got None"
                )
            tokenizer = ByteTokenizer()
        if isinstance(text, (bytes, bytearray)) or not isinstance(text, (str, Sequence)):
            raise InputTypeError(f"expected text as a str or a list of str, got {type(text).__name__}")
        texts = [text] if isinstance(text, str) else list(text)
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        limit = self.config.adapter.max_seq_len
        if enc["input_ids"].shape[1] > limit:
            raise ValueError(
                f"expected texts of at most max_seq_len={limit} tokens (special tokens included), got "
                f"{enc['input_ids'].shape[1]}"
            )
        device = self.encoder.latents.device
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device).bool()
        # the positions are learned from 0: a text's tokens go first whatever the tokenizer's padding side, so a
        # text of a batch is filled as it is alone
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        ids, mask = ids.gather(1, order), mask.gather(1, order)
        logits = self(ids, attention_mask=mask).logits[:, : ids.shape[1]]  # decode_all_positions: max_seq_len rows
        logits[..., list(tokenizer.all_special_ids)] = float("-inf")
        filled = torch.where(ids == tokenizer.mask_token_id, logits.argmax(-1), ids)
        out = [tokenizer.decode(row[valid].tolist(), skip_special_tokens=True) for row, valid in zip(filled, mask)]
        return out[0] if isinstance(text, str) else out

    def compute_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of `labels` `(B, O)` (one target id per decoded position, -100 = ignored)."""
        labels = check_labels(labels)
        if tuple(labels.shape) != tuple(logits.shape[:2]):
            raise ValueError(
                f"expected labels of shape {tuple(logits.shape[:2])} (one per decoded position), "
                f"got {tuple(labels.shape)}"
            )
        labels = check_class_ids(labels, logits.shape[-1], "labels (token ids)")
        return token_cross_entropy(logits, labels)

    def forward(  # type: ignore[override]  # the transformers head's arguments, not PerceiverIO's
        self,
        inputs: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        input_ids: Tensor | None = None,
        output_index: Tensor | None = None,
        query_chunk_size: int | None = None,
        return_attention: bool = False,
        return_hidden_states: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple[Any, ...]:
        """Predict every decoded byte position.

        Args:
            inputs: token ids `(B, L)` (`input_ids` is an alias), L <= max_seq_len.
            attention_mask: `(B, L)`, True / 1 = token, False / 0 = padding (None: all tokens).
            labels: `(B, O)` target ids for the decoded positions, -100 = ignored; gives `.loss` (cross-entropy).
            output_index: positions `(O',)` in [0, max_seq_len) to decode (default: the L input positions, or all
                max_seq_len with `config.decode_all_positions`).
            query_chunk_size: decode at most this many positions at once (bounded memory, same result).
            return_attention: also return the encoder and decoder attention maps.
            return_hidden_states: also return the latents after every encoder step (`.hidden_states`).
            output_attentions, output_hidden_states, return_dict: transformers' spellings (`return_dict=False`:
                `ModelOutput.to_tuple()`, the loss first with labels).
        """
        return_attention, return_hidden_states = hf_output_flags(
            return_attention, return_hidden_states, output_attentions, output_hidden_states, return_dict
        )
        ids = _pick_inputs(inputs, input_ids)
        out = super().forward(
            ids, attention_mask, output_index, query_chunk_size, return_attention, labels, return_hidden_states
        )
        return out.to_tuple() if return_dict is False else out


@register_model_type
class PerceiverForSequenceClassification(StartsFromMaskedLM, TextModel):
    """Text classifier: the text encoder and one learned decoder query.

    `forward(inputs (B, L), attention_mask (B, L))` -> `ModelOutput` with `.logits` `(B, num_classes)`,
    `.last_hidden_state` `(B, num_latents, latent_dim)`, `.loss` given `labels`.
    """

    config_class = PerceiverTextClassifierConfig
    model_type = "perceiver-text-classifier"
    reinitialized_keys: list[str]  # the new tensors of `from_masked_lm` (and of a resized head)

    def __init__(self, config: PerceiverTextClassifierConfig) -> None:
        c = config
        d = c.encoder.latent_dim
        q = c.decoder.query_dim or d  # the query's width: the latents', or krasserm's `num_output_query_channels`
        decoder = PerceiverDecoder(c.decoder.for_parts(query_dim=q, latent_dim=d, output_dim=c.num_classes or None))
        adapter = c.adapter.build()
        super().__init__(
            adapter, build_text_encoder(adapter, c.encoder), TrainableQueries(1, q), decoder, ClassificationOutput()
        )
        self.config = config

    @classmethod
    def from_masked_lm(
        cls,
        mlm: PerceiverForMaskedLM,
        num_classes: int = 2,
        decoder: DecoderConfig | None = None,
        **overrides: Any,
    ) -> PerceiverForSequenceClassification:
        """A classifier of `num_classes` on the byte embedding and encoder of a masked LM (a copy of their weights),
        with a new decoder (`decoder`, default transformers' classification decoder) and head: how a pretrained
        `language-perceiver` is fine-tuned for text classification, as transformers'
        `PerceiverForSequenceClassification.from_pretrained("deepmind/language-perceiver")` starts it (which
        `from_pretrained` of this class does too). `overrides` set config fields (dropout, decoder sizes; flat or
        dotted keys, as presets take them; a ValueError if they change the shapes of the kept weights). The new
        tensors' names are in `.reinitialized_keys`. E.g. `from_masked_lm(perceiver.from_pretrained(path), 3)`."""
        if not isinstance(mlm, PerceiverForMaskedLM):
            raise InputTypeError(f"expected a PerceiverForMaskedLM, got {type(mlm).__name__}")
        config = PerceiverTextClassifierConfig(
            adapter=replace(mlm.config.adapter),  # copies: the two models' configs stay apart
            encoder=replace(mlm.config.encoder),
            decoder=decoder or classifier_decoder(),
            num_classes=num_classes,
        )
        model = cls(apply_overrides(config, rename_keys(cls.legacy_keys, overrides)) if overrides else config)
        model = model.to(next(mlm.parameters()).dtype)
        mine = model.state_dict()
        shared = {k: v for k, v in mlm.state_dict().items() if k.startswith(("input_adapter.", "encoder."))}
        check_kept_shapes([k for k, v in shared.items() if k in mine and mine[k].shape != v.shape], overrides)
        missing, unexpected = model.load_state_dict(shared, strict=False)
        assert not unexpected and not any(k.startswith(("input_adapter.", "encoder.")) for k in missing), missing
        model.reinitialized_keys = sorted(missing)
        return model.to(next(mlm.parameters()).device)

    @classmethod
    def _start_from_masked_lm(
        cls, mlm: Any, num_classes: int | None, overrides: dict[str, Any]
    ) -> tuple[PerceiverForSequenceClassification, list[str]]:
        model = cls.from_masked_lm(mlm, 2 if num_classes is None else num_classes, **overrides)
        return model, model.reinitialized_keys

    def forward(  # type: ignore[override]  # the transformers head's arguments, not PerceiverIO's
        self,
        inputs: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        input_ids: Tensor | None = None,
        return_attention: bool = False,
        return_hidden_states: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple[Any, ...]:
        """Classify `inputs` `(B, L)` (`input_ids` is an alias) with `attention_mask` `(B, L)`.

        `labels` as in transformers: as `config.problem_type` says, else `(B,)` for one class (MSE), integer class
        ids `(B,)` (cross-entropy) or float multi-label targets `(B, num_classes)` (BCE with logits). transformers'
        `output_attentions` / `output_hidden_states` / `return_dict` are taken (`return_dict=False`: the tuple).
        """
        return_attention, return_hidden_states = hf_output_flags(
            return_attention, return_hidden_states, output_attentions, output_hidden_states, return_dict
        )
        ids = _pick_inputs(inputs, input_ids)
        out = super().forward(
            ids,
            attention_mask,
            return_attention=return_attention,
            labels=labels,
            return_hidden_states=return_hidden_states,
        )
        return out.to_tuple() if return_dict is False else out


@register_model("language-perceiver", hub_id="deepmind/language-perceiver")
def language_perceiver(**overrides: Any) -> PerceiverForMaskedLM:
    """DeepMind's byte-level masked LM (201M parameters), the size of `deepmind/language-perceiver`."""
    return build_preset(PerceiverForMaskedLM, PerceiverMaskedLMConfig(), overrides)


@register_model("text-classifier")
def text_classifier(**overrides: Any) -> PerceiverForSequenceClassification:
    """The language Perceiver's encoder with transformers' sequence-classification decoder (2 classes)."""
    return build_preset(PerceiverForSequenceClassification, PerceiverTextClassifierConfig(), overrides)


__all__ = [
    "TEXT_LEGACY_KEYS",
    "PerceiverForMaskedLM",
    "PerceiverForSequenceClassification",
    "PerceiverMaskedLMConfig",
    "PerceiverTextClassifierConfig",
    "language_encoder",
    "language_perceiver",
    "masked_lm_decoder",
    "text_classifier",
]
