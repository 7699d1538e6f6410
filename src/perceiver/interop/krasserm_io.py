"""Load krasserm's perceiver-io Perceiver IO models (PyPI `perceiver-io`, https://github.com/krasserm/perceiver-io)
into ours.

    krasserm (`perceiver.model...backend`)         ours
    text.mlm.MaskedLanguageModel               ->  PerceiverForMaskedLM                (language-perceiver)
    text.classifier.TextClassifier             ->  PerceiverForSequenceClassification  (text-classifier)
    vision.image_classifier.ImageClassifier    ->  PerceiverForImageClassification     (vision-perceiver-fourier family)
    vision.optical_flow.OpticalFlow            ->  PerceiverForOpticalFlow             (optical-flow-perceiver)

Accepted forms:
- `masked_lm_from_krasserm(state_dict, config)` (and `text_classifier_from_krasserm`, `image_classifier_from_krasserm`,
  `optical_flow_from_krasserm`): `config` is the backend config as a dict (`dataclasses.asdict(model.config)`:
  `encoder` / `decoder` dicts, `num_latents`, `num_latent_channels`, ...; a Hugging Face `config.json` dict holding it
  as `model_config` works too), `state_dict` the backend's `state_dict()`, its keys bare (`0.` encoder, `1.` decoder:
  the backend is an `nn.Sequential`) or with the `backend_model.` prefix of its Hugging Face wrappers or the `model.`
  prefix of its Lightning modules (also under DDP's `module.` / `torch.compile`'s `_orig_mod.`, or a whole Lightning
  checkpoint dict: `perceiver.interop.keys.unwrap_state_dict`). A whole Lightning checkpoint of its (`last.ckpt`: the
  path, or the dict `perceiver.interop.krasserm_checkpoint.load_krasserm_checkpoint` reads without its package) needs
  no `config`: its `hyper_parameters` are one (`from_krasserm_checkpoint` also picks the converter).
- `perceiver.from_pretrained(folder)` on a folder its wrappers (`PerceiverMaskedLanguageModel`,
  `PerceiverTextClassifier`, `PerceiverImageClassifier`, `OpticalFlowPerceiver`) saved: `config.json` with
  `architectures`, `model_type` and `model_config`, weights in `model.safetensors` or `pytorch_model.bin`.

Its layers are ours under other names (pre-LN cross- / self-attention, GELU MLP, biases everywhere):

    0.latent_provider._query                   -> encoder.latents
    0.cross_attn_1 / 0.cross_attn_n            -> encoder.cross_attends.0 / .1
    0.self_attn_1.{i} / 0.self_attn_n.{i}      -> encoder.latent_blocks.0.{i} / .1.{i}
    1.cross_attn                               -> decoder.cross_attention
    1.output_query_provider._query             -> query_builder.encoding.position_embeddings
    1.output_adapter.linear                    -> decoder.final_layer          (classifiers, untied MLM output)
    1.output_adapter.bias                      -> output_adapter.bias          (tied MLM output)
    0.input_adapter.linear                     -> input_adapter.projection     (optical flow)
    within a layer: {0.module | 0}.{q_norm, kv_norm, norm, attention.*} -> the same names;
                    1.module.{0, 1, 3} -> mlp_norm, mlp.fc1, mlp.fc2

Its encoder runs `cross_attn_1, self_attn_1`, then for each further block `i < num_self_attention_blocks` a
cross-attention (while `i < num_cross_attention_layers`) and a self-attention block; ours repeats one step
(cross-attend, then its latent block `num_blocks` times). Converted:
- one cross-attention layer and `num_self_attention_blocks` weight-shared blocks (`first_self_attention_block_shared`
  True, krasserm's default): ours `num_blocks`;
- as many cross-attention layers as blocks, alternating: ours `num_cross_attends`, the first cross-attention unique
  and the later ones one set (`first_cross_attention_layer_shared=False`, krasserm's default), the blocks all one set
  (`share_latent_blocks='all'`) or the first unique (`'after_first'`, `first_self_attention_block_shared=False`).
Other layouts (more than one but fewer cross-attention layers than blocks, every cross-attention layer the first's
weights, a unique first block after a single cross-attention) raise a ValueError naming the option.

Calling conventions that differ (the functions are equal, max abs diff <= 1e-5 fp32, tested against the wheel):
its `pad_mask` is True = padding, ours `attention_mask` True = token (`~pad_mask`); its image classifier takes
channels-last pixels `(B, H, W, C)`, ours channels first (`x.permute(0, 3, 1, 2)`); its MLM `forward(x, pad_mask)`
returns the logits of the `L` input positions, which is ours by default; its optical flow model returns
transformers' units (decoder output / `rescale_factor`), ours pixels (x `flow_scale_factor` = 20, as DeepMind's colab
and krasserm's `OpticalFlowProcessor` scale it; pass `flow_scale_factor=1.0` for its numbers). Options without effect
on the outputs are dropped: `freeze`, `params` (a checkpoint to start training from), `activation_offloading`;
`activation_checkpointing` turns on our `set_grad_checkpointing`; `init_scale` becomes the adapter's and the latents'
init std.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal, TypeVar

from torch import Tensor, nn

from perceiver.adapters.flow import FlowAdapterConfig, FlowOutputConfig
from perceiver.adapters.text import TextAdapterConfig
from perceiver.core.decoder import DecoderConfig
from perceiver.core.encoder import EncoderConfig, LatentSharing
from perceiver.core.model import PerceiverModel
from perceiver.hub import apply_overrides
from perceiver.interop.krasserm import backend_state_dict
from perceiver.interop.krasserm_checkpoint import Checkpoint, io_config
from perceiver.interop.transformers import load_converted
from perceiver.models.flow import OpticalFlowConfig, PerceiverForOpticalFlow
from perceiver.models.text import (
    PerceiverForMaskedLM,
    PerceiverForSequenceClassification,
    PerceiverMaskedLMConfig,
    PerceiverTextClassifierConfig,
)
from perceiver.models.vision import FOURIER, ImageClassifierConfig, PerceiverForImageClassification
from perceiver.pretrained import register_hf_converter

P = TypeVar("P", bound=PerceiverModel)

_PARAMS = ("weight", "bias")
_QUERIES = {"query_builder.encoding.position_embeddings": "1.output_query_provider._query"}
_FINAL = {f"decoder.final_layer.{p}": f"1.output_adapter.linear.{p}" for p in _PARAMS}
_FOURIER_BUFFER = "0.input_adapter.position_encoding.position_encoding"  # krasserm's Fourier features; ours computes


def _cross_keys(theirs: str, ours: str, residual: bool = True) -> dict[str, str]:
    """Our key -> krasserm's for one `CrossAttentionLayer` (`Sequential(Residual(CrossAttention) or CrossAttention,
    Residual(MLP))`; the MLP is `Sequential(LayerNorm, Linear, GELU, Linear)`)."""
    att = f"{theirs}.0.module" if residual else f"{theirs}.0"
    names = {"q_norm": f"{att}.q_norm", "kv_norm": f"{att}.kv_norm"}
    names |= {f"attention.{p}_proj": f"{att}.attention.{p}_proj" for p in "qkvo"}
    names |= {"mlp_norm": f"{theirs}.1.module.0", "mlp.fc1": f"{theirs}.1.module.1", "mlp.fc2": f"{theirs}.1.module.3"}
    return {f"{ours}.{o}.{p}": f"{t}.{p}" for o, t in names.items() for p in _PARAMS}


def _self_keys(theirs: str, ours: str) -> dict[str, str]:
    """Our key -> krasserm's for one `SelfAttentionLayer`."""
    names = {"norm": f"{theirs}.0.module.norm"}
    names |= {f"attention.{p}_proj": f"{theirs}.0.module.attention.{p}_proj" for p in "qkvo"}
    names |= {"mlp_norm": f"{theirs}.1.module.0", "mlp.fc1": f"{theirs}.1.module.1", "mlp.fc2": f"{theirs}.1.module.3"}
    return {f"{ours}.{o}.{p}": f"{t}.{p}" for o, t in names.items() for p in _PARAMS}


def encoder_from_krasserm(
    top: dict[str, Any], enc: dict[str, Any], cross_attention_shape: Literal["q", "kv"]
) -> tuple[EncoderConfig, dict[str, str]]:
    """Our `EncoderConfig` (input width left to the model) for a krasserm `PerceiverEncoder` and the key map
    `ours (encoder.*) -> krasserm's (0.*)`.

    `cross_attention_shape` is the task's rule for an unset `num_cross_attention_qk_channels`: `'q'` the latents'
    width (text), `'kv'` the inputs' (images). Raises ValueError for a block layout ours cannot run (see the module
    docstring).
    """
    n_cross, n_blocks = enc["num_cross_attention_layers"], enc["num_self_attention_blocks"]
    for name, value in (("num_cross_attention_layers", n_cross), ("num_self_attention_blocks", n_blocks)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"krasserm encoder: expected {name} >= 1, got {value!r}")
    shared_blocks = enc["first_self_attention_block_shared"]
    sharing: LatentSharing
    if n_cross == 1:
        if n_blocks > 1 and not shared_blocks:
            raise ValueError(
                f"krasserm encoder: first_self_attention_block_shared=False with num_cross_attention_layers=1 and "
                f"num_self_attention_blocks={n_blocks} (a unique first block, then shared ones after a single "
                f"cross-attention) has no counterpart here; expected first_self_attention_block_shared=True, or as "
                f"many cross-attention layers as blocks"
            )
        steps, repeats, sharing = 1, n_blocks, "all"
    elif n_cross == n_blocks:
        if enc["first_cross_attention_layer_shared"]:
            raise ValueError(
                f"krasserm encoder: first_cross_attention_layer_shared=True with num_cross_attention_layers={n_cross} "
                f"(one cross-attention for every block) has no counterpart here; expected False (the first unique, "
                f"the later ones shared)"
            )
        steps, repeats, sharing = n_cross, 1, "all" if shared_blocks else "after_first"
    else:
        raise ValueError(
            f"krasserm encoder: num_cross_attention_layers={n_cross} with num_self_attention_blocks={n_blocks} (blocks "
            f"without a cross-attention after the last one) has no counterpart here; expected 1 or {n_blocks} "
            f"cross-attention layers"
        )
    layers = enc["num_self_attention_layers_per_block"]
    config = EncoderConfig(
        num_latents=top["num_latents"],
        latent_dim=top["num_latent_channels"],
        num_cross_attends=steps,
        num_self_attends_per_block=layers,
        num_blocks=repeats,
        cross_heads=enc["num_cross_attention_heads"],
        latent_heads=enc["num_self_attention_heads"],
        cross_qk_channels=enc["num_cross_attention_qk_channels"],
        cross_v_channels=enc["num_cross_attention_v_channels"],
        latent_qk_channels=enc["num_self_attention_qk_channels"],
        latent_v_channels=enc["num_self_attention_v_channels"],
        cross_widening_factor=enc["cross_attention_widening_factor"],
        latent_widening_factor=enc["self_attention_widening_factor"],
        attn_dropout=enc["dropout"],
        use_query_residual=True,
        share_cross_attends=True,
        share_latent_blocks=sharing,
        latent_init_std=enc["init_scale"],
        cross_attention_shape=cross_attention_shape,
    )
    keys = {"encoder.latents": "0.latent_provider._query"}
    keys |= _cross_keys("0.cross_attn_1", "encoder.cross_attends.0")
    if steps > 1:
        keys |= _cross_keys("0.cross_attn_n", "encoder.cross_attends.1")
    for i in range(layers):
        keys |= _self_keys(f"0.self_attn_1.{i}", f"encoder.latent_blocks.0.{i}")
        if sharing == "after_first":
            keys |= _self_keys(f"0.self_attn_n.{i}", f"encoder.latent_blocks.1.{i}")
    return config, keys


def decoder_from_krasserm(dec: dict[str, Any]) -> tuple[DecoderConfig, dict[str, str]]:
    """Our `DecoderConfig` (widths left to the model) for a krasserm `PerceiverDecoder` and the key map
    `ours (decoder.cross_attention.*) -> krasserm's (1.cross_attn.*)`; an unset qk width is the queries' (`'q'`), an
    unset v width the qk width, as in krasserm's `MultiHeadAttention`."""
    residual = dec["cross_attention_residual"]
    config = DecoderConfig(
        num_heads=dec["num_cross_attention_heads"],
        qk_channels=dec["num_cross_attention_qk_channels"],
        v_channels=dec["num_cross_attention_v_channels"],
        widening_factor=dec["cross_attention_widening_factor"],
        use_query_residual=residual,
        attn_dropout=dec["dropout"],
        cross_attention_shape="q",
    )
    return config, _cross_keys("1.cross_attn", "decoder.cross_attention", residual=residual)


def _text_adapter(enc: dict[str, Any]) -> tuple[TextAdapterConfig, dict[str, str]]:
    adapter = TextAdapterConfig(
        vocab_size=enc["vocab_size"],
        max_seq_len=enc["max_seq_len"],
        num_channels=enc["num_input_channels"],
        init_scale=enc["init_scale"],
    )
    keys = {
        "input_adapter.token_embedding.weight": "0.input_adapter.txt_embedding.weight",
        "input_adapter.position_encoding.position_embeddings": "0.input_adapter.pos_embedding.weight",
    }
    return adapter, keys


def _check_one_query(dec: dict[str, Any]) -> None:
    if dec["num_output_queries"] != 1:
        raise ValueError(
            f"krasserm decoder: expected num_output_queries=1 (one classification query), "
            f"got {dec['num_output_queries']!r}"
        )


def _load(
    model: P, sd: dict[str, Tensor], keys: dict[str, str], top: dict[str, Any], ignored: tuple[str, ...] = ()
) -> P:
    """Load through `load_converted`; krasserm keys the conversion leaves unused (other than `ignored`) are an
    error, as are ours without a source."""
    unused = sorted(set(sd) - set(keys.values()) - set(ignored))
    if unused:
        raise ValueError(f"krasserm state dict: keys this config does not use {unused[:8]} (is the config its own?)")
    load_converted(model, sd, keys)
    if top["activation_checkpointing"]:
        model.set_grad_checkpointing(True)
    return model.eval()


def masked_lm_from_krasserm(
    state_dict: Checkpoint, config: dict[str, Any] | None = None, **overrides: Any
) -> PerceiverForMaskedLM:
    """Our `PerceiverForMaskedLM` with the weights of a krasserm `MaskedLanguageModel`.

    `config`: its `MaskedLanguageModelConfig` as a dict; `state_dict`: its weights (see the module docstring);
    `overrides` replace fields of our config (flat or dotted keys). The output is tied to the input embedding when
    `num_output_query_channels` is None (`TiedTokenOutputAdapter`), else the decoder's own Linear over queries of that
    width (`TokenOutputAdapter`: ours with `decoder.output_dim = vocab_size`). Decoder queries beyond the encoder's
    `max_seq_len` are never decoded by either model and are dropped.
    """
    weights, top, enc, dec = io_config(state_dict, config, "masked_lm")
    sd = backend_state_dict(weights)
    adapter, keys = _text_adapter(enc)
    if dec["vocab_size"] != enc["vocab_size"]:
        raise ValueError(
            f"krasserm MLM: expected decoder.vocab_size = encoder.vocab_size ({enc['vocab_size']}), "
            f"got {dec['vocab_size']}"
        )
    if dec["max_seq_len"] < enc["max_seq_len"]:
        raise ValueError(
            f"krasserm MLM: expected decoder.max_seq_len >= encoder.max_seq_len ({enc['max_seq_len']}) (one query "
            f"per input position), got {dec['max_seq_len']}"
        )
    queries = "1.output_query_provider._query"
    if queries in sd:
        sd[queries] = sd[queries][: enc["max_seq_len"]]
    encoder, enc_keys = encoder_from_krasserm(top, enc, "q")
    decoder, dec_keys = decoder_from_krasserm(dec)
    q = dec["num_output_query_channels"]
    # krasserm's v width defaults to its qk width, which defaults to the queries' (ours: to the queries' width)
    decoder = replace(decoder, v_channels=decoder.v_channels or decoder.qk_channels)
    keys |= enc_keys | dec_keys | _QUERIES
    if q is None:
        keys["output_adapter.embedding.weight"] = "0.input_adapter.txt_embedding.weight"
        keys["output_adapter.bias"] = "1.output_adapter.bias"
    else:
        decoder = replace(decoder, query_dim=None if q == adapter.num_channels else q, output_dim=adapter.vocab_size)
        keys |= _FINAL
    model_config = PerceiverMaskedLMConfig(adapter, encoder, decoder)
    cls = PerceiverForMaskedLM
    return _load(cls(apply_overrides(model_config, overrides)), sd, keys, top)


def text_classifier_from_krasserm(
    state_dict: Checkpoint, config: dict[str, Any] | None = None, **overrides: Any
) -> PerceiverForSequenceClassification:
    """Our `PerceiverForSequenceClassification` with the weights of a krasserm `TextClassifier` (`config`: its
    `TextClassifierConfig` as a dict; `overrides` replace fields of our config). Its one query has
    `num_output_query_channels` channels (ours: `decoder.query_dim`, None where it equals the latents' width)."""
    weights, top, enc, dec = io_config(state_dict, config, "text_classifier")
    _check_one_query(dec)
    sd = backend_state_dict(weights)
    adapter, keys = _text_adapter(enc)
    encoder, enc_keys = encoder_from_krasserm(top, enc, "q")
    decoder, dec_keys = decoder_from_krasserm(dec)
    q = dec["num_output_query_channels"]
    decoder = replace(decoder, query_dim=None if q == encoder.latent_dim else q)
    keys |= enc_keys | dec_keys | _QUERIES | _FINAL
    model_config = PerceiverTextClassifierConfig(adapter, encoder, decoder, num_classes=dec["num_classes"])
    cls = PerceiverForSequenceClassification
    return _load(cls(apply_overrides(model_config, overrides)), sd, keys, top)


def image_classifier_from_krasserm(
    state_dict: Checkpoint, config: dict[str, Any] | None = None, **overrides: Any
) -> PerceiverForImageClassification:
    """Our `PerceiverForImageClassification` with the weights of a krasserm `ImageClassifier` (`config`: its
    `ImageClassifierConfig` as a dict; `overrides` replace fields of our config).

    Its input adapter is `vision-perceiver-fourier`'s: the raw pixels concatenated with DeepMind's Fourier features
    (positions included) of the `image_shape` grid, `num_frequency_bands` bands up to half its size. It takes
    channels-last `(B, H, W, C)`, ours `(B, C, H, W)`: the same tokens in the same order. Its cross-attention's unset
    qk width is the inputs' (`cross_attention_shape='kv'`). krasserm's image classifier always builds one query
    (`num_output_queries` is not read).
    """
    weights, top, enc, dec = io_config(state_dict, config, "image_classifier")
    sd = backend_state_dict(weights)
    shape = tuple(enc["image_shape"])
    if len(shape) != 3:
        raise ValueError(f"krasserm image classifier: expected image_shape (height, width, channels), got {shape}")
    height, width, channels = shape
    adapter = replace(
        FOURIER.adapter,
        image_size=(height, width),
        in_channels=channels,
        num_bands=enc["num_frequency_bands"],
        max_resolution=(height, width),
    )
    encoder, keys = encoder_from_krasserm(top, enc, "kv")
    decoder, dec_keys = decoder_from_krasserm(dec)
    q = dec["num_output_query_channels"]
    decoder = replace(decoder, query_dim=None if q == encoder.latent_dim else q)
    keys |= dec_keys | _QUERIES | _FINAL
    model_config = ImageClassifierConfig(adapter, encoder, decoder, num_classes=dec["num_classes"])
    model = PerceiverForImageClassification(apply_overrides(model_config, overrides))
    return _load(model, sd, keys, top, ignored=(_FOURIER_BUFFER,))


def optical_flow_from_krasserm(
    state_dict: Checkpoint, config: dict[str, Any] | None = None, **overrides: Any
) -> PerceiverForOpticalFlow:
    """Our `PerceiverForOpticalFlow` with the weights of a krasserm `OpticalFlow` (`config`: its `OpticalFlowConfig`
    as a dict; `overrides` replace fields of our config).

    Its input is ours, patches `(B, 2, 3 * k * k, H, W)` of the `image_shape` grid (`num_patch_input_channels` = 27:
    3 x 3 patches), projected by a Linear to `num_patch_hidden_channels` and concatenated with Fourier features (bands
    up to half of `image_shape`); the decoder's queries are those tokens. Its unset cross-attention widths are the
    inputs' (qk and v); ours returns flow in pixels (`flow_scale_factor=20`, see the module docstring).
    """
    weights, top, enc, dec = io_config(state_dict, config, "optical_flow")
    sd = backend_state_dict(weights)
    shape = tuple(enc["image_shape"])
    if len(shape) != 2 or tuple(dec["image_shape"]) != shape:
        raise ValueError(
            f"krasserm optical flow: expected encoder and decoder image_shape (height, width) alike, got {shape} and "
            f"{tuple(dec['image_shape'])}"
        )
    channels = enc["num_patch_input_channels"]
    k = math.isqrt(channels // 3)
    if 3 * k * k != channels or k % 2 == 0:
        raise ValueError(
            f"krasserm optical flow: expected num_patch_input_channels = 3 * k * k for an odd patch size k (27: "
            f"3 x 3), got {channels}"
        )
    adapter = FlowAdapterConfig(
        train_size=shape,
        patch_size=k,
        out_channels=enc["num_patch_hidden_channels"],
        num_bands=enc["num_frequency_bands"],
    )
    encoder, keys = encoder_from_krasserm(top, enc, "kv")
    width = adapter.out_channels + 2 * (1 + 2 * adapter.num_bands)  # the tokens' width: features + Fourier features
    encoder = replace(encoder, cross_v_channels=encoder.cross_v_channels or width)
    decoder, dec_keys = decoder_from_krasserm(dec)
    keys |= dec_keys | _FINAL | {f"input_adapter.projection.{p}": f"0.input_adapter.linear.{p}" for p in _PARAMS}
    output = FlowOutputConfig(rescale_factor=dec["rescale_factor"])
    model_config = OpticalFlowConfig(adapter, encoder, decoder, output=output, output_init_zeros=False)
    model = PerceiverForOpticalFlow(apply_overrides(model_config, overrides))
    return _load(model, sd, keys, top, ignored=(_FOURIER_BUFFER,))


def _hf_converter(convert: Callable[..., nn.Module], model_type: str) -> Callable[..., nn.Module]:
    """A `perceiver.pretrained` converter for one of krasserm's Hugging Face wrappers: checks `model_type` and hands
    `model_config` and the `backend_model.*` weights to `convert`."""

    def from_hf(hf_config: dict[str, Any], state_dict: dict[str, Tensor], **overrides: Any) -> nn.Module:
        got = hf_config.get("model_type", model_type)
        if got != model_type:
            raise ValueError(f"krasserm config.json: expected model_type {model_type!r}, got {got!r}")
        if not isinstance(hf_config.get("model_config"), dict):
            raise ValueError(
                f"krasserm config.json: expected 'model_config' (the backend config as a dict), "
                f"got {hf_config.get('model_config')!r}"
            )
        return convert(state_dict, hf_config["model_config"], **overrides)

    from_hf.__name__ = f"{convert.__name__}_hf"
    from_hf.__doc__ = f"`{convert.__name__}` for a Hugging Face folder of krasserm's (model_type {model_type!r})."
    return from_hf


register_hf_converter("PerceiverMaskedLanguageModel")(
    _hf_converter(masked_lm_from_krasserm, "perceiver-io-masked-language-model")
)
register_hf_converter("PerceiverTextClassifier")(
    _hf_converter(text_classifier_from_krasserm, "perceiver-io-text-classifier")
)
register_hf_converter("PerceiverImageClassifier")(
    _hf_converter(image_classifier_from_krasserm, "perceiver-io-image-classifier")
)
register_hf_converter("OpticalFlowPerceiver")(_hf_converter(optical_flow_from_krasserm, "perceiver-io-optical-flow"))

__all__ = [
    "decoder_from_krasserm",
    "encoder_from_krasserm",
    "image_classifier_from_krasserm",
    "masked_lm_from_krasserm",
    "optical_flow_from_krasserm",
    "text_classifier_from_krasserm",
]
