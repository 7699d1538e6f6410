"""Text bytes in, bytes out: the input adapter and the tied masked-LM output of DeepMind's language Perceiver IO.

    input_ids (B, L) --token embedding (V, C) + learned positions (max_seq_len, C)[:L]--> tokens (B, L, C)
    decoder output (B, O, C) --x @ embedding.T + bias--> logits (B, O, V)

The vocabulary is UTF-8 bytes plus six special tokens (262 ids, see `perceiver.tokenizer.ByteTokenizer`); the
positions are learned up to `max_seq_len` (2048 in the published model). Masks are boolean, True = real token; the
adapter also takes the 0/1 integer or float masks tokenizers produce and converts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceiver.checks import check_int, check_int_fields, check_token_ids, token_mask
from perceiver.core.config import PartConfig
from perceiver.core.decoder import AdaptedInputs, Index
from perceiver.core.io import InputAdapter, OutputAdapter
from perceiver.nn.position import TrainablePositionEncoding


class TextAdapter(InputAdapter):
    """Token embedding plus learned absolute positions.

    Args:
        vocab_size: number of token ids `V` (262: 256 bytes + 6 special tokens).
        max_seq_len: number of learned positions; longer inputs are rejected.
        num_channels: embedding channels `C` (`d_model`, 768 in the published model).
        init_scale: std of the normal initialisation of both tables.

    `forward(input_ids (B, L), attention_mask (B, L) or None) -> AdaptedInputs` with tokens `(B, L, C)`, a boolean
    mask `(B, L)` (or None) and `without_pos` = the token embeddings `(B, L, C)`.
    """

    def __init__(
        self, vocab_size: int = 262, max_seq_len: int = 2048, num_channels: int = 768, init_scale: float = 0.02
    ):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("max_seq_len", max_seq_len), ("num_channels", num_channels)):
            check_int(value, f"TextAdapter.{name}")  # 20.0 failed inside nn.Embedding
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.num_channels = num_channels
        self.token_embedding = nn.Embedding(vocab_size, num_channels)
        nn.init.normal_(self.token_embedding.weight, std=init_scale)
        self.position_encoding = TrainablePositionEncoding(max_seq_len, num_channels, init_scale)

    def forward(self, input_ids: Tensor, mask: Tensor | None = None) -> AdaptedInputs:
        """`input_ids` `(B, L)` integer ids, `mask` `(B, L)` (True/1 = token, False/0 = padding) or None."""
        input_ids = check_token_ids(input_ids, self.vocab_size)
        if input_ids.shape[1] > self.max_seq_len:
            raise ValueError(
                f"expected at most {self.max_seq_len} tokens (the model's max_seq_len), got {input_ids.shape[1]}; "
                f"truncate the text (e.g. tokenizer(..., truncation=True, max_length={self.max_seq_len}))"
            )
        mask = token_mask(mask, input_ids)
        embedded = self.token_embedding(input_ids)  # (B, L, C)
        tokens = embedded + self.position_encoding(input_ids.shape[1])
        return AdaptedInputs(tokens=tokens, mask=mask, without_pos=embedded)


@dataclass
class TextAdapterConfig(PartConfig):
    """`TextAdapter`'s keywords; defaults: DeepMind's language Perceiver (262 ids, 2048 positions, 768 channels).

    `num_channels` is the embedding width (`d_model` in the flat keywords and transformers' config)."""

    part_class: ClassVar[type] = TextAdapter

    vocab_size: int = 262
    max_seq_len: int = 2048
    num_channels: int = 768
    init_scale: float = 0.02

    def __post_init__(self) -> None:
        check_int_fields(self)


class TiedEmbeddingOutput(OutputAdapter):
    """Masked-LM logits from the decoder output with the input embedding as the output matrix.

    `logits = x @ embedding.weight.T + bias`: `(B, O, C) -> (B, O, V)`, as transformers' `PerceiverEmbeddingDecoder`.
    The embedding is shared with the input adapter (one parameter, trained by both uses).
    """

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = embedding
        self.bias = nn.Parameter(torch.empty(embedding.num_embeddings))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the bias `(V,)` (the shared embedding is the input adapter's), as `torch.nn` layers reset theirs:
        after building on the meta device and `to_empty()`, resetting every module that has the method initialises
        the model."""
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, adapted: AdaptedInputs | None = None, output_index: Index = None) -> Tensor:
        return F.linear(x, self.embedding.weight, self.bias)
