"""`save_pretrained` / `from_pretrained` for our own models: a folder with `config.json` + `model.safetensors`.

Never pickle: configs are dataclasses written as JSON, weights are safetensors (shared / tied tensors are stored once
and re-tied on load). Both files are written to a temporary folder first and moved into place, so a crash leaves
either the old model directory or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

T = TypeVar("T", bound="PretrainedMixin")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build the dataclass `cls` from `data`, rejecting unknown keys with a clear error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown keys for {cls.__name__}: {unknown}; expected a subset of {sorted(names)}")
    return cls(**data)


class PretrainedMixin:
    """Adds `save_pretrained(dir)` and `from_pretrained(dir)` to an `nn.Module` built from `self.config`.

    Subclasses set `config_class` (a dataclass) and `model_type` (a registry name written into config.json) and take
    the config as the single argument of their constructor via `from_config`.
    """

    config_class: ClassVar[type]
    model_type: ClassVar[str]

    @classmethod
    def from_config(cls: type[T], config: Any) -> T:
        return cls(config)  # type: ignore[call-arg]

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `config.json` and `model.safetensors` into `save_directory` atomically; returns the path."""
        from safetensors.torch import save_model

        assert isinstance(self, nn.Module)
        target = Path(save_directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            config = {"model_type": self.model_type, **config_to_dict(self.config)}
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
            save_model(self, str(tmp / WEIGHTS_NAME))
            target.mkdir(exist_ok=True)
            for name in (CONFIG_NAME, WEIGHTS_NAME):
                os.replace(tmp / name, target / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    @classmethod
    def from_pretrained(
        cls: type[T], directory: str | os.PathLike, map_location: str | torch.device = "cpu", **overrides: Any
    ) -> T:
        """Load a model written by `save_pretrained`; `overrides` replace config fields (e.g. dropout)."""
        from safetensors.torch import load_model

        path = Path(directory)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"expected {CONFIG_NAME} and {WEIGHTS_NAME} in {path}")
        data = json.loads((path / CONFIG_NAME).read_text())
        model_type = data.pop("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"{path} holds a {model_type!r} model, expected {cls.model_type!r}")
        config = config_from_dict(cls.config_class, {**data, **overrides})
        model = cls.from_config(config)
        load_model(model, str(path / WEIGHTS_NAME), strict=True, device=str(map_location))
        return model.eval()
