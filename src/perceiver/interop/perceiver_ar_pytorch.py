"""Load perceiver-ar-pytorch (lucidrains) `PerceiverAR` weights into our `PerceiverAR`.

perceiver-ar-pytorch's layout maps to ours with these switches: learned absolute positions plus rotary on
`max(32, dim_head // 2)` channels (GPT-NeoX half rotation), a fixed prefix of `cross_attn_seq_len` positions (all later
positions are latents: `prefix_len`), a bias on the cross-attention output only, no final norm. Its loss ignores
token 0 (ours ignores -100) and its `perceive_max_heads_process` only chunks heads (no effect on the result).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from perceiver.hub import config_from_dict
from perceiver.interop.keys import load_mapped, map_state_dict, unwrap_state_dict
from perceiver.models.ar import PerceiverAR, PerceiverARConfig

_PEER_DEFAULTS = {
    "dim_head": 64,
    "heads": 8,
    "dropout": 0.0,
    "cross_attn_dropout": 0.0,
    "ff_mult": 4,
    "perceive_depth": 1,
    "perceive_max_heads_process": 2,
}
_REQUIRED = ("num_tokens", "dim", "depth", "max_seq_len", "cross_attn_seq_len")
_TABLE = [
    (r"perceive_layers\.(\d+)\.0\.(norm|context_norm|to_q|to_kv|to_out)\.(weight|bias)", "cross_layers.{0}.{1}.{2}"),
    (r"perceive_layers\.(\d+)\.1\.0\.(weight|bias)", "cross_layers.{0}.ff.norm.{1}"),
    (r"perceive_layers\.(\d+)\.1\.1\.weight", "cross_layers.{0}.ff.fc1.weight"),
    (r"perceive_layers\.(\d+)\.1\.4\.weight", "cross_layers.{0}.ff.fc2.weight"),
    (r"layers\.(\d+)\.0\.(norm|to_qkv|to_out)\.(weight|bias)", "layers.{0}.{1}.{2}"),
    (r"layers\.(\d+)\.1\.0\.(weight|bias)", "layers.{0}.ff.norm.{1}"),
    (r"layers\.(\d+)\.1\.1\.weight", "layers.{0}.ff.fc1.weight"),
    (r"layers\.(\d+)\.1\.4\.weight", "layers.{0}.ff.fc2.weight"),
    (r"(token_emb|pos_emb|to_logits)\.weight", "{0}.weight"),
]


def config_from_perceiver_ar_pytorch(**kwargs: Any) -> PerceiverARConfig:
    """Our config for perceiver-ar-pytorch's constructor keywords; keywords of `PerceiverARConfig` override."""
    missing = [k for k in _REQUIRED if k not in kwargs]
    if missing:
        raise ValueError(f"expected perceiver-ar-pytorch keywords {list(_REQUIRED)}, missing {missing}")
    peer = {**_PEER_DEFAULTS, **{k: v for k, v in kwargs.items() if k in _PEER_DEFAULTS or k in _REQUIRED}}
    ours = {k: v for k, v in kwargs.items() if k not in peer}
    if not peer["max_seq_len"] > peer["cross_attn_seq_len"]:
        raise ValueError(
            f"expected max_seq_len > cross_attn_seq_len, got {peer['max_seq_len']} and {peer['cross_attn_seq_len']}"
        )
    if isinstance(peer["dim_head"], int) and not isinstance(peer["dim_head"], bool) and peer["dim_head"] < 32:
        raise ValueError(
            f"expected dim_head >= 32, got {peer['dim_head']}: perceiver-ar-pytorch rotates max(32, dim_head // 2) "
            "channels of each head, more than a head of fewer than 32 has (it cannot run such a model itself)"
        )
    fields = {
        "vocab_size": peer["num_tokens"],
        "max_seq_len": peer["max_seq_len"],
        "num_latents": peer["max_seq_len"] - peer["cross_attn_seq_len"],
        "prefix_len": peer["cross_attn_seq_len"],
        "d_model": peer["dim"],
        "num_heads": peer["heads"],
        "head_dim": peer["dim_head"],
        "num_layers": peer["depth"],
        "num_cross_layers": peer["perceive_depth"],
        "ff_mult": float(peer["ff_mult"]),
        "dropout": peer["dropout"],
        "prefix_dropout": peer["cross_attn_dropout"],
        "rotary_dim": max(32, peer["dim_head"] // 2),
        "rotary_interleaved": False,
        "abs_pos_emb": True,
        "final_norm": False,
        "cross_out_bias": True,
        **ours,
    }
    return config_from_dict(PerceiverARConfig, fields)


def convert_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """perceiver-ar-pytorch keys -> ours (the rotary `inv_freq` buffer is recomputed, not loaded)."""
    return map_state_dict(state_dict, _TABLE, "perceiver-ar-pytorch", skip={"rotary_pos_emb.inv_freq"})


def from_perceiver_ar_pytorch(state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any) -> PerceiverAR:
    """A `PerceiverAR` equal to perceiver-ar-pytorch's `PerceiverAR(**kwargs)` with `state_dict` (or the module).

    `model(x).logits` `(B, L - cross_attn_seq_len, V)` equals `peer(x)` for `cross_attn_seq_len < L <= max_seq_len`.
    """
    if isinstance(state_dict, nn.Module):
        state_dict = state_dict.state_dict()
    state_dict = unwrap_state_dict(state_dict, "perceiver-ar-pytorch")
    model = PerceiverAR(config_from_perceiver_ar_pytorch(**kwargs))
    load_mapped(model, convert_state_dict(state_dict), against="the keywords")
    inv_freq = state_dict.get("rotary_pos_emb.inv_freq")
    if inv_freq is not None and tuple(inv_freq.shape) != tuple(model.inv_freq.shape):
        raise ValueError(
            f"expected rotary inv_freq of shape {tuple(model.inv_freq.shape)}, got {tuple(inv_freq.shape)}"
        )
    return model
