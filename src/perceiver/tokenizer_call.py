"""transformers' `PreTrainedTokenizer` surface of `perceiver.ByteTokenizer` beyond encoding and decoding, and the
argument checks of its `__call__` / `pad` (split out of `perceiver.tokenizer`, which is at its size limit).

`TransformersTokenizerMethods` gives what code written for transformers' `PerceiverTokenizer` calls besides
`__call__` / `pad` / `decode`: `get_special_tokens_mask` (which `DataCollatorForLanguageModeling` calls to leave
`[CLS]` / `[SEP]` / `[PAD]` unmasked), `convert_ids_to_tokens` / `convert_tokens_to_ids` /
`convert_tokens_to_string` (a byte token is the one-character string `chr(byte)`, as transformers spells it),
`get_vocab`, `all_special_tokens`, `special_tokens_map`, `encode_plus` / `batch_encode_plus`, each equal to
transformers' result on the same arguments.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch

__all__ = ["BatchEncoding", "TransformersTokenizerMethods", "clean_up_tokenization"]

_NUM_SPECIAL = 6  # PAD BOS EOS MASK CLS SEP, ids 0..5 (perceiver.tokenizer.SPECIAL_TOKENS)
_PADDINGS = ("longest", "max_length", "do_not_pad")
#: per-token keys `pad` pads beside input_ids / attention_mask, with transformers' pad values
PADDED_KEYS = {"special_tokens_mask": 1, "token_type_ids": 0}
_TOKEN_KEYS = ("pad_token", "bos_token", "eos_token", "mask_token", "cls_token", "sep_token")


class BatchEncoding(dict):
    """The tokenizer output: a dict (``input_ids``, ``attention_mask``) whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy / pickle look up dunder methods: not keys
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: str | torch.device | int, non_blocking: bool = False) -> BatchEncoding:
        """Move the tensors to ``device`` (in place, returning self), as transformers' ``BatchEncoding.to``:
        ``tokenizer(texts, padding=True, return_tensors="pt").to(model.device)``. Lists stay as they are."""
        if isinstance(device, bool) or not isinstance(device, str | torch.device | int):
            raise TypeError(
                f"BatchEncoding.to takes a device (a str, torch.device or int), got {device!r}; the ids stay "
                "integers (cast the model's dtype, not its inputs)"
            )
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                self[key] = value.to(device=device, non_blocking=non_blocking)
        return self


def clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: spaces before punctuation and English contractions removed."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't")):
        text = text.replace(before, after)
    for suffix in ("m", "s", "ve", "re"):
        text = text.replace(f" '{suffix}", f"'{suffix}")
    return text


class TransformersTokenizerMethods:
    """transformers' tokenizer methods of the byte vocabulary (a base class of `ByteTokenizer`)."""

    special_tokens: tuple[str, ...]
    vocab_size: int

    @property
    def all_special_tokens(self) -> list[str]:
        """The six special-token strings, ``["[PAD]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]"]``."""
        return list(self.special_tokens)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """``{"pad_token": "[PAD]", ..., "sep_token": "[SEP]"}``, as transformers' attribute."""
        return dict(zip(_TOKEN_KEYS, self.special_tokens, strict=True))

    def get_vocab(self) -> dict[str, int]:
        """Token string -> id for all 262 ids: the special tokens, then ``chr(b)`` for byte ``b`` (id ``b + 6``)."""
        vocab = {chr(b): b + _NUM_SPECIAL for b in range(self.vocab_size - _NUM_SPECIAL)}
        return vocab | {token: i for i, token in enumerate(self.special_tokens)}

    def get_special_tokens_mask(
        self,
        token_ids_0: Sequence[int],
        token_ids_1: Sequence[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """1 for a special token, 0 for a byte, as transformers.

        With ``already_has_special_tokens=True`` ``token_ids_0`` is an encoded sequence (ids < 6 are special, what
        ``DataCollatorForLanguageModeling`` asks); else the mask of ``[CLS] ids_0 [SEP] (ids_1 [SEP])``, the
        sequence :meth:`build_inputs_with_special_tokens` makes of them."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("token_ids_1 must be None with already_has_special_tokens=True (one encoded sequence)")
            return [1 if 0 <= int(i) < _NUM_SPECIAL else 0 for i in _as_ids(token_ids_0)]
        mask = [1] + [0] * len(token_ids_0) + [1]
        return mask if token_ids_1 is None else mask + [0] * len(token_ids_1) + [1]

    def convert_ids_to_tokens(
        self, ids: int | Iterable[int] | torch.Tensor, skip_special_tokens: bool = False
    ) -> str | list[str]:
        """The token string of an id (``"[CLS]"``, or ``chr(byte)`` for a byte id), or the list of an id list."""
        if getattr(ids, "ndim", None) == 0:  # a 0-d tensor or a NumPy integer
            ids = int(ids)  # type: ignore[arg-type]
        if isinstance(ids, int):
            return self._id_to_token(ids)
        return [self._id_to_token(i) for i in _as_ids(ids) if not (skip_special_tokens and 0 <= i < _NUM_SPECIAL)]

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | None | list[int | None]:
        """The id of a token string (a special token, or one character ``chr(byte)``), or of each of a list.

        As transformers, a string that is neither (``"ab"``, ``"é"`` above U+00FF) has no id: None."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def convert_tokens_to_string(self, tokens: Iterable[str]) -> str:
        """The text of token strings: special tokens as written, the byte tokens joined and decoded as UTF-8."""
        out = bytearray()
        for token in tokens:
            if token in self.special_tokens:
                out += token.encode("utf-8")
            elif len(token) == 1 and ord(token) < self.vocab_size - _NUM_SPECIAL:
                out.append(ord(token))
            else:
                raise ValueError(f"expected special tokens or one-character byte tokens (chr(0..255)), got {token!r}")
        return out.decode("utf-8", errors="replace")

    def encode_plus(self, text: str, text_pair: str | None = None, **kwargs: Any) -> Any:
        """transformers' older spelling of ``tokenizer(text, text_pair, **kwargs)`` for one text."""
        if not isinstance(text, str):
            raise ValueError(f"encode_plus takes one str (batch_encode_plus a batch), got {type(text).__name__}")
        return self(text, text_pair, **kwargs)  # type: ignore[operator]  # ByteTokenizer.__call__

    def batch_encode_plus(self, batch_text_or_text_pairs: Sequence[Any], **kwargs: Any) -> Any:
        """transformers' older spelling of ``tokenizer(batch, **kwargs)`` (a list of texts or of ``(a, b)`` pairs)."""
        if isinstance(batch_text_or_text_pairs, str):
            raise ValueError("batch_encode_plus takes a list of texts (or of pairs), got one str; use encode_plus")
        return self(list(batch_text_or_text_pairs), **kwargs)  # type: ignore[operator]

    def _id_to_token(self, i: int) -> str:
        if 0 <= i < _NUM_SPECIAL:
            return self.special_tokens[i]
        if _NUM_SPECIAL <= i < self.vocab_size:
            return chr(i - _NUM_SPECIAL)
        raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")

    def _token_to_id(self, token: Any) -> int | None:
        if not isinstance(token, str):
            hint = " (ByteTokenizer.tokenize gives ids already, unlike transformers')" if isinstance(token, int) else ""
            raise ValueError(f"expected token strings, got {type(token).__name__}{hint}")
        if token in self.special_tokens:
            return self.special_tokens.index(token)
        if len(token) == 1 and ord(token) < self.vocab_size - _NUM_SPECIAL:
            return ord(token) + _NUM_SPECIAL
        return None


def _as_ids(ids: Any) -> list[int]:
    """A list of ints from an id list or a 1-D tensor / array; ValueError otherwise."""
    if hasattr(ids, "tolist") and not isinstance(ids, list):
        ids = ids.tolist()
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise ValueError(f"expected a sequence of token ids, got {type(ids).__name__}")
    out = []
    for i in ids:
        try:
            if isinstance(i, bool):
                raise TypeError
            out.append(operator.index(i))
        except TypeError:
            raise ValueError(
                f"expected a flat sequence of integer token ids (one sequence, not a batch), got an element {i!r}"
            ) from None
    return out


def _id_lists(sequences: Any) -> tuple[list[list[int]], dict[str, Any]]:
    """The id lists of `pad`'s argument and its other keys: id lists, a list of encodings (dicts with
    "input_ids") or one encoding of lists. A ValueError names what came otherwise."""
    if isinstance(sequences, Sequence) and sequences and all(isinstance(r, Mapping) for r in sequences):
        sequences = {k: [r.get(k) for r in sequences] for k in sequences[0]}  # rows -> columns, as transformers
    extra: dict[str, Any] = {}
    if isinstance(sequences, Mapping):
        if "input_ids" not in sequences or any(ids is None for ids in sequences["input_ids"]):
            raise ValueError(f"pad takes encodings with 'input_ids' (every row), got keys {list(sequences)}")
        extra = {k: v for k, v in sequences.items() if k not in ("input_ids", "attention_mask")}
        sequences = sequences["input_ids"]
    if not isinstance(sequences, Iterable) or isinstance(sequences, str | bytes):
        raise ValueError(f"pad takes a list of token id lists (or of encodings), got {type(sequences).__name__}")
    seqs = [s.tolist() if isinstance(s, torch.Tensor) else s for s in sequences]
    bad = [type(s).__name__ for s in seqs if isinstance(s, str | bytes) or not isinstance(s, Iterable)]
    if bad:
        raise ValueError(f"pad takes lists of token ids, got an element of type {bad[0]}; encode text first")
    return [list(s) for s in seqs], extra


def _normalize_inputs(text: Any, text_pair: Any) -> tuple[list[str], list[str | None], bool]:
    """(texts, pairs, batched) from the forms transformers accepts for str input."""
    if isinstance(text, str):
        if text_pair is not None and not isinstance(text_pair, str):
            raise ValueError(f"text is one str, so text_pair must be a str too, got {type(text_pair).__name__}")
        return [text], [text_pair], False
    if not isinstance(text, (list, tuple)):
        raise ValueError(f"expected text as a str or a list of str, got {type(text).__name__}")
    if not text:
        raise ValueError("expected text as a str or a non-empty list of str, got an empty list")
    if text_pair is not None:
        if not isinstance(text_pair, (list, tuple)) or len(text_pair) != len(text):
            got = (
                f"{type(text_pair).__name__} of length {len(text_pair)}"
                if isinstance(text_pair, (list, tuple))
                else type(text_pair).__name__
            )
            raise ValueError(
                f"text is a batch of {len(text)}, so text_pair must be a list of {len(text)} str, got {got}"
            )
        texts, pairs = list(text), list(text_pair)
    else:
        texts, pairs = [], []
        for item in text:
            if isinstance(item, (list, tuple)):
                if len(item) != 2:
                    raise ValueError(f"a batch item that is a tuple must be a pair (a, b), got {len(item)} elements")
                texts.append(item[0])
                pairs.append(item[1])
            else:
                texts.append(item)
                pairs.append(None)
    for i, (a, b) in enumerate(zip(texts, pairs)):
        if not isinstance(a, str) or not (b is None or isinstance(b, str)):
            bad = a if not isinstance(a, str) else b
            raise ValueError(f"expected str texts, got {type(bad).__name__} at batch index {i}")
    return texts, pairs, True


def _padding_strategy(padding: Any) -> Literal["longest", "max_length", "do_not_pad"]:
    if padding is True:
        return "longest"
    if padding is False or padding is None:
        return "do_not_pad"
    if padding in _PADDINGS:
        return padding
    raise ValueError(f"padding must be a bool or one of {_PADDINGS}, got {padding!r}")


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_side(name: str, value: Any) -> str:
    if value not in ("right", "left"):
        raise ValueError(f"{name} must be 'right' or 'left', got {value!r}")
    return value


def _special_mask(ids: list[int], first: int | None, add_special_tokens: bool) -> list[int]:
    """transformers' `special_tokens_mask` of an encoded text (`first`: the length of a pair's first part): 1 at the
    `[CLS]` / `[SEP]` that encoding added (not at a "[MASK]" written in the text), 0 elsewhere."""
    mask = [0] * len(ids)
    if add_special_tokens:
        mask[0] = mask[-1] = 1
        if first is not None:
            mask[first - 1] = 1
    return mask


def _row_list(values: Any, key: str, length: int) -> list[int]:
    """A row of a per-token key of `pad` (`special_tokens_mask`, `token_type_ids`) as a list as long as its ids."""
    row = values.tolist() if isinstance(values, torch.Tensor) else values
    out = list(row) if isinstance(row, Iterable) and not isinstance(row, str | bytes) else None
    if out is None or len(out) != length:
        raise ValueError(f"pad expected {key!r} rows as long as their input_ids ({length}), got {values!r}")
    return out
