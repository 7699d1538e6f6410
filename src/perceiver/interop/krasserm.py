"""Load krasserm's perceiver-io Perceiver AR models (`CausalSequenceModel`: its causal language model and its symbolic
audio model) into our `PerceiverAR`.

krasserm/perceiver-io (PyPI `perceiver-io`, https://github.com/krasserm/perceiver-io) trained Perceiver AR checkpoints
that exist only in its format (e.g. `krasserm/perceiver-ar-clm-base` on the Hub). Its layout maps to ours with these
switches: interleaved rotary on every head's channels (half of them with `abs_pos_emb`, which adds learned absolute
positions), rotary in the first `num_self_attention_rotary_layers` self-attention layers only (-1: all), no biases in
the q / k / v projections and the MLPs, a bias on the cross-attention output only, logits `x @ embedding.T + bias`
(`output_bias`), an optional final LayerNorm (`output_norm`). Its `forward(x, prefix_len)` predicts after the last
`L - prefix_len` positions: ours with `num_latents=L - prefix_len`.

Accepted forms:
- `from_krasserm(state_dict, config)`: the backend model's `state_dict()` and its config as a dict
  (`dataclasses.asdict(model.config)`); keys may carry the `backend_model.` prefix of its Hugging Face wrapper
  (`PerceiverCausalLanguageModel`, `PerceiverSymbolicAudioModel`) or the `model.` prefix of its Lightning module
  (DDP's `module.`, `torch.compile`'s `_orig_mod.` and a whole Lightning checkpoint dict are taken off too); a whole
  Lightning checkpoint (its `last.ckpt` path or dict) needs no config, its `hyper_parameters` are one.
- `perceiver.from_pretrained(folder_or_hub_id)` on its Hub folders: `config.json` with `architectures` and
  `model_config` (registered here as transformers-style converters).

Differences that remain: its latent self-attention does not mask padded latents (a left-padded row whose padding
reaches into the latents sees the pad tokens there; ours masks them, so such a row computes what the row alone
computes), and its `residual_dropout` (dropout of each residual branch in training) has no counterpart here (a
checkpoint trained with it loads with the same inference outputs; the option is dropped with a warning).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from perceiver.hub import config_from_dict
from perceiver.interop.keys import WRAPPER_PREFIXES, load_mapped, map_state_dict, unwrap_state_dict
from perceiver.interop.krasserm_checkpoint import krasserm_inputs, model_fields
from perceiver.models.ar import PerceiverAR, PerceiverARConfig
from perceiver.pretrained import register_hf_converter

# CausalSequenceModelConfig's fields and their defaults (perceiver-io 0.11.0, perceiver/model/core/config.py)
_DEFAULTS: dict[str, Any] = {
    "num_heads": 8,
    "max_heads_parallel": None,
    "num_self_attention_layers": 8,
    "num_self_attention_rotary_layers": 1,
    "self_attention_widening_factor": 4,
    "cross_attention_widening_factor": 4,
    "cross_attention_dropout": 0.5,
    "post_attention_dropout": 0.0,
    "residual_dropout": 0.0,
    "activation_checkpointing": False,
    "activation_offloading": False,
    "vocab_size": 262,
    "max_seq_len": 4096,
    "max_latents": 512,
    "num_channels": 512,
    "output_norm": False,
    "output_bias": True,
    "abs_pos_emb": True,
    "init_scale": 0.02,
}

_CA, _SA = r"cross_attention", r"self_attention\.(\d+)"
_TABLE = [
    (r"input_adapter\.txt_embedding\.weight", "token_emb.weight"),
    (r"input_adapter\.pos_embedding\.weight", "pos_emb.weight"),
    (rf"{_CA}\.0\.module\.q_norm\.(weight|bias)", "cross_layers.0.norm.{0}"),
    (rf"{_CA}\.0\.module\.kv_norm\.(weight|bias)", "cross_layers.0.context_norm.{0}"),
    (rf"{_CA}\.0\.module\.attention\.q_proj\.weight", "cross_layers.0.to_q.weight"),
    (rf"{_CA}\.0\.module\.attention\.o_proj\.(weight|bias)", "cross_layers.0.to_out.{0}"),
    (rf"{_CA}\.1\.module\.0\.(weight|bias)", "cross_layers.0.ff.norm.{0}"),
    (rf"{_CA}\.1\.module\.1\.weight", "cross_layers.0.ff.fc1.weight"),
    (rf"{_CA}\.1\.module\.3\.weight", "cross_layers.0.ff.fc2.weight"),
    (rf"{_SA}\.0\.module\.norm\.(weight|bias)", "layers.{0}.norm.{1}"),
    (rf"{_SA}\.0\.module\.attention\.o_proj\.weight", "layers.{0}.to_out.weight"),
    (rf"{_SA}\.1\.module\.0\.(weight|bias)", "layers.{0}.ff.norm.{1}"),
    (rf"{_SA}\.1\.module\.1\.weight", "layers.{0}.ff.fc1.weight"),
    (rf"{_SA}\.1\.module\.3\.weight", "layers.{0}.ff.fc2.weight"),
    (r"out_norm\.(weight|bias)", "norm.{0}"),
    (r"output_adapter\.bias", "to_logits.bias"),
    (rf"{_CA}\.0\.module\.attention\.([kv])_proj\.weight", "cross_layers.0.to_kv.weight#{0}"),  # fused
    (rf"{_SA}\.0\.module\.attention\.([qkv])_proj\.weight", "layers.{0}.to_qkv.weight#{1}"),
]
_INV_FREQ = "input_adapter.frq_pos_encoding.inv_freq"
_PREFIXES = ("backend_model.", *WRAPPER_PREFIXES)


def config_from_krasserm(config: dict[str, Any], **overrides: Any) -> PerceiverARConfig:
    """Our config for a krasserm `CausalSequenceModelConfig` (as a dict); fields of `PerceiverARConfig` override.

    Its Lightning modules' training options among the fields (`validation_sample_prompt`, ...: `model_fields`)
    are dropped; raises ValueError for a key that is neither krasserm's nor ours.
    """
    config = model_fields(config)
    unknown = sorted(set(config) - set(_DEFAULTS))
    if unknown:
        raise ValueError(
            f"expected the fields of krasserm's CausalSequenceModelConfig ({sorted(_DEFAULTS)}), got unknown {unknown}"
        )
    k = {**_DEFAULTS, **config}
    if k["residual_dropout"]:
        warnings.warn(
            f"krasserm's residual_dropout={k['residual_dropout']} (dropout of each residual branch in training) has "
            f"no counterpart in PerceiverAR and is dropped; inference outputs are unaffected",
            stacklevel=3,
        )
    num_heads, width = k["num_heads"], k["num_channels"]
    if width % num_heads:
        raise ValueError(f"expected num_channels divisible by num_heads, got {width} and {num_heads}")
    head_dim = width // num_heads
    rotary_layers = k["num_self_attention_rotary_layers"]
    fields = {
        "vocab_size": k["vocab_size"],
        "max_seq_len": k["max_seq_len"],
        "num_latents": k["max_latents"],
        "d_model": width,
        "num_heads": num_heads,
        "num_layers": k["num_self_attention_layers"],
        "num_cross_layers": 1,
        "ff_mult": float(k["self_attention_widening_factor"]),
        "cross_ff_mult": float(k["cross_attention_widening_factor"]),
        "dropout": k["post_attention_dropout"],
        "prefix_dropout": k["cross_attention_dropout"],
        "rotary_dim": head_dim // 2 if k["abs_pos_emb"] else head_dim,
        "rotary_interleaved": True,
        "rotary_layers": None if rotary_layers == -1 else rotary_layers,
        "abs_pos_emb": k["abs_pos_emb"],
        "final_norm": k["output_norm"],
        "cross_out_bias": True,
        "tie_embeddings": True,
        "logits_bias": k["output_bias"],
        "init_std": k["init_scale"],
        **overrides,
    }
    return config_from_dict(PerceiverARConfig, fields)


def backend_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The backend's keys: without the `backend_model.` (Hugging Face wrapper) or `model.` (Lightning) prefix, nor
    DDP's `module.` or `torch.compile`'s `_orig_mod.`; a Lightning checkpoint's `state_dict` entry is read."""
    return unwrap_state_dict(state_dict, "krasserm perceiver-io", _PREFIXES)


def convert_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """krasserm `CausalSequenceModel` keys -> ours (the rotary `inv_freq` buffer is recomputed, not loaded).

    Raises ValueError naming a key it cannot place or a fused projection with a part missing.
    """
    return map_state_dict(backend_state_dict(state_dict), _TABLE, "krasserm CausalSequenceModel", skip={_INV_FREQ})


def from_krasserm(
    state_dict: Mapping[str, Any] | nn.Module | str | os.PathLike,
    config: dict[str, Any] | None = None,
    **overrides: Any,
) -> PerceiverAR:
    """A `PerceiverAR` equal to krasserm's `CausalSequenceModel(config)` with `state_dict` (or the module), eval mode.

    A whole Lightning checkpoint of its `LitCausalLanguageModel` / `LitSymbolicAudioModel` (the dict, or its path:
    `perceiver.interop.krasserm_checkpoint`) needs no `config`: its `hyper_parameters` are one.

    `model(x, num_latents=L - prefix_len).logits` equals `peer(x, prefix_len=prefix_len).logits` (`(B, L -
    prefix_len, V)`); an attention mask is ours (True = token) where krasserm's `pad_mask` is True at padding.
    """
    if isinstance(state_dict, nn.Module):
        module = state_dict
        if config is None and hasattr(module, "config"):
            # krasserm's config dataclass (torch hints Module attributes as Tensor | Module)
            peer_config: Any = module.config
            config = dataclasses.asdict(peer_config)
        state_dict = module.state_dict()
    weights, config = krasserm_inputs(state_dict, config, "CausalSequenceModelConfig")
    model = PerceiverAR(config_from_krasserm(config, **overrides))
    load_mapped(model, convert_state_dict(weights), tied={"to_logits.weight"})  # tied to the token embedding
    inv_freq = backend_state_dict(weights).get(_INV_FREQ)
    if inv_freq is not None and tuple(inv_freq.shape) != tuple(model.inv_freq.shape):
        raise ValueError(
            f"expected rotary inv_freq of shape {tuple(model.inv_freq.shape)}, got {tuple(inv_freq.shape)}"
        )
    return model


@register_hf_converter("PerceiverCausalLanguageModel", "PerceiverSymbolicAudioModel")
def convert_hf_wrapper(config: dict[str, Any], state_dict: dict[str, Tensor], **overrides: Any) -> PerceiverAR:
    """krasserm's Hub folders: `config.json` (`architectures`, `model_config`) + `backend_model.*` weights."""
    model_config = config.get("model_config")
    if not isinstance(model_config, dict):
        raise ValueError(
            f"expected 'model_config' (krasserm's backend config) in the config.json of "
            f"{config.get('architectures')}, got {model_config!r}"
        )
    return from_krasserm(state_dict, model_config, **overrides)
