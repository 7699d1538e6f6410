"""LoRA fine-tuning of any model of ours, with Hugging Face's peft (`pip install 'perceiver-torch[lora]'`).

    from perceiver.lora import add_lora, save_adapter

    model = perceiver.from_pretrained("deepmind/vision-perceiver-fourier", num_classes=10, ignore_mismatched_sizes=True)
    add_lora(model, r=8)                    # in place: rank-8 adapters on every attention / MLP Linear, the new head
    ...train...                             # only the adapters and the head have requires_grad
    model.save_pretrained("merged")         # a plain model folder: the adapters merged into the weights
    save_adapter(model, "adapter", base_model="deepmind/vision-perceiver-fourier")   # 3.1 MB instead of 190 MB
    model = perceiver.from_pretrained("adapter")   # the base model with the adapter, the same outputs

`add_lora` injects peft's LoRA layers into the model itself (`peft.functional.inject_adapter_in_model`, the hook
transformers and diffusers use), so it stays our model: same class, forward, outputs and `save_pretrained`. Rank-`r`
adapters `W + (alpha / r) B A` (B starts at zero: the outputs are unchanged until training moves it) go on the
Linears named in `target_modules`: by default the query / key / value / output projections and both MLP layers of
every attention layer (`DEFAULT_TARGETS`; `to_q`, `to_kv`, `to_qkv`, `to_out` are Perceiver AR's and the resampler's
names). Every other weight is frozen, except the class head (`get_classifier()`, trained in full and saved with the
adapter: a head re-initialised for new classes must learn from scratch). Our layers call these modules wherever they
would otherwise compute with a Linear's `.weight` (folded LayerNorms, reassociated attention), so the adapters act in
every fast path.

`save_pretrained` of an adapted model writes the merged weights (each LoRA layer merged on a copy: the model keeps
training unchanged) under the plain model's keys: the folder loads without peft, runs, exports and converts as any
other. `save_adapter` writes peft's format (`adapter_config.json`, `adapter_model.safetensors` with peft's keys) plus
`perceiver_adapter.json` (the class count of the head the adapter was trained with, and the model type), and
`perceiver.from_pretrained` of such a folder loads the base model it names and applies the adapter. peft reads the
folder too (`peft.PeftModel.from_pretrained(base, folder)`, the base at the adapter's class count), and an adapter
saved by peft (`get_peft_model(model, config).save_pretrained(folder)`) loads with `load_adapter` or
`perceiver.from_pretrained(folder, base_model=...)`. `add_lora` takes peft's `LoraConfig` names as well
(`lora_alpha`, `lora_dropout`, `modules_to_save` for more modules trained in full, `use_dora`, `bias`, ...).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ADAPTER_CONFIG",
    "DEFAULT_TARGETS",
    "add_lora",
    "has_lora",
    "load_adapter",
    "merge_lora",
    "merged_state_dict",
    "save_adapter",
]

#: Linears that get adapters by default: every attention projection and both MLP layers
DEFAULT_TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|fc1|fc2|to_q|to_kv|to_qkv|to_out)$"
ADAPTER_CONFIG = "adapter_config.json"  # peft's names
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_INFO = "perceiver_adapter.json"  # ours: {"num_classes": K} of the head the adapter was trained with
#: the prefix of every key in peft's `adapter_model.safetensors` (`PeftModel.save_pretrained`: the model sits at
#: `PeftModel.base_model.model`); written so that `peft.PeftModel.from_pretrained(base, folder)` loads our adapters
PEFT_PREFIX = "base_model.model."


def _peft() -> Any:
    from perceiver._quiet import quiet_imports

    try:
        with quiet_imports():
            import peft
            import peft.functional
    except ImportError as e:  # pragma: no cover - the dev environment has it
        raise ImportError("LoRA needs peft: pip install 'perceiver-torch[lora]'") from e
    return peft


def _head_name(model: nn.Module) -> str | None:
    """The class head's module name (`classifier_name`), or None for a model without one (language models)."""
    name = getattr(model, "classifier_name", None)
    if name is None:
        return None
    try:
        head = model.get_submodule(name)
    except AttributeError:
        return None
    return name if any(True for _ in head.parameters()) else None  # nn.Identity after reset_classifier(0)


def _trained_in_full(model: nn.Module) -> list[str]:
    """The modules a LoRA run trains in full and saves with the adapter: the class head, and the outermost modules
    whose tensors are all new (`model.reinitialized_keys`: a head or decoder drawn at load, e.g. a classifier started
    from a masked LM), which would otherwise stay random and be lost with the base model."""
    new = set(getattr(model, "reinitialized_keys", None) or ())
    names: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        keys = {prefix + k for k in module.state_dict()}
        if prefix and keys and keys <= new:
            names.append(prefix[:-1])
        elif keys & new:
            for name, child in module.named_children():
                visit(f"{prefix}{name}.", child)

    visit("", model)
    head = _head_name(model)
    if head is not None and not any(head == n or head.startswith(f"{n}.") for n in names):
        names.append(head)
    return names


def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: str | list[str] | None = None,
    train_head: bool = True,
    **lora_kwargs: Any,
) -> nn.Module:
    """Add LoRA adapters to `model` in place and freeze everything else (but the class head); returns `model`.

    Args:
        r: rank of the adapters, an integer >= 1.
        alpha: scale numerator, a positive number: the update is `(alpha / r) B A` (default `r`: scale 1).
        dropout: dropout probability on the adapters' input (training only), in [0, 1).
        target_modules: a regex over full module names or a list of name suffixes (peft's rule); default
            `DEFAULT_TARGETS` (attention and MLP Linears).
        train_head: train the class head in full (`get_classifier()`, if the model has one) and save it with the
            adapter; so are the modules drawn new at load (`model.reinitialized_keys`, e.g. the decoder of a
            classifier started from a masked LM).
        lora_kwargs: further `peft.LoraConfig` fields (`use_rslora`, `use_dora`, `init_lora_weights`, ...);
            peft's names `lora_alpha` and `lora_dropout` stand for `alpha` and `dropout`, and `modules_to_save`
            (a list of module names, peft's suffix rule) trains those modules in full besides the head.
    """
    inner = _unwrapped(model)  # the model itself where `model` is `torch.compile(model)`: the same modules and keys
    alpha, dropout = _peft_alias("alpha", alpha, None, lora_kwargs), _peft_alias("dropout", dropout, 0.0, lora_kwargs)
    extra = _modules_to_save(inner, lora_kwargs.pop("modules_to_save", None))
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r must be an integer >= 1, got {r!r}")
    if alpha is not None and (not _is_real(alpha) or not math.isfinite(alpha) or alpha <= 0):
        raise ValueError(f"LoRA alpha must be a positive number (None: r), got {alpha!r}")
    if not _is_real(dropout) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be a probability in [0, 1), got {dropout!r}")
    if has_lora(inner):
        raise ValueError(
            f"{type(inner).__name__} already has LoRA adapters (a model loaded from an adapter folder brings its "
            f"adapter); merge_lora(model) before adding new ones, or train the ones it has (in a training config: "
            f"leave out --model.lora to train that adapter further, or pass the merged model folder RUN_DIR/model as "
            f"--model.pretrained to add new ones)"
        )
    peft = _peft()
    full = _trained_in_full(inner) if train_head else []
    full += [name for name in extra if name not in full]
    config = peft.LoraConfig(
        r=r,
        lora_alpha=r if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=DEFAULT_TARGETS if target_modules is None else target_modules,
        modules_to_save=full or None,  # peft puts no adapter inside them
        **lora_kwargs,
    )
    try:
        peft.functional.inject_adapter_in_model(config, inner)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in inner.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"{e} ({type(inner).__name__}'s Linear layers are named {names})") from e
    inner.peft_config = {"default": config}  # type: ignore[assignment]  # torch hints Module attributes as Tensor | Module
    return model


def _peft_alias(name: str, value: Any, default: Any, lora_kwargs: dict[str, Any]) -> Any:
    """`value` of our argument `name`, or of peft's `lora_{name}` in `lora_kwargs` (taken out of them) where given;
    a ValueError if both are given with different values."""
    if f"lora_{name}" not in lora_kwargs:
        return value
    theirs = lora_kwargs.pop(f"lora_{name}")
    if value != default and value != theirs:
        raise ValueError(
            f"expected {name} or peft's lora_{name} (the same setting), got {name}={value!r} and lora_{name}={theirs!r}"
        )
    return theirs


def _modules_to_save(model: nn.Module, names: Any) -> list[str]:
    """The module names a user asks to train in full (peft's `modules_to_save`: a name or a list of names, each the
    full name or a dotted suffix of one); a ValueError for a name that matches no module of `model`."""
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"modules_to_save: expected a list of module names, got {names!r}")
    modules = [n for n, _ in model.named_modules() if n]
    for name in names:
        if not any(m == name or m.endswith(f".{name}") for m in modules):
            children = [n for n, _ in model.named_children()]
            raise ValueError(
                f"modules_to_save: expected names of {type(model).__name__}'s modules (a full name or its last "
                f"parts, e.g. {children[:6]}), got {name!r}, which matches none"
            )
    return list(dict.fromkeys(names))


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside `torch.compile(model)` or `perceiver.optimize`'s wrapper, else `model`: adapters go into it
    and are saved under its keys (not under `_orig_mod.`)."""
    from perceiver.export_shapes import unwrapped

    return unwrapped(model)


def _is_real(value: Any) -> bool:
    """Whether `value` is an int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def has_lora(model: nn.Module) -> bool:
    """Whether `model` holds peft adapter layers."""
    model = _unwrapped(model)
    if not any("lora_" in name for name, _ in model.named_parameters()):
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def _plain_replacements(model: nn.Module, merge: bool = True) -> dict[str, nn.Module]:
    """`{name: plain module}` for every outermost peft layer: a LoRA layer's base layer with the adapters merged (on
    a copy), a trained-in-full module's trained copy; without `merge`, the modules as they were before the adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    out: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{done}.") for done in out):
            continue
        if isinstance(module, ModulesToSaveWrapper):
            out[name] = module.modules_to_save[module.active_adapters[0]] if merge else module.original_module
        elif isinstance(module, BaseTunerLayer) and not merge:
            out[name] = module.get_base_layer()
        elif isinstance(module, BaseTunerLayer):
            merged = copy.deepcopy(module)
            if not merged.merged:  # merged in place by the user (peft's `merge()`): its base layer is the merged one
                merged.merge()
            out[name] = merged.get_base_layer()
    return out


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict of `model` with its adapters merged, under the keys of the model without them; `model` is not
    changed."""
    model = _unwrapped(model)
    replacements = _plain_replacements(model)
    state = {k: v for k, v in model.state_dict().items() if not any(k.startswith(f"{name}.") for name in replacements)}
    for name, module in replacements.items():
        state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return state


def merge_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Merge the adapters into the weights and remove peft's layers, in place: a plain model again; returns it.
    `merge=False` drops the adapters instead (the model as it was before `add_lora`). A model without adapters is
    returned as it is."""
    inner = _unwrapped(model)
    if not has_lora(inner):
        return model
    for name, plain in _plain_replacements(inner, merge).items():
        parent, _, attr = name.rpartition(".")
        setattr(inner.get_submodule(parent) if parent else inner, attr, plain)
    inner.__dict__.pop("peft_config", None)
    return model


def save_adapter(model: nn.Module, directory: str | os.PathLike, base_model: str | os.PathLike | None = None) -> Path:
    """Write the adapters (and a trained head) of `model` in peft's format to `directory`; `base_model` (a model
    folder or Hub id; default: the `name_or_path` `perceiver.from_pretrained` gave the model) is recorded as
    `base_model_name_or_path` for `perceiver.from_pretrained(directory)`."""
    from safetensors.torch import save_file

    from perceiver.save_files import install_folder, staging_folder

    peft = _peft()
    model = _unwrapped(model)
    if not has_lora(model):
        raise ValueError(f"{type(model).__name__} has no LoRA adapters to save (add_lora first)")
    config: Any = copy.deepcopy(model.peft_config["default"])  # type: ignore[index]  # a dict, torch hints Tensor | Module
    if base_model is None and isinstance(model.__dict__.get("name_or_path"), str):
        base_model = model.__dict__["name_or_path"]  # where perceiver.from_pretrained read the base
    if base_model is not None:
        local = Path(base_model)
        config.base_model_name_or_path = str(local.resolve()) if local.exists() else str(base_model)
    target = Path(directory).expanduser()
    with staging_folder(target) as tmp:  # written aside, then moved in: a failed save leaves no half-written adapter
        config.save_pretrained(str(tmp))
        weights = peft.functional.get_peft_model_state_dict(model)
        tensors = {  # without a head's own biases a second time (`bias="all"`: the same tensor, two names)
            PEFT_PREFIX + k: v.detach().contiguous()
            for k, v in weights.items()
            if ".original_module." not in k and ".modules_to_save." not in k
        }
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS))
        head = _head_name(model) if config.modules_to_save else None
        info: dict[str, Any] = {"num_classes": int(model.num_classes)} if head is not None else {}  # type: ignore[arg-type]  # an int, torch hints Tensor | Module
        if isinstance(getattr(model, "model_type", None), str):  # the class to load the base as (a masked LM's head)
            info["model_type"] = model.model_type
        (tmp / ADAPTER_INFO).write_text(json.dumps(info, indent=2) + "\n")
        install_folder(tmp, target, (ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_INFO))
    return target


def is_adapter_folder(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


def load_adapter(
    model: nn.Module, directory: str | os.PathLike, check_finite: bool = True, map_location: str = "cpu"
) -> nn.Module:
    """Add the adapters saved in `directory` (`save_adapter`, or peft's `save_pretrained`) to `model` in place, with
    `requires_grad` as after `add_lora` (the adapters and the head train, the rest is frozen); returns `model`.

    Both files are read and checked before `model` changes: a corrupt `adapter_config.json` or
    `adapter_model.safetensors` is a ValueError naming the file; `map_location` is the device the adapter weights are
    read onto (ValueError / RuntimeError for an unknown or unavailable device)."""
    from perceiver.hub import read_config_file
    from perceiver.loading import check_finite_tensors, read_safetensors, resolve_device

    peft = _peft()
    device = resolve_device(map_location, "map_location")
    folder = Path(directory).expanduser()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"expected {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} in {folder}, {name} is missing")
    read_config_file(folder / ADAPTER_CONFIG)  # a JSON object, else a ValueError naming the file
    try:
        config = peft.LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError, KeyError) as e:  # keys or values peft's LoraConfig does not take
        problem = f"{type(e).__name__}: {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(
            f"{folder / ADAPTER_CONFIG}: expected a peft LoRA config, could not read it ({problem})"
        ) from None
    if config.target_modules is None:
        raise ValueError(f"{folder / ADAPTER_CONFIG}: expected target_modules (the adapted layers), got none")
    config.inference_mode = False  # peft saves True: its adapters would load frozen, not to be trained further
    weights = read_safetensors(folder / ADAPTER_WEIGHTS, device=device)
    if weights and all(k.startswith(PEFT_PREFIX) for k in weights):  # peft's keys (older adapters of ours: none)
        weights = {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items()}
    if check_finite:
        check_finite_tensors(weights, folder)
    wrapper, model = model, _unwrapped(model)
    peft.functional.inject_adapter_in_model(config, model)
    problem = ""
    try:
        result = peft.functional.set_peft_model_state_dict(model, weights)
    except RuntimeError as e:  # shapes of another model
        problem = str(e).split("\n\t", 1)[-1].split("\n\t", 1)[0]
    except KeyError as e:  # a tensor its config names (a trained head) is not in the weights file
        problem = f"{folder / ADAPTER_WEIGHTS} lacks {e}"
    else:
        missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
        if result.unexpected_keys or missing:
            problem = f"unexpected keys {sorted(result.unexpected_keys)[:3]}, missing {sorted(missing)[:3]}"
    if problem:
        merge_lora(model, merge=False)  # leave no half-applied adapter behind
        raise ValueError(
            f"{folder}: the adapter does not fit this {type(model).__name__}: {problem.rstrip('.')}"
            f"{_trained_on(folder, config, model)}"
        )
    model.peft_config = {"default": config}  # type: ignore[assignment]  # torch hints Module attributes as Tensor | Module
    return wrapper


def _trained_on(folder: Path, config: Any, model: nn.Module) -> str:
    """What an adapter that does not fit `model` was trained on (its base model, class and class count, as far as its
    folder says), and how to load it on a base of another class count; for the error message."""
    try:
        info = json.loads((folder / ADAPTER_INFO).read_text())
    except (OSError, ValueError):  # no such file (an adapter saved by peft itself), or not JSON
        info = {}
    info = info if isinstance(info, dict) else {}
    kind, classes = info.get("model_type"), info.get("num_classes")
    classes = classes if isinstance(classes, int) and not isinstance(classes, bool) else None
    about = [kind] if isinstance(kind, str) else []
    about += [f"a head of {classes} classes"] if classes is not None else []
    base = config.base_model_name_or_path
    text = f"; expected its base model {base!r}" if base else "; expected its base model (which it does not name)"
    text += f" ({', '.join(about)})" if about else ""
    try:
        ours = model.num_classes
    except (AttributeError, NotImplementedError):
        ours = None
    their_kind = getattr(model, "model_type", None)
    if isinstance(kind, str) and isinstance(their_kind, str) and kind != their_kind:
        text += f", got a {their_kind}"
    elif classes is not None and isinstance(ours, int) and ours != classes:
        text += (
            f", got a model with {ours} classes: load the base with num_classes={classes}, "
            f"ignore_mismatched_sizes=True (perceiver.from_pretrained of the adapter folder does)"
        )
    return text


def _base_loader(model_type: Any) -> Any:
    """How the base model of an adapter is read: as the class the adapter was trained on where that class starts from
    another model's folder (a text head from a masked LM; `pretrained_loader`), else with `perceiver.from_pretrained`."""
    from perceiver.models.mlm_start import pretrained_loader
    from perceiver.models.registry import model_type_class

    try:
        return pretrained_loader(model_type_class(model_type) if isinstance(model_type, str) else None)
    except ValueError:  # a type this version does not know: the folder's own type decides
        return pretrained_loader(None)


def from_adapter_folder(folder: Path, base_model: str | os.PathLike | None = None, **kwargs: Any) -> nn.Module:
    """The base model `adapter_config.json` names (or `base_model`), loaded with `perceiver.from_pretrained` at the
    class count the adapter was trained with (as the head class it was trained on, for a masked LM's folder), and
    the adapter added; eval mode."""
    from perceiver.hub import read_config_file

    config = read_config_file(folder / ADAPTER_CONFIG)
    base = base_model if base_model is not None else config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{folder / ADAPTER_CONFIG} names no base model (base_model_name_or_path); pass base_model=")
    if not isinstance(base, (str, os.PathLike)):
        raise ValueError(
            f"{folder / ADAPTER_CONFIG}: key 'base_model_name_or_path': expected a model folder or Hub id, got {base!r}"
        )
    info_file = folder / ADAPTER_INFO
    info = read_config_file(info_file) if info_file.is_file() else {}
    num_classes = info.get("num_classes")
    if "num_classes" in info and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
        raise ValueError(f"{info_file}: key 'num_classes': expected an integer, got {num_classes!r}")
    if "num_classes" in info:
        kwargs.setdefault("num_classes", info["num_classes"])
        kwargs.setdefault("ignore_mismatched_sizes", True)
    check_finite = kwargs.get("check_finite", True)
    quiet = logging.getLogger("perceiver")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # not "newly initialised" for a head the adapter then brings
    try:
        model = _base_loader(info.get("model_type"))(base, **kwargs)
    except FileNotFoundError as e:  # a base folder moved or deleted since the adapter was saved
        raise FileNotFoundError(
            f"{folder / ADAPTER_CONFIG} names the base model {str(base)!r}, which did not load ({e}); pass "
            f"base_model= (a model folder or Hub id) to load the adapter on it"
        ) from e
    finally:
        quiet.setLevel(level)
    with torch.no_grad():
        return load_adapter(model, folder, check_finite=check_finite).eval()
