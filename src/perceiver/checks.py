"""Input checks shared by the model and adapter boundaries (the policy is docs/reliability.md).

- Floating inputs of another floating dtype are cast to the model's dtype (`check_float_input`); integer, bool or
  complex tensors where floats are expected are an `InputTypeError`.
- Token ids must be integer tensors (`check_int_input`); floating ids are an `InputTypeError`.
- `InputTypeError` is both a `TypeError` and a `ValueError`: `except ValueError` (the library's habit for bad
  inputs) and `except TypeError` (Python's for wrong types) both catch it.
- Masks (`to_bool_mask`) are bool, or integer / floating tensors holding only 0 and 1 (`True` / 1 = valid); other
  values are a `ValueError` (checked in eager mode only, so that compiled graphs stay whole).
- Shapes are checked as plain Python (compile-friendly); errors name what was expected and what came.
- Config sizes (`check_int`, `check_number`, `check_int_fields`) are checked when the config is made: an int of the
  wrong type (a float, a string, a bool) is an `InputTypeError`, one out of range a `ValueError`, each naming the
  config class, the field, what was expected and what came (`EncoderConfig.num_latents must be a positive integer,
  got 8.0 (float)`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Collection, Sequence
from typing import Any, overload

import torch
from torch import Tensor, nn

__all__ = [
    "InputTypeError",
    "check_float_input",
    "check_int",
    "check_int_fields",
    "check_int_input",
    "check_int_tuple",
    "check_nonempty",
    "check_number",
    "check_number_tuple",
    "model_dtype",
    "to_bool_mask",
]


class InputTypeError(TypeError, ValueError):
    """An input or config value of the wrong type or dtype (a `TypeError` and, as every bad-input error here, a
    `ValueError`)."""


def _got(value: object) -> str:
    return f"got {value!r} ({type(value).__name__})"


def _int_expectation(minimum: int, optional: bool) -> str:
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    return f"{what} or None" if optional else what


def check_int(value: Any, name: str, minimum: int = 1, optional: bool = False, check_range: bool = True) -> Any:
    """`value` as a plain `int` >= `minimum` (None passes through when `optional`).

    Integral numbers (numpy ints too) are accepted; bools, floats (even `8.0`) and strings are an `InputTypeError`,
    integers below `minimum` a `ValueError` (unless `check_range` is False: the type only). `name` is what the
    message calls the value, e.g. `"EncoderConfig.num_latents"`."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(f"{name} must be {_int_expectation(minimum, optional)}, {_got(value)}")
    if check_range and value < minimum:
        raise ValueError(f"{name} must be {_int_expectation(minimum, optional)}, {_got(value)}")
    return int(value)


def check_number(value: Any, name: str, optional: bool = False, check_range: bool = True) -> Any:
    """`value` as a finite number > 0 (an int or a float; None passes through when `optional`): a resolution, a
    scale. Bools and strings are an `InputTypeError`, zero, negative or non-finite numbers a `ValueError` (unless
    `check_range` is False: the type only)."""
    if value is None and optional:
        return None
    what = "a positive number" + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(f"{name} must be {what}, {_got(value)}")
    if check_range and (not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name} must be {what}, {_got(value)}")
    return value


def check_int_tuple(value: Any, name: str, length: int) -> tuple[int, ...]:
    """`value` as a tuple of `length` positive integers (a list or tuple of them), e.g. an `(H, W)` size."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != length:
        raise InputTypeError(f"{name} must be a sequence of {length} positive integers, {_got(value)}")
    return tuple(check_int(v, f"{name}[{i}]") for i, v in enumerate(value))


def check_number_tuple(value: Any, name: str, length: int) -> tuple[Any, ...]:
    """`value` as a tuple of `length` positive numbers (a list or tuple of them), e.g. Fourier resolutions."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != length:
        raise InputTypeError(f"{name} must be a sequence of {length} positive numbers, {_got(value)}")
    return tuple(check_number(v, f"{name}[{i}]") for i, v in enumerate(value))


def _int_annotation(annotation: object) -> tuple[bool, bool]:
    """(whether a dataclass field annotation is `int` or `int | None`, whether None is allowed)."""
    text = annotation if isinstance(annotation, str) else str(annotation)
    if annotation is int or text == "int":
        return True, False
    return text.replace(" ", "") in ("int|None", "None|int", "Optional[int]", "typing.Optional[int]"), True


def check_int_fields(
    config: Any, zero_ok: Collection[str] = (), skip: Collection[str] = (), type_only: Collection[str] = ()
) -> None:
    """`check_int` on every field of the dataclass `config` annotated `int` (or `int | None`: None allowed): a
    positive integer, or >= 0 for the fields named in `zero_ok` (where 0 means something, e.g. no layers). Fields in
    `skip` are the caller's to check, fields in `type_only` have their type checked but not their range. Values are
    stored back as plain ints; errors name `Class.field`."""
    owner = type(config).__name__
    for f in dataclasses.fields(config):
        is_int, optional = _int_annotation(f.type)
        if not is_int or f.name in skip:
            continue
        value = getattr(config, f.name)
        minimum = 0 if f.name in zero_ok else 1
        checked = check_int(value, f"{owner}.{f.name}", minimum, optional, check_range=f.name not in type_only)
        if type(value) is not type(checked):  # e.g. a numpy integer
            setattr(config, f.name, checked)


def model_dtype(module: nn.Module) -> torch.dtype:
    """The floating dtype of `module`'s first floating parameter (float32 for a module without one)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _require_tensor(x: object, name: str, expected: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputTypeError(f"expected {name} as a torch.Tensor of shape {expected}, got {type(x).__name__}")
    return x


def check_float_input(x: object, name: str, expected: str, dtype: torch.dtype | None = None) -> Tensor:
    """`x` as a floating tensor of `dtype` (cast from other floating dtypes); `InputTypeError` for non-tensors and
    integer / bool / complex tensors. `expected` describes the shape, e.g. `"(B, H, W, 3)"`."""
    x = _require_tensor(x, name, expected)
    if not x.is_floating_point():
        raise InputTypeError(
            f"expected {name} as a floating-point tensor of shape {expected}, got dtype {x.dtype}; "
            f"convert it with .float()"
        )
    return x if dtype is None or x.dtype == dtype else x.to(dtype)


def check_int_input(x: object, name: str, expected: str) -> Tensor:
    """`x` as an integer tensor (token ids); `InputTypeError` for non-tensors and floating / bool / complex."""
    x = _require_tensor(x, name, expected)
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise InputTypeError(f"expected integer token ids (e.g. torch.long) as {name} {expected}, got dtype {x.dtype}")
    return x


def check_nonempty(x: Tensor, name: str, expected: str) -> None:
    """`ValueError` for an empty batch or a zero-size axis (every model rejects them the same way)."""
    if 0 in x.shape:
        raise ValueError(f"expected {name} of shape {expected} with no zero-size axis, got {tuple(x.shape)}")


@overload
def to_bool_mask(mask: None, name: str = ..., shapes: tuple[tuple[int, ...], ...] | None = ...) -> None: ...
@overload
def to_bool_mask(mask: Tensor, name: str = ..., shapes: tuple[tuple[int, ...], ...] | None = ...) -> Tensor: ...
@overload
def to_bool_mask(mask: object, name: str = ..., shapes: tuple[tuple[int, ...], ...] | None = ...) -> Tensor | None: ...
def to_bool_mask(mask: object, name: str = "mask", shapes: tuple[tuple[int, ...], ...] | None = None) -> Tensor | None:
    """A mask as a bool tensor (`True` = valid). Accepts bool, or integer / floating tensors holding only 0 / 1
    (checked in eager mode; a floating mask of zeros only, torch's additive "mask nothing", is a ValueError: these
    masks mean validity, unlike torch's `key_padding_mask`); `shapes`, when given, lists the accepted shapes."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise InputTypeError(f"expected {name} as a boolean torch.Tensor (True = valid), got {type(mask).__name__}")
    if shapes is not None and tuple(mask.shape) not in shapes:
        want = " or ".join(str(s) for s in shapes)
        raise ValueError(f"expected {name} of shape {want}, got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise InputTypeError(f"expected {name} as a boolean tensor (True = valid), got dtype {mask.dtype}")
    binary = (mask == 0) | (mask == 1)
    if not torch.compiler.is_compiling() and not bool(binary.all()):  # a value check (host sync): eager only
        bad = mask[~binary].flatten()[:4].tolist()
        raise ValueError(
            f"expected {name} as bool or values 0 (padding) or 1 (valid), got dtype {mask.dtype} with e.g. {bad}"
        )
    if mask.is_floating_point() and not torch.compiler.is_compiling() and not bool(mask.any()):
        raise ValueError(  # all zeros: torch's additive "mask nothing", which here would mask every key
            f"expected {name} as 0 / 1 validity (1 = valid), got a floating mask of zeros only, which masks every "
            "position: additive float masks (0 = keep) are not taken; pass a bool mask (True = valid)"
        )
    return mask != 0


def check_token_ids(ids: object, vocab_size: int, name: str = "input_ids") -> Tensor:
    """Token ids `(B, L)`: an integer tensor with B, L >= 1 and (in eager mode, a host sync) every id in
    `[0, vocab_size)`; `InputTypeError` / `ValueError` naming what came. Shared by the text adapter and Perceiver AR.
    Returns the ids as int32 / int64 (other integer dtypes, e.g. uint8 bytes, as int64: what `nn.Embedding` takes)."""
    ids = check_int_input(ids, name, "(B, L)")
    if ids.dim() != 2:
        raise ValueError(f"expected {name} of shape (B, L), got {tuple(ids.shape)}")
    if 0 in ids.shape:
        raise ValueError(f"expected at least one token per row in {name} (B >= 1, L >= 1), got {tuple(ids.shape)}")
    if not torch.compiler.is_compiling():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"expected token ids in [0, {vocab_size}), got values in [{low}, {high}]")
    return ids if ids.dtype in (torch.int32, torch.int64) else ids.long()


def token_mask(mask: object, ids: Tensor, name: str = "attention_mask") -> Tensor | None:
    """The padding mask of token ids `ids` `(B, L)`: `to_bool_mask` of the same shape, on the ids' device."""
    if mask is None:
        return None
    if isinstance(mask, Tensor) and tuple(mask.shape) != tuple(ids.shape):
        shape = tuple(ids.shape)
        raise ValueError(
            f"expected {name} of shape {shape}: the same shape as input_ids {shape}, got {tuple(mask.shape)}"
        )
    bool_mask = to_bool_mask(mask, name)
    assert bool_mask is not None  # mask is not None
    return bool_mask.to(ids.device)
