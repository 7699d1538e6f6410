"""The classic `Perceiver` (Jaegle et al. 2021) with the constructor API of the `perceiver` package.

    data (B, *axes, C) --[data | Fourier(axes)]--> (B, M, C + F) --PerceiverEncoder--> (B, N, D) --mean, LN, Linear--> (B, K)

Fourier features follow perceiver-pytorch (`[sin | cos | x]` per axis, bands up to `max_freq / 2`); the feed-forward
is GEGLU and q / kv projections have no bias, so a perceiver-pytorch `state_dict` loads as is
(`Perceiver.from_perceiver_pytorch(peer_model)`, or `model.load_state_dict(its_state_dict)` into a model built with
its keywords; every layout from 0.8 to 0.11). `depth` cross-attends, each followed by
`self_per_cross_attn` latent self-attention layers; `weight_tie_layers` shares everything after the first cross-attend
and its latent block. perceiver-pytorch's later options are ours too (default off): `inverted_cross_attn` (0.9, a bool
or one per cross-attend) and `attn_residual` / `attn_residual_rank` (0.10; `attn_residual_norm=False` is 0.10.0's
residual without the RMSNorm that 0.10.1 added).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, overload

import torch
from torch import Tensor, nn

from perceiver.checks import (
    InputTypeError,
    check_float_input,
    check_int,
    check_int_fields,
    check_number,
    model_dtype,
    to_bool_mask,
)
from perceiver.core.encoder import EncoderConfig, PerceiverEncoder
from perceiver.core.model import Features, ModelOutput, PerceiverModel
from perceiver.models.registry import build_preset, register_model, register_model_type
from perceiver.models.timm_compat import TimmClassifierMixin, check_latents
from perceiver.nn.position import FourierPositionEncoding


@dataclass
class PerceiverConfig:
    """Constructor arguments of the classic `Perceiver`, with the defaults of the README snippet."""

    input_channels: int = 3
    input_axis: int = 2
    num_freq_bands: int = 6
    max_freq: float = 10.0
    depth: int = 6
    num_latents: int = 256
    latent_dim: int = 512
    cross_heads: int = 1
    latent_heads: int = 8
    cross_dim_head: int = 64
    latent_dim_head: int = 64
    num_classes: int = 1000
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    weight_tie_layers: bool = False
    fourier_encode_data: bool = True
    self_per_cross_attn: int = 1
    final_classifier_head: bool = True
    inverted_cross_attn: bool | tuple[bool, ...] = False
    attn_residual: bool = False
    attn_residual_rank: int = 64
    attn_residual_norm: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.inverted_cross_attn, list):  # from config.json
            self.inverted_cross_attn = tuple(self.inverted_cross_attn)
        # sizes: positive integers; no latent layers is allowed, bands and the rank matter only where used (below)
        zero_ok = ("self_per_cross_attn", "num_freq_bands")
        check_int_fields(self, zero_ok=zero_ok, skip=("num_classes",), type_only=("attn_residual_rank",))
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(
                f"PerceiverConfig.num_classes must be an integer >= 0 (0: no class layer), got {self.num_classes!r}"
            )
        if self.fourier_encode_data:
            check_number(self.max_freq, "PerceiverConfig.max_freq", check_range=False)
            if self.num_freq_bands < 1 or not self.max_freq > 0:
                raise ValueError(
                    f"Fourier encoding needs num_freq_bands >= 1 and max_freq > 0, "
                    f"got num_freq_bands={self.num_freq_bands}, max_freq={self.max_freq}"
                )
        for name in ("attn_dropout", "ff_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        inv = self.inverted_cross_attn
        if not isinstance(inv, bool) and (
            not isinstance(inv, tuple) or len(inv) != self.depth or not all(isinstance(v, bool) for v in inv)
        ):
            raise ValueError(f"inverted_cross_attn must be a bool or {self.depth} bools (depth), got {inv!r}")
        if self.attn_residual:
            check_int(self.attn_residual_rank, "PerceiverConfig.attn_residual_rank")

    @property
    def fourier_channels(self) -> int:
        return self.input_axis * (2 * self.num_freq_bands + 1) if self.fourier_encode_data else 0

    def encoder_config(self) -> EncoderConfig:
        return lucidrains_encoder_config(
            self,
            input_dim=self.input_channels + self.fourier_channels,
            num_cross_attends=self.depth,
            num_self_attends_per_block=self.self_per_cross_attn,
            num_blocks=1,
            attn_dropout=self.attn_dropout,
            ff_dropout=self.ff_dropout,
            share_cross_attends=self.weight_tie_layers,
            share_latent_blocks="after_first" if self.weight_tie_layers else "none",
            attn_residual="cross_attend" if self.attn_residual else "none",
        )


def lucidrains_encoder_config(c: Any, **fields_: Any) -> EncoderConfig:
    """An `EncoderConfig` with perceiver-pytorch's conventions (heads x dim_head channels, GEGLU x4 feed-forwards, no
    q/k/v bias, latents drawn from N(0, 1), its inverted cross-attention and attention residual options), read from a
    config `c` with perceiver-pytorch's field names; `fields_` give the structure of the model (depth, sharing)."""
    return EncoderConfig(
        num_latents=c.num_latents,
        latent_dim=c.latent_dim,
        cross_heads=c.cross_heads,
        latent_heads=c.latent_heads,
        cross_qk_channels=c.cross_heads * c.cross_dim_head,
        cross_v_channels=c.cross_heads * c.cross_dim_head,
        latent_qk_channels=c.latent_heads * c.latent_dim_head,
        latent_v_channels=c.latent_heads * c.latent_dim_head,
        cross_widening_factor=4,
        latent_widening_factor=4,
        activation="geglu",
        qkv_bias=False,
        latent_init_std=1.0,  # perceiver-pytorch: N(0, 1); ours truncated at 2 sigma (std 0.88)
        inverted_cross_attention=c.inverted_cross_attn,
        attn_residual_rank=c.attn_residual_rank,
        attn_residual_norm=c.attn_residual_norm,
        **fields_,
    )


class PeerStateDictMixin:
    """`load_state_dict` that also takes the state dict of the perceiver-pytorch counterpart of the model (its keys,
    any layout 0.8 - 0.11, converted for the model as built; `perceiver.interop.perceiver_pytorch`)."""

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """`nn.Module.load_state_dict`; a perceiver-pytorch state dict (`torch.load` of what its model saved) loads
        too when this model was built with the peer's settings (a ValueError names the keys that do not fit)."""
        from perceiver.interop.perceiver_pytorch import (
            is_perceiver_pytorch_state_dict,
            load_perceiver_pytorch_state_dict,
        )

        assert isinstance(self, nn.Module)
        if is_perceiver_pytorch_state_dict(self, state_dict):
            return load_perceiver_pytorch_state_dict(self, state_dict, strict, assign)
        return nn.Module.load_state_dict(self, state_dict, strict, assign)


R = TypeVar("R")


def run_with_block_outputs(encoder: PerceiverEncoder, run: Callable[[], R]) -> tuple[R, list[Tensor] | None]:
    """`run()` (a forward through `encoder` with `return_hidden_states=True`) and, for an encoder with attention
    residuals, what its last residual mix received: every block's output before the mix, perceiver-pytorch's
    `return_hiddens` (None without residuals: the hidden states are those outputs)."""
    histories: list[list[Tensor]] = []
    hooks = [r.register_forward_pre_hook(lambda _, args: histories.append(list(args[0]))) for r in encoder.residuals]
    try:
        out = run()
    finally:
        for hook in hooks:
            hook.remove()
    return out, (histories[-1] if histories else None)


def as_block_list(block_outputs: Tensor | list[Tensor] | tuple[Tensor, ...] | None) -> list[Tensor] | None:
    """perceiver-pytorch's `block_outputs` argument (one tensor `(B, N, D)` or a list of them) as a list (the
    encoder checks the shapes); None stays None."""
    if block_outputs is None:
        return None
    if isinstance(block_outputs, Tensor):
        return [block_outputs]
    if not isinstance(block_outputs, (list, tuple)):
        raise InputTypeError(
            f"expected block_outputs as a tensor (B, N, D) or a list of them, got {type(block_outputs).__name__}"
        )
    return list(block_outputs)


class ClassifierHead(nn.Module):
    """Mean over latents, LayerNorm, Linear: `(B, N, D) -> (B, K)`."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes) if num_classes else nn.Identity()

    def forward(self, latents: Tensor) -> Tensor:
        return self.fc(self.norm(latents.mean(dim=1)))


@register_model_type
class Perceiver(PeerStateDictMixin, TimmClassifierMixin, PerceiverModel):
    """Classic Perceiver classifier over channels-last data `(B, *axes, C)`.

    `Perceiver(input_channels=3, ..., num_classes=1000)` takes `PerceiverConfig`'s fields as keywords (the
    `perceiver` package's API), or `Perceiver(config)`. `model(data)` -> logits `(B, num_classes)` (a tensor, as the
    seed API and perceiver-pytorch return); `model(data, return_dict=True)` (or with `labels`) -> `ModelOutput` like
    every other model; `model(data, return_embeddings=True)` -> latents `(B, N, D)`. `load_state_dict` also takes a
    perceiver-pytorch `Perceiver`'s state dict when the model is built with the same keywords. timm's API too
    (`perceiver.models.timm_compat`): `num_features`, `forward_head(features, pre_logits=True)`,
    `forward_intermediates`, `no_weight_decay()`, `group_matcher()`.
    """

    config_class = PerceiverConfig
    model_type = "perceiver"
    classifier_name = "head.fc"
    checkpointed_modules = ("encoder",)
    head_kind = "the latents (final_classifier_head=False)"
    stem_pattern = r"^encoder\.latents$"  # timm's group_matcher: the Fourier features have no parameters
    #: data comes channels last, `(B, H, W, C)` for images
    input_layout: ClassVar[str] = "channels_last"

    def __init__(self, config: PerceiverConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is not None and kwargs:
            raise ValueError(f"pass a PerceiverConfig or keywords, not both (got config and {sorted(kwargs)})")
        if config is not None and not isinstance(config, PerceiverConfig):
            raise ValueError(f"expected a PerceiverConfig, got {type(config).__name__}")
        self.config = config = config if config is not None else PerceiverConfig(**kwargs)
        self.position_encoding = (
            FourierPositionEncoding(config.num_freq_bands, max_freq=config.max_freq)
            if config.fourier_encode_data
            else None
        )
        self.encoder = PerceiverEncoder(config.encoder_config())
        self.head = ClassifierHead(config.latent_dim, config.num_classes) if config.final_classifier_head else None

    @property
    def num_classes(self) -> int:
        return self.config.num_classes if self.head is not None else 0

    def get_classifier(self) -> nn.Module:
        if self.head is None:
            raise NotImplementedError(
                f"Perceiver(final_classifier_head=False) has no class head: it returns {self.head_kind}"
            )
        return self.head.fc

    def _pre_logits_dim(self) -> int:
        return self.config.latent_dim

    @classmethod
    def from_perceiver_pytorch(cls, state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any) -> Perceiver:
        """Build from perceiver-pytorch's constructor keywords and its `state_dict()` (or the module itself).

        Every state-dict layout from 0.8 to 0.11 is recognised from its keys (`layers.{i}.0` before 0.11,
        `layers.{i}.cross_attn` since); attention residuals and their rank and norm are read from the keys too.
        """
        from perceiver.interop.perceiver_pytorch import from_perceiver_pytorch

        return from_perceiver_pytorch(state_dict, **kwargs)

    # ------------------------------------------------------------------ input checks
    def _check_inputs(self, data: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """`data` cast to the model's dtype and `mask` as bool, or a clear error (policy: docs/reliability.md)."""
        c = self.config
        expected = "(B, " + ", ".join(f"d{i + 1}" for i in range(c.input_axis)) + f", {c.input_channels})"
        where = f"(input_axis={c.input_axis}, input_channels={c.input_channels})"
        data = check_float_input(data, "data", expected, model_dtype(self))
        if data.ndim != c.input_axis + 2 or data.shape[-1] != c.input_channels:
            raise ValueError(f"expected input of shape {expected} {where}, got {tuple(data.shape)}")
        if 0 in data.shape:
            raise ValueError(f"expected non-empty axes in input of shape {expected}, got {tuple(data.shape)}")
        if mask is not None:
            axes = tuple(data.shape[1:-1])
            shapes = ((data.shape[0], *axes), (data.shape[0], math.prod(axes)))
            mask = to_bool_mask(mask, "mask", shapes)
        return data, mask

    # ------------------------------------------------------------------ forward
    def prepare_inputs(self, data: Tensor) -> Tensor:
        """`(B, *axes, C)` -> tokens `(B, M, C + F)`: data with Fourier features of the grid, flattened."""
        b, *axes, _ = data.shape
        if self.position_encoding is not None:
            pos = self.position_encoding(axes, dtype=data.dtype)
            data = torch.cat([data, pos.expand(b, *pos.shape)], dim=-1)
        return data.reshape(b, -1, data.shape[-1])

    def forward_features(
        self,
        data: Tensor,
        mask: Tensor | None = None,
        return_attention: bool = False,
        return_hidden_states: bool = False,
        block_outputs: Tensor | list[Tensor] | None = None,
    ) -> Features:
        """`Features` with the latents `(B, N, D)` (with `return_attention`, each cross-attend's map `(B, H, N, M)`
        and each latent layer's `(B, H, N, N)`; with `return_hidden_states`, the latents after every step).
        `block_outputs`: see `forward`."""
        data, mask = self._check_inputs(data, mask)
        if mask is not None:
            mask = mask.reshape(mask.shape[0], -1)
        encoded = self.encoder(
            self.prepare_inputs(data),
            mask,
            return_attention=return_attention,
            return_hidden_states=return_hidden_states,
            residual_history=as_block_list(block_outputs),
        )
        return Features.from_encoder(encoded)

    @overload
    def forward_head(self, features: Features | Tensor, pre_logits: Literal[False] = False) -> ModelOutput: ...
    @overload
    def forward_head(self, features: Features | Tensor, pre_logits: Literal[True]) -> Tensor: ...
    def forward_head(self, features: Features | Tensor, pre_logits: bool = False) -> ModelOutput | Tensor:
        """Logits `(B, num_classes)` (the latents when `final_classifier_head=False`) in a `ModelOutput`;
        `pre_logits=True` (timm's): the pooled features `(B, num_features)` the class layer takes (the mean over the
        latents, normalised by the head's LayerNorm; without a head, the mean), a tensor. `features` is what
        `forward_features` returned, or latents `(B, N, latent_dim)`."""
        if isinstance(features, Tensor):
            features = Features(check_latents(features, self.config.latent_dim, type(self).__name__))
        latents = features.latents
        if pre_logits:
            return latents.mean(dim=1) if self.head is None else self.head.norm(latents.mean(dim=1))
        logits = latents if self.head is None else self.head(latents)
        return features.output(logits)

    def forward(
        self,
        data: Tensor,
        mask: Tensor | None = None,
        return_embeddings: bool = False,
        labels: Tensor | None = None,
        return_dict: bool = False,
        return_attention: bool = False,
        return_hidden_states: bool = False,
        return_hiddens: bool = False,
        block_outputs: Tensor | list[Tensor] | None = None,
    ) -> Tensor | ModelOutput | tuple[Tensor, list[Tensor]]:
        """`data` `(B, *axes, C)`, `mask` `(B, *axes)` or `(B, M)` boolean -> logits `(B, num_classes)`.

        `return_embeddings`: the latents `(B, N, D)` instead. `return_dict` (implied by `labels`, `return_attention`
        and `return_hidden_states`): a `ModelOutput` with `.logits`, `.last_hidden_state`, `.loss` for `labels`
        (class ids `(B,)`), the attention maps and the latents after every encoder step. `return_hiddens`
        (perceiver-pytorch 0.11's): `(logits or latents, block_outputs)`, `block_outputs` the initial latents and
        those after each of the `depth` blocks (before the attention residual's mix), `depth + 1` tensors `(B, N, D)`.
        `block_outputs` (perceiver-pytorch 0.11's, e.g. another model's `return_hiddens` list): earlier outputs
        `(B, N, D)` (one tensor or a list) that replace the initial latents at the start of that list: the attention
        residuals (`attn_residual=True`) mix them in, and `return_hiddens` returns them first.
        """
        if return_embeddings and labels is not None:  # the latents carry no loss: it was dropped silently
            raise ValueError(
                "expected labels or return_embeddings=True, got both: the loss needs the logits; call "
                "model(data, labels=labels) (its .last_hidden_state holds the latents)"
            )
        if return_hiddens:
            if labels is not None or return_dict or return_attention or return_hidden_states:
                raise ValueError(
                    "expected return_hiddens=True (perceiver-pytorch's (output, block_outputs) tuple) alone, got it "
                    "with labels / return_dict / return_attention / return_hidden_states: use return_hidden_states "
                    "for ModelOutput.hidden_states"
                )
            return self._forward_with_block_outputs(data, mask, return_embeddings, block_outputs)
        features = self.forward_features(data, mask, return_attention, return_hidden_states, block_outputs)
        if return_embeddings:
            return features.latents
        out = self.forward_head(features)
        if labels is not None:
            out.loss = self.compute_loss(out.logits, labels)
        return out if (return_dict or labels is not None or return_attention or return_hidden_states) else out.logits

    def _forward_with_block_outputs(
        self, data: Tensor, mask: Tensor | None, return_embeddings: bool, given: Tensor | list[Tensor] | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """perceiver-pytorch's `return_hiddens=True`: `(output, [latents, block 1, ..., block depth])` (the
        `given` block outputs in place of the latents)."""
        features, mixed = run_with_block_outputs(
            self.encoder, lambda: self.forward_features(data, mask, return_hidden_states=True, block_outputs=given)
        )
        if mixed is not None:
            blocks = mixed
        else:
            states, step = features.hidden_states or [], 1 + self.config.self_per_cross_attn
            start = as_block_list(given) or [self.encoder.latents.expand(features.latents.shape[0], -1, -1)]
            blocks = [*start, *states[step - 1 :: step]]
        out = features.latents if return_embeddings else self.forward_head(features).logits
        return out, blocks


@register_model("perceiver")
def perceiver(**overrides: Any) -> Perceiver:
    """The classic Perceiver with the README snippet's settings (ImageNet-sized, 224x224x3 channels-last input)."""
    return build_preset(Perceiver, PerceiverConfig(), overrides)
