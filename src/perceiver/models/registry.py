"""A registry of named model presets, like timm's: `create_model(name, **overrides)`, `list_models()`.

A preset is a function `(**overrides) -> nn.Module` registered with `@register_model("name")`; overrides replace
fields of the preset's config (e.g. tiny sizes for tests, another number of classes).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

_PRESETS: dict[str, Callable[..., nn.Module]] = {}
_MODEL_TYPES: dict[str, type] = {}
F = TypeVar("F", bound=Callable[..., nn.Module])
C = TypeVar("C", bound=type)


def register_model(name: str) -> Callable[[F], F]:
    """Decorator registering a preset function under `name`."""

    def wrap(fn: F) -> F:
        if name in _PRESETS:
            raise ValueError(f"model preset {name!r} is already registered")
        _PRESETS[name] = fn
        return fn

    return wrap


def register_model_type(cls: C) -> C:
    """Class decorator: makes `cls.model_type` loadable by `perceiver.from_pretrained` from our own folders."""
    _MODEL_TYPES[cls.model_type] = cls
    return cls


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered presets matching a shell-style `pattern`, sorted."""
    return sorted(n for n in _PRESETS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the preset `name` with config `overrides`, randomly initialised."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _PRESETS[name](**overrides)


def model_type_class(model_type: str) -> type:
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; known: {', '.join(sorted(_MODEL_TYPES))}")
    return _MODEL_TYPES[model_type]


def build_preset(cls: type, base: Any, overrides: dict[str, Any]) -> nn.Module:
    """`cls(config)` for the preset config `base` with keyword `overrides` (flat or dotted keys, see
    `perceiver.hub.apply_overrides`; the renamed keys of earlier releases in `cls.legacy_keys` still work)."""
    from perceiver.core.config import rename_keys
    from perceiver.hub import apply_overrides

    return cls(apply_overrides(base, rename_keys(getattr(cls, "legacy_keys", {}), overrides)))
