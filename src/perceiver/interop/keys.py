"""State-dict key maps from other implementations to ours: regex tables, fused projections, checked loading.

    their state dict --map_state_dict(table)--> our keys (q / k / v parts fused) --load_mapped--> our model

A saved state dict may be wrapped (DDP's `module.`, `torch.compile`'s `_orig_mod.`, a Lightning module's `model.`
before every key, a Lightning checkpoint's `state_dict` entry): `unwrap_state_dict` takes the model's own keys out.

A table is a list of `(pattern, target)`: the first pattern that matches a key whole renames it to
`target.format(*groups)`. A target `name#part` (part `q`, `k` or `v`) is one part of a fused projection such as
`layers.0.to_qkv.weight#k`: the parts of `name` are concatenated along the output rows in the order the name spells
(`to_qkv`: q, k, v; `to_kv`: k, v).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

M = TypeVar("M", bound=nn.Module)

#: prefixes that wrappers put before every key of a model's state dict: DDP / DataParallel (`module.`),
#: `torch.compile` (`_orig_mod.`), a Lightning module holding the model as `self.model` (`model.`)
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def unwrap_state_dict(state_dict: Any, peer: str, prefixes: Sequence[str] = WRAPPER_PREFIXES) -> dict[str, Tensor]:
    """The model's own state dict inside what a user saved: a Lightning checkpoint's `state_dict` entry, and keys
    without the wrapper `prefixes` every key shares (stripped repeatedly: `module._orig_mod.`). ValueError naming
    `peer` for anything that is not a dict of tensors."""
    if isinstance(state_dict, Mapping) and isinstance(state_dict.get("state_dict"), Mapping):
        state_dict = state_dict["state_dict"]  # a Lightning .ckpt (torch.load): the weights beside the training state
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, Tensor) for v in state_dict.values()):
        kind = type(state_dict).__name__
        found = f" with the keys {sorted(state_dict)[:5]}" if isinstance(state_dict, Mapping) else ""
        if isinstance(state_dict, (str, os.PathLike)):
            found = f" {os.fspath(state_dict)!r}: load the file first, torch.load(path, weights_only=True)"
        raise ValueError(f"expected a {peer} state_dict (a dict of tensors) or its module, got a {kind}{found}")
    out = dict(state_dict)
    while out and (prefix := next((p for p in prefixes if all(k.startswith(p) for k in out)), None)):
        out = {key[len(prefix) :]: value for key, value in out.items()}
    return out


def map_state_dict(
    state_dict: dict[str, Tensor], table: Sequence[tuple[str, str]], peer: str, skip: Collection[str] = ()
) -> dict[str, Tensor]:
    """`state_dict` with our keys (see the module docstring); keys in `skip` are dropped.

    Raises ValueError naming a key no pattern matches, or a fused projection with a part missing.
    """
    out: dict[str, Tensor] = {}
    parts: dict[str, dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        if key in skip:
            continue
        for pattern, target in table:
            if m := re.fullmatch(pattern, key):
                name, _, part = target.format(*m.groups()).partition("#")
                if part:
                    parts.setdefault(name, {})[part] = value
                else:
                    out[name] = value
                break
        else:
            raise ValueError(f"unexpected {peer} key {key!r}")
    for name, got in parts.items():
        fused = re.search(r"to_([qkv]+)\.", name)
        assert fused is not None, f"a part target names a fused to_q/k/v projection, got {name!r}"  # our tables
        order = fused.group(1)
        missing = [f"{p}_proj" for p in order if p not in got]
        if missing:
            raise ValueError(f"expected {', '.join(f'{p}_proj' for p in order)} for {name}, missing {missing}")
        out[name] = torch.cat([got[p] for p in order], dim=0)
    return out


def load_mapped(model: M, weights: dict[str, Tensor], against: str = "the config", tied: Collection[str] = ()) -> M:
    """Load `weights` (our keys) into `model`, which is returned in eval mode; every key of ours but the `tied` ones
    (shared with another parameter) must be there, and nothing else. Raises ValueError naming the keys otherwise
    ("state_dict does not match {against}: ...")."""
    ours = model.state_dict()
    shapes = [
        f"{key} {tuple(value.shape)} (ours {tuple(ours[key].shape)})"
        for key, value in weights.items()
        if key in ours and value.shape != ours[key].shape
    ]
    if shapes:  # a keyword of the peer's constructor that differs from the one its weights were built with
        raise ValueError(f"state_dict does not match {against}: shapes differ for {', '.join(shapes[:5])}")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise ValueError(f"state_dict does not match {against}: missing {missing}, unexpected {unexpected}")
    return model.eval()
