"""Perceiver Resampler (Flamingo, Alayrac et al. 2022, arXiv 2204.14198): a fixed number of learned latents read a
variable number of media features, the bridge from a vision encoder to a language model.

    media (B, T, M, D) (+ media time embedding (T, 1, D)) | (B, M, D)
    | (B, T, F, V, D): F frames of V features each (+ frame embedding (F, D)), flattened to M = F * V
    latents (N, D) --[attention to concat(media, latents), FF] x depth (pre-norm, residual)--> final norm
    --> (B, T, N, D) | (B, N, D)

As Flamingo (and flamingo-pytorch) the keys / values of each layer are the normalised media *and* the latents, so
latents also exchange information with each other. `media_mask` `(B, T, M)` / `(B, M)` (True = valid) removes
padded media features; latents are always valid keys, so no row is empty.

Layouts: flamingo-pytorch's (LayerNorm, GELU MLP, per-time media embeddings; `PerceiverResampler.from_flamingo_pytorch`;
OpenFlamingo's, the same with optional per-frame embeddings of video media: `from_open_flamingo`), transformers'
IDEFICS (v1) resampler (ReLU MLP, optional LayerNorms of each head's queries and keys, no media embeddings:
`mlp="relu", qk_norm=..., num_media_embeds=0`; `from_idefics`) and Idefics2's (RMSNorm, SwiGLU MLP, grouped-query
attention, no media embeddings: `norm="rmsnorm", mlp="swiglu", num_kv_heads=..., num_media_embeds=0`; `from_idefics2`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from perceiver.checks import (
    check_float_input,
    check_int_fields,
    check_nonempty,
    check_number,
    model_dtype,
    to_bool_mask,
)
from perceiver.core.model import Features, ModelOutput, PerceiverModel, checkpoints
from perceiver.hub import config_argument, config_from_dict
from perceiver.models.registry import register_model, register_model_type


@dataclass
class PerceiverResamplerConfig:
    """dim: width D of media and latents; depth: layers; num_latents: N; num_heads / head_dim: query heads;
    num_kv_heads: key / value heads (None: num_heads; fewer = grouped-query attention); num_media_embeds: learned
    time embeddings (T <= num_media_embeds; 0 = none); num_frame_embeds: learned frame embeddings added to 5-D media
    `(B, T, F, V, D)` before its F frames are flattened (F <= num_frame_embeds; 0 = none; OpenFlamingo's
    `max_num_frames`); ff_mult: MLP hidden width / D; mlp: `"gelu"` (Linear, GELU, Linear), `"relu"` (the same
    with ReLU, IDEFICS's) or `"swiglu"` (down(silu(gate(x)) * up(x))); norm: `"layernorm"` or `"rmsnorm"` with
    `norm_eps`; qk_norm: a LayerNorm (eps `norm_eps`) over each head's queries and keys (IDEFICS's
    `qk_layer_norms_perceiver`)."""

    dim: int = 1024
    depth: int = 6
    num_latents: int = 64
    num_heads: int = 8
    head_dim: int = 64
    num_kv_heads: int | None = None
    num_media_embeds: int = 4
    num_frame_embeds: int = 0
    ff_mult: float = 4.0
    mlp: Literal["gelu", "relu", "swiglu"] = "gelu"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-5
    qk_norm: bool = False

    def __post_init__(self) -> None:
        # sizes: positive integers (num_kv_heads None: num_heads); 0 embeddings = none
        check_int_fields(self, zero_ok=("num_media_embeds", "num_frame_embeds"))
        for name in ("ff_mult", "norm_eps"):
            check_number(getattr(self, name), f"PerceiverResamplerConfig.{name}")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads, got {self.kv_heads}")
        if self.mlp not in ("gelu", "relu", "swiglu") or self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(
                f"expected mlp in (gelu, relu, swiglu) and norm in (layernorm, rmsnorm), got {self.mlp}, {self.norm}"
            )
        if not isinstance(self.qk_norm, bool):
            raise ValueError(f"expected qk_norm as a bool, got {self.qk_norm!r}")

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads


def _norm(c: PerceiverResamplerConfig) -> nn.Module:
    if c.norm == "rmsnorm":
        return nn.RMSNorm(c.dim, eps=c.norm_eps)
    return nn.LayerNorm(c.dim, eps=c.norm_eps)


class ResamplerAttention(nn.Module):
    """Latents `(B', N, D)` attend to `concat(norm_media(media) (B', M, D), norm_latents(latents))`."""

    def __init__(self, c: PerceiverResamplerConfig) -> None:
        super().__init__()
        self.num_heads, self.kv_heads, self.head_dim = c.num_heads, c.kv_heads, c.head_dim
        self.norm_media, self.norm_latents = _norm(c), _norm(c)
        self.to_q = nn.Linear(c.dim, c.num_heads * c.head_dim, bias=False)
        self.to_kv = nn.Linear(c.dim, 2 * c.kv_heads * c.head_dim, bias=False)
        self.to_out = nn.Linear(c.num_heads * c.head_dim, c.dim, bias=False)
        self.q_norm = nn.LayerNorm(c.head_dim, eps=c.norm_eps) if c.qk_norm else None
        self.k_norm = nn.LayerNorm(c.head_dim, eps=c.norm_eps) if c.qk_norm else None

    def forward(self, media: Tensor, latents: Tensor, mask: Tensor | None) -> Tensor:
        b, n, _ = latents.shape
        latents = self.norm_latents(latents)
        kv = self.to_kv(torch.cat((self.norm_media(media), latents), dim=1))
        q = self.to_q(latents).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = (t.view(b, -1, self.kv_heads, self.head_dim).transpose(1, 2) for t in kv.chunk(2, dim=-1))
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.kv_heads != self.num_heads:
            k = k.repeat_interleave(self.num_heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.num_heads // self.kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class ResamplerMLP(nn.Module):
    """Pre-norm MLP `(B', N, D)`: GELU (fc2(gelu(fc1 x))), ReLU or SwiGLU (fc2(silu(gate x) * fc1 x)), no biases."""

    def __init__(self, c: PerceiverResamplerConfig) -> None:
        super().__init__()
        hidden = int(c.dim * c.ff_mult)
        self.norm = _norm(c)
        self.gate = nn.Linear(c.dim, hidden, bias=False) if c.mlp == "swiglu" else None
        self.fc1 = nn.Linear(c.dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, c.dim, bias=False)
        self.relu = c.mlp == "relu"

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        if self.gate is not None:
            return self.fc2(F.silu(self.gate(x)) * self.fc1(x))
        return self.fc2(F.relu(self.fc1(x)) if self.relu else F.gelu(self.fc1(x)))


class ResamplerLayer(nn.Module):
    def __init__(self, c: PerceiverResamplerConfig) -> None:
        super().__init__()
        self.attn = ResamplerAttention(c)
        self.ff = ResamplerMLP(c)

    def forward(self, media: Tensor, latents: Tensor, mask: Tensor | None) -> Tensor:
        latents = latents + self.attn(media, latents, mask)
        return latents + self.ff(latents)


#: flamingo-pytorch's keyword names of our config fields (`PerceiverResampler(heads=8, dim_head=64)`)
FLAMINGO_NAMES = {"heads": "num_heads", "dim_head": "head_dim"}

#: the resampler returns the library's one output type with `last_hidden_state` (and no logits)
PerceiverResamplerOutput = ModelOutput


@register_model_type
class PerceiverResampler(PerceiverModel):
    """Perceiver Resampler (see the module docstring).

    `forward(media (B, T, M, D) or (B, M, D), media_mask (B, T, M) or (B, M))` -> `.last_hidden_state`
    `(B, T, N, D)` or `(B, N, D)`.
    """

    config_class = PerceiverResamplerConfig
    model_type = "perceiver-resampler"
    fixed_head = True  # num_classes cannot be reset (see reset_classifier)
    head_kind = "resampled latents (last_hidden_state), no logits"
    task_output = "last_hidden_state"  # what an export holds (perceiver.export.task_output_name)
    checkpointed_modules = ("",)  # set_grad_checkpointing: every layer

    @property
    def num_classes(self) -> int:
        """0: the resampler has no head (its output is `last_hidden_state`)."""
        return 0

    def __init__(self, config: PerceiverResamplerConfig | None = None, **kwargs: Any) -> None:
        """`PerceiverResampler(config)` or `PerceiverResampler(dim=..., depth=..., ...)` with
        `PerceiverResamplerConfig`'s fields as keywords (the defaults for those not given); not both.
        flamingo-pytorch's names `heads` and `dim_head` are accepted for `num_heads` and `head_dim`, so its
        `PerceiverResampler(dim=1024, depth=2, dim_head=64, heads=8, num_latents=64)` builds the same layers here (its
        weights: `from_flamingo_pytorch`)."""
        super().__init__()
        for peer, ours in FLAMINGO_NAMES.items():
            if peer in kwargs and ours in kwargs:
                raise ValueError(f"pass {ours} or flamingo-pytorch's name {peer} for it, not both")
        kwargs = {FLAMINGO_NAMES.get(k, k): v for k, v in kwargs.items()}
        c = self.config = config_argument(PerceiverResamplerConfig, config, kwargs)
        self.latents = nn.Parameter(torch.empty(c.num_latents, c.dim))
        self.media_pos_emb = nn.Parameter(torch.empty(c.num_media_embeds, 1, c.dim)) if c.num_media_embeds else None
        self.frame_pos_emb = nn.Parameter(torch.empty(c.num_frame_embeds, c.dim)) if c.num_frame_embeds else None
        self.layers = nn.ModuleList(ResamplerLayer(c) for _ in range(c.depth))
        self.norm = _norm(c)
        self.gradient_checkpointing = False
        self.init_weights()

    def init_weights(self) -> None:
        """Latents, media and frame embeddings N(0, 1) (as flamingo-pytorch), Linear N(0, 0.02), unit norms."""
        nn.init.normal_(self.latents)
        if self.media_pos_emb is not None:
            nn.init.normal_(self.media_pos_emb)
        if self.frame_pos_emb is not None:
            nn.init.normal_(self.frame_pos_emb)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
            elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
                m.reset_parameters()

    def forward_features(self, media: Tensor, media_mask: Tensor | None = None) -> Features:
        """`Features` with the latents `(B, T, N, D)` for media `(B, T, M, D)` or `(B, T, F, V, D)` (`(B, N, D)` for
        3-D media `(B, M, D)`)."""
        c = self.config
        expected = f"(B, T, M, {c.dim}), (B, M, {c.dim}) or (B, T, F, V, {c.dim})"
        media = check_float_input(media, "media", expected, model_dtype(self))
        if media.dim() not in (3, 4, 5) or media.shape[-1] != c.dim:
            raise ValueError(f"expected media of shape {expected}, got {tuple(media.shape)}")
        check_nonempty(media, "media", expected)
        x = media if media.dim() != 3 else media.unsqueeze(1)
        if x.dim() == 5:  # F frames of V features: frame embeddings, then one sequence of F * V per time
            frames = x.shape[2]
            if self.frame_pos_emb is not None:
                if frames > c.num_frame_embeds:
                    raise ValueError(f"expected at most num_frame_embeds={c.num_frame_embeds} frames, got F={frames}")
                x = x + self.frame_pos_emb[:frames, None].to(x.dtype)
            x = x.flatten(2, 3)
        b, t, m, d = x.shape
        if self.media_pos_emb is not None:
            if t > c.num_media_embeds:
                raise ValueError(f"expected at most num_media_embeds={c.num_media_embeds} media times, got T={t}")
            x = x + self.media_pos_emb[:t].to(x.dtype)
        mask = None
        if media_mask is not None:
            media_mask = to_bool_mask(media_mask, "media_mask", (tuple(media.shape[:-1]),))
            valid = media_mask.reshape(b * t, m)  # 5-D media: (B, T, F, V) flattened as the media
            x = x.masked_fill(~valid.view(b, t, m, 1), 0.0)  # NaN / inf in padded media must not leak via 0 * v
            keys = torch.cat((valid, valid.new_ones(b * t, c.num_latents)), dim=1)  # latents are always valid
            mask = keys[:, None, None, :]  # (B*T, 1, 1, M + N)
        x = x.reshape(b * t, m, d)
        latents = self.latents.to(x.dtype).expand(b * t, -1, -1)
        recompute = checkpoints(self)  # set_grad_checkpointing: keep each layer's inputs only
        for layer in self.layers:
            latents = checkpoint(layer, x, latents, mask, use_reentrant=False) if recompute else layer(x, latents, mask)
        out = self.norm(latents).view(b, t, c.num_latents, d)
        return Features(out if media.dim() != 3 else out[:, 0])

    def forward_head(self, features: Features) -> ModelOutput:
        """The resampled latents as `last_hidden_state` (there is no head)."""
        return ModelOutput(last_hidden_state=features.latents)

    def forward(
        self,
        media: Tensor | None = None,
        media_mask: Tensor | None = None,
        *,
        context: Tensor | None = None,
        attention_mask: Tensor | None = None,
    ) -> ModelOutput:
        """Resample `media` `(B, T, M, D)` / `(B, M, D)` / `(B, T, F, V, D)` with `media_mask` (its shape without D,
        True = valid) to N latents: `.last_hidden_state` `(B, T, N, D)` / `(B, N, D)` / `(B, T, N, D)`.

        `context` and `attention_mask` are transformers' names of `media` and `media_mask`
        (`Idefics2PerceiverResampler.forward(context, attention_mask)`, 1 = valid as here)."""
        for ours, value, theirs in (("media", media, context), ("media_mask", media_mask, attention_mask)):
            if value is not None and theirs is not None:
                alias = "context" if ours == "media" else "attention_mask"
                raise ValueError(f"pass {ours} or its transformers name {alias}, not both")
        media = context if media is None else media
        if media is None:
            raise TypeError(f"expected media of shape (B, T, M, {self.config.dim}) (or context=), got None")
        mask = attention_mask if media_mask is None else media_mask
        return self.forward_head(self.forward_features(media, mask))

    @classmethod
    def from_flamingo_pytorch(cls, state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any) -> PerceiverResampler:
        """Build from flamingo-pytorch's `PerceiverResampler(**kwargs)` keywords and its `state_dict()`."""
        from perceiver.interop.flamingo import from_flamingo_pytorch

        return from_flamingo_pytorch(state_dict, **kwargs)

    @classmethod
    def from_open_flamingo(cls, state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any) -> PerceiverResampler:
        """Build from OpenFlamingo's `PerceiverResampler(**kwargs)` keywords and its `state_dict()`, or from a whole
        OpenFlamingo checkpoint (its `perceiver.` keys are taken; `dim` is the vision encoder's width)."""
        from perceiver.interop.flamingo import from_open_flamingo

        return from_open_flamingo(state_dict, **kwargs)

    @classmethod
    def from_idefics(cls, resampler: nn.Module) -> PerceiverResampler:
        """Build from transformers' `IdeficsPerceiverResampler` (IDEFICS v1's; its sizes and weights)."""
        from perceiver.interop.flamingo import from_idefics

        return from_idefics(resampler)

    @classmethod
    def from_idefics2(cls, resampler: nn.Module) -> PerceiverResampler:
        """Build from transformers' `Idefics2PerceiverResampler` (its config and weights)."""
        from perceiver.interop.flamingo import from_idefics2

        return from_idefics2(resampler)


@register_model("perceiver-resampler")
def perceiver_resampler(**overrides: Any) -> PerceiverResampler:
    """Flamingo's resampler as flamingo-pytorch's defaults: 64 latents, 8 heads x 64, width 1024, depth 6."""
    return PerceiverResampler(config_from_dict(PerceiverResamplerConfig, overrides))
