"""Load Perceiver Resampler weights: flamingo-pytorch's `PerceiverResampler`, OpenFlamingo's, and transformers'
`IdeficsPerceiverResampler` (IDEFICS v1's) and `Idefics2PerceiverResampler` (the Idefics2 connector's resampler).

flamingo-pytorch: LayerNorm, GELU MLP, fused `to_kv`, per-time media embeddings: keys map one to one (its
`FlamingoPaLM`: the `perceiver_resampler.` keys, and `video_frame_pos_emb` as our per-frame embeddings).
OpenFlamingo (`open_flamingo.src.helpers.PerceiverResampler`, the `perceiver` of its `Flamingo` models): the same
layers, optional per-time (`media_time_embs`) and per-frame (`frame_embs`) embeddings, media `(B, T, F, V, D)`; its
released models build it as `PerceiverResampler(dim=vision_width)`, without either.
IDEFICS: Flamingo's layers with a ReLU MLP (width `intermediate_dim`), separate k / v projections (concatenated into
our `to_kv`), optional LayerNorms of each head's queries and keys (`qk_layer_norms_perceiver`), no media embeddings.
Idefics2: RMSNorm (eps from its config), SwiGLU MLP (gate / up / down), separate k / v projections (concatenated
into our `to_kv`), grouped-query attention, no media embeddings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from perceiver.checks import InputTypeError
from perceiver.hub import config_from_dict
from perceiver.interop.keys import load_mapped, map_state_dict, unwrap_state_dict
from perceiver.models.resampler import PerceiverResampler, PerceiverResamplerConfig

_PALM = "perceiver_resampler."  # FlamingoPaLM's resampler
_FLAMINGO_DEFAULTS = {"dim_head": 64, "heads": 8, "num_latents": 64, "num_media_embeds": 4, "ff_mult": 4}
_FLAMINGO_TABLE = [
    (r"layers\.(\d+)\.0\.(norm_media|norm_latents)\.(weight|bias)", "layers.{0}.attn.{1}.{2}"),
    (r"layers\.(\d+)\.0\.(to_q|to_kv|to_out)\.weight", "layers.{0}.attn.{1}.weight"),
    (r"layers\.(\d+)\.1\.0\.(weight|bias)", "layers.{0}.ff.norm.{1}"),
    (r"layers\.(\d+)\.1\.1\.weight", "layers.{0}.ff.fc1.weight"),
    (r"layers\.(\d+)\.1\.3\.weight", "layers.{0}.ff.fc2.weight"),
    (r"(latents|media_pos_emb)", "{0}"),
    (r"norm\.(weight|bias)", "norm.{0}"),
    (r"video_frame_pos_emb", "frame_pos_emb"),  # FlamingoPaLM's, added to video features before its resampler
]
_OPEN_FLAMINGO_DEFAULTS = {
    "depth": 6, "dim_head": 64, "heads": 8, "num_latents": 64, "max_num_media": None, "max_num_frames": None,
    "ff_mult": 4,
}  # fmt: skip
_OPEN_FLAMINGO_TABLE = [
    *_FLAMINGO_TABLE[:5],
    (r"latents", "latents"),
    (r"media_time_embs", "media_pos_emb"),
    (r"frame_embs", "frame_pos_emb"),
    (r"norm\.(weight|bias)", "norm.{0}"),
]
_IDEFICS_TABLE = [
    (r"blocks\.(\d+)\.0\.context_layer_norm\.(weight|bias)", "layers.{0}.attn.norm_media.{1}"),
    (r"blocks\.(\d+)\.0\.latents_layer_norm\.(weight|bias)", "layers.{0}.attn.norm_latents.{1}"),
    (r"blocks\.(\d+)\.0\.([qk])_layer_norm\.(weight|bias)", "layers.{0}.attn.{1}_norm.{2}"),
    (r"blocks\.(\d+)\.0\.q_proj\.weight", "layers.{0}.attn.to_q.weight"),
    (r"blocks\.(\d+)\.0\.([kv])_proj\.weight", "layers.{0}.attn.to_kv.weight#{1}"),  # fused
    (r"blocks\.(\d+)\.0\.output_proj\.weight", "layers.{0}.attn.to_out.weight"),
    (r"blocks\.(\d+)\.1\.ln\.(weight|bias)", "layers.{0}.ff.norm.{1}"),
    (r"blocks\.(\d+)\.1\.fc\.weight", "layers.{0}.ff.fc1.weight"),
    (r"blocks\.(\d+)\.1\.c_proj\.weight", "layers.{0}.ff.fc2.weight"),
    (r"latents", "latents"),
    (r"layer_norm\.(weight|bias)", "norm.{0}"),
]
_IDEFICS2_TABLE = [
    (r"layers\.(\d+)\.input_latents_norm\.weight", "layers.{0}.attn.norm_latents.weight"),
    (r"layers\.(\d+)\.input_context_norm\.weight", "layers.{0}.attn.norm_media.weight"),
    (r"layers\.(\d+)\.self_attn\.q_proj\.weight", "layers.{0}.attn.to_q.weight"),
    (r"layers\.(\d+)\.self_attn\.([kv])_proj\.weight", "layers.{0}.attn.to_kv.weight#{1}"),  # fused
    (r"layers\.(\d+)\.self_attn\.o_proj\.weight", "layers.{0}.attn.to_out.weight"),
    (r"layers\.(\d+)\.post_attention_layernorm\.weight", "layers.{0}.ff.norm.weight"),
    (r"layers\.(\d+)\.mlp\.gate_proj\.weight", "layers.{0}.ff.gate.weight"),
    (r"layers\.(\d+)\.mlp\.up_proj\.weight", "layers.{0}.ff.fc1.weight"),
    (r"layers\.(\d+)\.mlp\.down_proj\.weight", "layers.{0}.ff.fc2.weight"),
    (r"(latents)", "{0}"),
    (r"norm\.weight", "norm.weight"),
]


def from_flamingo_pytorch(state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any) -> PerceiverResampler:
    """Our resampler equal to flamingo-pytorch's `PerceiverResampler(**kwargs)` with `state_dict` (or the module).

    A whole `FlamingoPaLM` (its state dict or module) gives its `perceiver_resampler` (`kwargs` are the resampler's:
    `depth` is its `perceiver_depth`, `num_latents` its `perceiver_num_latents`) and, when it was built with
    `max_video_frames`, its `video_frame_pos_emb` as our frame embeddings: video features `(B, T, F, V, D)` then
    resample as its `forward(videos=...)` does (frame embeddings added, the F frames flattened, then its resampler).
    """
    if isinstance(state_dict, nn.Module):
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, Mapping):
        raise InputTypeError(
            f"expected a flamingo-pytorch state_dict (a dict of tensors) or its module, got {type(state_dict).__name__}"
        )
    state_dict = unwrap_state_dict(state_dict, "flamingo-pytorch")
    resampler = {k.removeprefix(_PALM): v for k, v in state_dict.items() if k.startswith(_PALM)}
    if resampler:  # a whole FlamingoPaLM: its resampler's keys and its video frame embeddings, nothing else
        frames = {k: v for k, v in state_dict.items() if k == "video_frame_pos_emb"}
        state_dict = resampler | frames
    missing = [k for k in ("dim", "depth") if k not in kwargs]
    if missing:
        raise ValueError(f"expected flamingo-pytorch keywords dim and depth, missing {missing}")
    peer = {**_FLAMINGO_DEFAULTS, **kwargs}
    config = config_from_dict(
        PerceiverResamplerConfig,
        {
            "dim": peer.pop("dim"),
            "depth": peer.pop("depth"),
            "num_latents": peer.pop("num_latents"),
            "num_heads": peer.pop("heads"),
            "head_dim": peer.pop("dim_head"),
            "num_media_embeds": peer.pop("num_media_embeds"),
            "ff_mult": float(peer.pop("ff_mult")),
            "num_frame_embeds": len(state_dict.get("video_frame_pos_emb", ())),
            **peer,
        },
    )
    weights = map_state_dict(state_dict, _FLAMINGO_TABLE, "flamingo-pytorch")
    return load_mapped(PerceiverResampler(config), weights, against="the keywords")


def from_open_flamingo(state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any) -> PerceiverResampler:
    """Our resampler equal to OpenFlamingo's `PerceiverResampler(**kwargs)` with `state_dict` (or the module), or the
    resampler of a whole OpenFlamingo checkpoint (`state_dict` with `perceiver.`-prefixed keys beside its vision and
    language models' keys: only those are read)."""
    if isinstance(state_dict, nn.Module):
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, Mapping):
        raise InputTypeError(
            f"expected an OpenFlamingo state_dict (a dict of tensors) or its module, got {type(state_dict).__name__}"
        )
    state_dict = unwrap_state_dict(state_dict, "OpenFlamingo")
    if "dim" not in kwargs:
        raise ValueError("expected OpenFlamingo's keyword dim (the vision encoder's width, e.g. 1024 for ViT-L/14)")
    unknown = sorted(set(kwargs) - {"dim", *_OPEN_FLAMINGO_DEFAULTS})
    if unknown:
        raise ValueError(
            f"expected OpenFlamingo PerceiverResampler keywords {sorted(_OPEN_FLAMINGO_DEFAULTS)} and dim, got {unknown}"
        )
    prefixed = {k.removeprefix("perceiver."): v for k, v in state_dict.items() if k.startswith("perceiver.")}
    if prefixed:  # a whole Flamingo model's state dict
        state_dict = prefixed
    peer = {**_OPEN_FLAMINGO_DEFAULTS, **kwargs}
    config = PerceiverResamplerConfig(
        dim=peer["dim"],
        depth=peer["depth"],
        num_latents=peer["num_latents"],
        num_heads=peer["heads"],
        head_dim=peer["dim_head"],
        num_media_embeds=peer["max_num_media"] or 0,
        num_frame_embeds=peer["max_num_frames"] or 0,
        ff_mult=float(peer["ff_mult"]),
    )
    weights = map_state_dict(state_dict, _OPEN_FLAMINGO_TABLE, "OpenFlamingo")
    return load_mapped(PerceiverResampler(config), weights, against="the keywords")


def from_idefics(resampler: nn.Module) -> PerceiverResampler:
    """Our resampler equal to transformers' `IdeficsPerceiverResampler` (IDEFICS v1: an `IdeficsModel`'s
    `perceiver_resampler`, built when its config has `use_resampler=True`): its sizes, `qk_layer_norms` and weights.
    It takes context `(B, M, D)` without a mask, as ours takes 3-D media."""
    sizes = ("embed_dim", "n_heads", "head_dim", "n_latents", "intermediate_dim", "qk_layer_norms", "blocks")
    if not isinstance(resampler, nn.Module) or not all(hasattr(resampler, name) for name in sizes):
        raise InputTypeError(
            "expected transformers' IdeficsPerceiverResampler (an IdeficsModel's perceiver_resampler), got "
            f"{type(resampler).__name__}"
        )
    r: Any = resampler  # its sizes are plain attributes (torch hints Module attributes as Tensor | Module)
    if r.intermediate_dim % r.embed_dim:
        raise ValueError(
            f"expected an IDEFICS resampler whose MLP width is a multiple of embed_dim={r.embed_dim}, "
            f"got {r.intermediate_dim}"
        )
    config = PerceiverResamplerConfig(
        dim=r.embed_dim,
        depth=len(r.blocks),
        num_latents=r.n_latents,
        num_heads=r.n_heads,
        head_dim=r.head_dim,
        num_media_embeds=0,
        ff_mult=float(r.intermediate_dim // r.embed_dim),
        mlp="relu",
        qk_norm=bool(r.qk_layer_norms),
    )
    weights = map_state_dict(resampler.state_dict(), _IDEFICS_TABLE, "IDEFICS")
    return load_mapped(PerceiverResampler(config), weights, against="its sizes")


def from_idefics2(resampler: nn.Module) -> PerceiverResampler:
    """Our resampler equal to transformers' `Idefics2PerceiverResampler` (`.config` and weights of the module)."""
    # transformers' Idefics2PerceiverConfig (torch hints Module attributes as Tensor | Module)
    c: Any = getattr(resampler, "config", None)
    if not isinstance(resampler, nn.Module) or not hasattr(c, "resampler_n_latents"):
        raise InputTypeError(
            "expected transformers' Idefics2PerceiverResampler (an Idefics2Model's "
            f"connector.perceiver_resampler), got {type(resampler).__name__}"
        )
    if c.hidden_act != "silu":
        raise ValueError(f"expected an Idefics2 resampler with hidden_act='silu', got {c.hidden_act!r}")
    config = PerceiverResamplerConfig(
        dim=c.hidden_size,
        depth=c.resampler_depth,
        num_latents=c.resampler_n_latents,
        num_heads=c.resampler_n_heads,
        head_dim=c.resampler_head_dim,
        num_kv_heads=c.num_key_value_heads,
        num_media_embeds=0,
        ff_mult=4.0,
        mlp="swiglu",
        norm="rmsnorm",
        norm_eps=c.rms_norm_eps,
    )
    weights = map_state_dict(resampler.state_dict(), _IDEFICS2_TABLE, "Idefics2")
    return load_mapped(PerceiverResampler(config), weights, against="the config")
