"""`save_pretrained` / `from_pretrained` for our own models: a folder with `config.json` + `model.safetensors` (or,
above `max_shard_size`, shards with their index `model.safetensors.index.json`, as transformers writes them).

Never pickle: configs are dataclasses written as JSON, weights are safetensors (shared / tied tensors are stored once
and re-tied on load). Both files are written to a temporary folder next to the target (`.NAME.PID.XXXX.tmp`) first
and moved into place (a new folder is the temporary one renamed; in an existing one a failed replacement undoes those
made), so a failed save leaves either the old model directory or the new one, never half of one (only a process
killed between the two renames of an overwrite can leave the new config.json beside the old weights); a temporary
folder left by a killed process is removed by the next `save_pretrained` next to it. Both files get the permissions
of a new file under the umask (0644 under the usual 022).

Loading validates: `config.json` must be a JSON object whose keys are fields of the config with values of their
annotated types (ints at most `MAX_INT`, finite floats); the safetensors file must hold every tensor of the model
with its shape, in one floating dtype (which the model takes; or `dtype=` names the one to cast to) and integer
tensors as the model holds them; with `check_finite=True` (default) every floating tensor must be finite, so that
corrupted data bytes do not load silently. Errors name the file and the key. The model is built without random
initial weights (`perceiver.loading.no_init_weights`) and every check runs before it receives a tensor.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

import torch
from torch import nn

from perceiver import save_files
from perceiver.hub_load import _device_argument, _load_as, _other_model_type, _weights_file, resize_head
from perceiver.labels import id2label_from_json, id2label_to_json, set_id2label
from perceiver.loading import load_safetensors_checked, no_init_weights, resolve_device, resolve_dtype
from perceiver.save_files import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    install_folder,
)

#: what transformers' `from_pretrained` takes besides config fields for a folder of ours: where to find it (Hub
#: options, `subfolder`) and the class names (`id2label`, `label2id`); `perceiver.from_pretrained` reads them
LOADER_KEYWORDS = (
    *("subfolder", "revision", "token", "cache_dir", "local_files_only", "force_download"),
    *("id2label", "label2id"),
)

T = TypeVar("T", bound="PretrainedMixin")


#: largest integer a config field may hold (sizes beyond it are corrupt files, not models)
MAX_INT = 10**8


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in `path`; `ValueError` naming the file for an empty file, invalid JSON or a non-object."""
    path = Path(path)
    text = path.read_text()
    if not text.strip():
        raise ValueError(f"{path}: expected a JSON object, got an empty file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: expected a JSON object, got invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__} {json.dumps(data)[:60]}")
    return data


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits the annotation `hint` (int, float, bool, str, None, unions, Literal, tuple, list,
    dict, nested dataclasses); unknown annotations accept anything."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_INT
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if not args:
            return True
        if origin is tuple and Ellipsis not in typing.get_args(hint):
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict)
    return True


def config_from_dict(cls: type, data: dict[str, Any], source: str | os.PathLike | None = None) -> Any:
    """Build the dataclass `cls` from `data` (nested dataclass fields from nested dicts), rejecting unknown keys.

    With `source` (the file the data comes from) values of the wrong type or range (integers beyond `MAX_INT`,
    non-finite floats) are rejected too, and every error names the file and the key (dotted for nested parts)."""
    where = f"{source}: " if source is not None else ""
    if not isinstance(data, dict):
        raise ValueError(f"{where}expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}unknown keys for {cls.__name__}: {unknown}; expected a subset of {sorted(names)}")
    hints = typing.get_type_hints(cls)
    data = dict(data)
    for key, value in data.items():
        hint = hints.get(key, Any)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict):
            try:
                data[key] = config_from_dict(hint, value, source)
            except ValueError as e:
                raise ValueError(str(e).replace(f"{where}key '", f"{where}key '{key}.", 1)) from None
            continue
        if source is not None and not _matches(value, hint):
            extra = f" (integers at most {MAX_INT}, finite floats)" if hint in (int, float) else ""
            raise ValueError(
                f"{where}key {key!r} of {cls.__name__}: expected {_type_name(hint)}{extra}, got {value!r} "
                f"({type(value).__name__})"
            )
    if source is None:
        return cls(**data)
    try:
        return cls(**data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}invalid {cls.__name__}: {e}") from e


def config_argument(cls: type, config: Any, kwargs: dict[str, Any]) -> Any:
    """The config a model constructor `Model(config=None, **kwargs)` was given: `config` (an instance of the
    dataclass `cls`) or one built from `kwargs`, its fields, checked as `config_from_dict` does (ValueError naming
    unknown keys and the fields there are); not both."""
    if config is not None and kwargs:
        raise ValueError(f"pass a {cls.__name__} or its fields as keywords, not both (got config and {sorted(kwargs)})")
    if config is None:
        return config_from_dict(cls, kwargs)
    if not isinstance(config, cls):
        hint = f" (for a dict d: {cls.__name__}(**d))" if isinstance(config, dict) else ""
        raise ValueError(f"expected a {cls.__name__} or its fields as keywords, got {type(config).__name__}{hint}")
    return config


#: flat names of the transformers heads that mean one of ours
ALIASES = {"num_labels": "num_classes", "in_chans": "in_channels", "img_size": "image_size"}  # transformers', timm's


def _paths_with(config: Any, name: str, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Dotted paths of every field called `name` in `config` and its nested part configs."""
    found = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == name:
            found.append((*prefix, f.name))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            found += _paths_with(value, name, (*prefix, f.name))
    return found


class _Tree(dict):
    """Assignments below one part config: field -> value or `_Tree` of its own fields."""


def _apply_tree(config: Any, tree: _Tree) -> Any:
    """A copy of `config` with every assignment of `tree` made in one `replace` per part (so a part's
    `__post_init__` checks the new values together, not one at a time)."""
    changes = {}
    for name, value in tree.items():
        current = getattr(config, name)
        if isinstance(value, _Tree):
            changes[name] = _apply_tree(current, value)
        elif dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[name] = apply_overrides(current, value)
        else:
            changes[name] = value
    return dataclasses.replace(config, **changes)


def apply_overrides(config: Any, overrides: dict[str, Any], source: str | os.PathLike | None = None) -> Any:
    """A copy of the (nested) config dataclass `config` with `overrides` applied.

    Keys may be dotted paths (`"encoder.num_latents"`), fields of the top config (a dict for a part config merges
    into it), or the name of a field of the nested part configs: such a flat key sets that field in every part that
    has it (`attn_dropout=0.1` sets the encoder's and the decoder's; `latent_dim=64` the encoder's and the decoder's
    latent width), so presets take the short keywords timm users know. `num_labels` is an alias of `num_classes`.
    Unknown keys are a ValueError listing what exists; with `source`, values are type-checked as in
    `config_from_dict` and errors name it.
    """
    where = f"{source}: " if source is not None else ""
    for alias, name in ALIASES.items():
        if alias in overrides and name in overrides:
            raise ValueError(
                f"{where}pass {name} or its alias {alias}, not both "
                f"(got {name}={overrides[name]!r}, {alias}={overrides[alias]!r})"
            )
    tree = _Tree()
    for key, value in overrides.items():
        key = ALIASES.get(key, key)
        if "." in key:
            paths = [tuple(key.split("."))]
            try:
                _get_path(config, paths[0])
            except AttributeError:
                raise ValueError(f"{where}unknown key {key!r} for {type(config).__name__}") from None
        else:
            paths = _paths_with(config, key)
            top: list[tuple[str, ...]] = [p for p in paths if len(p) == 1]
            paths = top or paths
        if not paths:
            known = sorted({".".join(p) for p in _all_paths(config)})
            close = difflib.get_close_matches(key, sorted({p.rsplit(".", 1)[-1] for p in known}), n=3, cutoff=0.6)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise ValueError(
                f"{where}unknown keys [{key!r}] for {type(config).__name__}{hint}; expected a field of it or of its "
                f"parts: {known}"
            )
        for path in paths:
            parent = _get_path(config, path[:-1]) if len(path) > 1 else config
            given = value
            if path[-1] in getattr(type(parent), "square_fields", ()) and type(value) is int and value > 0:
                given = (value, value)  # `image_size=224` (timm's img_size, an int): a square (224, 224)
            if source is not None:
                hint = typing.get_type_hints(type(parent)).get(path[-1], Any)
                if not dataclasses.is_dataclass(hint) and not _matches(given, hint):
                    raise ValueError(
                        f"{where}key {'.'.join(path)!r}: expected {_type_name(hint)}, got {value!r} "
                        f"({type(value).__name__})"
                    )
            node = tree
            for name in path[:-1]:
                node = node.setdefault(name, _Tree())
            node[path[-1]] = given
    try:
        return _apply_tree(config, tree)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}invalid overrides: {e} (among {sorted(overrides)})") from e


def _get_path(config: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        if not dataclasses.is_dataclass(config) or name not in {f.name for f in dataclasses.fields(config)}:
            raise AttributeError(name)
        config = getattr(config, name)
    return config


def _all_paths(config: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out += _all_paths(value, (*prefix, f.name))
        else:
            out.append((*prefix, f.name))
    return out


def pop_num_classes(num_classes: int | None, overrides: dict[str, Any]) -> int | None:
    """`num_classes`, or transformers' name for it (`num_labels`) taken out of `overrides`."""
    if "num_labels" not in overrides:
        return num_classes
    if num_classes is not None:
        raise ValueError("pass num_classes or its alias num_labels, not both")
    return overrides.pop("num_labels")


#: version of the config.json layout: 1 = flat task configs (releases before nested part configs, no
#: `format_version` key), 2 = nested part configs (`encoder`, `decoder`, `adapter`, ...)
FORMAT_VERSION = 2

logger = logging.getLogger("perceiver")


class PretrainedMixin:
    """Adds `save_pretrained(dir)`, `from_pretrained(dir)` and `push_to_hub(repo_id)` to an `nn.Module` built from
    `self.config`.

    Subclasses set `config_class` (a dataclass) and `model_type` (a registry name written into config.json) and take
    the config as the single argument of their constructor via `from_config`. `legacy_keys` maps the flat keys of
    format-1 config files that were renamed to their new (dotted) paths; the other flat keys are routed by
    `apply_overrides`.
    """

    config_class: ClassVar[type]
    model_type: ClassVar[str]
    legacy_keys: ClassVar[dict[str, str | tuple[str, ...]]] = {}
    id2label: dict[int, str] | None = None  # a classifier's class names, in config.json (`perceiver.labels`)

    @classmethod
    def from_config(cls: type[T], config: Any) -> T:
        return cls(config)  # type: ignore[call-arg]  # subclasses take the config as their one argument

    def save_pretrained(
        self, save_directory: str | os.PathLike, *, max_shard_size: int | str = "50GB", safe_serialization: bool = True
    ) -> Path:
        """Write `config.json`, `model.safetensors` (and the checkpoint's `preprocessor_config.json`, see
        `perceiver.save_files.read_preprocessor_config`) into `save_directory` atomically; returns the path.

        Weights larger than `max_shard_size` (bytes, or transformers' strings: `"5GB"`, `"50KB"`, `"100MiB"`;
        default "50GB", the Hub's limit per file) are written in shards as transformers writes them
        (`model-00001-of-0000N.safetensors` + `model.safetensors.index.json`, which `from_pretrained` reads). Weight
        files of an earlier save into the folder that this one does not replace are removed. Weights are safetensors
        only: `safe_serialization=False` (transformers' pickled `pytorch_model.bin`) is a ValueError.
        A model with LoRA adapters (`perceiver.lora.add_lora`) is saved with them merged into the weights, under the
        plain model's keys (the model itself is not changed)."""
        from safetensors.torch import save_file, save_model

        from perceiver.lora import has_lora, merged_state_dict

        assert isinstance(self, nn.Module)
        if safe_serialization is not True:
            raise ValueError(
                f"safe_serialization={safe_serialization!r}: perceiver-torch writes safetensors only (never pickle, "
                f"so no pytorch_model.bin); drop the argument (transformers reads model.safetensors too)"
            )
        shard_size = save_files.parse_shard_size(max_shard_size)
        meta = [k for k, v in self.state_dict().items() if v.device.type == "meta"]
        if meta:  # e.g. from_pretrained(device="meta"): shapes, no values
            raise ValueError(
                f"cannot save a {type(self).__name__} whose tensors {meta[:3]} are on the meta device (shapes without "
                f"values); load or initialise its weights on a real device first"
            )
        target = Path(save_directory).expanduser()  # "~/x", as perceiver.from_pretrained reads it
        with save_files.staging_folder(target) as tmp:
            config = {"model_type": self.model_type, "format_version": FORMAT_VERSION, **config_to_dict(self.config)}
            config |= id2label_to_json(self)
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
            names: tuple[str, ...] = (WEIGHTS_NAME,)
            nbytes = sum(v.numel() * v.element_size() for v in self.state_dict().values())
            if nbytes > shard_size:  # (tied tensors counted twice: at worst one file written as shards of one)
                state = merged_state_dict(self) if has_lora(self) else self.state_dict()
                names = save_files.write_shards(state, tmp, shard_size)
            elif has_lora(self):
                state, seen = merged_state_dict(self), set()
                for k, v in state.items():  # tied weights: save_file refuses shared storage, later names get a copy
                    ptr = (v.untyped_storage().data_ptr(), v.storage_offset())
                    state[k] = v.detach().contiguous() if ptr not in seen else v.detach().clone()
                    seen.add(ptr)
                save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            else:
                save_model(self, str(tmp / WEIGHTS_NAME))
            install_folder(tmp, target, (CONFIG_NAME, *names, *save_files.write_preprocessor_config(self, tmp)))
            save_files.remove_stale_weights(target, names)
        return target

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str | None = None,
        commit_description: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        tags: list[str] | None = None,
        model_card: str | None = None,
        max_shard_size: int | str = "50GB",
    ) -> str:
        """Upload what `save_pretrained` writes and a model card (`README.md`) to the Hub repo `repo_id` (created if
        needed; a bare name is the repo in the user's namespace) in one commit with huggingface_hub, as transformers'
        `push_to_hub`; returns the commit URL (the pull request's with `create_pr=True`).

        `revision` is the branch to push to (created if needed); `commit_message` (default "Upload perceiver-torch
        model") and `commit_description` describe the commit. The repo's model card is kept when it has one (with
        `tags` added); otherwise (or given `model_card`, its text) a new one is written. Weight files of an earlier
        push that this one does not replace are deleted in the commit (see `perceiver.hub_push`)."""
        from perceiver.hub_push import push_to_hub

        return push_to_hub(
            self,
            repo_id,
            private=private,
            token=token,
            commit_message=commit_message,
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
            tags=tags,
            model_card=model_card,
            max_shard_size=max_shard_size,
        )

    @classmethod
    def config_from_file(cls, data: dict[str, Any], source: str | os.PathLike, overrides: dict[str, Any]) -> Any:
        """The config of a config.json dict (without `model_type`) of either format, with `overrides` applied."""
        version = data.pop("format_version", 1)
        if version == FORMAT_VERSION:
            config = config_from_dict(cls.config_class, data, source=source)
        elif version == 1:  # flat keys of the releases before nested part configs
            from perceiver.core.config import rename_keys

            config = apply_overrides(cls.config_class(), rename_keys(cls.legacy_keys, data), source=source)
        else:
            raise ValueError(f"{source}: format_version {version!r} is not one this release reads (1 or 2)")
        return apply_overrides(config, overrides, source=f"{source} + overrides") if overrides else config

    @classmethod
    def from_pretrained(
        cls: type[T],
        directory: str | os.PathLike,
        map_location: str | torch.device = "cpu",
        check_finite: bool = True,
        num_classes: int | None = None,
        ignore_mismatched_sizes: bool = False,
        dtype: torch.dtype | str | None = "auto",
        torch_dtype: torch.dtype | str | None = None,
        mmap: bool = False,
        **overrides: Any,
    ) -> T:
        """Load a model written by `save_pretrained` (`model.safetensors` or its shards); `overrides` replace config
        fields (e.g. dropout; `config=` a config of this class replaces config.json's). A Hub id, a transformers
        checkpoint folder, `subfolder=`, the Hub keywords (`revision`, `token`, `cache_dir`, `local_files_only`,
        `force_download`) or `id2label` load through `perceiver.from_pretrained` (so a local folder takes them too, as
        in transformers); a model of another class is then a ValueError naming both.

        `dtype="auto"` (default, as transformers) gives the model the dtype it was saved in (a model saved after
        `.to(torch.bfloat16)` loads in bf16); a floating `torch.dtype` (or its name; `torch_dtype` is accepted as
        transformers' older name) loads every floating tensor in that dtype. `map_location` (or transformers'
        `device` / `device_map` naming one device) is the device the model is loaded onto (ValueError for a name
        torch does not know, RuntimeError for one this machine lacks).
        `num_classes=K` with `ignore_mismatched_sizes=True` re-initialises a classifier of another size (and logs
        which tensors); without it a different K is an error. `check_finite` rejects weights holding
        NaN / inf (corrupted files); see the module docstring for the checks. The model is built without drawing
        random initial weights (`no_init_weights`), since every tensor is then read from the file. `mmap=True` keeps
        the tensors as copy-on-write views of the memory-mapped file (faster, no private copy; the file must not be
        rewritten in place while the model lives, see `perceiver.loading.load_safetensors_checked`).
        """
        dtype = resolve_dtype(dtype, torch_dtype)
        device = resolve_device(_device_argument(map_location, overrides), "map_location")
        num_classes = pop_num_classes(num_classes, overrides)
        for key in ("trust_remote_code", "low_cpu_mem_usage"):  # transformers' keywords for what loading does anyway
            overrides.pop(key, None)
        path = Path(directory).expanduser()
        if (
            not (path / CONFIG_NAME).is_file()
            or "architectures" in read_config_file(path / CONFIG_NAME)
            or any(key in overrides for key in LOADER_KEYWORDS)
        ):
            # a Hub id, a transformers checkpoint, a subfolder, Hub options: what `perceiver.from_pretrained` reads
            options = dict(check_finite=check_finite, num_classes=num_classes, dtype=dtype, device=device, mmap=mmap)
            return _load_as(cls, directory, ignore_mismatched_sizes=ignore_mismatched_sizes, **options, **overrides)
        weights = _weights_file(path)
        config_file = path / CONFIG_NAME
        data = read_config_file(config_file)
        model_type = data.pop("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise _other_model_type(path, model_type, cls)
        labels = id2label_from_json(data.pop("id2label", None), str(config_file))
        given = overrides.pop("config", None)  # transformers' config= : this config instead of config.json's
        if given is None:
            config = cls.config_from_file(data, config_file, overrides)
        else:
            config = config_argument(cls.config_class, given, {})
            config = apply_overrides(config, overrides, source="overrides") if overrides else config
        with no_init_weights():
            model = cls.from_config(config)
        set_id2label(model, labels)
        save_files.read_preprocessor_config(model, path)
        assert isinstance(model, nn.Module)  # the mixin's classes are modules
        load_safetensors_checked(model, weights, device=str(device), check_finite=check_finite, dtype=dtype, mmap=mmap)
        if num_classes is not None:
            resize_head(model, num_classes, ignore_mismatched_sizes, str(path))
        return model.eval()
