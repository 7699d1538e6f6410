"""Shared pieces for converting transformers' Perceiver checkpoints (the port of DeepMind's weights).

transformers' `PerceiverLayer` is the same pre-LN block as our `CrossAttentionLayer` / `SelfAttentionLayer`:

    attention.self.layernorm1 -> q_norm (norm for self-attention)   attention.self.layernorm2 -> kv_norm (cross only)
    attention.self.{query,key,value} -> attention.{q,k,v}_proj      attention.output.dense -> attention.o_proj
    layernorm -> mlp_norm                                          mlp.dense{1,2} -> mlp.fc{1,2}

Channel widths are read off the weights, so configs that leave `qk_channels` / `v_channels` unset (where transformers
falls back to `cross_attention_shape_for_attention`) convert without re-deriving its defaults. Each head's converter
lives in its own module and registers itself with `perceiver.pretrained.register_hf_converter`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor, nn

from perceiver.core.decoder import DecoderConfig
from perceiver.core.encoder import EncoderConfig

M = TypeVar("M", bound=nn.Module)
logger = logging.getLogger("perceiver")

#: transformers' `PerceiverConfig` defaults of the keys the encoder conversion reads: a config.json without one means
#: the default to transformers (a hand-written or trimmed config), so it does here
HF_DEFAULTS: dict[str, Any] = {
    "num_blocks": 1,
    "num_self_attends_per_block": 26,
    "num_cross_attention_heads": 8,
    "num_self_attention_heads": 8,
    "attention_probs_dropout_prob": 0.1,
    "use_query_residual": True,
}


def hf_option(config: dict[str, Any], key: str) -> Any:
    """`config[key]`, or transformers' default for it (`HF_DEFAULTS`) when the config.json leaves it out."""
    return config.get(key, HF_DEFAULTS[key])


_LAYER_KEYS = {
    "attention.self.layernorm2": "kv_norm",
    "attention.self.query": "attention.q_proj",
    "attention.self.key": "attention.k_proj",
    "attention.self.value": "attention.v_proj",
    "attention.output.dense": "attention.o_proj",
    "layernorm": "mlp_norm",
    "mlp.dense1": "mlp.fc1",
    "mlp.dense2": "mlp.fc2",
}


def layer_key_map(hf_prefix: str, our_prefix: str, cross: bool) -> dict[str, str]:
    """Our key -> transformers key for one `PerceiverLayer` (weights and biases)."""
    pairs = dict(_LAYER_KEYS)
    pairs["attention.self.layernorm1"] = "q_norm" if cross else "norm"
    if not cross:
        del pairs["attention.self.layernorm2"]
    return {
        f"{our_prefix}.{ours}.{p}": f"{hf_prefix}.{theirs}.{p}"
        for theirs, ours in pairs.items()
        for p in ("weight", "bias")
    }


def layer_channels(sd: dict[str, Tensor], hf_prefix: str) -> tuple[int, int, int]:
    """(qk_channels, v_channels, widening_factor) of a transformers `PerceiverLayer` from its weights."""
    qk = sd[f"{hf_prefix}.attention.self.query.weight"].shape[0]
    v = sd[f"{hf_prefix}.attention.self.value.weight"].shape[0]
    hidden, q_dim = sd[f"{hf_prefix}.mlp.dense1.weight"].shape
    return qk, v, hidden // q_dim


def required_keys(decoder_prefix: str, *extra: str) -> Callable[[dict[str, Any]], list[str]]:
    """`register_hf_converter(required_keys=...)` for a transformers head: the weights its converter reads to size the
    model (latents, the encoder's cross-attention and first self-attention layer, the decoder's cross-attention at
    `decoder_prefix`) and `extra`, checked before converting."""

    def keys(config: dict[str, Any]) -> list[str]:
        layers = ["perceiver.encoder.cross_attention", f"{decoder_prefix}.decoding_cross_attention"]
        n_self = hf_option(config, "num_self_attends_per_block")
        if isinstance(n_self, int) and n_self > 0:
            layers.append("perceiver.encoder.self_attends.0")
        found = ["perceiver.embeddings.latents"]
        for layer in layers:
            found += [f"{layer}.attention.self.{p}.weight" for p in ("query", "key", "value")]
            found.append(f"{layer}.mlp.dense1.weight")
        return found + list(extra)

    return keys


def encoder_from_hf(
    config: dict[str, Any], sd: dict[str, Tensor], prefix: str = "perceiver"
) -> tuple[EncoderConfig, dict[str, str]]:
    """Our `EncoderConfig` for a transformers `PerceiverModel` and the key map `ours (encoder.*) -> theirs`."""
    cross = f"{prefix}.encoder.cross_attention"
    cqk, cv, cw = layer_channels(sd, cross)
    n_self = hf_option(config, "num_self_attends_per_block")
    sqk, sv, sw = layer_channels(sd, f"{prefix}.encoder.self_attends.0") if n_self else (None, None, 1)
    latents = sd[f"{prefix}.embeddings.latents"]
    enc = EncoderConfig(
        input_dim=sd[f"{cross}.attention.self.key.weight"].shape[1],
        num_latents=latents.shape[0],
        latent_dim=latents.shape[1],
        num_cross_attends=1,
        num_self_attends_per_block=n_self,
        num_blocks=hf_option(config, "num_blocks"),
        cross_heads=hf_option(config, "num_cross_attention_heads"),
        latent_heads=hf_option(config, "num_self_attention_heads"),
        cross_qk_channels=cqk,
        cross_v_channels=cv,
        latent_qk_channels=sqk,
        latent_v_channels=sv,
        cross_widening_factor=cw,
        latent_widening_factor=sw,
        attn_dropout=hf_option(config, "attention_probs_dropout_prob"),
        use_query_residual=hf_option(config, "use_query_residual"),
    )
    keys = {"encoder.latents": f"{prefix}.embeddings.latents"}
    keys |= layer_key_map(cross, "encoder.cross_attends.0", cross=True)
    for i in range(n_self):
        keys |= layer_key_map(f"{prefix}.encoder.self_attends.{i}", f"encoder.latent_blocks.0.{i}", cross=False)
    return enc, keys


def decoder_from_hf(
    config: dict[str, Any], sd: dict[str, Tensor], hf_prefix: str, num_heads: int, use_query_residual: bool
) -> tuple[DecoderConfig, dict[str, str]]:
    """Our `DecoderConfig` for a transformers `PerceiverBasicDecoder` at `hf_prefix`, and its key map.

    `num_heads` and `use_query_residual` are not visible in the weights: pass what the transformers head uses.
    """
    layer = f"{hf_prefix}.decoding_cross_attention"
    qk, v, widening = layer_channels(sd, layer)
    final = f"{hf_prefix}.final_layer.weight"
    dec = DecoderConfig(
        query_dim=sd[f"{layer}.attention.self.query.weight"].shape[1],
        latent_dim=sd[f"{layer}.attention.self.key.weight"].shape[1],
        output_dim=sd[final].shape[0] if final in sd else None,
        num_heads=num_heads,
        qk_channels=qk,
        v_channels=v,
        widening_factor=widening,
        use_query_residual=use_query_residual,
        attn_dropout=hf_option(config, "attention_probs_dropout_prob"),
    )
    keys = layer_key_map(layer, "decoder.cross_attention", cross=True)
    if final in sd:
        keys |= {"decoder.final_layer.weight": final, "decoder.final_layer.bias": f"{hf_prefix}.final_layer.bias"}
    return dec, keys


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(n for n in shape if n != 1)


def load_converted(model: M, sd: dict[str, Tensor], keys: dict[str, str]) -> M:
    """Load `sd[theirs]` into `model[ours]` for every pair of `keys`; every parameter and buffer of ours must be
    covered and shapes must agree up to axes of size 1 (a transposed or otherwise rearranged tensor of the same
    size is not reshaped into place), else a ValueError names the keys. Weights of `sd` that no key maps are logged
    as a warning (the model ignores them), as transformers does."""
    ours = model.state_dict()
    missing = sorted(set(ours) - set(keys))
    absent = sorted(theirs for theirs in keys.values() if theirs not in sd)
    if missing or absent:
        raise ValueError(
            f"cannot convert checkpoint: ours without a source {missing[:8]}, sources not in it {absent[:8]}"
        )
    converted = {}
    for mine, theirs in keys.items():
        tensor = sd[theirs]
        if mine not in ours:
            raise ValueError(f"conversion maps {theirs} to {mine}, which this model does not have")
        if tuple(tensor.shape) != tuple(ours[mine].shape) and _squeezed(tensor.shape) == _squeezed(ours[mine].shape):
            tensor = tensor.reshape(ours[mine].shape)  # only size-1 axes differ (e.g. (1, N, C) and (N, C))
        if tuple(tensor.shape) != tuple(ours[mine].shape):
            raise ValueError(f"{theirs}: shape {tuple(tensor.shape)} does not fit {mine} {tuple(ours[mine].shape)}")
        converted[mine] = tensor
    model.load_state_dict(converted, strict=True)
    unused = sorted(set(sd) - set(keys.values()))
    if unused:  # a config that builds less than the weights hold (fewer layers): transformers warns the same
        logger.warning(
            "Some weights of the checkpoint were not used by %s (its config has no place for them; is the config "
            "the weights' own?): %s%s",
            type(model).__name__,
            unused[:8],
            f" and {len(unused) - 8} more" if len(unused) > 8 else "",
        )
    return model
