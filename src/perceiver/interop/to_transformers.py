"""Export to transformers: our Perceiver IO heads as transformers' `Perceiver*` models with the same weights.

    hf = perceiver.interop.to_transformers.to_transformers(model)   # e.g. after fine-tuning with `perceiver fit`
    hf.save_pretrained("hf-folder")                                  # transformers' AutoModel / pipelines read it

Covered: `PerceiverForMaskedLM`, `PerceiverForSequenceClassification`, the three image classifiers (learned,
Fourier, conv stem) and `PerceiverForOpticalFlow` (transformers' flow is ours / `flow_scale_factor`: its units, not
pixels), the heads transformers has for them. The transformers config is derived from ours; its weights
are ours, placed by running our own converter (`perceiver.from_pretrained` of a transformers checkpoint) on a
transformers model whose every tensor is distinct and matching the tensors it produces, so export and import share
one key map. A model transformers cannot express (latent and cross-attention widths that differ where transformers
has one `qk_channels`, DeepMind's SAME padding of the conv stem, a head of another design) is refused before anything
is returned: every export runs both models on the same random inputs and requires equal outputs (max abs diff
`atol`, relative to the largest output above 1; fp32).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from perceiver.models.flow import PerceiverForOpticalFlow
    from perceiver.models.text import PerceiverForMaskedLM, PerceiverForSequenceClassification
    from perceiver.models.vision import PerceiverForImageClassification
    from perceiver.nn.layers import CrossAttentionLayer, SelfAttentionLayer

    #: the heads transformers has
    Head = (
        PerceiverForMaskedLM
        | PerceiverForSequenceClassification
        | PerceiverForImageClassification
        | PerceiverForOpticalFlow
    )

__all__ = ["to_transformers", "transformers_config"]

_IMAGE_HEADS = {
    "conv1x1": "PerceiverForImageClassificationLearned",
    "pixels": "PerceiverForImageClassificationFourier",
    "conv": "PerceiverForImageClassificationConvProcessing",
}
#: the adapter settings each transformers image head hard-codes (those of our preset of the same prep_type)
_POSITIONS = ("position_encoding", "concat_or_add_pos", "project_pos_dim", "spatial_downsample")
_FOURIER = (*_POSITIONS, "num_bands", "max_resolution", "concat_pos", "sine_only")
_IMAGE_FIXED = {
    "conv1x1": (*_POSITIONS, "out_channels", "conv_after_patching", "trainable_pos_channels"),
    "pixels": _FOURIER,
    "conv": (*_FOURIER, "out_channels", "use_batchnorm"),
}


def _widths(layer: CrossAttentionLayer | SelfAttentionLayer) -> tuple[int, int, int]:
    """(qk, v, widening) of a `CrossAttentionLayer` / `SelfAttentionLayer` read off its weights."""
    attention = layer.attention
    hidden, width = layer.mlp.fc1.weight.shape
    return attention.q_proj.weight.shape[0], attention.v_proj.weight.shape[0], hidden // width


def _channels(c: Any, cross_qk: int, cross_v: int, self_qk: int | None, self_v: int | None) -> tuple[Any, Any, str]:
    """transformers' `qk_channels` / `v_channels` (an int, or None where it derives the width) and
    `cross_attention_shape_for_attention` giving these widths.

    transformers derives an unset qk width from `cross_attention_shape_for_attention` (the inputs' width for "kv", the
    latents' for "q") in the cross-attention and from the latents in the self-attention, and an unset v width from
    qk; one setting serves both attentions. Our shape is tried first, then the other one (it only names the width
    that an unset qk takes: a transformers checkpoint with qk unset loads as explicit widths and shape "q")."""
    for shape in (c.cross_attention_shape, "q" if c.cross_attention_shape == "kv" else "kv"):
        derived_cross_qk = c.input_dim if shape == "kv" else c.latent_dim
        for qk in (None, cross_qk):
            for v in (None, cross_v):
                cross = (qk or derived_cross_qk, v or qk or derived_cross_qk)
                latent = (qk or c.latent_dim, v or qk or c.latent_dim)
                if cross == (cross_qk, cross_v) and (self_qk is None or latent == (self_qk, self_v)):
                    return qk, v, shape
    raise ValueError(
        f"transformers' Perceiver has one qk_channels / v_channels for the cross- and self-attention (unset: derived "
        f"from the widths); these give no cross-attention qk {cross_qk} / v {cross_v} with latent self-attention qk "
        f"{self_qk} / v {self_v}"
    )


def _as_head(model: nn.Module) -> Head:
    """`model`, one of the heads transformers has; `ValueError` naming its class otherwise."""
    from perceiver.models.flow import PerceiverForOpticalFlow
    from perceiver.models.text import PerceiverForMaskedLM, PerceiverForSequenceClassification
    from perceiver.models.vision import PerceiverForImageClassification

    heads = (
        PerceiverForMaskedLM,
        PerceiverForSequenceClassification,
        PerceiverForImageClassification,
        PerceiverForOpticalFlow,
    )
    if not isinstance(model, heads):
        raise ValueError(
            f"expected a PerceiverForMaskedLM, PerceiverForSequenceClassification, PerceiverForImageClassification or "
            f"PerceiverForOpticalFlow (the heads transformers has), got a {type(model).__name__}"
        )
    return model


def transformers_config(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """The transformers architecture name and `PerceiverConfig` keywords of `model` (see the module docstring);
    `ValueError` naming what transformers has no setting for."""
    from perceiver.models.flow import PerceiverForOpticalFlow
    from perceiver.models.text import PerceiverForMaskedLM, PerceiverForSequenceClassification

    model = _as_head(model)
    name = type(model).__name__
    if not isinstance(model, PerceiverForMaskedLM | PerceiverForOpticalFlow) and model.num_classes < 1:
        raise ValueError(
            f"transformers' classifiers end in a class layer: expected num_classes >= 1, got this {name} with "
            "num_classes=0 (no class layer after reset_classifier(0))"
        )
    enc = model.encoder
    c = enc.config
    if c.num_cross_attends != 1 or c.activation != "gelu" or c.attn_residual != "none" or any(enc.inverted):
        raise ValueError(
            f"transformers' Perceiver has one cross-attention, GELU MLPs, no attention residuals and no inverted "
            f"attention; this {name} has num_cross_attends={c.num_cross_attends}, activation={c.activation!r}, "
            f"attn_residual={c.attn_residual!r}, inverted_cross_attention={c.inverted_cross_attention!r}"
        )
    # nn.ModuleList items are typed as Module
    cross_qk, cross_v, cross_widening = _widths(cast("CrossAttentionLayer", enc.cross_attends[0]))
    layers = cast(nn.ModuleList, enc.latent_blocks[0])
    self_qk, self_v, self_widening = _widths(cast("SelfAttentionLayer", layers[0])) if len(layers) else (None, None, 1)
    if self_v is not None and self_v != c.latent_dim:
        raise ValueError(
            f"transformers' latent self-attention adds its v_channels-wide output to the latents, so it needs "
            f"v_channels = d_latents; this {name} has latent self-attention v {self_v} and latents {c.latent_dim} wide"
        )
    qk, v, shape = _channels(c, cross_qk, cross_v, self_qk, self_v)
    fields: dict[str, Any] = dict(
        num_latents=c.num_latents,
        d_latents=c.latent_dim,
        num_blocks=c.num_blocks,
        num_self_attends_per_block=c.num_self_attends_per_block,
        num_self_attention_heads=c.latent_heads,
        num_cross_attention_heads=c.cross_heads,
        qk_channels=qk,
        v_channels=v,
        cross_attention_shape_for_attention=shape,
        self_attention_widening_factor=self_widening,
        cross_attention_widening_factor=cross_widening,
        hidden_act="gelu",
        attention_probs_dropout_prob=c.attn_dropout,
        use_query_residual=c.use_query_residual,
    )
    if isinstance(model, (PerceiverForMaskedLM, PerceiverForSequenceClassification)):
        a = model.config.adapter
        fields |= dict(vocab_size=a.vocab_size, max_position_embeddings=a.max_seq_len, d_model=a.num_channels)
        if isinstance(model, PerceiverForMaskedLM):
            d = model.config.decoder
            hard_coded = dict(
                num_heads=8, qk_channels=256, v_channels=None, widening_factor=1, use_query_residual=False
            )
            other = {k: getattr(d, k) for k, v in hard_coded.items() if getattr(d, k) != v}
            if other:
                raise ValueError(
                    "transformers' PerceiverForMaskedLM hard-codes its decoder: 8 heads, 256 query / key channels "
                    "(8 x 32), values as wide as d_model, MLP widening 1, no query residual; this model's decoder has "
                    f"{other} (the presets' decoder_heads / decoder_qk_channels keywords)"
                )
            return "PerceiverForMaskedLM", fields
        return "PerceiverForSequenceClassification", fields | dict(num_labels=model.num_classes)
    if isinstance(model, PerceiverForOpticalFlow):
        flow = model.config.adapter
        hard_coded = dict(patch_size=3, out_channels=64, num_bands=64, concat_pos=True, sine_only=False)
        options = dict(projection_hidden=None, pyramid_scales=(), difference_scale=None)
        other = {k: getattr(flow, k) for k, v in (hard_coded | options).items() if getattr(flow, k) != v}
        if model.config.output.rescale_factor != 100.0:
            other["rescale_factor"] = model.config.output.rescale_factor
        if other:
            raise ValueError(
                f"transformers' optical flow head hard-codes 3x3 patches projected to 64 channels, 64 Fourier bands, a "
                f"decoder output divided by 100 and none of our flow options; this model has {other}"
            )
        return "PerceiverForOpticalFlow", fields | dict(
            train_size=list(flow.train_size), d_model=model.input_adapter.num_channels
        )
    image = model.config.adapter
    if image.prep_type == "conv" and image.same_padding:
        raise ValueError(
            "transformers' conv stem pads its 7x7 convolution by 3 on each side (55x55 tokens at 224), ours by "
            "DeepMind's SAME padding (56x56, same_padding=True): export a model built with same_padding=False"
        )
    if image.prep_type not in _IMAGE_HEADS:
        raise ValueError(f"transformers has no image classifier with prep_type={image.prep_type!r}")
    h, w = image.image_size
    if h != w:
        raise ValueError(f"transformers' image classifiers take square images, this model takes {h}x{w}")
    from perceiver.models.vision import CONV, FOURIER, LEARNED

    preset = {"conv1x1": LEARNED, "pixels": FOURIER, "conv": CONV}[image.prep_type].adapter
    other = {k: getattr(image, k) for k in _IMAGE_FIXED[image.prep_type] if getattr(image, k) != getattr(preset, k)}
    if (other.get("project_pos_dim") or None) is None and not preset.project_pos_dim:  # 0 and None: no projection
        other.pop("project_pos_dim", None)
    if other:
        raise ValueError(
            f"transformers' {_IMAGE_HEADS[image.prep_type]} hard-codes its input preprocessing (our preset's: "
            f"{ {k: getattr(preset, k) for k in other} }); this model has {other}"
        )
    fields |= dict(d_model=model.input_adapter.num_channels, image_size=h, num_labels=model.num_classes)
    return _IMAGE_HEADS[image.prep_type], fields


def _example_inputs(model: Head) -> dict[str, Tensor]:
    """Random keyword inputs both `model` and its transformers twin take (`inputs`, and a mask for text)."""
    from perceiver.adapters.flow import FlowAdapterConfig
    from perceiver.adapters.text import TextAdapterConfig

    g = torch.Generator().manual_seed(0)
    a = model.config.adapter
    if isinstance(a, FlowAdapterConfig):  # flow: one pair of frames as patches
        return {"inputs": torch.randn(1, 2, a.patch_channels, *a.train_size, generator=g)}
    if isinstance(a, TextAdapterConfig):
        ids = torch.randint(6, a.vocab_size, (2, a.max_seq_len), generator=g)
        mask = torch.ones(2, a.max_seq_len, dtype=torch.long)
        mask[1, a.max_seq_len // 2 :] = 0
        return {"inputs": ids, "attention_mask": mask}
    return {"inputs": torch.randn(2, a.in_channels, *a.image_size, generator=g)}


@torch.no_grad()
def to_transformers(model: nn.Module, atol: float = 1e-4) -> PreTrainedModel:
    """A transformers `Perceiver*` model (eval mode, fp32, CPU) with `model`'s weights and the same outputs.

    `ValueError` if transformers cannot express `model` (named in the message), or if the two disagree on random
    inputs by more than `atol` (times the largest output where that exceeds 1)."""
    import transformers

    from perceiver.labels import class_names
    from perceiver.lora import has_lora, merge_lora
    from perceiver.models.flow import PerceiverForOpticalFlow
    from perceiver.pretrained import HF_CONVERTERS

    if has_lora(model):  # LoRA adapters: their merged weights (the caller's model keeps its adapters)
        model = merge_lora(copy.deepcopy(model))
    names = class_names(model)
    model = _as_head(model)
    arch, fields = transformers_config(model)
    if names is not None and fields.get("num_labels") == len(names):  # the class names, as transformers keeps them
        fields |= dict(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    problem_type = getattr(getattr(model, "config", None), "problem_type", None)
    if problem_type is not None:  # the loss the model trains with, as transformers' field
        fields["problem_type"] = problem_type
    hf = getattr(transformers, arch)(transformers.PerceiverConfig(**fields)).eval()
    # Distinct values everywhere, so that each tensor our converter loads names the transformers key it came from.
    g = torch.Generator().manual_seed(0)
    probe = {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in hf.state_dict().items()}
    converted = HF_CONVERTERS[arch](hf.config.to_dict() | {"architectures": [arch]}, probe)
    weights = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    source = {k: v for k, v in converted.state_dict().items() if v.is_floating_point()}
    state = dict(hf.state_dict())
    for hf_key, value in probe.items():
        if not value.is_floating_point():
            continue
        match = [k for k, v in source.items() if v.shape == value.shape and torch.equal(v, value)]
        if not match:
            raise ValueError(f"no tensor of {type(model).__name__} corresponds to transformers' {hf_key}")
        if match[0] not in weights or weights[match[0]].shape != value.shape:
            raise ValueError(f"{type(model).__name__} has no tensor {match[0]} of shape {tuple(value.shape)}")
        state[hf_key] = weights[match[0]]
    hf.load_state_dict(state)
    plain = all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    reference = model if plain else copy.deepcopy(model).float().cpu()  # the caller's model keeps dtype and device
    was_training = reference.training
    x = _example_inputs(reference)
    try:
        expected = reference.eval()(**x).logits
        if isinstance(reference, PerceiverForOpticalFlow):  # transformers' units
            expected = expected / reference.config.output.flow_scale_factor
        got = hf(**x).logits
        diff = (expected - got).abs().max().item()
        bound = atol * max(1.0, got.abs().max().item())  # relative to the outputs' scale where they are large
    finally:
        reference.train(was_training)
    if not diff <= bound:
        raise ValueError(
            f"transformers' {arch} built from this {type(model).__name__} gives other outputs (max abs diff {diff:.2e} "
            f"> {bound:.2e}): the model uses a setting transformers does not have"
        )
    return hf
