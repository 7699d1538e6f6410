"""Load perceiver-pytorch (lucidrains) `Perceiver` weights into our classic `Perceiver`.

perceiver-pytorch fuses k and v in one `to_kv` projection and, with `weight_tie_layers`, lists the shared block under
every layer index 1..depth-1; both are undone here. Its constructor defaults differ from ours in `num_latents` (512).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from perceiver.models.classic import Perceiver

# perceiver-pytorch's keyword defaults where they differ from ours.
_PEER_DEFAULTS = {"num_latents": 512}
_UNSUPPORTED = {"inverted_cross_attn": False, "attn_residual": False}
_IGNORED = {"attn_residual_rank"}


def _map_key(key: str, model: Perceiver) -> list[tuple[str, Tensor | None]] | None:
    """Our key(s) for one perceiver-pytorch key; a value of None means 'take the tensor as is'."""
    enc = model.encoder
    if key == "latents":
        return [("encoder.latents", None)]
    if m := re.fullmatch(r"to_logits\.([12])\.(weight|bias)", key):
        return [(f"head.{'norm' if m[1] == '1' else 'fc'}.{m[2]}", None)]
    m = re.fullmatch(r"layers\.(\d+)\.(.*)", key)
    if m is None:
        return None
    i, rest = int(m[1]), m[2]
    if i >= len(enc.cross_index):
        return None
    cross = f"encoder.cross_attends.{enc.cross_index[i]}"
    latent = f"encoder.latent_blocks.{enc.latent_index[i]}"
    table = [
        (r"cross_attn\.norm\.(.*)", cross + ".q_norm.{0}"),
        (r"cross_attn\.norm_context\.(.*)", cross + ".kv_norm.{0}"),
        (r"cross_attn\.fn\.to_q\.(.*)", cross + ".attention.q_proj.{0}"),
        (r"cross_attn\.fn\.to_kv\.(.*)", cross + ".attention.{kv}_proj.{0}"),
        (r"cross_attn\.fn\.to_out\.(.*)", cross + ".attention.o_proj.{0}"),
        (r"cross_ff\.norm\.(.*)", cross + ".mlp_norm.{0}"),
        (r"cross_ff\.fn\.net\.0\.(.*)", cross + ".mlp.fc1.{0}"),
        (r"cross_ff\.fn\.net\.2\.(.*)", cross + ".mlp.fc2.{0}"),
        (r"self_attns\.(\d+)\.0\.norm\.(.*)", latent + ".{0}.norm.{1}"),
        (r"self_attns\.(\d+)\.0\.fn\.to_q\.(.*)", latent + ".{0}.attention.q_proj.{1}"),
        (r"self_attns\.(\d+)\.0\.fn\.to_kv\.(.*)", latent + ".{0}.attention.{kv}_proj.{1}"),
        (r"self_attns\.(\d+)\.0\.fn\.to_out\.(.*)", latent + ".{0}.attention.o_proj.{1}"),
        (r"self_attns\.(\d+)\.1\.norm\.(.*)", latent + ".{0}.mlp_norm.{1}"),
        (r"self_attns\.(\d+)\.1\.fn\.net\.0\.(.*)", latent + ".{0}.mlp.fc1.{1}"),
        (r"self_attns\.(\d+)\.1\.fn\.net\.2\.(.*)", latent + ".{0}.mlp.fc2.{1}"),
    ]
    for pattern, target in table:
        if g := re.fullmatch(pattern, rest):
            if "{kv}" in target:
                return [(target.format(*g.groups(), kv="k"), "k"), (target.format(*g.groups(), kv="v"), "v")]  # type: ignore[list-item]
            return [(target.format(*g.groups()), None)]
    return None


def from_perceiver_pytorch(state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any) -> Perceiver:
    """Our `Perceiver` with the weights of a perceiver-pytorch `Perceiver(**kwargs)` and identical outputs.

    `kwargs` are the keywords the perceiver-pytorch model was built with (its defaults apply to the rest).
    """
    if isinstance(state_dict, nn.Module):
        state_dict = state_dict.state_dict()
    for name, neutral in _UNSUPPORTED.items():
        value = kwargs.pop(name, neutral)
        if any(v != neutral for v in (value if isinstance(value, (tuple, list)) else [value])):
            raise ValueError(f"perceiver-pytorch option {name}={value!r} is not supported; expected {neutral!r}")
    for name in _IGNORED:
        kwargs.pop(name, None)
    model = Perceiver(**{**_PEER_DEFAULTS, **kwargs})
    ours = model.state_dict()
    converted: dict[str, Tensor] = {}
    unexpected = []
    for key, tensor in state_dict.items():
        targets = _map_key(key, model)
        if targets is None or any(target not in ours for target, _ in targets):
            unexpected.append(key)
            continue
        for target, part in targets:
            value = tensor if part is None else tensor.chunk(2, dim=0)[0 if part == "k" else 1]
            if target in converted and not torch.equal(converted[target], value):
                raise ValueError(
                    f"{key} differs from the layer it is tied to in our model ({target}); the state dict is not "
                    "weight-tied: load it with weight_tie_layers=False"
                )
            converted.setdefault(target, value)
    missing = sorted(set(ours) - set(converted))
    if unexpected or missing:
        raise ValueError(
            "state dict does not match the perceiver-pytorch Perceiver built from these keywords "
            f"({kwargs}): unexpected keys {unexpected[:5]}, missing {missing[:5]}"
        )
    for key, value in converted.items():
        if ours[key].shape != value.shape:
            raise ValueError(f"shape mismatch for {key}: expected {tuple(ours[key].shape)}, got {tuple(value.shape)}")
    model.load_state_dict(converted, strict=True)
    return model.eval()
