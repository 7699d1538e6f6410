"""Token-level heads on the language Perceiver: one decoder query per input byte, as the masked LM's decoder.

    input_ids (B, L) --TextAdapter, PerceiverEncoder--> latents (B, N, D)
    position queries (L, d_model) --decoder (the MLM's)--> (B, L, d_model)
        --[SelfAttentionLayer x decoder_self_attends (over the valid bytes)]--> LayerNorm, Linear --> (B, L, K)

- `PerceiverForTokenClassification`: a label per byte, `logits` `(B, L, num_classes)`; loss: cross-entropy over the
  positions whose label is not -100 (padding is ignored too).
- `PerceiverForQuestionAnswering`: start / end logits per byte `(B, L)` (padding gets the dtype's minimum); loss: the
  mean of the start and end cross-entropies (transformers' `...ForQuestionAnswering`; positions outside [0, L)
  are ignored). Its head has two fixed outputs (start, end).

The configs compose the masked LM's parts (`adapter`, `encoder`, `decoder`: `PerceiverMaskedLMConfig`'s defaults) with
the head's fields. The head is the model's `forward_head`: the decoded bytes go through `TokenHead` (which mixes
positions, so it runs once over all decoded chunks), `get_classifier()` is its final Linear. Decoder queries do not
see each other, so `decoder_self_attends=k` adds k Transformer layers over the decoder outputs before the classifier
(transformers #15282). Both models load the encoder, adapter, queries and decoder of a `PerceiverForMaskedLM`
(`from_masked_lm`: a model, a `save_pretrained` folder, a safetensors file or a Lightning checkpoint); the head is new
and reported, as transformers' `ignore_mismatched_sizes` reports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from perceiver.adapters.text import TextAdapterConfig
from perceiver.core.config import rename_keys
from perceiver.core.decoder import (
    AdaptedInputs,
    DecoderConfig,
    Index,
    TrainableQueries,
    check_output_index,
    select,
)
from perceiver.core.encoder import EncoderConfig
from perceiver.core.model import (
    Features,
    ModelOutput,
    check_class_ids,
    check_labels,
    hf_output_flags,
    register_output_type,
    token_cross_entropy,
)
from perceiver.hub import apply_overrides
from perceiver.models._io_config import check_num_classes
from perceiver.models.mlm_start import StartsFromMaskedLM, check_kept_shapes
from perceiver.models.registry import build_preset, register_model, register_model_type
from perceiver.models.text import (
    PerceiverForMaskedLM,
    TextModel,
    _pick_inputs,
    _TextConfigViews,
    build_text_encoder,
    check_text_parts,
    language_encoder,
    masked_lm_decoder,
    per_byte_decoder,
)
from perceiver.nn.layers import SelfAttentionLayer


@dataclass
class PerceiverTokenClassifierConfig(_TextConfigViews):
    """The masked LM's parts (the text adapter, the encoder and the per-byte decoder, `PerceiverMaskedLMConfig`'s
    defaults) plus the head: `num_classes` per byte (0: the logits are the head's pre-logits features),
    `decoder_self_attends` self-attention layers over the decoder outputs (`decoder_self_attend_heads` heads,
    widening 4), `classifier_dropout` before the classifier. `decoder_query_inputs=True` adds each byte's input
    token (embedding + position) to its learned decoder query and normalises the sum (`InputPlusTrainableQueries`), so
    a query knows its byte without reading it back from the latents (off = the masked LM's decoder queries).
    `head_conv_kernel=k` (odd) adds a residual 1-D convolution over the decoded bytes before the self-attention
    layers: local context (a byte's neighbours) that learned absolute positions make attention find only slowly."""

    adapter: TextAdapterConfig = field(default_factory=TextAdapterConfig)
    encoder: EncoderConfig = field(default_factory=language_encoder)
    decoder: DecoderConfig = field(default_factory=masked_lm_decoder)
    num_classes: int = 2
    decoder_self_attends: int = 0
    decoder_self_attend_heads: int = 8
    classifier_dropout: float = 0.0
    decoder_query_inputs: bool = False
    head_conv_kernel: int = 0

    def __post_init__(self) -> None:
        check_text_parts(self.encoder, self.decoder)
        check_num_classes(self.num_classes)
        if self.decoder_self_attends < 0:
            raise ValueError(f"decoder_self_attends must be >= 0, got {self.decoder_self_attends}")
        d_model = self.adapter.num_channels
        if self.decoder_self_attends and d_model % self.decoder_self_attend_heads:
            raise ValueError(
                f"d_model ({d_model}) must be a multiple of decoder_self_attend_heads ({self.decoder_self_attend_heads})"
            )
        if self.head_conv_kernel < 0 or (self.head_conv_kernel and self.head_conv_kernel % 2 == 0):
            raise ValueError(f"head_conv_kernel must be 0 (off) or odd, got {self.head_conv_kernel}")
        if not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(f"classifier_dropout must be in [0, 1), got {self.classifier_dropout}")


@dataclass
class PerceiverQuestionAnsweringConfig(PerceiverTokenClassifierConfig):
    """`PerceiverTokenClassifierConfig` with two outputs per byte (answer start, answer end)."""

    num_classes: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes != 2:
            raise ValueError(f"question answering has num_classes=2 (start, end), got {self.num_classes}")


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
    valid positions, then LayerNorm, dropout and a Linear classifier (`num_labels=0`: none, the pre-logits
    features)."""

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
        self.classifier: nn.Module = nn.Linear(dim, num_labels) if num_labels else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.conv is not None:
            h = x if mask is None else x.masked_fill(~mask[..., None], 0.0)
            x = x + self.conv(h.transpose(1, 2)).transpose(1, 2)
        for layer in self.self_attends:
            x = layer(x, mask)
        return self.classifier(self.dropout(self.norm(x)))


@dataclass
class QuestionAnsweringOutput(ModelOutput):
    """`ModelOutput` (logits `(B, L, 2)`, latents, maps, loss) with transformers' names for the two logit columns:
    `start_logits` / `end_logits` `(B, L)`; `out[i]` / `to_tuple()` as transformers' question-answering outputs."""

    tuple_fields = ("loss", "start_logits", "end_logits", "hidden_states", "attentions", "cross_attentions")

    @property
    def start_logits(self) -> Tensor:
        return self.logits[..., 0]

    @property
    def end_logits(self) -> Tensor:
        return self.logits[..., 1]


register_output_type(QuestionAnsweringOutput)


@register_model_type
class PerceiverForTokenClassification(StartsFromMaskedLM, TextModel):
    """A class per input byte: `forward(inputs (B, L), attention_mask (B, L), labels (B, L))` -> `ModelOutput` with
    `.logits` `(B, L, num_classes)`, `.loss` with labels (-100 = ignore; padding is ignored as well)."""

    config_class = PerceiverTokenClassifierConfig
    model_type = "perceiver-token-classifier"
    classifier_name = "head.classifier"

    def __init__(self, config: PerceiverTokenClassifierConfig) -> None:
        c = config
        adapter = c.adapter.build()
        d = adapter.num_channels
        super().__init__(
            adapter,
            build_text_encoder(adapter, c.encoder),
            (InputPlusTrainableQueries if c.decoder_query_inputs else TrainableQueries)(adapter.max_seq_len, d),
            per_byte_decoder(c.decoder, d, c.encoder.latent_dim),
        )
        heads = c.decoder_self_attend_heads
        self.head = TokenHead(d, c.num_classes, c.decoder_self_attends, heads, c.classifier_dropout, c.head_conv_kernel)
        self.config = config

    @classmethod
    def config_from_file(cls, data: dict[str, Any], source: str | os.PathLike, overrides: dict[str, Any]) -> Any:
        if data.get("format_version", 1) == 1:  # format-1 files carry the masked LM's flag, which heads ignore
            data = {k: v for k, v in data.items() if k != "decode_all_positions"}
        return super().config_from_file(data, source, overrides)

    # ------------------------------------------------------------------ contract
    def default_output_index(self, adapted: AdaptedInputs) -> Index:
        """The L input positions: one output per input byte."""
        return slice(0, adapted.tokens.shape[1])

    def forward_head(
        self,
        features: Features,
        output_index: Index = None,
        query_chunk_size: int | None = None,
        return_attention: bool = False,
    ) -> ModelOutput:
        """Decode the byte positions `output_index` (default: the L input positions) in chunks of
        `query_chunk_size`, then apply the head over all of them at once (it mixes positions): `.logits`
        `(B, O, num_classes)`."""
        adapted = features.adapted
        if output_index is None:
            output_index = self.default_output_index(adapted)
        elif not isinstance(output_index, slice):  # one output per input byte: positions in [0, L)
            total = adapted.tokens.shape[1]
            output_index = check_output_index(output_index, total, features.latents.device)
        out = super().forward_head(features, output_index, query_chunk_size, return_attention)
        mask = None if adapted.mask is None else select(adapted.mask, output_index, dim=1)
        out.logits = self.head_logits(out.logits, mask)
        return out

    def head_logits(self, decoded: Tensor, mask: Tensor | None) -> Tensor:
        """The head on the decoded bytes `(B, O, d_model)` with their mask `(B, O)` -> `(B, O, num_classes)`."""
        return self.head(decoded, mask)

    def compute_loss(self, logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        """Cross-entropy of `labels` `(B, L)` over the positions whose label is not -100 and, given the boolean
        `mask` `(B, L)`, that are not padding."""
        self._check_class_head()
        labels = check_labels(labels)
        if tuple(labels.shape) != tuple(logits.shape[:2]):
            raise ValueError(f"expected labels of shape {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
        labels = labels if mask is None else labels.masked_fill(~mask, -100)  # padding is ignored
        labels = check_class_ids(labels, logits.shape[-1]).long()
        return token_cross_entropy(logits, labels)

    def forward(  # type: ignore[override]  # the transformers head's arguments, not PerceiverIO's
        self,
        inputs: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        input_ids: Tensor | None = None,
        return_attention: bool = False,
        query_chunk_size: int | None = None,
        return_hidden_states: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple[Any, ...]:
        """`inputs` token ids `(B, L)` (`input_ids` is an alias), `attention_mask` `(B, L)`, `labels` `(B, L)`;
        `query_chunk_size` bounds the decoder's memory (same result); transformers' `output_attentions` /
        `output_hidden_states` / `return_dict` are taken (`return_dict=False`: `ModelOutput.to_tuple()`)."""
        return_attention, return_hidden_states = hf_output_flags(
            return_attention, return_hidden_states, output_attentions, output_hidden_states, return_dict
        )
        ids = _pick_inputs(inputs, input_ids)
        features = self.forward_features(ids, attention_mask, return_attention, return_hidden_states)
        out = self.forward_head(features, None, query_chunk_size, return_attention)
        if labels is not None:
            out.loss = self.compute_loss(out.logits, labels, features.adapted.mask)
        return out.to_tuple() if return_dict is False else out

    # ------------------------------------------------------------------ from a masked LM
    @classmethod
    def from_masked_lm(
        cls, source: PerceiverForMaskedLM | str | os.PathLike, **overrides: Any
    ) -> tuple[PerceiverForTokenClassification, dict[str, list[str]]]:
        """This head on the encoder, queries and decoder of a `PerceiverForMaskedLM` (a model, a `save_pretrained`
        folder, a `model.safetensors` file with `config.json` beside it, or a Lightning `.ckpt` of `MaskedLMTask`).

        `overrides` set head fields (`num_classes` / `num_labels`, `decoder_self_attends`, ...) or dropout (flat or
        dotted keys, as presets take them). Returns the model and a report: `new` (initialised here: the head),
        `mismatched` (shapes differ, initialised here), `unused` (the masked LM's output layer).
        """
        mlm = _load_masked_lm(source)
        parts = mlm.config
        base = cls.config_class(
            adapter=replace(parts.adapter), encoder=replace(parts.encoder), decoder=replace(parts.decoder)
        )
        weight = next(mlm.parameters())  # the new head in the dtype and on the device of the masked LM
        model = cls(apply_overrides(base, rename_keys(cls.legacy_keys, overrides))).to(weight.device, weight.dtype)
        ours, theirs = model.state_dict(), mlm.state_dict()
        loaded = {k: v for k, v in theirs.items() if k in ours and ours[k].shape == v.shape}
        report = {
            "new": sorted(k for k in ours if k not in theirs),
            "mismatched": sorted(k for k in ours if k in theirs and ours[k].shape != theirs[k].shape),
            "unused": sorted(k for k in theirs if k not in ours),
        }
        model.load_state_dict({**ours, **loaded}, strict=True)
        return model.train(mlm.training), report

    @classmethod
    def _start_from_masked_lm(
        cls, mlm: Any, num_classes: int | None, overrides: dict[str, Any]
    ) -> tuple[PerceiverForTokenClassification, list[str]]:
        count = {} if num_classes is None else {"num_classes": num_classes}
        model, report = cls.from_masked_lm(mlm, **overrides, **count)
        check_kept_shapes(report["mismatched"], overrides)
        return model, sorted(report["new"] + report["mismatched"])


@register_model_type
class PerceiverForQuestionAnswering(PerceiverForTokenClassification):
    """Extractive QA over bytes: `forward(inputs (B, L), attention_mask, start_positions (B,), end_positions (B,))`
    -> `QuestionAnsweringOutput` (a `ModelOutput`): `.logits` `(B, L, 2)`, `.start_logits`, `.end_logits` `(B, L)`
    and `.loss` (mean of both cross-entropies) given the positions. The head has two fixed outputs."""

    config_class = PerceiverQuestionAnsweringConfig
    model_type = "perceiver-question-answering"
    fixed_head = True  # num_classes cannot be reset (see reset_classifier)

    def reset_classifier(self, num_classes: int) -> None:
        """Not supported: the head has two fixed outputs (answer start, answer end)."""
        raise NotImplementedError(
            f"{type(self).__name__} has a fixed head of 2 outputs (answer start, answer end), so it cannot be reset "
            f"to num_classes={num_classes!r}; for a head of other labels per byte use PerceiverForTokenClassification"
        )

    def head_logits(self, decoded: Tensor, mask: Tensor | None) -> Tensor:
        """The token head's `(B, O, 2)` logits with padding set to the dtype's minimum (never an answer)."""
        logits = self.head(decoded, mask)
        return logits if mask is None else logits.masked_fill(~mask[..., None], torch.finfo(logits.dtype).min)

    def forward_head(
        self,
        features: Features,
        output_index: Index = None,
        query_chunk_size: int | None = None,
        return_attention: bool = False,
    ) -> QuestionAnsweringOutput:
        """The token classifier's `forward_head`, as a `QuestionAnsweringOutput` (start / end views)."""
        out = super().forward_head(features, output_index, query_chunk_size, return_attention)
        return QuestionAnsweringOutput(
            out.logits,
            out.last_hidden_state,
            None,
            out.encoder_attentions,
            out.decoder_attention,
            hidden_states=out.hidden_states,
            latent_attentions=out.latent_attentions,
        )

    def compute_loss(self, logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        """The mean of the start and end cross-entropies for `labels` `(B, 2)` (answer start, answer end positions);
        positions outside [0, L) are ignored."""
        labels = check_labels(labels)
        if labels.ndim != 2 or labels.shape[-1] != 2:
            raise ValueError(f"expected (start, end) positions of shape (B, 2), got {tuple(labels.shape)}")
        start, end = logits.unbind(-1)
        n = start.shape[1]
        targets = [t.long().masked_fill((t < 0) | (t >= n), -100) for t in labels.unbind(-1)]
        return (token_cross_entropy(start, targets[0]) + token_cross_entropy(end, targets[1])) / 2

    def forward(  # type: ignore[override]
        self,
        inputs: Tensor | None = None,
        attention_mask: Tensor | None = None,
        start_positions: Tensor | None = None,
        end_positions: Tensor | None = None,
        input_ids: Tensor | None = None,
        return_attention: bool = False,
        query_chunk_size: int | None = None,
        return_hidden_states: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> QuestionAnsweringOutput | tuple[Any, ...]:
        """`inputs` token ids `(B, L)`, `attention_mask` `(B, L)`; `start_positions` and `end_positions` `(B,)`
        (both) give `.loss`; transformers' output flags as the token classifier takes them (`return_dict=False`:
        `(loss, start_logits, end_logits, ...)`)."""
        return_attention, return_hidden_states = hf_output_flags(
            return_attention, return_hidden_states, output_attentions, output_hidden_states, return_dict
        )
        ids = _pick_inputs(inputs, input_ids)
        features = self.forward_features(ids, attention_mask, return_attention, return_hidden_states)
        out = self.forward_head(features, None, query_chunk_size, return_attention)
        if start_positions is not None and end_positions is not None:
            labels = torch.stack([start_positions.reshape(-1), end_positions.reshape(-1)], dim=-1)
            out.loss = self.compute_loss(out.logits, labels)
        return out.to_tuple() if return_dict is False else out


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
    """The language Perceiver (DeepMind's MLM sizes) with a per-byte classifier (2 classes)."""
    return build_preset(PerceiverForTokenClassification, PerceiverTokenClassifierConfig(), overrides)


@register_model("question-answering")
def question_answering(**overrides: Any) -> PerceiverForQuestionAnswering:
    """The language Perceiver (DeepMind's MLM sizes) with per-byte answer start / end logits."""
    return build_preset(PerceiverForQuestionAnswering, PerceiverQuestionAnsweringConfig(), overrides)


__all__ = [
    "InputPlusTrainableQueries",
    "PerceiverForQuestionAnswering",
    "PerceiverForTokenClassification",
    "PerceiverQuestionAnsweringConfig",
    "PerceiverTokenClassifierConfig",
    "QuestionAnsweringOutput",
    "TokenHead",
    "question_answering",
    "token_classifier",
]
