"""Token-level heads on the language Perceiver: one decoder query per input byte, as the masked LM's decoder.

    input_ids (B, L) --TextAdapter, PerceiverEncoder--> latents (B, N, D)
    position queries (L, d_model) --decoder (the MLM's)--> (B, L, d_model)
        --[SelfAttentionLayer x decoder_self_attends (over the valid bytes)]--> LayerNorm, Linear --> (B, L, K)

- `PerceiverForTokenClassification`: a label per byte, `logits` `(B, L, num_labels)`; loss: cross-entropy over the
  positions whose label is not -100 (padding is ignored too).
- `PerceiverForQuestionAnswering`: start / end logits per byte `(B, L)` (padding gets the dtype's minimum); loss: the
  mean of the start and end cross-entropies (transformers' `...ForQuestionAnswering`; positions outside [0, L)
  are ignored).

Decoder queries do not see each other, so `decoder_self_attends=k` adds k Transformer layers over the decoder outputs
before the classifier (transformers #15282). Both models load the encoder, adapter, queries and decoder of a
`PerceiverForMaskedLM` (`from_masked_lm`: a model, a `save_pretrained` folder, a safetensors file or a Lightning
checkpoint); the head is new and reported, as transformers' `ignore_mismatched_sizes` reports it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceiver.adapters.text import TextAdapter
from perceiver.core.decoder import AdaptedInputs, Index, PerceiverDecoder, TrainableQueries, decode, select
from perceiver.core.encoder import PerceiverEncoder
from perceiver.core.io import PerceiverIO
from perceiver.hub import config_from_dict
from perceiver.models.registry import register_model, register_model_type
from perceiver.models.text import PerceiverForMaskedLM, PerceiverMaskedLMConfig, TextModelOutput, _build, _pick_inputs
from perceiver.nn.attention import SelfAttentionLayer


@dataclass
class PerceiverTokenClassifierConfig(PerceiverMaskedLMConfig):
    """`PerceiverMaskedLMConfig` (the encoder and the per-byte decoder) plus the head: `num_labels` classes per byte,
    `decoder_self_attends` self-attention layers over the decoder outputs (`decoder_self_attend_heads` heads,
    widening 4), `classifier_dropout` before the classifier. `decoder_query_inputs=True` adds each byte's input
    token (embedding + position) to its learned decoder query and normalises the sum (`InputPlusTrainableQueries`), so
    a query knows its byte without reading it back from the latents (off = the masked LM's decoder queries). `head_conv_kernel=k` (odd) adds
    a residual 1-D convolution over the decoded bytes before the self-attention layers: local context (a byte's
    neighbours) that learned absolute positions make attention find only slowly."""

    num_labels: int = 2
    decoder_self_attends: int = 0
    decoder_self_attend_heads: int = 8
    classifier_dropout: float = 0.0
    decoder_query_inputs: bool = False
    head_conv_kernel: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int) or self.num_labels < 1:
            raise ValueError(f"num_labels must be a positive integer, got {self.num_labels!r}")
        if self.decoder_self_attends < 0:
            raise ValueError(f"decoder_self_attends must be >= 0, got {self.decoder_self_attends}")
        if self.decoder_self_attends and self.d_model % self.decoder_self_attend_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be a multiple of decoder_self_attend_heads "
                f"({self.decoder_self_attend_heads})"
            )
        if self.head_conv_kernel < 0 or (self.head_conv_kernel and self.head_conv_kernel % 2 == 0):
            raise ValueError(f"head_conv_kernel must be 0 (off) or odd, got {self.head_conv_kernel}")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")


@dataclass
class PerceiverQuestionAnsweringConfig(PerceiverTokenClassifierConfig):
    """`PerceiverTokenClassifierConfig` with two outputs per byte (answer start, answer end)."""

    num_labels: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_labels != 2:
            raise ValueError(f"question answering has num_labels=2 (start, end), got {self.num_labels}")


class InputPlusTrainableQueries(TrainableQueries):
    """`LayerNorm(learned position queries (O, E) + the adapted input tokens (B, O, E))` at the same positions: the
    norm brings the small-initialised embeddings to unit scale, so with a query residual the decoded bytes carry
    their identity from the start."""

    def __init__(self, num_queries: int, num_channels: int, init_scale: float = 0.02) -> None:
        super().__init__(num_queries, num_channels, init_scale)
        self.norm = nn.LayerNorm(num_channels)

    def forward(self, adapted: AdaptedInputs, index: Index = None) -> Tensor:
        return self.norm(super().forward(adapted, index) + select(adapted.tokens, index, dim=1))


class TokenHead(nn.Module):
    """`(B, L, E)` decoder outputs and a key mask `(B, L)` -> `(B, L, K)`: an optional residual convolution over the
    positions (padding zeroed first, so it never reaches valid positions), optional self-attention layers over the
    valid positions, then LayerNorm, dropout and a Linear classifier."""

    def __init__(
        self,
        dim: int,
        num_labels: int,
        self_attends: int = 0,
        heads: int = 8,
        dropout: float = 0.0,
        conv_kernel: int = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, conv_kernel, padding=conv_kernel // 2) if conv_kernel else None
        self.self_attends = nn.ModuleList(
            SelfAttentionLayer(dim, heads, widening_factor=4) for _ in range(self_attends)
        )
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(dim, num_labels)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.conv is not None:
            h = x if mask is None else x.masked_fill(~mask[..., None], 0.0)
            x = x + self.conv(h.transpose(1, 2)).transpose(1, 2)
        for layer in self.self_attends:
            x = layer(x, mask)
        return self.classifier(self.dropout(self.norm(x)))


@dataclass
class TokenClassifierOutput(TextModelOutput):
    """`TextModelOutput` (logits `(B, L, K)`, latents, maps, loss)."""


@dataclass
class QuestionAnsweringOutput(TextModelOutput):
    """`TextModelOutput` plus `start_logits` / `end_logits` `(B, L)` (`logits` is both, `(B, L, 2)`)."""

    start_logits: Tensor | None = None
    end_logits: Tensor | None = None


@register_model_type
class PerceiverForTokenClassification(PerceiverIO):
    """A class per input byte: `forward(inputs (B, L), attention_mask (B, L), labels (B, L))` -> `.logits`
    `(B, L, num_labels)`, `.loss` with labels (-100 = ignore; padding is ignored as well)."""

    config_class: Any = PerceiverTokenClassifierConfig
    model_type = "perceiver-token-classifier"

    def __init__(self, config: PerceiverTokenClassifierConfig) -> None:
        c = config
        super().__init__(
            TextAdapter(c.vocab_size, c.max_seq_len, c.d_model),
            PerceiverEncoder(c.encoder_config(c.d_model)),
            (InputPlusTrainableQueries if c.decoder_query_inputs else TrainableQueries)(c.max_seq_len, c.d_model),
            PerceiverDecoder(c.decoder_config(query_dim=c.d_model, output_dim=None)),
        )
        heads = c.decoder_self_attend_heads
        self.head = TokenHead(
            c.d_model, c.num_labels, c.decoder_self_attends, heads, c.classifier_dropout, c.head_conv_kernel
        )
        self.config = config

    # ------------------------------------------------------------------ timm-style head API
    @property
    def num_classes(self) -> int:
        return self.config.num_labels

    def get_classifier(self) -> nn.Module:
        return self.head.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.config.num_labels = num_classes
        self.head.classifier = nn.Linear(self.config.d_model, num_classes)

    # ------------------------------------------------------------------ forward
    def forward_features(self, inputs: Tensor, mask: Tensor | None = None, return_attention: bool = False):
        """Encode and decode the L input positions: `(decoded (B, L, d_model), latents, mask (B, L) or None, maps)`."""
        adapted, latents, enc_maps = super().forward_features(inputs, mask, return_attention)
        decoded, dec_map = decode(
            self.decoder, self.query_builder, adapted, latents, slice(0, inputs.shape[1]), None, return_attention
        )
        return decoded, latents, adapted.mask, (enc_maps, dec_map)

    def forward_head(self, decoded: Tensor, mask: Tensor | None = None) -> Tensor:
        """`(B, L, d_model)` -> `(B, L, num_labels)`."""
        return self.head(decoded, mask)

    def forward(
        self,
        inputs: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        input_ids: Tensor | None = None,
        return_attention: bool = False,
    ) -> TokenClassifierOutput:
        """`inputs` token ids `(B, L)` (`input_ids` is an alias), `attention_mask` `(B, L)`, `labels` `(B, L)`."""
        ids = _pick_inputs(inputs, input_ids)
        decoded, latents, mask, (enc_maps, dec_map) = self.forward_features(ids, attention_mask, return_attention)
        logits = self.forward_head(decoded, mask)
        loss = None
        if labels is not None:
            if tuple(labels.shape) != tuple(logits.shape[:2]):
                raise ValueError(f"expected labels of shape {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
            labels = labels.long() if mask is None else labels.long().masked_fill(~mask, -100)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return TokenClassifierOutput(logits, latents, enc_maps, dec_map, loss)

    # ------------------------------------------------------------------ from a masked LM
    @classmethod
    def from_masked_lm(
        cls, source: PerceiverForMaskedLM | str | os.PathLike, **overrides: Any
    ) -> tuple[PerceiverForTokenClassification, dict[str, list[str]]]:
        """This head on the encoder, queries and decoder of a `PerceiverForMaskedLM` (a model, a `save_pretrained`
        folder, a `model.safetensors` file with `config.json` beside it, or a Lightning `.ckpt` of `MaskedLMTask`).

        `overrides` set head fields (`num_labels`, `decoder_self_attends`, ...) or dropout. Returns the model and a
        report: `new` (initialised here: the head), `mismatched` (shapes differ, initialised here), `unused` (the
        masked LM's output layer).
        """
        mlm = _load_masked_lm(source)
        base = {k: v for k, v in asdict(mlm.config).items() if k in {f.name for f in fields(cls.config_class)}}
        model = cls(config_from_dict(cls.config_class, {**base, **overrides}))
        ours, theirs = model.state_dict(), mlm.state_dict()
        loaded = {k: v for k, v in theirs.items() if k in ours and ours[k].shape == v.shape}
        report = {
            "new": sorted(k for k in ours if k not in theirs),
            "mismatched": sorted(k for k in ours if k in theirs and ours[k].shape != theirs[k].shape),
            "unused": sorted(k for k in theirs if k not in ours),
        }
        model.load_state_dict({**ours, **loaded}, strict=True)
        return model.train(mlm.training), report


@register_model_type
class PerceiverForQuestionAnswering(PerceiverForTokenClassification):
    """Extractive QA over bytes: `forward(inputs (B, L), attention_mask, start_positions (B,), end_positions (B,))`
    -> `.start_logits`, `.end_logits` `(B, L)` and `.loss` (mean of both cross-entropies) given the positions."""

    config_class = PerceiverQuestionAnsweringConfig
    model_type = "perceiver-question-answering"

    def forward(  # type: ignore[override]
        self,
        inputs: Tensor | None = None,
        attention_mask: Tensor | None = None,
        start_positions: Tensor | None = None,
        end_positions: Tensor | None = None,
        input_ids: Tensor | None = None,
        return_attention: bool = False,
    ) -> QuestionAnsweringOutput:
        ids = _pick_inputs(inputs, input_ids)
        decoded, latents, mask, (enc_maps, dec_map) = self.forward_features(ids, attention_mask, return_attention)
        logits = self.forward_head(decoded, mask)
        if mask is not None:
            logits = logits.masked_fill(~mask[..., None], torch.finfo(logits.dtype).min)
        start, end = logits.unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            n = start.shape[1]
            targets = [p.reshape(-1).long() for p in (start_positions, end_positions)]
            targets = [t.masked_fill((t < 0) | (t >= n), -100) for t in targets]
            loss = (F.cross_entropy(start.float(), targets[0]) + F.cross_entropy(end.float(), targets[1])) / 2
        return QuestionAnsweringOutput(logits, latents, enc_maps, dec_map, loss, start, end)


def _load_masked_lm(source: PerceiverForMaskedLM | str | os.PathLike) -> PerceiverForMaskedLM:
    if isinstance(source, PerceiverForMaskedLM):
        return source
    path = Path(source)
    if path.is_dir():
        return PerceiverForMaskedLM.from_pretrained(path)
    if path.suffix == ".safetensors":
        return PerceiverForMaskedLM.from_pretrained(path.parent)
    if path.suffix == ".ckpt":  # a Lightning checkpoint of MaskedLMTask: hyper-parameters + "model.*" weights
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        hp = ckpt.get("hyper_parameters", {})
        from perceiver.models.registry import create_model

        mlm = create_model(hp.get("model", "language-perceiver"), **(hp.get("model_kwargs") or {}))
        if not isinstance(mlm, PerceiverForMaskedLM):
            raise ValueError(f"expected a PerceiverForMaskedLM checkpoint, got a {type(mlm).__name__} in {path}")
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        mlm.load_state_dict(state, strict=True)
        return mlm
    raise ValueError(f"expected a PerceiverForMaskedLM, a model folder, a .safetensors or a .ckpt file, got {path}")


@register_model("token-classifier")
def token_classifier(**overrides: Any) -> PerceiverForTokenClassification:
    """The language Perceiver (DeepMind's MLM sizes) with a per-byte classifier (2 labels)."""
    return _build(PerceiverForTokenClassification, PerceiverTokenClassifierConfig, **overrides)


@register_model("question-answering")
def question_answering(**overrides: Any) -> PerceiverForQuestionAnswering:
    """The language Perceiver (DeepMind's MLM sizes) with per-byte answer start / end logits."""
    return _build(PerceiverForQuestionAnswering, PerceiverQuestionAnsweringConfig, **overrides)
