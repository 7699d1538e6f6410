"""The helpers of `PretrainedMixin.from_pretrained` (`perceiver.hub`): the device it loads onto
(`map_location` or transformers' `device` / `device_map`), the weights file of a model folder (one file or the index of
shards), loading through `perceiver.from_pretrained` as a given class (a Hub id, a transformers folder, Hub options),
and giving a loaded model a head of another size (`resize_head`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, TypeVar

import torch

from perceiver.labels import set_id2label
from perceiver.loading import resolve_device
from perceiver.save_files import CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME

T = TypeVar("T")
logger = logging.getLogger("perceiver")


def _device_argument(map_location: str | torch.device, overrides: dict[str, Any]) -> str | torch.device:
    """The device to load onto: `map_location`, or transformers' `device` / `device_map` (one device, see
    `perceiver.from_pretrained`) taken out of `overrides`; ValueError when they name different devices."""
    from perceiver.pretrained import _one_device

    device, device_map = overrides.pop("device", None), overrides.pop("device_map", None)
    chosen = _one_device(device, device_map)
    if chosen is None:
        return map_location
    if str(map_location) != "cpu" and resolve_device(map_location) != resolve_device(chosen):
        given = f"device={device!r}" if device is not None else f"device_map={device_map!r}"
        raise ValueError(f"pass map_location or {given.split('=')[0]}, not both (got {map_location!r} and {given})")
    return chosen


def _weights_file(folder: Path) -> Path:
    """The weights of a model folder of ours: `model.safetensors`, else the index of its shards; FileNotFoundError
    naming the folder, what it holds and what was expected."""
    for name in (WEIGHTS_NAME, INDEX_NAME):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir())
    pickled = [n for n in found if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    hint = f"; {pickled[0]} is not read (safetensors only, never pickle)" if pickled else ""
    raise FileNotFoundError(
        f"expected {WEIGHTS_NAME} (or the shards of {INDEX_NAME}) next to {CONFIG_NAME} in {folder}, found "
        f"{found[:10]}{hint}"
    )


def _other_model_type(folder: Path, model_type: Any, cls: type) -> ValueError:
    """The error of `cls.from_pretrained(folder)` for a folder whose config.json holds another `model_type`: both
    types, and the class that loads it (`perceiver.from_pretrained` loads any)."""
    import perceiver.models  # noqa: F401  (registers the model types)
    from perceiver.models.registry import model_type_class

    try:
        hint = f"; it is a {model_type_class(model_type).__name__}: load it with perceiver.from_pretrained"
    except (ValueError, TypeError):
        hint = ""
    expected = getattr(cls, "model_type", None)
    return ValueError(f"{folder} holds a {model_type!r} model, expected {expected!r} ({cls.__name__}){hint}")


def _load_as(cls: type[T], name: str | os.PathLike, **options: Any) -> T:
    """`perceiver.from_pretrained(name, **options)` (a Hub id, a transformers folder, a subfolder) as a `cls`, or a
    ValueError naming what it holds."""
    from perceiver.pretrained import from_pretrained

    model = from_pretrained(name, **options)
    if not isinstance(model, cls):
        raise ValueError(f"{os.fspath(name)} holds a {type(model).__name__}, expected a {cls.__name__}")
    return model


def resize_head(model: Any, num_classes: int, ignore_mismatched_sizes: bool, source: str) -> list[str]:
    """Give a loaded `model` a classifier of `num_classes` outputs: nothing when it has that many already, a fresh
    head (`reset_classifier`, without the old head's class names) with `ignore_mismatched_sizes`, else a ValueError.
    Returns (and logs) the names of the re-initialised tensors."""
    have = model.num_classes
    if have == num_classes:
        return []
    if getattr(model, "fixed_head", False) or getattr(model, "classifier_name", "") is None:  # no class head to reset
        try:
            model.reset_classifier(num_classes)
        except NotImplementedError as e:
            raise ValueError(f"{source}: num_classes={num_classes} cannot be given: {e}") from None
    if not ignore_mismatched_sizes:
        raise ValueError(
            f"{source} has a head of {have} classes, asked for num_classes={num_classes}; pass "
            f"ignore_mismatched_sizes=True to re-initialise the head for fine-tuning"
        )
    before = {k: (v.data_ptr(), tuple(v.shape)) for k, v in model.state_dict().items()}
    model.reset_classifier(num_classes)
    set_id2label(model, None)  # the names of the replaced head's classes name nothing now
    after = {k: (v.data_ptr(), tuple(v.shape)) for k, v in model.state_dict().items()}
    changed = sorted(k for k in after if before.get(k) != after[k])
    removed = sorted(set(before) - set(after))
    what = "newly initialised" if changed or not removed else "removed (num_classes=0: pre-logits features)"
    logger.warning(
        "Some weights of %s were %s because the head of %s has %d classes, not %d: %s",
        type(model).__name__,
        what,
        source,
        have,
        num_classes,
        changed or removed,
    )
    model.reinitialized_keys = changed
    return changed
