"""UTF-8 byte tokenizer of the Perceiver IO language model, id-for-id equal to transformers' `PerceiverTokenizer`.

The vocabulary is the 256 byte values shifted by 6, after six special tokens::

    0 [PAD]   1 [BOS]   2 [EOS]   3 [MASK]   4 [CLS]   5 [SEP]   6 + b for byte b (0..255)   -> 262 ids

A single text is encoded as ``[CLS] A [SEP]``, a pair as ``[CLS] A [SEP] B [SEP]``. As in transformers, the literal
strings of the special tokens inside a text (``"[MASK]"``, ``"[SEP]"``, ...) are encoded as the special token, not as
bytes, unless ``split_special_tokens=True``. Padding, truncation (``longest_first`` / ``only_first`` /
``only_second``), ``max_length`` defaults and the attention mask follow transformers exactly, with one deliberate
difference: where transformers silently returns a sequence longer than ``max_length`` (``max_length`` smaller than the
special tokens, or an ``only_*`` strategy that cannot remove enough), this tokenizer raises a ``ValueError``.

transformers' other tokenizer methods (``get_special_tokens_mask``, ``convert_ids_to_tokens``, ``get_vocab``, ...;
what ``DataCollatorForLanguageModeling`` calls) and ``BatchEncoding`` (with ``.to(device)``) are in
``perceiver.tokenizer_call``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch

from perceiver.checks import InputTypeError
from perceiver.tokenizer_call import (
    PADDED_KEYS,
    BatchEncoding,
    TransformersTokenizerMethods,
    _check_positive_int,
    _check_side,
    _id_lists,
    _normalize_inputs,
    _padding_strategy,
    _row_list,
    _special_mask,
    clean_up_tokenization,
)
from perceiver.tokenizer_files import TokenizerFiles

PAD, BOS, EOS, MASK, CLS, SEP = "[PAD]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, MASK, CLS, SEP)
NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)
NUM_BYTES = 256
PAD_ID, BOS_ID, EOS_ID, MASK_ID, CLS_ID, SEP_ID = range(NUM_SPECIAL_TOKENS)
VOCAB_SIZE = NUM_SPECIAL_TOKENS + NUM_BYTES


def encode_bytes(text: str) -> list[int]:
    """The byte ids of `text`: its UTF-8 bytes + 6, no special tokens (the one byte encoding of the library: the
    tokenizer, the datasets and `perceiver generate` use it)."""
    return [b + NUM_SPECIAL_TOKENS for b in text.encode("utf-8")]


def decode_bytes(ids: Iterable[int]) -> str:
    """Inverse of `encode_bytes`: special ids (< 6) and ids outside the vocabulary are dropped, invalid UTF-8 is
    replaced."""
    return bytes(i - NUM_SPECIAL_TOKENS for i in ids if NUM_SPECIAL_TOKENS <= i < VOCAB_SIZE).decode("utf-8", "replace")


_SPECIAL_TO_ID = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")

Padding = bool | Literal["longest", "max_length", "do_not_pad"]
Truncation = bool | Literal["longest_first", "only_first", "only_second", "do_not_truncate"]

_TRUNCATIONS = ("longest_first", "only_first", "only_second", "do_not_truncate")


class ByteTokenizer(TransformersTokenizerMethods, TokenizerFiles):
    """UTF-8 byte tokenizer of Perceiver IO (``deepmind/language-perceiver``), equal to transformers' tokenizer.

    Args:
        model_max_length: length used when truncation or ``padding="max_length"`` is asked without ``max_length``
            (2048, the number of input positions of the published language model).
        padding_side: ``"right"`` or ``"left"``, where pad ids go.
        truncation_side: ``"right"`` or ``"left"``, where truncated ids are removed.
        split_special_tokens: if True, ``"[MASK]"`` etc. inside a text are encoded as plain bytes.

    Example::

        tok = ByteTokenizer()
        enc = tok(["héllo", "世界 🙂"], padding=True, return_tensors="pt")
        enc["input_ids"].shape, enc["attention_mask"].shape  # (2, 15) each
        tok.decode(enc["input_ids"][0], skip_special_tokens=True)  # "héllo"
    """

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    mask_token_id = 3
    cls_token_id = 4
    sep_token_id = 5
    pad_token, bos_token, eos_token, mask_token, cls_token, sep_token = SPECIAL_TOKENS
    special_tokens: tuple[str, ...] = SPECIAL_TOKENS
    num_special_tokens: int = NUM_SPECIAL_TOKENS
    #: Number of ids (special tokens + bytes), i.e. the embedding size of the model. Note: transformers'
    #: ``PerceiverTokenizer.vocab_size`` reports 256 (bytes only); ``len(tokenizer)`` is 262 there as here.
    vocab_size: int = NUM_SPECIAL_TOKENS + NUM_BYTES
    model_input_names: tuple[str, ...] = ("input_ids", "attention_mask")

    def __init__(
        self,
        model_max_length: int = 2048,
        padding_side: Literal["right", "left"] = "right",
        truncation_side: Literal["right", "left"] = "right",
        split_special_tokens: bool = False,
    ) -> None:
        self.model_max_length = _check_positive_int("model_max_length", model_max_length)
        self.padding_side = _check_side("padding_side", padding_side)
        self.truncation_side = _check_side("truncation_side", truncation_side)
        self.split_special_tokens = bool(split_special_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, model_max_length={self.model_max_length}, "
            f"padding_side={self.padding_side!r}, truncation_side={self.truncation_side!r})"
        )

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of the six special tokens, ``[0, 1, 2, 3, 4, 5]``."""
        return list(range(NUM_SPECIAL_TOKENS))

    # ------------------------------------------------------------------ encoding

    def tokenize(self, text: str) -> list[int]:
        """Ids of ``text`` without ``[CLS]`` / ``[SEP]``: UTF-8 bytes + 6, special-token strings as their id."""
        if not isinstance(text, str):
            raise ValueError(f"expected text as a str, got {type(text).__name__}")
        if self.split_special_tokens:
            return encode_bytes(text)
        ids: list[int] = []
        for i, piece in enumerate(_SPECIAL_RE.split(text)):
            if i % 2:  # odd pieces are the captured special tokens
                ids.append(_SPECIAL_TO_ID[piece])
            elif piece:
                ids.extend(encode_bytes(piece))
        return ids

    def build_inputs_with_special_tokens(self, ids: list[int], pair_ids: list[int] | None = None) -> list[int]:
        """``[CLS] ids [SEP]`` or ``[CLS] ids [SEP] pair_ids [SEP]``."""
        if pair_ids is None:
            return [self.cls_token_id, *ids, self.sep_token_id]
        return [self.cls_token_id, *ids, self.sep_token_id, *pair_ids, self.sep_token_id]

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """2 for a single text (``[CLS]``, ``[SEP]``), 3 for a pair."""
        return 3 if pair else 2

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        *,
        add_special_tokens: bool = True,
        padding: Padding = False,
        truncation: Truncation | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> list[int]:
        """Ids of one text (or pair) as a list, with the options of :meth:`__call__`."""
        if not isinstance(text, str):
            raise ValueError(f"encode takes one str (use __call__ for a batch), got {type(text).__name__}")
        return self(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=False,
        )["input_ids"]

    def __call__(
        self,
        text: str | Sequence[str] | Sequence[tuple[str, str]],
        text_pair: str | Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: Padding = False,
        truncation: Truncation | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: Literal["right", "left"] | None = None,
        return_tensors: Literal["pt"] | None = None,
        return_attention_mask: bool | None = True,
        return_token_type_ids: bool | None = False,
        return_special_tokens_mask: bool | None = False,
        return_length: bool | None = False,
        verbose: bool = True,
    ) -> BatchEncoding:
        """Encode a text, a pair, or a batch of them.

        Args:
            text: a str, or a batch: a list of str, or a list of ``(a, b)`` pairs.
            text_pair: second text(s) of a pair: a str for a single ``text``, a list as long as a batch ``text``.
            add_special_tokens: add ``[CLS]`` / ``[SEP]``.
            padding: ``True`` / ``"longest"`` pads to the longest sequence of the batch, ``"max_length"`` to
                ``max_length`` (default ``model_max_length``), ``False`` / ``"do_not_pad"`` does not pad.
            truncation: ``True`` / ``"longest_first"``, ``"only_first"``, ``"only_second"``, or ``False`` /
                ``"do_not_truncate"``. ``None`` (default) truncates only if ``max_length`` is given and ``padding``
                is False, as transformers does.
            max_length: maximum length including special tokens (default ``model_max_length`` when truncating or
                padding to max length).
            pad_to_multiple_of: round the padded length up to a multiple of this.
            padding_side: overrides the tokenizer's ``padding_side``.
            return_tensors: ``"pt"`` for ``torch.long`` tensors of shape ``(B, L)`` (``B = 1`` for a single text),
                ``None`` for lists.
            return_attention_mask: include ``attention_mask`` (1 = real token, 0 = padding); None: True, as
                transformers' default (the ``return_*`` options take None as transformers' defaults).
            return_token_type_ids: include ``token_type_ids`` (0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``).
            return_special_tokens_mask: include ``special_tokens_mask`` (1 = ``[CLS]`` / ``[SEP]`` / padding, 0 = a
                token of the text), what ``DataCollatorForLanguageModeling`` reads.
            return_length: include ``length``, as transformers: the length before padding in a batch, after padding
                for a single text.
            verbose: accepted for transformers' signature (this tokenizer has no warnings to silence).

        Returns:
            ``BatchEncoding`` with ``input_ids`` (and ``attention_mask``): lists of ints for a single text, lists of
            lists for a batch, or ``(B, L)`` tensors with ``return_tensors="pt"``.

        Raises:
            ValueError: non-string input, mismatched pair batch, unknown padding / truncation option, a
                ``max_length`` too small for the special tokens, or unequal lengths with ``return_tensors="pt"``.
        """
        texts, pairs, batched = _normalize_inputs(text, text_pair)
        pad_strategy, trunc_strategy, max_length = self._strategies(padding, truncation, max_length)
        if pad_to_multiple_of is not None:
            _check_positive_int("pad_to_multiple_of", pad_to_multiple_of)
            both = trunc_strategy != "do_not_truncate" and pad_strategy != "do_not_pad"  # max_length is set then
            if both and max_length is not None and max_length % pad_to_multiple_of:
                raise ValueError(
                    f"truncation and padding are both on but max_length ({max_length}) is not a multiple of "
                    f"pad_to_multiple_of ({pad_to_multiple_of})"
                )
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")

        encoded = [
            self._encode_one(a, b, add_special_tokens, trunc_strategy, max_length)
            for a, b in zip(texts, pairs, strict=True)
        ]
        columns: dict[str, list[Any]] = {"input_ids": [ids for ids, _ in encoded]}
        if return_token_type_ids:  # 1 from the pair's first token on (all 0 without special tokens, as transformers)
            first = [n if n is not None and add_special_tokens else len(ids) for ids, n in encoded]
            columns["token_type_ids"] = [[0] * n + [1] * (len(ids) - n) for (ids, _), n in zip(encoded, first)]
        if return_special_tokens_mask:
            columns["special_tokens_mask"] = [_special_mask(ids, n, add_special_tokens) for ids, n in encoded]
        if return_length and batched:
            columns["length"] = [len(ids) for ids, _ in encoded]
        out = self.pad(
            columns,
            padding=pad_strategy,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_tensors=return_tensors,
            return_attention_mask=return_attention_mask,
        )
        if return_length and not batched:
            out["length"] = (
                [len(out["input_ids"][0])] if return_tensors is None else torch.tensor([out["input_ids"].shape[1]])
            )
        if not batched and return_tensors is None:
            out = BatchEncoding({k: v[0] for k, v in out.items()})
        return out

    def pad(
        self,
        sequences: Sequence[Sequence[int]] | Sequence[Mapping[str, Any]] | Mapping[str, Any],
        padding: Padding = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: Literal["right", "left"] | None = None,
        return_tensors: Literal["pt"] | None = None,
        return_attention_mask: bool | None = True,
    ) -> BatchEncoding:
        """Pad a batch of id lists (e.g. in a data collator) and build the attention mask.

        ``sequences``: id lists, or as transformers' ``pad`` (what ``DataCollatorWithPadding`` passes) a list of
        encodings ``[{"input_ids": [...], "labels": 1}, ...]`` or one ``{"input_ids": [[...], ...], ...}``; their
        other keys (labels) come back unchanged, as tensors with ``return_tensors="pt"``. ``padding`` as in
        :meth:`__call__`; ``"max_length"`` needs ``max_length`` here. Sequences longer than the target length are
        left as they are (pad never truncates).
        """
        strategy = _padding_strategy(padding)
        side = self.padding_side if padding_side is None else _check_side("padding_side", padding_side)
        seqs, extra = _id_lists(sequences)
        if strategy == "longest":
            target = max((len(s) for s in seqs), default=0)
        elif strategy == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            target = _check_positive_int("max_length", max_length)
        else:
            target = None
        if target is not None and pad_to_multiple_of is not None and target % pad_to_multiple_of:
            target = (target // pad_to_multiple_of + 1) * pad_to_multiple_of

        input_ids, masks = [], []
        padded: dict[str, list[list[int]]] = {
            k: [] for k in PADDED_KEYS if k in extra
        }  # per-token keys, padded as input_ids
        for row, s in enumerate(seqs):
            n_pad = max(0, target - len(s)) if target is not None else 0
            pad, ones, zeros = [self.pad_token_id] * n_pad, [1] * len(s), [0] * n_pad
            input_ids.append(s + pad if side == "right" else pad + s)
            masks.append(ones + zeros if side == "right" else zeros + ones)
            for key, values in padded.items():
                v, fill = _row_list(extra[key][row], key, len(s)), [PADDED_KEYS[key]] * n_pad
                values.append(v + fill if side == "right" else fill + v)
        extra |= padded

        out = BatchEncoding(input_ids=input_ids)
        if return_attention_mask is None or return_attention_mask:  # None: transformers' default, the mask
            out["attention_mask"] = masks
        if return_tensors == "pt":
            lengths = sorted({len(s) for s in input_ids})
            if len(lengths) > 1:
                raise ValueError(
                    f"return_tensors='pt' needs sequences of one length, got lengths {lengths}; "
                    "pass padding=True (or padding='max_length')"
                )
            out = BatchEncoding({k: torch.tensor(v, dtype=torch.long) for k, v in out.items()})
            extra = {k: v if isinstance(v, torch.Tensor) else torch.tensor(v) for k, v in extra.items()}
        elif return_tensors is not None:
            raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
        out.update(extra)
        return out

    def _strategies(
        self, padding: Padding, truncation: Truncation | None, max_length: int | None
    ) -> tuple[Literal["longest", "max_length", "do_not_pad"], str, int | None]:
        """transformers' ``_get_padding_truncation_strategies`` (for a finite ``model_max_length``)."""
        if max_length is not None:
            _check_positive_int("max_length", max_length)
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"  # transformers' legacy rule: max_length alone turns truncation on
        pad_strategy = _padding_strategy(padding)
        if truncation is None or truncation is False:
            trunc_strategy = "do_not_truncate"
        elif truncation is True:
            trunc_strategy = "longest_first"
        elif truncation in _TRUNCATIONS:
            trunc_strategy = truncation
        else:
            raise ValueError(f"truncation must be a bool or one of {_TRUNCATIONS}, got {truncation!r}")
        if max_length is None and (pad_strategy == "max_length" or trunc_strategy != "do_not_truncate"):
            max_length = self.model_max_length
        return pad_strategy, trunc_strategy, max_length

    def _encode_one(
        self, text: str, pair: str | None, add_special_tokens: bool, truncation: str, max_length: int | None
    ) -> tuple[list[int], int | None]:
        """The ids of a text or pair and, for a pair, the length of its first part (with its special tokens)."""
        ids = self.tokenize(text)
        pair_ids = self.tokenize(pair) if pair is not None else None
        n_special = self.num_special_tokens_to_add(pair_ids is not None) if add_special_tokens else 0
        total = len(ids) + len(pair_ids or ()) + n_special
        if truncation != "do_not_truncate" and max_length is not None and total > max_length:
            ids, pair_ids = self._truncate(ids, pair_ids, total - max_length, truncation, max_length, n_special)
        first = None if pair_ids is None else len(ids) + (2 if add_special_tokens else 0)
        if add_special_tokens:
            return self.build_inputs_with_special_tokens(ids, pair_ids), first
        return ids + (pair_ids or []), first

    def _truncate(
        self, ids: list[int], pair_ids: list[int] | None, n_remove: int, strategy: str, max_length: int, n_special: int
    ) -> tuple[list[int], list[int] | None]:
        """transformers' ``truncate_sequences``, but raising where the result could not fit ``max_length``."""
        if max_length < n_special:
            raise ValueError(
                f"max_length={max_length} is too small: the {'pair' if pair_ids is not None else 'single text'} "
                f"encoding has {n_special} special tokens ([CLS] ... [SEP]{' ... [SEP]' if pair_ids is not None else ''})"
            )
        if strategy == "only_second" and pair_ids is None:
            raise ValueError("truncation='only_second' needs a text_pair")
        if strategy == "longest_first" and pair_ids is not None:
            n1, n2 = len(ids), len(pair_ids)
            first = min(abs(n2 - n1), n_remove)
            second = n_remove - first
            if n1 > n2:
                cut1, cut2 = first + second // 2, second - second // 2
            else:
                cut1, cut2 = second // 2, first + second - second // 2
            return self._cut(ids, cut1), self._cut(pair_ids, cut2)
        if strategy in ("longest_first", "only_first"):
            if n_remove > len(ids):
                raise ValueError(
                    f"cannot truncate to max_length={max_length} with truncation={strategy!r}: the first text has "
                    f"{len(ids)} tokens, {n_remove} would have to go; use truncation='longest_first'"
                )
            return self._cut(ids, n_remove), pair_ids
        assert pair_ids is not None  # only_second
        if n_remove > len(pair_ids):
            raise ValueError(
                f"cannot truncate to max_length={max_length} with truncation='only_second': the second text has "
                f"{len(pair_ids)} tokens, {n_remove} would have to go; use truncation='longest_first'"
            )
        return ids, self._cut(pair_ids, n_remove)

    def _cut(self, ids: list[int], n: int) -> list[int]:
        if n <= 0:
            return ids
        return ids[: len(ids) - n] if self.truncation_side == "right" else ids[n:]

    # ------------------------------------------------------------------ decoding
    def decode(
        self,
        ids: int | Iterable[int] | torch.Tensor,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """Text of a sequence of ids, as transformers decodes it.

        Special tokens become their strings (``"[CLS]"``, ...) or are dropped with ``skip_special_tokens``; byte
        ids are joined and decoded as UTF-8 with invalid sequences replaced by U+FFFD (``errors="replace"``).
        ``clean_up_tokenization_spaces=True`` then removes spaces before punctuation and contractions
        (transformers' ``clean_up_tokenization``; off by default, as transformers' ``PerceiverTokenizer``).

        Raises:
            ValueError: an id outside ``[0, 262)``, or a tensor with more than one dimension (use
                :meth:`batch_decode`).
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() > 1:
                raise ValueError(
                    f"decode takes one sequence, got a tensor of shape {tuple(ids.shape)}; use batch_decode"
                )
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        if not isinstance(ids, Iterable) or isinstance(ids, str | bytes):
            raise InputTypeError(f"expected token ids (an int, a list of ints, a 1-D tensor), got {type(ids).__name__}")
        out = bytearray()
        for raw in ids:
            try:
                i = operator.index(raw)
            except TypeError:
                raise ValueError(f"expected integer token ids, got {type(raw).__name__}") from None
            if 0 <= i < NUM_SPECIAL_TOKENS:
                if not skip_special_tokens:
                    out += SPECIAL_TOKENS[i].encode("utf-8")
            elif NUM_SPECIAL_TOKENS <= i < self.vocab_size:
                out.append(i - NUM_SPECIAL_TOKENS)
            else:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        text = out.decode("utf-8", errors="replace")
        return clean_up_tokenization(text) if clean_up_tokenization_spaces else text  # None: False, as transformers'

    def batch_decode(
        self,
        sequences: Iterable[Iterable[int]] | torch.Tensor,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        """:meth:`decode` of each sequence of a batch (a list of id lists or a ``(B, L)`` tensor)."""
        if isinstance(sequences, torch.Tensor) and sequences.dim() != 2:
            raise ValueError(f"batch_decode takes a (B, L) tensor, got shape {tuple(sequences.shape)}")
        return [self.decode(s, skip_special_tokens, clean_up_tokenization_spaces) for s in sequences]
