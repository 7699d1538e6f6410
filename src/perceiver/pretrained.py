"""`perceiver.from_pretrained(path_or_hub_id)`: our own model folders and transformers Perceiver checkpoints.

- Our folders (`save_pretrained`): `config.json` with a `model_type` we registered + `model.safetensors`.
- transformers checkpoints: `config.json` with `architectures` (e.g. `PerceiverForMaskedLM`) + `model.safetensors`
  or `pytorch_model.bin` (read with `torch.load(weights_only=True)`), one file or shards with their `.index.json`;
  a converter registered for the architecture builds our model and maps the weights.
A name that is not a local folder is fetched from the Hugging Face Hub with `huggingface_hub` (where a network is);
a name that looks like a local path (empty, starting with `.`, `/` or `~`, with more than one separator, or whose first
component exists here) never goes to the Hub: a missing one is a `FileNotFoundError` naming it. `config.json` and the
weights are validated (see `perceiver.hub`); `check_finite=True` rejects weights holding NaN / inf.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from perceiver.hub import pop_num_classes, read_config_file, resize_head
from perceiver.labels import class_names, id2label_from_json, set_id2label
from perceiver.loading import (
    check_finite_tensors,
    no_init_weights,
    read_safetensors,
    read_shard_index,
    resolve_device,
    resolve_dtype,
    stored_floating_dtype,
)
from perceiver.models.registry import model_type_class
from perceiver.save_files import read_preprocessor_config

# transformers architecture name -> converter(config dict, state dict) -> our model.
HF_CONVERTERS: dict[str, Callable[..., nn.Module]] = {}
# transformers architecture name -> (config dict -> the weight names its converter reads)
HF_REQUIRED_KEYS: dict[str, Callable[[dict[str, Any]], Collection[str]]] = {}
Converter = TypeVar("Converter", bound=Callable[..., nn.Module])


def register_hf_converter(
    *architectures: str, required_keys: Callable[[dict[str, Any]], Collection[str]] | None = None
) -> Callable[[Converter], Converter]:
    """Decorator: `fn(hf_config: dict, state_dict: dict, **options) -> nn.Module` converts these heads.

    `required_keys(hf_config)` names the weights every checkpoint of these heads holds (at least those the converter
    reads to size the model): `from_pretrained` checks them before converting, so weights that do not belong to the
    config are one ValueError naming the folder, the architecture and the keys, not a KeyError from inside."""

    def wrap(fn: Converter) -> Converter:
        for arch in architectures:
            HF_CONVERTERS[arch] = fn
            if required_keys is not None:
                HF_REQUIRED_KEYS[arch] = required_keys
        return fn

    return wrap


def check_hf_keys(folder: Path, arch: str, config: dict[str, Any], state_dict: dict[str, Tensor]) -> None:
    """ValueError naming `folder`, `arch` and the missing (and a few unexpected) keys when `state_dict` lacks a
    weight the converter of `arch` needs (`register_hf_converter(required_keys=...)`); unexpected keys are those
    under none of the top-level names the required ones have."""
    required = HF_REQUIRED_KEYS.get(arch)
    if required is None:
        return
    need = list(dict.fromkeys(required(config)))
    missing = [key for key in need if key not in state_dict]
    if not missing:
        return
    tops = {key.split(".", 1)[0] for key in need}
    unexpected = sorted(key for key in state_dict if key.split(".", 1)[0] not in tops)
    found = f"; unexpected: {unexpected[:5]}{_more(unexpected, 5)}" if unexpected else ""
    raise ValueError(
        f"{folder}: the weights do not match its config (architectures: {arch}): missing {missing[:5]}"
        f"{_more(missing, 5)}{found}; expected the weights of a transformers {arch} checkpoint"
    )


def _more(keys: Collection[Any], shown: int) -> str:
    return f" and {len(keys) - shown} more" if len(keys) > shown else ""


def looks_local(name: str) -> bool:
    """Whether `name` is meant as a local path rather than a Hub id `owner/name` (see the module docstring): empty,
    starting with `.`, `/` or `~`, a bare name without a separator (`my-model`: Hub ids have an owner), more than one
    separator, or a first component that exists here (`runs/model` next to a `runs` folder)."""
    if not name or name.startswith((".", "/", "~", os.sep)):
        return True
    parts = re.split(r"[/\\]", name)
    return len(parts) != 2 or Path(parts[0]).exists()


#: keywords of `from_pretrained` that go to `huggingface_hub.snapshot_download` for a Hub id (transformers' names)
HUB_OPTIONS = ("revision", "token", "cache_dir", "local_files_only", "force_download")

#: transformers' keywords that ask for what loading here always does: `trust_remote_code` (no code from a folder or
#: repo is ever run, so there is nothing to trust) and `low_cpu_mem_usage` (models are built without random weights)
NO_OP_OPTIONS = ("trust_remote_code", "low_cpu_mem_usage")

#: weight files of a transformers folder, in the order they are preferred (a sharded checkpoint is its index)
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
BIN_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def _subfolder_prefix(subfolder: str | os.PathLike | None) -> str:
    """`subfolder` as a prefix of the Hub file patterns (`"sub/"`; `""` for none)."""
    if subfolder is None or os.fspath(subfolder) in ("", "."):
        return ""
    sub = Path(subfolder)
    if sub.is_absolute() or ".." in sub.parts:
        raise ValueError(f"subfolder: expected a relative path inside the model folder, got {os.fspath(subfolder)!r}")
    return sub.as_posix().strip("/") + "/"


def _subfolder(folder: Path, subfolder: str | os.PathLike | None) -> Path:
    """`folder / subfolder` (transformers' `subfolder`: a model in a folder of a repo); `FileNotFoundError` naming
    both when that is not a folder."""
    sub = _subfolder_prefix(subfolder)
    if sub and not (folder / sub).is_dir():
        raise FileNotFoundError(f"expected a model folder at subfolder {sub.rstrip('/')!r} of {folder}, no such folder")
    return folder / sub if sub else folder


def _file_hint(path: Path) -> str:
    """What to pass instead of the file `path` (a file of a model folder, a Lightning checkpoint)."""
    if any((path.parent / name).is_file() for name in ("config.json", "adapter_config.json")):
        return f"; pass the folder that holds it: {path.parent}"
    if path.suffix == ".ckpt":
        return (
            "; a Lightning checkpoint holds the training state, not a model folder: pass the model folder its run "
            "wrote (RUN_DIR/model), or save one with model.save_pretrained(dir); a krasserm perceiver-io checkpoint "
            "converts with perceiver.interop.krasserm_checkpoint.from_krasserm_checkpoint(path)"
        )
    return ""


def resolve(path_or_id: str | os.PathLike, subfolder: str | os.PathLike | None = None, **hub_options: Any) -> Path:
    """A local folder as is; otherwise download the files we need from the Hub (`hub_options`: `revision` (a branch,
    tag or commit), `token`, `cache_dir`, `local_files_only`, `force_download`, as `snapshot_download` takes them).
    `subfolder` names the model's folder inside the folder or repo (transformers' keyword). From the Hub, safetensors
    weights are fetched when the repo has them and `pytorch_model.bin` only when it has none, never both."""
    name = os.fspath(path_or_id)
    path = Path(name).expanduser()
    if name and path.is_dir():
        return _subfolder(path, subfolder)
    if name and path.exists():
        raise ValueError(f"expected a model folder or a Hub id, got the file {path}{_file_hint(path)}")
    if isinstance(path_or_id, Path) or looks_local(name):
        hint = " (a Hub id is 'owner/name')" if name and not re.search(r"[/\\]", name) else ""
        raise FileNotFoundError(f"expected a model folder (config.json + weights) at {name!r}, no such folder{hint}")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{name!r} is not a local folder; fetching it from the Hub needs huggingface_hub: "
            "pip install 'perceiver-torch[hub]'"
        ) from e
    sub = _subfolder_prefix(subfolder)
    patterns = ["config.json", "*.safetensors", "*.safetensors.index.json", "preprocessor_config.json"]
    patterns += ["adapter_config.json", "perceiver_adapter.json"]  # LoRA adapter folders (perceiver.lora)
    try:
        folder = Path(snapshot_download(name, allow_patterns=[sub + p for p in patterns], **hub_options))
        if not any((folder / sub / f).is_file() for f in (*SAFETENSORS_FILES, "adapter_model.safetensors")):
            bins = ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]
            folder = Path(snapshot_download(name, allow_patterns=[sub + p for p in bins], **hub_options))
    except HFValidationError as e:
        raise FileNotFoundError(f"expected a model folder or a Hub id 'owner/name', got {name!r}: {e}") from None
    except Exception as e:  # offline, unknown repo, gated, HTTP errors: huggingface_hub has many types for them
        raise OSError(
            f"could not fetch {name!r} from the Hugging Face Hub ({type(e).__name__}: {e}); if you are offline, "
            f"download it elsewhere and pass its local folder instead"
        ) from e
    return _subfolder(folder, subfolder)


def _read_shards(index: Path, read: Callable[[Path], dict[str, Tensor]]) -> dict[str, Tensor]:
    """Every tensor of the sharded checkpoint whose index (`*.index.json`, transformers' `weight_map`) is `index`;
    ValueError naming the index for a malformed one, a shard outside the folder or a tensor not in its shard,
    FileNotFoundError naming a missing shard."""
    weight_map = read_shard_index(index)  # checked: an object of names -> shard files in its folder
    tensors: dict[str, Tensor] = {}
    for shard in dict.fromkeys(weight_map.values()):
        if not (index.parent / shard).is_file():
            raise FileNotFoundError(f"{index} names the shard {shard}, which is not in {index.parent}")
        tensors |= read(index.parent / shard)
    missing = sorted(key for key in weight_map if key not in tensors)
    if missing:
        raise ValueError(f"{index}: tensors {missing[:5]}{_more(missing, 5)} are not in the shards it names")
    return tensors


def _read_bin(path: Path) -> dict[str, Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: expected a torch state dict of tensors, could not read it ({e})") from None


def load_state_dict(folder: Path) -> dict[str, Tensor]:
    """Weights of a transformers checkpoint folder: safetensors preferred, else `pytorch_model.bin` (no pickle);
    either one file or shards with their `.index.json`, as transformers writes large models."""
    st, st_index = (folder / name for name in SAFETENSORS_FILES)
    bin_file, bin_index = (folder / name for name in BIN_FILES)
    if st.is_file():
        return read_safetensors(st)
    if st_index.is_file():
        return _read_shards(st_index, read_safetensors)
    if bin_file.is_file():
        return _read_bin(bin_file)
    if bin_index.is_file():
        return _read_shards(bin_index, _read_bin)
    raise FileNotFoundError(
        f"expected model.safetensors or pytorch_model.bin (or shards with model.safetensors.index.json / "
        f"pytorch_model.bin.index.json) in {folder}, found {sorted(p.name for p in folder.iterdir())}"
    )


def _import_converters() -> None:
    import perceiver.interop  # noqa: F401  (registers the converters)


def from_pretrained(
    path_or_id: str | os.PathLike,
    check_finite: bool = True,
    num_classes: int | None = None,
    ignore_mismatched_sizes: bool = False,
    dtype: torch.dtype | str | None = "auto",
    device: str | torch.device | None = None,
    torch_dtype: torch.dtype | str | None = None,
    mmap: bool = False,
    subfolder: str | os.PathLike | None = None,
    device_map: str | torch.device | int | dict[str, Any] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Load a model folder of ours or a transformers Perceiver checkpoint; returns our model in eval mode.

    `overrides` go to the converter of a transformers checkpoint (e.g. `same_padding=False` to reproduce
    transformers' conv stem) or replace config fields of one of our folders. `num_classes=K` with
    `ignore_mismatched_sizes=True` gives the model a freshly initialised head of K classes when the checkpoint's has
    another size (logged, and listed in `model.reinitialized_keys`); without the flag a different K is an error
    (`num_labels` is accepted as transformers' name for it). The class names (`model.id2label`) are the
    checkpoint's, or `id2label` (transformers' keyword: `{class id: name}`, which sets `num_classes` when it is not
    given; `label2id`, its inverse, is accepted and not needed); a re-initialised head of another size has none
    (None), not the old head's.
    `check_finite` rejects weights that hold NaN / inf.
    `dtype="auto"` (default, as transformers) loads the model in the dtype its weights were saved in (for a
    transformers folder: its config's `dtype` / `torch_dtype`, else the weights'); a floating `torch.dtype` (or its
    name, e.g. "bfloat16"; `torch_dtype` is transformers' older name) casts every floating tensor to it. `device`
    places the model (default: the CPU; ValueError for a name torch does not know, RuntimeError for a device this
    machine lacks, before anything is read); transformers' `device_map` is taken when it names one device (a device,
    `{"": device}`, or "auto": the GPU when there is one, else the CPU); the model is not split across devices.
    `subfolder` names the model's folder inside the folder or Hub repo; `trust_remote_code` and `low_cpu_mem_usage`
    are accepted and change nothing (no code is run from a folder; no random weights are drawn). Our folders load
    without a random initialisation first; `mmap=True` keeps their tensors as copy-on-write views of the memory-mapped
    weights file, as transformers does, instead of copies (see `perceiver.loading.load_safetensors_checked`); a
    transformers folder's weights are converted, hence copied. The weights a transformers folder's converter needs
    are checked before converting: weights of another model than its config's `architectures` names are a
    ValueError naming the folder, the head and the keys.
    The model's `name_or_path` is `path_or_id`, as transformers sets it (peft's adapters record it as their base).
    For a Hub id, `revision` (branch, tag or commit), `token` (private or gated repos), `cache_dir`,
    `local_files_only` (only the local cache, no network) and `force_download` go to huggingface_hub's
    `snapshot_download`, as transformers takes them.
    """
    dtype = resolve_dtype(dtype, torch_dtype)
    device = _one_device(device, device_map)
    if device is not None:
        device = resolve_device(device)
    hub_options = {key: overrides.pop(key) for key in HUB_OPTIONS if key in overrides}
    labels = id2label_from_json(overrides.pop("id2label", None), "from_pretrained(id2label=...)")
    if labels is not None and sorted(labels) != list(range(len(labels))):
        raise ValueError(f"id2label: expected class ids 0, 1, ..., {len(labels) - 1}, got {sorted(labels)[:10]}")
    overrides.pop("label2id", None)  # transformers' inverse of id2label
    for key in NO_OP_OPTIONS:
        overrides.pop(key, None)
    folder = resolve(path_or_id, subfolder=subfolder, **hub_options)
    num_classes = pop_num_classes(num_classes, overrides)
    if labels is not None and num_classes is None:
        num_classes = len(labels)  # as transformers: num_labels follows id2label
    from perceiver import lora

    if lora.is_adapter_folder(folder):  # a LoRA adapter (perceiver.lora.save_adapter): its base model + the adapter
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        base_hub_options = {k: v for k, v in hub_options.items() if k != "revision"}  # the adapter repo's revision
        model = lora.from_adapter_folder(
            folder, check_finite=check_finite, dtype=dtype, mmap=mmap, **base_hub_options, **overrides
        )
        name_classes(model, labels, num_classes)
        vars(model)["name_or_path"] = str(path_or_id)  # as transformers sets it
        return model if device is None else model.to(device)
    config_file = folder / "config.json"
    if not config_file.is_file():
        found = sorted(p.name for p in folder.iterdir())
        inner = [f"{folder / p}" for p in found if (folder / p / "config.json").is_file()]
        hint = f"; the model folder(s) inside it: {inner[:3]}" if inner else ""
        raise FileNotFoundError(f"expected config.json in {folder}, found {found[:10]}{_more(found, 10)}{hint}")
    config = read_config_file(config_file)
    if "architectures" in config:
        archs = config["architectures"]
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise ValueError(f"{config_file}: key 'architectures': expected a list of names, got {archs!r}")
        _import_converters()
        supported = [a for a in archs if a in HF_CONVERTERS]
        if not supported:
            raise ValueError(
                f"{folder}: architectures {archs} are not supported; expected one of {sorted(HF_CONVERTERS)}"
            )
        state_dict = load_state_dict(folder)
        check_hf_keys(folder, supported[0], config, state_dict)
        if check_finite:
            check_finite_tensors(state_dict, folder)
        if dtype == "auto":
            dtype = _transformers_dtype(config, state_dict, config_file)
        with no_init_weights():  # the converters load every tensor of the model (strictly) after building it
            model = HF_CONVERTERS[supported[0]](config, state_dict, **overrides)
        set_id2label(model, id2label_from_json(config.get("id2label"), str(config_file)))  # e.g. ImageNet's names
        read_preprocessor_config(model, folder)  # e.g. ImageNet's crop and normalisation, saved again with it
        if dtype is not None:
            model.to(dtype)  # floating tensors only; those already in it stay as they are
        if device is not None:
            model.to(device)
        if num_classes is not None:
            resize_head(model, num_classes, ignore_mismatched_sizes, str(folder))
        name_classes(model, labels, num_classes)
        vars(model)["name_or_path"] = str(path_or_id)  # as transformers sets it
        return model.eval()
    if "model_type" not in config:
        raise ValueError(f"{config_file} has neither 'architectures' (transformers) nor 'model_type' (ours)")
    if "transformers_version" in config and "format_version" not in config:  # "perceiver" is also our classic model
        _import_converters()
        raise ValueError(
            f"{config_file} is a transformers config without 'architectures', which names the head its weights are "
            f'for; expected e.g. "architectures": ["PerceiverForMaskedLM"] (the heads that convert: '
            f"{sorted(HF_CONVERTERS)})"
        )
    if not isinstance(config["model_type"], str):
        raise ValueError(f"{config_file}: key 'model_type': expected a string, got {config['model_type']!r}")
    import perceiver.models  # noqa: F401  (registers the model types)

    cls = model_type_class(config["model_type"])
    if device is not None:
        overrides["map_location"] = device
    loaded = cls.from_pretrained(
        folder,
        check_finite=check_finite,
        num_classes=num_classes,
        ignore_mismatched_sizes=ignore_mismatched_sizes,
        dtype=dtype,
        mmap=mmap,
        **overrides,
    )
    assert isinstance(loaded, nn.Module)  # the registered model types are modules
    name_classes(loaded, labels, num_classes)
    vars(loaded)["name_or_path"] = str(path_or_id)  # as transformers: peft records it as an adapter's base model
    return loaded


def name_classes(model: nn.Module, labels: dict[int, str] | None, num_classes: int | None) -> None:
    """Give a loaded `model` the class names `labels` (from_pretrained's `id2label`): ValueError when they do not
    name each of its classes; without them, drop the checkpoint's names when the head was given another size."""
    if labels is not None:
        set_id2label(model, labels)
        if class_names(model) is None:
            count = getattr(model, "num_classes", None)
            raise ValueError(
                f"id2label: expected one name for each of the model's {count} classes (ids 0, 1, ...), got ids "
                f"{sorted(labels)[:10]}{_more(labels, 10)}"
            )
    elif num_classes is not None and getattr(model, "id2label", None) and class_names(model) is None:
        set_id2label(model, None)  # the names of the replaced head's classes


def _one_device(
    device: str | torch.device | None, device_map: str | torch.device | int | dict[str, Any] | None
) -> str | torch.device | None:
    """The one device of `device` or transformers' `device_map` (a device, `{"": device}` or a map naming one device,
    "auto": CUDA when available, else the CPU); ValueError for both or for a map over several devices."""
    if device_map is None:
        return device
    if device is not None:
        raise ValueError(f"pass device or device_map, not both (got {device!r} and {device_map!r})")
    if isinstance(device_map, dict):
        devices = {str(d) if not isinstance(d, int) else f"cuda:{d}" for d in device_map.values()}
        if len(devices) != 1:
            raise ValueError(
                f"device_map: expected one device (the model is not split across devices here), got {device_map!r}"
            )
        return devices.pop()
    if device_map == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device_map, str) and device_map in ("balanced", "balanced_low_0", "sequential"):
        raise ValueError(f"device_map: expected one device or 'auto', got {device_map!r} (no splitting here)")
    return f"cuda:{device_map}" if isinstance(device_map, int) else device_map


def _transformers_dtype(config: dict[str, Any], state_dict: dict[str, Tensor], source: Path) -> torch.dtype | None:
    """What dtype="auto" means for a transformers folder: its config's `dtype` (transformers 5) or `torch_dtype`,
    else the one floating dtype of its weights (None: keep the converter's)."""
    for key in ("dtype", "torch_dtype"):
        name = config.get(key)
        if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype):
            found = getattr(torch, name)
            if found.is_floating_point:
                return found
    return stored_floating_dtype({k: v.dtype for k, v in state_dict.items()}, source.parent)
