"""Image / video layouts of batches and models: channels-last `(B, H, W, C)` / `(B, T, H, W, C)`, as `perceiver.data`
gives them, or channels-first `(B, C, H, W)` / `(B, T, C, H, W)`, as the Perceiver IO image and video classifiers
take them (`input_layout = "channels_first"` on the class). Plain torch: no Lightning import.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["CHANNELS_FIRST", "CHANNELS_LAST", "LAYOUTS", "convert_layout", "input_layout", "to_model_layout"]

CHANNELS_LAST, CHANNELS_FIRST = "channels_last", "channels_first"
LAYOUTS = (CHANNELS_LAST, CHANNELS_FIRST)


def input_layout(obj: Any) -> str:
    """`obj.input_layout` (a model or a datamodule): `"channels_last"` (the default, as `perceiver.data` gives
    images) or `"channels_first"`."""
    layout = getattr(obj, "input_layout", CHANNELS_LAST)
    if layout not in LAYOUTS:
        raise ValueError(f"{type(obj).__name__}.input_layout: expected one of {LAYOUTS}, got {layout!r}")
    return layout


def convert_layout(x: Tensor, source: str, target: str) -> Tensor:
    """Images `(B, H, W, C)` <-> `(B, C, H, W)` and videos `(B, T, H, W, C)` <-> `(B, T, C, H, W)` from the `source`
    to the `target` layout; other ranks (sequences, point clouds `(B, P, 3)`) are returned unchanged."""
    for layout in (source, target):
        if layout not in LAYOUTS:
            raise ValueError(f"expected an input layout of {LAYOUTS}, got {layout!r}")
    if source == target or x.ndim not in (4, 5):
        return x
    return x.movedim(-1, -3) if target == CHANNELS_FIRST else x.movedim(-3, -1)


def to_model_layout(model: nn.Module, x: Tensor, source: str = CHANNELS_LAST) -> Tensor:
    """`x` in the layout `model` takes (`input_layout(model)`), from `source` (default: channels-last)."""
    return convert_layout(x, source, input_layout(model))
