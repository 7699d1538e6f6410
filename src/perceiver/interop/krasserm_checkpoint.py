"""krasserm perceiver-io's Lightning checkpoints (`last.ckpt` of its `LitMaskedLanguageModel`, `LitTextClassifier`,
`LitImageClassifier`, `LitCausalLanguageModel`, `LitSymbolicAudioModel`), read without its package.

    checkpoint = load_krasserm_checkpoint("last.ckpt")   # a dict: state_dict, hyper_parameters (plain dicts), ...
    model = from_krasserm_checkpoint("last.ckpt")         # (or the dict) ours, by what its hyper-parameters describe
    model = masked_lm_from_krasserm(checkpoint)           # every converter also takes the checkpoint (or its path) alone

Its Lightning modules save their constructor arguments as the checkpoint's `hyper_parameters`: the Perceiver IO ones
its config dataclasses (`encoder`, `decoder`: `TextEncoderConfig`, `ClassificationDecoderConfig`, ... objects of its
package, `perceiver.model...`), the Perceiver AR ones flat numbers; its data modules' (`datamodule_hyper_parameters`)
may hold its enums (`Task.mlm`). Its package cannot be imported beside ours (both are named `perceiver`), so
`torch.load` cannot read such a file either way: `weights_only=True` refuses those classes, a full unpickling finds no
`perceiver.model`. `load_krasserm_checkpoint` reads it with `torch.load(weights_only=True)`, allowing only the
classes of krasserm's package, as plain records turned into dicts (a dataclass: its fields; an enum member: its
value): nothing of the file's is run. Training options among the hyper-parameters (`LIGHTNING_ONLY`) are dropped
from the config the converters read, as krasserm's own `Config.create(**hparams)` drops them.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: hyper-parameters of krasserm's Lightning modules that are not fields of its model configs (training options;
#: also dropped: Lightning's own, named with a leading underscore, e.g. LightningCLI's `_class_path`)
LIGHTNING_ONLY = ("params", "num_predictions", "masked_samples", "validation_sample_prompt", "validation_sample_record")


def model_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` without the Lightning-only hyper-parameters (`LIGHTNING_ONLY`, `_`-prefixed keys)."""
    return {k: v for k, v in config.items() if k not in LIGHTNING_ONLY and not str(k).startswith("_")}


#: the top-level package of krasserm's perceiver-io (the same name as ours)
_PACKAGE = "perceiver."
#: what the converters take as weights: a backend state dict, a whole Lightning checkpoint dict or its path
Checkpoint = Mapping[str, Any] | str | os.PathLike

# krasserm's config dataclasses and their defaults (perceiver-io 0.11.0, perceiver/model/core/config.py and the
# task backends); `None` in `TOP` marks a field without a default.
_ENCODER: dict[str, Any] = {
    "num_cross_attention_heads": 8,
    "num_cross_attention_qk_channels": None,
    "num_cross_attention_v_channels": None,
    "num_cross_attention_layers": 1,
    "first_cross_attention_layer_shared": False,
    "cross_attention_widening_factor": 1,
    "num_self_attention_heads": 8,
    "num_self_attention_qk_channels": None,
    "num_self_attention_v_channels": None,
    "num_self_attention_layers_per_block": 8,
    "num_self_attention_blocks": 1,
    "first_self_attention_block_shared": True,
    "self_attention_widening_factor": 1,
    "dropout": 0.0,
    "init_scale": 0.02,
    "freeze": False,
}
TEXT_ENCODER = _ENCODER | {"vocab_size": 10003, "max_seq_len": 256, "num_input_channels": 64, "params": None}
IMAGE_ENCODER = _ENCODER | {"image_shape": (224, 224, 3), "num_frequency_bands": 32}
FLOW_ENCODER = _ENCODER | {
    "image_shape": (368, 496),
    "num_patch_input_channels": 27,
    "num_patch_hidden_channels": 64,
    "num_frequency_bands": 64,
}
_DECODER: dict[str, Any] = {
    "num_cross_attention_heads": 8,
    "num_cross_attention_qk_channels": None,
    "num_cross_attention_v_channels": None,
    "cross_attention_widening_factor": 1,
    "cross_attention_residual": True,
    "dropout": 0.0,
    "init_scale": 0.02,
    "freeze": False,
}
TEXT_DECODER = _DECODER | {"num_output_query_channels": None, "vocab_size": 10003, "max_seq_len": 512}
CLASS_DECODER = _DECODER | {"num_output_queries": 1, "num_output_query_channels": 256, "num_classes": 100}
FLOW_DECODER = _DECODER | {"image_shape": (368, 496), "rescale_factor": 100.0}
TOP: dict[str, Any] = {
    "encoder": None,
    "decoder": None,
    "num_latents": None,
    "num_latent_channels": None,
    "activation_checkpointing": False,
    "activation_offloading": False,
}


class KrassermRecord:
    """An object of krasserm's package as read here: a dataclass's fields in `__dict__` (pickle's NEWOBJ + BUILD),
    an enum member's value in `args` (pickle's REDUCE calls the class with it). `plain` turns it into data."""

    krasserm_class = ""

    def __init__(self, *args: Any) -> None:
        self.args = args


def plain(obj: Any) -> Any:
    """`obj` with krasserm's records (and dataclass objects) as dicts, enum members as their values, recursively."""
    if isinstance(obj, KrassermRecord):
        if "args" in vars(obj):  # an enum member (Task.mlm -> 0)
            return obj.args[0] if len(obj.args) == 1 else [plain(a) for a in obj.args]
        return {k: plain(v) for k, v in vars(obj).items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):  # its config objects, unpickled with its package
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj) if type(obj) in (list, tuple) else obj
    return obj


def _package_globals(path: Path) -> list[str]:
    """The `module.name` of every global of krasserm's package the checkpoint's pickle names (protocol 2, as
    `torch.save` writes: GLOBAL opcodes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
            data = archive.read(pickles[0]) if pickles else b""
    except zipfile.BadZipFile:
        return []  # torch's legacy format: torch.load names what it cannot read
    found = []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL" and isinstance(arg, str) and arg.startswith(_PACKAGE):
            module, name = arg.split(" ", 1)
            found.append(f"{module}.{name}")
    return sorted(set(found))


def load_krasserm_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A krasserm perceiver-io Lightning checkpoint file as a dict (`state_dict`, `hyper_parameters`, ...), its
    config objects as plain dicts (see the module docstring). Raises FileNotFoundError for a missing file and
    ValueError naming the path for a file that is not such a checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"expected a krasserm perceiver-io Lightning checkpoint file, no such file {path}")
    stand_ins: list[Any] = [
        (type(name.rsplit(".", 1)[1], (KrassermRecord,), {"krasserm_class": name}), name)
        for name in _package_globals(path)
    ]
    try:
        with torch.serialization.safe_globals(stand_ins):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(f"{path}: could not read it as a krasserm perceiver-io Lightning checkpoint ({e})") from None
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"{path}: expected a Lightning checkpoint (a dict with 'state_dict'), got {found}")
    return {k: v if k in ("state_dict", "optimizer_states") else plain(v) for k, v in checkpoint.items()}


def krasserm_inputs(state_dict: Any, config: Any, what: str) -> tuple[Any, dict[str, Any]]:
    """`(state_dict, config)` for a converter of krasserm's models: a checkpoint path is read
    (`load_krasserm_checkpoint`); without `config`, a whole Lightning checkpoint's `hyper_parameters` are the config;
    a config object (dataclass) becomes a dict, a Hugging Face `config.json` dict gives its `model_config`, and the
    Lightning-only hyper-parameters (`LIGHTNING_ONLY`) are dropped. `what` names the config in errors."""
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = load_krasserm_checkpoint(state_dict)
    if config is None and isinstance(state_dict, Mapping) and isinstance(state_dict.get("hyper_parameters"), Mapping):
        config = state_dict["hyper_parameters"]
    if config is None:
        raise ValueError(
            f"expected krasserm's model config (a dict of {what}'s fields), or a whole Lightning checkpoint holding "
            f"it as hyper_parameters, got None"
        )
    config = plain(config)
    if not isinstance(config, dict):
        raise ValueError(
            f"expected krasserm's model config as a dict (of {what}'s fields), got {type(config).__name__}"
        )
    if isinstance(config.get("model_config"), dict):  # a Hugging Face config.json dict
        config = config["model_config"]
    return state_dict, model_fields(config)


def sections(
    config: dict[str, Any], encoder_defaults: dict[str, Any], decoder_defaults: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(top level, encoder, decoder) of a krasserm backend config dict (as `krasserm_inputs` resolves it), completed
    with krasserm's defaults; unknown or missing keys are a ValueError naming them."""
    missing = sorted(k for k, v in TOP.items() if v is None and k not in config)
    if missing:
        raise ValueError(f"krasserm config: expected the keys {missing}, got {sorted(config)}")
    parts = []
    for name, defaults, part in (
        ("config", TOP, config),
        ("encoder", encoder_defaults, config.get("encoder")),
        ("decoder", decoder_defaults, config.get("decoder")),
    ):
        if not isinstance(part, dict):
            raise ValueError(f"krasserm config: expected a dict for {name!r}, got {part!r}")
        unknown = sorted(set(part) - set(defaults))
        if unknown:
            raise ValueError(f"krasserm config {name!r}: unknown keys {unknown}; expected some of {sorted(defaults)}")
        parts.append({**defaults, **part})
    return parts[0], parts[1], parts[2]


#: per Perceiver IO converter of `krasserm_io`: krasserm's config class, its encoder's and decoder's defaults
IO_KINDS = {
    "masked_lm": ("MaskedLanguageModelConfig", TEXT_ENCODER, TEXT_DECODER),
    "text_classifier": ("TextClassifierConfig", TEXT_ENCODER, CLASS_DECODER),
    "image_classifier": ("ImageClassifierConfig", IMAGE_ENCODER, CLASS_DECODER),
    "optical_flow": ("OpticalFlowConfig", FLOW_ENCODER, FLOW_DECODER),
}


def io_config(
    state_dict: Checkpoint, config: Any, kind: str
) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """`(state_dict, top level, encoder, decoder)` for the `kind` converter of `krasserm_io` (see `IO_KINDS`):
    `krasserm_inputs`, then `sections` with that kind's defaults."""
    what, encoder, decoder = IO_KINDS[kind]
    weights, config = krasserm_inputs(state_dict, config, what)
    return (weights, *sections(config, encoder, decoder))


def from_krasserm_checkpoint(checkpoint: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Ours for a krasserm perceiver-io Lightning checkpoint (its path, or the dict `load_krasserm_checkpoint`
    returns), in eval mode: `PerceiverForMaskedLM`, `PerceiverForSequenceClassification`,
    `PerceiverForImageClassification`, `PerceiverForOpticalFlow` or `PerceiverAR`, as its hyper-parameters describe
    (`overrides` go to that converter). Raises ValueError for hyper-parameters of none of them."""
    from perceiver.interop import krasserm, krasserm_io

    if not isinstance(checkpoint, Mapping):
        checkpoint = load_krasserm_checkpoint(checkpoint)
    hp = plain(checkpoint.get("hyper_parameters"))
    if not isinstance(hp, dict):
        raise ValueError(
            f"expected a krasserm Lightning checkpoint with hyper_parameters (its model config), got the keys "
            f"{sorted(checkpoint)[:8]}"
        )
    enc, dec = hp.get("encoder"), hp.get("decoder")
    if isinstance(enc, dict) and isinstance(dec, dict):
        if "num_patch_input_channels" in enc:
            return krasserm_io.optical_flow_from_krasserm(checkpoint, **overrides)
        if "image_shape" in enc:
            return krasserm_io.image_classifier_from_krasserm(checkpoint, **overrides)
        if "vocab_size" in dec:
            return krasserm_io.masked_lm_from_krasserm(checkpoint, **overrides)
        if "num_classes" in dec:
            return krasserm_io.text_classifier_from_krasserm(checkpoint, **overrides)
    elif "max_latents" in hp:  # LitCausalLanguageModel / LitSymbolicAudioModel: CausalSequenceModelConfig's fields
        return krasserm.from_krasserm(checkpoint, **overrides)
    raise ValueError(
        f"expected the hyper-parameters of one of krasserm's Lightning modules (encoder and decoder configs of its "
        f"masked LM, text or image classifier, or a causal sequence model's max_latents, ...), got {sorted(hp)}"
    )


__all__ = [
    "LIGHTNING_ONLY",
    "from_krasserm_checkpoint",
    "io_config",
    "krasserm_inputs",
    "load_krasserm_checkpoint",
    "model_fields",
    "plain",
    "sections",
]
