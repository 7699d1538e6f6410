"""Perceiver AR (Hawthorne et al. 2022, arXiv 2202.07765): a causal language model whose latents are the last N
positions of its window.

    input_ids (B, L) --embedding (+ learned positions)--> (B, L, D) = prefix (B, L-N, D) | latents (B, N, D)
    latents --[causal cross-attention to prefix + latents, FF] x num_cross_layers--> (B, N, D)
            --[causal self-attention, FF] x num_layers--> (final LayerNorm) --Linear--> logits (B, N, V)

Latent `i` (window position `L - N + i`) attends to every window position `<= L - N + i`, so the model is causal and
predicts the token after each latent position. Pre-LN layers; in the cross-attention the prefix is normalised by
`context_norm` and the latents by the query `norm`, keys / values of both come from one `to_kv` (as
perceiver-ar-pytorch). Positions are rotary (partial: `rotary_fraction` of each head's channels, same angles in every
layer, or in the first `rotary_layers` self-attention layers only, as krasserm's perceiver-io), optionally plus
learned absolute positions (`abs_pos_emb=True`, as perceiver-ar-pytorch). With an
`attention_mask` (left padding, True = token) positions count valid tokens only, so a left-padded row computes what
the row alone computes with the same latents (not with `prefix_len`: its N = L - prefix_len counts the padding).

Vocabulary: 262 ids by default, those of `perceiver.ByteTokenizer` (byte b is id b + 6, 0 is PAD); any `vocab_size`
works (256 for raw bytes, perceiver-ar-pytorch's `num_tokens`).

Generation (`generate`) keeps a static KV cache (`PerceiverARCache`: cross-attention keys / values of every window
position, self-attention keys / values of every latent). A new token becomes a new latent, so the cached states stay
exact while the window grows. When the window would exceed `max_seq_len` or the latents `max_latents`, the window
slides (`W - (max_latents - num_latents)` newest tokens are kept) and the cache is recomputed from it with
`num_latents` latents. `use_cache=False` follows the same schedule with full forwards, token for token equal.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from perceiver.checks import InputTypeError, check_int, check_token_ids, token_mask
from perceiver.core.model import (
    Features,
    ModelOutput,
    PerceiverModel,
    check_class_ids,
    check_labels,
    checkpoints,
    token_cross_entropy,
)
from perceiver.hub import config_argument, config_from_dict
from perceiver.models.ar_generation import ARGeneration, PerceiverARCache
from perceiver.models.ar_layers import CrossLayer, SelfLayer, causal_mask
from perceiver.models.registry import register_model, register_model_type
from perceiver.nn.rotary import rotary_angles, rotary_dim, rotary_inv_freq


@dataclass
class PerceiverARConfig:
    """Hyper-parameters of `PerceiverAR`.

    vocab_size: token ids (262 = `ByteTokenizer`); max_seq_len: window W (positions); num_latents: N, the latent
    positions at the end of the window (forward can take another N); d_model: width D; num_heads / head_dim
    (None: D // num_heads); num_layers: causal latent self-attention layers; num_cross_layers: cross-attention layers
    (each attends to the embedded prefix); ff_mult: feed-forward hidden width / D (GELU, no biases); cross_ff_mult:
    the same for the cross-attention layers (None: ff_mult).
    dropout: on attention probabilities and in the feed-forward; prefix_dropout: fraction of the prefix positions
    dropped (per row, at random) in training, as the paper's cross-attend dropout.
    rotary_fraction / rotary_dim: rotated channels per head (rotary_dim wins if set); rotary_interleaved: channel
    pairs (2i, 2i+1) instead of (i, i + dim/2); rotary_base: frequency base; rotary_layers: how many self-attention
    layers, from the first, rotate their queries and keys (None: all; the cross-attention always does; krasserm's
    perceiver-io rotates in the first only).
    abs_pos_emb: add learned absolute positions (W, D) to the token embedding; final_norm: LayerNorm before the head;
    cross_out_bias: bias of the cross-attention output projection; tie_embeddings: head weight = token embedding;
    logits_bias: a bias on the logits (V,).
    prefix_len: perceiver-ar-pytorch's convention: the first prefix_len positions are the prefix and all others are
    latents (a forward without `num_latents` uses L - prefix_len latents; None: num_latents).
    """

    vocab_size: int = 262
    max_seq_len: int = 4096
    num_latents: int = 1024
    d_model: int = 512
    num_heads: int = 8
    head_dim: int | None = None
    num_layers: int = 8
    num_cross_layers: int = 1
    ff_mult: float = 4.0
    cross_ff_mult: float | None = None
    dropout: float = 0.0
    prefix_dropout: float = 0.0
    rotary_fraction: float = 0.5
    rotary_dim: int | None = None
    rotary_interleaved: bool = False
    rotary_base: float = 10000.0
    rotary_layers: int | None = None
    abs_pos_emb: bool = False
    final_norm: bool = True
    cross_out_bias: bool = False
    tie_embeddings: bool = False
    logits_bias: bool = False
    prefix_len: int | None = None
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_seq_len", "num_latents", "d_model", "num_heads", "num_cross_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int) or self.num_layers < 0:
            raise ValueError(f"num_layers must be a non-negative integer, got {self.num_layers!r}")
        if self.num_latents > self.max_seq_len:
            raise ValueError(f"num_latents must be <= max_seq_len={self.max_seq_len}, got {self.num_latents}")
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
        if self.prefix_len is not None and not 0 <= self.prefix_len < self.max_seq_len:
            raise ValueError(f"prefix_len must be in [0, max_seq_len={self.max_seq_len}), got {self.prefix_len}")
        for name in ("ff_mult", "cross_ff_mult"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        layers = self.rotary_layers
        if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 0):
            raise ValueError(f"rotary_layers must be None (all) or a non-negative integer, got {layers!r}")
        for name in ("dropout", "prefix_dropout", "init_std"):
            value, high = getattr(self, name), 1.0 if name != "init_std" else math.inf
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < high:
                raise ValueError(f"{name} must be in [0, {high:g}), got {value!r}")
        if isinstance(self.rotary_base, bool) or not isinstance(self.rotary_base, int | float) or self.rotary_base <= 0:
            raise ValueError(f"rotary_base must be a positive number, got {self.rotary_base!r}")
        for name in ("ff_mult", "cross_ff_mult"):  # the feed-forward's hidden width int(d_model * mult)
            value = getattr(self, name)
            if value is not None and int(self.d_model * value) < 1:
                raise ValueError(
                    f"{name} must be >= 1 / d_model = {1 / self.d_model:g} (a hidden width >= 1), got {value}"
                )
        rotary_dim(self.dim_head, self.rotary_fraction, self.rotary_dim)  # validates

    @property
    def dim_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.num_heads


#: Perceiver AR's output is the library's one output type: logits `(B, N, V)` (next-token logits of the N latent
#: positions), last_hidden_state `(B, N, D)` (before the final norm), loss (given labels), cache (given a cache)
PerceiverAROutput = ModelOutput


@register_model_type
class PerceiverAR(ARGeneration, PerceiverModel):
    """Perceiver AR causal language model (see the module docstring).

    `forward(input_ids (B, L), attention_mask (B, L), labels (B, L), num_latents=N)` -> `PerceiverAROutput` with
    `.logits` `(B, N, V)` for the last N positions (the next token after each).
    """

    config_class = PerceiverARConfig
    model_type = "perceiver-ar"
    fixed_head = True  # num_classes cannot be reset (see reset_classifier)
    classifier_name = "to_logits"
    head_kind = "next-token logits over the vocabulary"
    checkpointed_modules = ("",)  # set_grad_checkpointing: every cross and latent layer

    inv_freq: Tensor

    @property
    def num_classes(self) -> int:
        """The vocabulary size (the logits' last axis)."""
        return self.config.vocab_size

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError(
            f"PerceiverAR predicts tokens of its vocabulary (vocab_size={self.config.vocab_size}, shared with the "
            f"input embedding); reset_classifier applies to class heads only"
        )

    def __init__(self, config: PerceiverARConfig | None = None, **kwargs: Any) -> None:
        """`PerceiverAR(config)` or `PerceiverAR(max_seq_len=..., num_latents=..., ...)` with `PerceiverARConfig`'s
        fields as keywords (the defaults for those not given); not both."""
        super().__init__()
        c = self.config = config_argument(PerceiverARConfig, config, kwargs)
        self.token_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.max_seq_len, c.d_model) if c.abs_pos_emb else None
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)
        self.cross_layers = nn.ModuleList(CrossLayer(c) for _ in range(c.num_cross_layers))
        self.layers = nn.ModuleList(SelfLayer(c) for _ in range(c.num_layers))
        self.norm = nn.LayerNorm(c.d_model) if c.final_norm else nn.Identity()
        self.to_logits = nn.Linear(c.d_model, c.vocab_size, bias=c.logits_bias)
        self.gradient_checkpointing = False
        self.init_weights()

    def _inv_freq(self, device: torch.device | None = None) -> Tensor:
        c = self.config
        return rotary_inv_freq(rotary_dim(c.dim_head, c.rotary_fraction, c.rotary_dim), c.rotary_base, device)

    def init_weights(self) -> None:
        """Normal(0, init_std) for Linear / Embedding weights (output projections scaled by 1 / sqrt(2 * layers), as
        GPT-2), zero biases, unit LayerNorms; the rotary frequencies are recomputed (e.g. after a meta-device init)."""
        std = self.config.init_std
        depth = self.config.num_layers + self.config.num_cross_layers
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                scale = 1.0 / math.sqrt(2 * depth) if name.endswith(("to_out", "fc2")) else 1.0
                nn.init.normal_(m.weight, std=std * scale)
                bias = getattr(m, "bias", None)  # an Embedding has none
                if bias is not None:
                    nn.init.zeros_(bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.config.tie_embeddings:
            self.to_logits.weight = self.token_emb.weight
        self.inv_freq = self._inv_freq(self.inv_freq.device if self.inv_freq.device.type != "meta" else None)

    def get_output_embeddings(self) -> nn.Linear:
        return self.to_logits

    @classmethod
    def from_krasserm(
        cls,
        state_dict: Mapping[str, Any] | nn.Module | str | os.PathLike,
        config: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> PerceiverAR:
        """Build from a krasserm perceiver-io `CausalSequenceModel` (its causal language and symbolic audio models):
        its config (`dataclasses.asdict`, or the `model_config` of its Hub `config.json`) and `state_dict()` (or the
        module itself, whose `.config` is then used), or a whole krasserm Lightning checkpoint (dict or path), whose
        `hyper_parameters` are the config. See `perceiver.interop.krasserm`."""
        from perceiver.interop.krasserm import from_krasserm

        return from_krasserm(state_dict, config, **overrides)

    @classmethod
    def from_perceiver_ar_pytorch(cls, state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any) -> PerceiverAR:
        """Build from perceiver-ar-pytorch's constructor keywords and its `state_dict()` (or the module itself)."""
        from perceiver.interop.perceiver_ar_pytorch import from_perceiver_ar_pytorch

        return from_perceiver_ar_pytorch(state_dict, **kwargs)

    # ------------------------------------------------------------------------------------------------------------
    # forward

    def _num_latents(self, length: int, num_latents: int | None) -> int:
        c = self.config
        if num_latents is None:  # max(1, min(n, length)), written as branches that torch.export's solver can decide
            n = length - c.prefix_len if c.prefix_len is not None else c.num_latents  # for a symbolic length
            n = length if n > length else n
            return n if n >= 1 else 1
        return min(check_int(num_latents, "num_latents"), length)  # numpy integers too

    def _rotates(self, i: int) -> bool:
        """Whether self-attention layer `i` rotates its queries and keys (`config.rotary_layers`)."""
        return self.config.rotary_layers is None or i < self.config.rotary_layers

    def _rot(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos / sin `(1|B, 1, L, r)` for positions `(L,)` or `(B, L)`.

        The frequencies stay fp32: a dtype cast of the model (`.to(torch.bfloat16)`, `.half()`) also rounds the
        `inv_freq` buffer, and position x rounded frequency is off by radians at long positions; then they are
        recomputed."""
        inv_freq = self.inv_freq if self.inv_freq.dtype == torch.float32 else self._inv_freq(positions.device)
        angles = rotary_angles(positions, inv_freq.to(positions.device), self.config.rotary_interleaved)
        angles = angles.unsqueeze(-3) if angles.dim() == 3 else angles[None, None]
        return angles.cos(), angles.sin()

    def _embed(self, ids: Tensor, positions: Tensor) -> Tensor:
        x = self.token_emb(ids)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions.clamp(max=self.config.max_seq_len - 1))
        return x

    def forward_features(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        num_latents: int | None = None,
        cache: PerceiverARCache | None = None,
        return_hidden_states: bool = False,
    ) -> Features:
        """`Features` with the latent states `(B, N, D)` (before the final norm) of the last N window positions.

        input_ids `(B, L)`, L <= max_seq_len; attention_mask `(B, L)` True = token (left padding); num_latents: N
        (default `config.num_latents`, at most L). With an empty `cache` the window is also written into it; with a
        filled cache, input_ids `(B, K)` are K new tokens appended as K new latents. `return_hidden_states`: also the
        latent states after every cross-attention and latent layer (`Features.hidden_states`, the last equal to the
        latents).
        """
        states: list[Tensor] | None = [] if return_hidden_states else None
        c = self.config
        input_ids = check_token_ids(input_ids, c.vocab_size)  # int32 / int64 (uint8 bytes as int64)
        b, length = input_ids.shape
        mask = token_mask(attention_mask, input_ids)
        if cache is not None and not isinstance(cache, PerceiverARCache):
            raise InputTypeError(
                f"expected cache as a PerceiverARCache (model.init_cache(batch_size)), got {type(cache).__name__}"
            )
        if cache is not None and cache.batch_size != b:
            raise ValueError(f"expected a cache for batch size {b}, got a cache for batch size {cache.batch_size}")
        if cache is not None and cache.prefilled:
            return Features(self._step(input_ids, mask, cache, states), hidden_states=states)
        if length > c.max_seq_len:
            raise ValueError(f"expected at most max_seq_len={c.max_seq_len} tokens, got {length}")
        n = self._num_latents(length, num_latents)
        p = length - n
        window = torch.arange(length, device=input_ids.device)
        positions = window if mask is None else (mask.long().cumsum(1) - 1).clamp(min=0)
        x = self._embed(input_ids, positions)
        prefix, x = x[:, :p], x[:, p:]
        k_index, k_valid, k_positions = window, mask, positions
        if self.training and c.prefix_dropout > 0 and p > 0 and cache is None:
            keep = p - int(p * c.prefix_dropout)
            kept = torch.rand(b, p, device=x.device).topk(keep, dim=1).indices.sort(dim=1).values  # (B, keep)
            prefix = prefix.gather(1, kept.unsqueeze(-1).expand(-1, -1, prefix.shape[-1]))
            k_index = torch.cat((kept, window[p:].expand(b, -1)), dim=1)
            k_positions = positions.expand(b, -1).gather(1, k_index)
            k_valid = None if mask is None else mask.gather(1, k_index)
        q_positions = positions[..., p:]
        q_rot, k_rot = self._rot(q_positions), self._rot(k_positions)
        cross_mask = causal_mask(window[p:], k_index, k_valid)
        self_mask = None if mask is None else causal_mask(window[p:], window[p:], mask[:, p:])
        if cache is not None:
            self._check_cache_room(cache, length, n)
            cross_index, self_index = window, window[:n]
        recompute = checkpoints(self, cache)  # set_grad_checkpointing: keep each layer's inputs only
        for i, layer in enumerate(self.cross_layers):
            if recompute:
                x = checkpoint(layer, x, prefix, q_rot, k_rot, cross_mask, use_reentrant=False)
            else:
                kv = None if cache is None else (cache.cross_k[i], cache.cross_v[i])
                x = layer(x, prefix, q_rot, k_rot, cross_mask, kv, None if cache is None else cross_index)
            if states is not None:
                states.append(x)
        for i, layer in enumerate(self.layers):
            rot = q_rot if self._rotates(i) else None
            if recompute:
                x = checkpoint(layer, x, rot, self_mask, use_reentrant=False)
            else:
                kv = None if cache is None else (cache.self_k[i], cache.self_v[i])
                x = layer(x, rot, self_mask, kv, None if cache is None else self_index)
            if states is not None:
                states.append(x)
        if cache is not None:
            valid = torch.ones(b, length, dtype=torch.bool, device=x.device) if mask is None else mask
            cache.cross_valid.zero_()[:, :length] = valid
            cache.self_valid.zero_()[:, :n] = valid[:, p:]
            cache.cross_len.fill_(length)
            cache.self_len.fill_(n)
            cache.next_position.copy_(valid.long().sum(1))
            cache.prefilled, cache.filled = True, (length, n)
        return Features(x, hidden_states=states)

    def _check_cache_room(self, cache: PerceiverARCache, length: int, n: int) -> None:
        if length > cache.window_capacity or n > cache.latent_capacity:
            raise ValueError(
                f"expected a window of at most {cache.window_capacity} tokens and {cache.latent_capacity} latents "
                f"(cache capacity), got {length} tokens and {n} latents"
            )

    def _step(
        self, ids: Tensor, mask: Tensor | None, cache: PerceiverARCache, states: list[Tensor] | None = None
    ) -> Tensor:
        """Append K new tokens `(B, K)` to a filled cache as K new latents; returns their states `(B, K, D)` (and
        appends each layer's to `states`, if given).

        The caller keeps the cache within its capacity (`generate` does): eagerly, a step past it is a ValueError
        (from the host-side `cache.filled`); compiled, `index_copy_` fails.
        """
        b, k = ids.shape
        if not torch.compiler.is_compiling():
            window, latents = cache.filled
            room = min(cache.window_capacity - window, cache.latent_capacity - latents)
            if k > room:
                raise ValueError(
                    f"expected at most {room} more tokens in this cache (window "
                    f"{window}/{cache.window_capacity}, latents {latents}/{cache.latent_capacity} slots filled), got "
                    f"{k}; generate() slides the window, or start again from a cache with more room (init_cache's "
                    f"max_latents, up to max_seq_len)"
                )
            cache.filled = (window + k, latents + k)
        step = torch.arange(k, device=ids.device)
        valid = torch.ones(b, k, dtype=torch.bool, device=ids.device) if mask is None else mask
        positions = cache.next_position.unsqueeze(1) + (valid.long().cumsum(1) - valid.long())  # (B, K)
        x = self._embed(ids, positions)
        rot = self._rot(positions)
        cross_index, self_index = cache.cross_len + step, cache.self_len + step  # (K,)
        cache.cross_valid.index_copy_(1, cross_index, valid)
        cache.self_valid.index_copy_(1, self_index, valid)
        slots_c = torch.arange(cache.window_capacity, device=ids.device)
        slots_s = torch.arange(cache.latent_capacity, device=ids.device)
        cross_mask = causal_mask(cross_index, slots_c, cache.cross_valid)
        self_mask = causal_mask(self_index, slots_s, cache.self_valid)
        for i, layer in enumerate(self.cross_layers):
            x = layer(x, None, rot, rot, cross_mask, (cache.cross_k[i], cache.cross_v[i]), cross_index, True)
            if states is not None:
                states.append(x)
        for i, layer in enumerate(self.layers):
            layer_rot = rot if self._rotates(i) else None
            x = layer(x, layer_rot, self_mask, (cache.self_k[i], cache.self_v[i]), self_index, True)
            if states is not None:
                states.append(x)
        cache.cross_len.add_(k)
        cache.self_len.add_(k)
        cache.next_position.add_(valid.long().sum(1))
        return x

    def forward_head(self, features: Features) -> ModelOutput:
        """Next-token logits `(B, N, V)` from the latent states `(B, N, D)`."""
        return features.output(self.to_logits(self.norm(features.latents)))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        num_latents: int | None = None,
        cache: PerceiverARCache | None = None,
        return_hidden_states: bool = False,
    ) -> PerceiverAROutput:
        """Next-token logits of the last N window positions.

        Args:
            input_ids: token ids `(B, L)`, L <= max_seq_len (with a filled `cache`: `(B, K)` new tokens).
            attention_mask: `(B, L)` True / 1 = token, False / 0 = padding (left padding); None: all tokens.
            labels: `(B, L)` target ids aligned with input_ids (usually input_ids itself), -100 = ignored; gives
                `.loss`, the mean cross-entropy of predicting `labels[:, t + 1]` at each latent position t < L - 1.
            num_latents: N (default `config.num_latents`, or L - prefix_len with `config.prefix_len`; at most L).
            cache: a `PerceiverARCache` from `init_cache`: empty, it is filled with this window; filled, the tokens
                are appended (see `generate`).
            return_hidden_states: also `.hidden_states`, the latent states after every cross-attention and latent
                layer (before the final norm; the last is `.last_hidden_state`).
        """
        if labels is not None and cache is not None and cache.prefilled:
            raise ValueError("expected no labels for a decoding step (a filled cache), got labels")
        features = self.forward_features(input_ids, attention_mask, num_latents, cache, return_hidden_states)
        out = self.forward_head(features)
        logits = out.logits
        loss = None
        if labels is not None:
            labels = check_class_ids(check_labels(labels), logits.shape[-1], "labels (token ids)")
            if tuple(labels.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"expected labels of shape {tuple(input_ids.shape)} (as input_ids), got {tuple(labels.shape)}"
                )
            n = logits.shape[1]
            if n < 2:  # the last latent's target lies beyond the window: nothing to score
                raise ValueError(
                    f"expected at least 2 latent positions for a loss with labels (N - 1 of them predict a next "
                    f"token inside the window), got N={n} (num_latents or the input length)"
                )
            targets = labels[:, labels.shape[1] - n + 1 :]
            loss = token_cross_entropy(logits[:, :-1], targets)
        out.loss, out.cache = loss, cache
        return out


def _build(**overrides: Any) -> PerceiverAR:
    return PerceiverAR(config_from_dict(PerceiverARConfig, overrides))


@register_model("perceiver-ar")
def perceiver_ar(**overrides: Any) -> PerceiverAR:
    """Byte-level Perceiver AR: 4096-token window, 1024 latents, width 512, 8 heads, 1 cross + 8 self layers."""
    return _build(**overrides)


@register_model("perceiver-ar-tiny")
def perceiver_ar_tiny(**overrides: Any) -> PerceiverAR:
    """A small byte-level Perceiver AR for tests and CPU training: window 512, 128 latents, width 128, 4 heads,
    1 cross + 3 self layers."""
    defaults = dict(max_seq_len=512, num_latents=128, d_model=128, num_heads=4, num_layers=3)
    return _build(**{**defaults, **overrides})
