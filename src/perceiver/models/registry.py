"""A registry of named model presets, like timm's: `create_model(name, pretrained=False, **overrides)`,
`list_models()`, `list_pretrained()`.

A preset is a function `(**overrides) -> nn.Module` registered with `@register_model("name", hub_id=...)`; overrides
replace fields of the preset's config (e.g. tiny sizes for tests, another number of classes). A preset with a
`hub_id` knows its published checkpoint: `create_model(name, pretrained=True)` loads it with
`perceiver.from_pretrained` (which picks the transformers converter from the checkpoint's `architectures`), from the
Hub or from a local copy given as `checkpoint_path`.
"""

from __future__ import annotations

import fnmatch
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from torch import nn

if TYPE_CHECKING:
    from perceiver.hub import PretrainedMixin

_PRESETS: dict[str, Callable[..., nn.Module]] = {}
_HUB_IDS: dict[str, str] = {}
_MODEL_TYPES: dict[str, type[PretrainedMixin]] = {}
F = TypeVar("F", bound=Callable[..., nn.Module])
C = TypeVar("C", bound="type[PretrainedMixin]")
M = TypeVar("M", bound=nn.Module)


def register_model(name: str, hub_id: str | None = None) -> Callable[[F], F]:
    """Decorator registering a preset function under `name`; `hub_id` names its published checkpoint."""

    def wrap(fn: F) -> F:
        if name in _PRESETS:
            raise ValueError(f"model preset {name!r} is already registered")
        _PRESETS[name] = fn
        if hub_id is not None:
            _HUB_IDS[name] = hub_id
        return fn

    return wrap


def register_model_type(cls: C) -> C:
    """Class decorator: makes `cls.model_type` loadable by `perceiver.from_pretrained` from our own folders."""
    _MODEL_TYPES[cls.model_type] = cls
    return cls


def list_models(
    pattern: str | Sequence[str] = "*", pretrained: bool = False, exclude_filters: str | Sequence[str] = ()
) -> list[str]:
    """Names of the registered presets matching a shell-style `pattern` (or any of several; "" = all), sorted, as
    timm's `list_models(filter, pretrained, exclude_filters)`: `pretrained=True` keeps those with a published
    checkpoint (`list_pretrained` gives their Hub ids), `exclude_filters` drops those matching its patterns."""
    include = _patterns(pattern, "pattern") or ["*"]
    exclude = _patterns(exclude_filters, "exclude_filters")
    return sorted(
        n
        for n in _PRESETS
        if any(fnmatch.fnmatchcase(n, p) for p in include)
        and not any(fnmatch.fnmatchcase(n, p) for p in exclude)
        and (not pretrained or n in _HUB_IDS)
    )


def _patterns(value: str | Sequence[str], name: str) -> list[str]:
    """`value` (one shell-style pattern or several) as a list of non-empty patterns; TypeError for other types."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, Sequence) or not all(isinstance(v, str) for v in values):
        raise TypeError(f"{name}: expected a pattern (str) or a list of them, got {value!r}")
    return [v for v in values if v]


def list_pretrained(pattern: str = "*") -> dict[str, str]:
    """Presets matching `pattern` that have a published checkpoint -> its Hub id."""
    return {n: _HUB_IDS[n] for n in sorted(_HUB_IDS) if fnmatch.fnmatch(n, pattern)}


def pretrained_hub_id(name: str) -> str | None:
    """The Hub id of the checkpoint of preset `name` (None: it has none)."""
    return _HUB_IDS.get(name)


def create_model(
    name: str, pretrained: bool = False, checkpoint_path: str | None = None, **overrides: Any
) -> nn.Module:
    """Build the preset `name` with config `overrides`: randomly initialised, or with `pretrained=True` the weights of
    its checkpoint (its Hub id, or a local folder `checkpoint_path` holding a copy of it) in eval mode.

    With `pretrained`, `overrides` go to `perceiver.from_pretrained`: e.g. `num_classes=10,
    ignore_mismatched_sizes=True` for a new head, dropout rates, converter switches; `num_classes=0` (timm's feature
    extractor: the logits are the pooled `num_features` features) needs no flag, as no weight is drawn at random.
    A `checkpoint_path` folder must hold a model of the preset's class and structure (ValueError naming what it holds
    otherwise: a Fourier image classifier is no `vision-perceiver-learned`), or for the text heads (`text-classifier`,
    `token-classifier`, `question-answering`) a masked LM, whose embedding and encoder they start from (the class's
    `from_pretrained`).
    """
    if name not in _PRESETS:
        hub = name.removeprefix("hf-hub:")
        hint = f"; a Hub id or model folder loads with perceiver.from_pretrained({hub!r})" if "/" in hub else ""
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}{hint}")
    if not pretrained and checkpoint_path is None:
        return _PRESETS[name](**overrides)
    from perceiver.pretrained import from_pretrained

    if overrides.get("num_classes", overrides.get("num_labels")) == 0:  # timm's feature extractor: no random weights
        overrides.setdefault("ignore_mismatched_sizes", True)

    hub_id = _HUB_IDS.get(name)
    if checkpoint_path is not None:
        if not Path(checkpoint_path).expanduser().is_dir():  # a local copy: never a Hub id sent to the network
            raise FileNotFoundError(
                f"checkpoint_path {str(checkpoint_path)!r} is not a folder (resolved: "
                f"{Path(checkpoint_path).expanduser().resolve()}); for a Hub id use from_pretrained"
            )
        from perceiver.models.mlm_start import pretrained_loader  # a text head also on a masked LM's folder

        load = pretrained_loader(preset_class(name))
        model = _check_preset_class(name, checkpoint_path, load(checkpoint_path, **overrides))
        mismatch = getattr(model, "preset_mismatch", None)  # presets of one class that differ in structure
        problem = mismatch(name, overrides) if callable(mismatch) else None
        if problem:
            raise ValueError(f"{checkpoint_path} holds {problem}; load it with perceiver.from_pretrained(folder)")
        return model
    if hub_id is None:
        raise ValueError(
            f"model {name!r} has no published checkpoint; presets with one: {', '.join(sorted(_HUB_IDS))}. "
            f"Pass checkpoint_path='path/to/folder' to load your own weights"
        )
    try:
        return from_pretrained(hub_id, **overrides)
    except OSError as e:
        raise OSError(
            f"could not load the checkpoint of {name!r} ({hub_id!r} on the Hugging Face Hub): {e}\n"
            f"Offline? Download it where there is a network (`huggingface-cli download {hub_id} --local-dir DIR`) "
            f"and pass the folder: create_model({name!r}, pretrained=True, checkpoint_path='DIR') or "
            f"perceiver.from_pretrained('DIR')"
        ) from e


def preset_class(name: str) -> type | None:
    """The model class preset `name` builds, read from its function's return annotation (None if it names none)."""
    try:
        cls = typing.get_type_hints(_PRESETS[name]).get("return")
    except (NameError, TypeError):  # an annotation that does not resolve
        return None
    return cls if isinstance(cls, type) and issubclass(cls, nn.Module) else None


def _check_preset_class(name: str, checkpoint: Any, model: nn.Module) -> nn.Module:
    """`model` (loaded from `checkpoint` for preset `name`) if it is of the preset's class, else a ValueError naming
    the class the folder holds and the presets of that class."""
    cls = preset_class(name)
    if cls is None or isinstance(model, cls):
        return model
    held = type(model)
    presets = [n for n in list_models() if preset_class(n) is held]
    hint = f" (presets of that class: {', '.join(presets)})" if presets else ""
    raise ValueError(
        f"{checkpoint} holds a {held.__name__} model ({getattr(held, 'model_type', '?')}), not a {name!r} one "
        f"({cls.__name__}); load it with perceiver.from_pretrained({str(checkpoint)!r}){hint}"
    )


def model_type_class(model_type: str) -> type[PretrainedMixin]:
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; known: {', '.join(sorted(_MODEL_TYPES))}")
    return _MODEL_TYPES[model_type]


def build_preset(cls: type[M], base: Any, overrides: dict[str, Any]) -> M:
    """`cls(config)` for the preset config `base` with keyword `overrides` (flat or dotted keys, see
    `perceiver.hub.apply_overrides`; the renamed keys of earlier releases in `cls.legacy_keys` still work)."""
    import copy

    from perceiver.core.config import rename_keys
    from perceiver.hub import apply_overrides

    # a deep copy: no part config of the model is the preset's (runtime switches, reset_classifier stay local)
    return cls(copy.deepcopy(apply_overrides(base, rename_keys(getattr(cls, "legacy_keys", {}), overrides))))
