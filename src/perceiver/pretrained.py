"""`perceiver.from_pretrained(path_or_hub_id)`: our own model folders and transformers Perceiver checkpoints.

- Our folders (`save_pretrained`): `config.json` with a `model_type` we registered + `model.safetensors`.
- transformers checkpoints: `config.json` with `architectures` (e.g. `PerceiverForMaskedLM`) + `model.safetensors`
  or `pytorch_model.bin` (read with `torch.load(weights_only=True)`); a converter registered for the architecture
  builds our model and maps the weights.
A name that is not a local folder is fetched from the Hugging Face Hub with `huggingface_hub` (where a network is).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from perceiver.models.registry import model_type_class

# transformers architecture name -> converter(config dict, state dict) -> our model.
HF_CONVERTERS: dict[str, Callable[..., nn.Module]] = {}


def register_hf_converter(*architectures: str):
    """Decorator: `fn(hf_config: dict, state_dict: dict, **options) -> nn.Module` converts these heads."""

    def wrap(fn):
        for arch in architectures:
            HF_CONVERTERS[arch] = fn
        return fn

    return wrap


def resolve(path_or_id: str | os.PathLike) -> Path:
    """A local folder as is; otherwise download the files we need from the Hub."""
    path = Path(path_or_id)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"expected a model folder or a Hub id, got the file {path}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{path_or_id!r} is not a local folder; install huggingface_hub to fetch it") from e
    patterns = ["config.json", "*.safetensors", "pytorch_model.bin", "preprocessor_config.json"]
    return Path(snapshot_download(str(path_or_id), allow_patterns=patterns))


def load_state_dict(folder: Path) -> dict[str, Tensor]:
    """Weights of a transformers checkpoint folder: safetensors preferred, else `pytorch_model.bin` (no pickle)."""
    st = folder / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    bin_file = folder / "pytorch_model.bin"
    if bin_file.is_file():
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"expected model.safetensors or pytorch_model.bin in {folder}")


def _import_converters() -> None:
    import perceiver.interop  # noqa: F401  (registers the converters)


def from_pretrained(path_or_id: str | os.PathLike, **overrides: Any) -> nn.Module:
    """Load a model folder of ours or a transformers Perceiver checkpoint; returns our model in eval mode.

    `overrides` go to the converter of a transformers checkpoint (e.g. `same_padding=False` to reproduce
    transformers' conv stem) or replace config fields of one of our folders.
    """
    folder = resolve(path_or_id)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"expected config.json in {folder}")
    config = json.loads(config_file.read_text())
    if "architectures" in config:
        _import_converters()
        archs = [a for a in config["architectures"] if a in HF_CONVERTERS]
        if not archs:
            raise ValueError(
                f"{folder}: architectures {config['architectures']} are not supported; "
                f"expected one of {sorted(HF_CONVERTERS)}"
            )
        model = HF_CONVERTERS[archs[0]](config, load_state_dict(folder), **overrides)
        return model.eval()
    if "model_type" not in config:
        raise ValueError(f"{config_file} has neither 'architectures' (transformers) nor 'model_type' (ours)")
    import perceiver.models  # noqa: F401  (registers the model types)

    return model_type_class(config["model_type"]).from_pretrained(folder, **overrides)
