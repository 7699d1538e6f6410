"""Saving and loading `ByteTokenizer` as transformers saves and loads its `PerceiverTokenizer`: one
``tokenizer_config.json`` (class name ``PerceiverTokenizer``, ``model_max_length``, the padding / truncation sides,
``split_special_tokens`` and the six special tokens), so that ``AutoTokenizer.from_pretrained(folder)`` and
``ByteTokenizer.from_pretrained(folder)`` both read a folder either of them wrote.

The vocabulary of the byte tokenizer is fixed (6 special tokens + 256 bytes): a folder whose tokenizer has other
special-token strings or added tokens is refused with a ValueError naming them, rather than loaded as a tokenizer
that encodes differently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

from perceiver.save_files import install_folder, staging_folder

__all__ = ["SPECIAL_TOKENS_MAP_NAME", "TOKENIZER_CONFIG_NAME", "TokenizerFiles"]

#: transformers' tokenizer config file (the only file a byte tokenizer needs)
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
#: the special tokens file older transformers versions (4.x) also write
SPECIAL_TOKENS_MAP_NAME = "special_tokens_map.json"
#: transformers' class name, which `AutoTokenizer` reads from `tokenizer_class`
HF_CLASS_NAME = "PerceiverTokenizer"
_CLASS_NAMES = (HF_CLASS_NAME, "ByteTokenizer")
#: the special-token keys in transformers' order, which is also their ids 0..5
_TOKEN_KEYS = ("pad_token", "bos_token", "eos_token", "mask_token", "cls_token", "sep_token")

_T = TypeVar("_T", bound="TokenizerFiles")


class TokenizerFiles:
    """`save_pretrained` / `from_pretrained` of `perceiver.ByteTokenizer` (a base class of it)."""

    special_tokens: tuple[str, ...]
    model_max_length: int
    padding_side: str
    truncation_side: str
    split_special_tokens: bool

    def to_dict(self) -> dict[str, Any]:
        """The contents of ``tokenizer_config.json`` (transformers' keys for ``PerceiverTokenizer``)."""
        config: dict[str, Any] = {"tokenizer_class": HF_CLASS_NAME}
        config |= dict(zip(_TOKEN_KEYS, self.special_tokens, strict=True))
        config |= {
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "split_special_tokens": self.split_special_tokens,
        }
        return config

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write ``tokenizer_config.json`` into ``save_directory`` (created if needed; other files in it, e.g. a
        model's, are kept), which ``transformers.AutoTokenizer.from_pretrained`` and :meth:`from_pretrained` read.

        Returns:
            the paths of the files written (as transformers' ``save_pretrained``).

        Raises:
            NotADirectoryError: ``save_directory`` or one of its parents is a file.
        """
        target = Path(save_directory)
        with staging_folder(target) as tmp:
            (tmp / TOKENIZER_CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
            install_folder(tmp, target, (TOKENIZER_CONFIG_NAME,))
        return (str(target / TOKENIZER_CONFIG_NAME),)

    @classmethod
    def from_pretrained(cls: type[_T], pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> _T:
        """The tokenizer saved in a local folder by :meth:`save_pretrained` or by transformers'
        ``PerceiverTokenizer.save_pretrained`` (e.g. beside a model), with its ``model_max_length``,
        ``padding_side``, ``truncation_side`` and ``split_special_tokens``; ``kwargs`` override them.

        Raises:
            FileNotFoundError: the folder does not exist or has no ``tokenizer_config.json``.
            ValueError: the file is not a JSON object, names another tokenizer class, or has special tokens or
                added tokens other than Perceiver's fixed ones (which this byte tokenizer cannot encode).
        """
        folder = Path(pretrained_model_name_or_path)
        if not folder.is_dir():
            what = "is not a directory" if folder.exists() else "does not exist"
            raise FileNotFoundError(
                f"expected a local folder with {TOKENIZER_CONFIG_NAME} (saved by ByteTokenizer.save_pretrained or "
                f"transformers' PerceiverTokenizer.save_pretrained), but {folder} {what}"
            )
        config_file = folder / TOKENIZER_CONFIG_NAME
        if not config_file.is_file():
            found = sorted(p.name for p in folder.iterdir())[:10]
            raise FileNotFoundError(
                f"expected a tokenizer in {folder}: no {TOKENIZER_CONFIG_NAME} there (found {found}); save one with "
                "tokenizer.save_pretrained(folder)"
            )
        config = _read_json(config_file)
        tokens_map = folder / SPECIAL_TOKENS_MAP_NAME
        if tokens_map.is_file():  # transformers 4.x: the special tokens are also (or only) there
            config = _read_json(tokens_map) | config
        name = config.get("tokenizer_class")
        if name is not None and name not in _CLASS_NAMES:
            raise ValueError(f"{config_file}: expected tokenizer_class one of {_CLASS_NAMES}, got {name!r}")
        _check_special_tokens(config, config_file, cls.special_tokens)
        options: dict[str, Any] = {}
        for key in ("model_max_length", "padding_side", "truncation_side", "split_special_tokens"):
            if config.get(key) is not None:
                options[key] = config[key]
        try:
            return cls(**(options | kwargs))
        except ValueError as e:
            raise ValueError(f"{config_file}: {e}") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: expected a JSON object ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _content(token: Any) -> Any:
    """A special token as a str: transformers writes it as the str or as an ``AddedToken`` dict with ``content``."""
    return token.get("content") if isinstance(token, dict) else token


def _check_special_tokens(config: dict[str, Any], config_file: Path, expected: tuple[str, ...]) -> None:
    """ValueError when the saved tokenizer's special tokens or added tokens are not Perceiver's fixed ones."""
    for key, want in zip(_TOKEN_KEYS, expected, strict=True):
        got = _content(config.get(key, want))
        if got != want:
            raise ValueError(
                f"{config_file}: expected {key} {want!r} (the byte tokenizer's special tokens are fixed: "
                f"{list(expected)}), got {got!r}"
            )
    for key in ("additional_special_tokens", "extra_special_tokens"):
        extra = config.get(key)
        if extra:
            raise ValueError(f"{config_file}: {key} are not supported by the byte tokenizer, got {extra!r}")
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise ValueError(f"{config_file}: expected added_tokens_decoder as a dict, got {type(decoder).__name__}")
    for index, token in decoder.items():
        i = int(index) if str(index).isdigit() else -1
        if not 0 <= i < len(expected) or _content(token) != expected[i]:
            raise ValueError(
                f"{config_file}: added token {index}: {_content(token)!r} is not supported; the byte tokenizer has "
                f"only the special tokens {dict(enumerate(expected))} and the 256 bytes"
            )
