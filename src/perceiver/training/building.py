"""Building a task's network: a registry preset (`perceiver.create_model(model, **model_kwargs)`) or a pretrained model
folder / Hub id (`pretrained`), and the class count of a model's head.

A `pretrained` masked LM with `model` naming a text head (`text-classifier`, `token-classifier`, `question-answering`)
gives that head on the LM's embedding and encoder (the class's `from_pretrained`, as transformers starts
`PerceiverForSequenceClassification` from `deepmind/language-perceiver`).
"""

from __future__ import annotations

import contextlib
from typing import Any, overload

from torch import nn

#: keyword of a class count in `model_kwargs` (`num_labels` is transformers' name)
CLASS_COUNT_KEYS = ("num_classes", "num_labels")


def build_model(
    model: str = "perceiver",
    model_kwargs: dict[str, Any] | None = None,
    pretrained: str | None = None,
    reset_head: bool = False,
) -> nn.Module:
    """A registry preset (`perceiver.create_model`) or, with `pretrained`, a saved / converted model folder or Hub
    id (a masked LM's starts the text head `model` names, see the module docstring). With `reset_head` and a class
    count in `model_kwargs`, a pretrained head of another size is re-initialised (`ignore_mismatched_sizes=True`)."""
    import perceiver

    kwargs = task_model_kwargs(model_kwargs)
    if not pretrained:
        return perceiver.create_model(model, **kwargs)
    counted = any(k in kwargs for k in CLASS_COUNT_KEYS)
    if reset_head and counted:
        kwargs["ignore_mismatched_sizes"] = True
    try:
        return _loader(model)(pretrained, **kwargs).train()
    except ValueError as e:
        if counted and not reset_head and "ignore_mismatched_sizes" in str(e):
            raise ValueError(f"{e} (in a training config: --model.reset_head true)") from e
        changed = [k for k in kwargs if k not in (*CLASS_COUNT_KEYS, "ignore_mismatched_sizes")]
        if changed and any(
            m in str(e) for m in ("of shape", "does not fit", "do not fit")
        ):  # sizes meant for a model from scratch
            raise ValueError(
                f"{e}: model_kwargs override the config of the pretrained model {pretrained}, and its weights do not "
                f"fit the result ({_overridden(pretrained, kwargs, changed)}); drop them (--model.model_kwargs null) "
                f"or keep only keys that leave the weights' shapes as they are"
            ) from e
        raise


def task_model_kwargs(model_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """A task's `model_kwargs` as the model takes them: CLI nulls read as None (`cli_nulls`), and a null class count
    left out (`--model.model_kwargs.num_classes null`: the datamodule's count, as when the key is absent)."""
    return {k: v for k, v in (cli_nulls(model_kwargs) or {}).items() if k not in CLASS_COUNT_KEYS or v is not None}


def class_count_in(model_kwargs: dict[str, Any] | None) -> str | None:
    """The key of `model_kwargs` that sets the class count (`num_classes` / `num_labels`), or None (see
    `task_model_kwargs`)."""
    return next((k for k in CLASS_COUNT_KEYS if k in task_model_kwargs(model_kwargs)), None)


def _loader(model: str) -> Any:
    """How a pretrained model is read for preset `model` (`pretrained_loader` of its class: a text head also starts
    from a masked LM; any other model loads with `perceiver.from_pretrained`, `model` then unused)."""
    from perceiver.models.mlm_start import pretrained_loader
    from perceiver.models.registry import list_models, preset_class

    return pretrained_loader(preset_class(model) if model in list_models() else None)


def _overridden(pretrained: str, kwargs: dict[str, Any], keys: list[str]) -> str:
    """`key=given (pretrained: value)` for each of `keys` of `kwargs`, the value read from `pretrained`'s config."""
    import perceiver
    from perceiver.hub import ALIASES, _get_path, _paths_with

    config, shown = None, []
    with contextlib.suppress(Exception):  # only for the message: the error being raised matters more
        config = getattr(perceiver.from_pretrained(pretrained, device="meta"), "config", None)  # no weights read
    for key in keys:
        name, values = ALIASES.get(key, key), []
        with contextlib.suppress(AttributeError, TypeError):  # TypeError: a config that is no dataclass
            values = [_get_path(config, p) for p in ([tuple(name.split("."))] if "." in name else [])]
            values = values or [_get_path(config, p) for p in _paths_with(config, name)]
        shown.append(f"{key}={kwargs[key]!r} ({f'pretrained: {values[0]!r}' if values else 'not in its config'})")
    return ", ".join(shown)


@overload
def cli_nulls(kwargs: dict[str, Any]) -> dict[str, Any]: ...
@overload
def cli_nulls(kwargs: None) -> None: ...
def cli_nulls(kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
    """`kwargs` with the string "None" read as None: LightningCLI (jsonargparse 4.5x) hands a task
    `--model.model_kwargs.KEY=null` as the string "None" (a value of a `dict[str, Any]` inside `init_args`), where the
    same `null` in a YAML config arrives as None; no model keyword takes that string."""
    if kwargs is None:
        return None
    return {k: (None if isinstance(v, str) and v == "None" else v) for k, v in kwargs.items()}


def num_classes_of(model: nn.Module) -> int | None:
    """The number of classes a model's head predicts (`model.num_classes`, else its config's `num_classes` /
    `num_labels`), or None for a model without a classification head."""
    config = getattr(model, "config", None)
    if getattr(config, "final_classifier_head", True) is False:  # classic Perceiver returning latents
        return None
    value = getattr(model, "num_classes", None)
    for candidate in (value, *(getattr(config, k, None) for k in CLASS_COUNT_KEYS)):
        if isinstance(candidate, int) and not isinstance(candidate, bool):
            return candidate
    return None


def class_count_key(model: nn.Module) -> str:
    """The config field that holds a model's class count (`num_classes`, or `num_labels` of transformers-style
    configs), the keyword to build it with another count."""
    config = getattr(model, "config", None)
    return next((k for k in CLASS_COUNT_KEYS if hasattr(config, k)), "num_classes")
