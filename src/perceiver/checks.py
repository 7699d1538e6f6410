"""Input checks shared by the model and adapter boundaries (the policy is docs/reliability.md).

- Floating inputs of another floating dtype are cast to the model's dtype (`check_float_input`); integer, bool or
  complex tensors where floats are expected are an `InputTypeError`.
- Token ids must be integer tensors (`check_int_input`); floating ids are an `InputTypeError`.
- `InputTypeError` is both a `TypeError` and a `ValueError`: `except ValueError` (the library's habit for bad
  inputs) and `except TypeError` (Python's for wrong types) both catch it.
- Masks (`to_bool_mask`) are bool, or integer / floating tensors holding only 0 and 1 (`True` / 1 = valid); other
  values are a `ValueError` (checked in eager mode only, so that compiled graphs stay whole).
- Shapes are checked as plain Python (compile-friendly); errors name what was expected and what came.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["InputTypeError", "check_float_input", "check_int_input", "check_nonempty", "model_dtype", "to_bool_mask"]


class InputTypeError(TypeError, ValueError):
    """An input of the wrong type or dtype (a `TypeError` and, as every bad-input error here, a `ValueError`)."""


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


def to_bool_mask(mask: object, name: str = "mask", shapes: tuple[tuple[int, ...], ...] | None = None) -> Tensor | None:
    """A mask as a bool tensor (`True` = valid). Accepts bool, or integer / floating tensors holding only 0 / 1
    (checked in eager mode); `shapes`, when given, lists the accepted shapes."""
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
    return mask != 0


def check_token_ids(ids: object, vocab_size: int, name: str = "input_ids") -> Tensor:
    """Token ids `(B, L)`: an integer tensor with B, L >= 1 and (in eager mode, a host sync) every id in
    `[0, vocab_size)`; `InputTypeError` / `ValueError` naming what came. Shared by the text adapter and Perceiver AR."""
    ids = check_int_input(ids, name, "(B, L)")
    if ids.dim() != 2:
        raise ValueError(f"expected {name} of shape (B, L), got {tuple(ids.shape)}")
    if 0 in ids.shape:
        raise ValueError(f"expected at least one token per row in {name} (B >= 1, L >= 1), got {tuple(ids.shape)}")
    if not torch.compiler.is_compiling():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"expected token ids in [0, {vocab_size}), got values in [{low}, {high}]")
    return ids


def token_mask(mask: object, ids: Tensor, name: str = "attention_mask") -> Tensor | None:
    """The padding mask of token ids `ids` `(B, L)`: `to_bool_mask` of the same shape, on the ids' device."""
    if mask is None:
        return None
    if isinstance(mask, Tensor) and tuple(mask.shape) != tuple(ids.shape):
        shape = tuple(ids.shape)
        raise ValueError(
            f"expected {name} of shape {shape}: the same shape as input_ids {shape}, got {tuple(mask.shape)}"
        )
    return to_bool_mask(mask, name).to(ids.device)
