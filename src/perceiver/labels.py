"""Class names of a classifier, as transformers keeps them (`config.id2label`): `model.id2label` `{class id: name}`
on our models, written into and read from `config.json` (`"id2label"`, keys as strings, as transformers writes
them), taken from a transformers checkpoint and given back by `to_transformers`; `perceiver predict` prints them.

A model without names has `id2label = None`; transformers' placeholders (`LABEL_0`, `LABEL_1`, ...) count as none.
Names that do not cover the model's classes (another count, e.g. after `reset_classifier`) are not used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["class_names", "id2label_from_json", "id2label_to_json", "set_id2label"]


def id2label_from_json(value: object, source: str = "config.json") -> dict[int, str] | None:
    """`{"0": "cat", ...}` (transformers' and our config.json) as `{0: "cat", ...}`; None for transformers'
    placeholders `LABEL_i`; ValueError naming `source` for anything but a mapping of integer keys to strings."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{source}: key 'id2label': expected an object of class ids to names, got {value!r}")
    try:
        labels = {int(k): v for k, v in value.items()}
    except (TypeError, ValueError):
        raise ValueError(
            f"{source}: key 'id2label': expected integer class ids as keys, got {list(value)[:5]}"
        ) from None
    if not all(isinstance(v, str) for v in labels.values()):
        raise ValueError(f"{source}: key 'id2label': expected names (strings), got {list(labels.values())[:5]}")
    if all(name == f"LABEL_{i}" for i, name in labels.items()):
        return None
    return labels


def id2label_to_json(model: object) -> dict[str, dict[str, str]]:
    """`{"id2label": {"0": name, ...}}` for a config.json when `model` has class names that cover its classes."""
    names = class_names(model)
    return {"id2label": {str(i): name for i, name in enumerate(names)}} if names is not None else {}


def class_names(model: object) -> list[str] | None:
    """`model.id2label` as a list in class order, if it names each of the model's `num_classes` classes once."""
    labels: Any = getattr(model, "id2label", None)
    count = getattr(model, "num_classes", None)
    if not labels or not isinstance(count, int) or sorted(labels) != list(range(count)):
        return None
    return [labels[i] for i in range(count)]


def set_id2label(model: object, labels: Mapping[int, str] | list[str] | None) -> None:
    """Give `model` its class names (a mapping or a list in class order); None removes them."""
    if isinstance(labels, list):
        labels = dict(enumerate(labels))
    setattr(model, "id2label", dict(labels) if labels else None)  # noqa: B010  # a plain attribute on a Module
