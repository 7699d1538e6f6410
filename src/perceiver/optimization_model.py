"""The modules `perceiver.optimize` and `compile_frozen` return: a model run another way, sharing its parameters.

`CompiledModel(module, fn, contexts)` calls `fn` (a compiled form of `module`, or a twin: a copy of it that shares its
parameters and computes differently, e.g. oneDNN Linears) under `contexts`. It is the model to everything else:

- `parameters()`, `state_dict()`, `load_state_dict()`, `.to()`, `.train()` / `.eval()` are the model's, with the
  model's keys (`encoder.latents`, not `module.encoder.latents`), so `model.load_state_dict(fast.state_dict())` and
  `safetensors.torch.save_file(fast.state_dict(), path)` work; `fn` is not a submodule, so nothing is listed twice.
- `OptimizedModel` (what `optimize` returns) also passes on the model's other attributes (`save_pretrained`,
  `config`, `reset_classifier`) and keeps a twin in step with the model before each call: each of its modules in the
  train / eval mode of the model's module at the same name (`model.eval()` switches a oneDNN twin's dropout off too),
  and a twin built again when the model's modules, parameters or buffers are replaced (`reset_classifier(n)`,
  `load_state_dict(..., assign=True)`, `.to()` of buffers), so that it never runs a head the model no longer has.
  Optimized for inference, it runs under `torch.no_grad()`: switched to training mode afterwards, it warns once that
  its outputs have no gradients (instead of a bare "element 0 of tensors does not require grad" from `backward`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from perceiver.optimization_report import OptimizeReport

__all__ = ["CompiledModel", "OptimizedModel"]

_PREFIX = "module."


def _model_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]) -> None:
    """State-dict post-hook: `prefix + "module.k"` -> `prefix + "k"` (the model's own keys), metadata alike."""
    inner = prefix + _PREFIX
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if k == inner[:-1] or k.startswith(inner)]:
            metadata[prefix + key[len(inner) :] if key != inner[:-1] else prefix[:-1]] = metadata.pop(key)


def _wrapper_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-state-dict pre-hook: the model's keys `prefix + "k"` -> `prefix + "module.k"` (keys saved as
    `module.k` load as they are; the `_fn.` copies older versions saved are dropped)."""
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + _PREFIX)]:
        value = state_dict.pop(key)
        if not key.startswith(prefix + "_fn."):
            state_dict[prefix + _PREFIX + key[len(prefix) :]] = value
    module.__dict__["_load_prefix"] = prefix


def _named_as_model(module: nn.Module, incompatible: Any) -> None:
    """Load-state-dict post-hook: missing / unexpected keys named as the model's (`k`, not `module.k`)."""
    inner = module.__dict__.pop("_load_prefix", "") + _PREFIX
    for keys in (incompatible.missing_keys, incompatible.unexpected_keys):
        keys[:] = [inner[: -len(_PREFIX)] + k[len(inner) :] if k.startswith(inner) else k for k in keys]


class CompiledModel(nn.Module):
    """`module` run through `fn` (its compiled form, or a twin sharing its parameters) under `contexts`.

    `forward(*args, **kwargs)` = `fn(*args, **kwargs)` inside `contexts()` (bf16 autocast, SDPA backend,
    `torch.no_grad` and Inductor freezing for frozen inference). `parameters()`, `state_dict()` (with the model's
    keys), `.eval()` / `.train()` and `.to()` are `module`'s.
    """

    _fn: Callable[..., Any]

    def __init__(self, module: nn.Module, fn: Callable[..., Any], contexts: Callable[[], Any]):
        super().__init__()
        self.module = module
        self.__dict__["_fn"] = fn  # not a submodule: its parameters are the model's (or, int8, its own copies)
        self._contexts = contexts
        self.register_state_dict_post_hook(_model_keys)
        self.register_load_state_dict_pre_hook(_wrapper_keys)
        self.register_load_state_dict_post_hook(_named_as_model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self._contexts():
            return self._fn(*args, **kwargs)


class OptimizedModel(CompiledModel):
    """`module` run the way `optimize` chose (`report.chosen`); shares `module`'s parameters. A frozen candidate
    keeps the weights it was compiled with (see `compile_frozen`), an int8 one the weights it quantised.

    `rebuild(module)` builds the twin again (`fn` for a twin candidate) when the model's modules, parameters or
    buffers are replaced; a twin's modules follow the model's train / eval mode at every call."""

    _rebuild: Callable[[nn.Module], Callable[..., Any]] | None
    _pairs: list[tuple[nn.Module, nn.Module]]  # (the model's module, the twin's module of the same name)
    _modules_seen: list[nn.Module]  # the model's modules when the twin was built (empty: no twin)
    _identity: list[int]
    _train_warning: bool

    def __init__(
        self,
        module: nn.Module,
        fn: Callable[..., Any],
        contexts: Callable[[], Any],
        report: OptimizeReport,
        rebuild: Callable[[nn.Module], Callable[..., Any]] | None = None,
    ):
        super().__init__(module, fn, contexts)
        self.report = report
        self.__dict__["_rebuild"] = rebuild
        # inference outputs carry no gradients: say so once if the model is switched to training mode afterwards
        self.__dict__["_train_warning"] = report.mode == "inference" and not module.training
        self._watch()

    def _watch(self) -> None:
        """Note the model's structure and pair each twin module with the model's module of the same name."""
        twin = getattr(self._fn, "_orig_mod", self._fn)  # a compiled twin: the twin inside
        is_twin = isinstance(twin, nn.Module) and twin is not self.module
        twins = dict(twin.named_modules()) if isinstance(twin, nn.Module) and is_twin else {}
        pairs = [(m, twins[n]) for n, m in self.module.named_modules() if twins.get(n, m) is not m]
        modules = list(self.module.modules()) if is_twin else []
        self.__dict__.update(_pairs=pairs, _modules_seen=modules, _identity=_identity(modules))

    def _follow_model(self) -> None:
        """Build the twin again if the model's parts were replaced; give its modules the model's train / eval mode."""
        if self._rebuild is not None and _identity(self._modules_seen) != self._identity:
            self.__dict__["_fn"] = self._rebuild(self.module)
            self._watch()
        for m, t in self._pairs:
            if t.training != m.training:
                t.training = m.training

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._modules_seen and not torch.compiler.is_compiling():
            self._follow_model()
        if self._train_warning and self.module.training and torch.is_grad_enabled():
            self.__dict__["_train_warning"] = False
            warnings.warn(
                "this OptimizedModel was optimized for inference: it runs under torch.no_grad(), so its outputs have no "
                "gradients now that the model is in training mode; to train, call the model itself or "
                "perceiver.optimize(model, example_inputs, training=True)",
                stacklevel=2,
            )
        return super().forward(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        """What the wrapper does not have comes from the model: `fast.save_pretrained(folder)` (its weights, shared),
        `fast.config`, `fast.num_classes`, `fast.get_classifier()`."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            module = self.__dict__.get("_modules", {}).get("module")  # not self._modules: unset while unpickling
            if module is None or name.startswith("__"):
                raise
            return getattr(module, name)


def _identity(modules: list[nn.Module]) -> list[int]:
    """The ids of what `modules` hold (submodules, parameters, buffers): it changes when any of them is replaced."""
    return [id(v) for m in modules for d in (m._modules, m._parameters, m._buffers) for v in d.values()]
