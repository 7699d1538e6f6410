"""`PerceiverEncoder`: learned latents that cross-attend to the inputs, then a latent Transformer.

    latents (N, D) --[ CrossAttention -> (SelfAttention x k) x num_blocks ] x num_cross_attends --> (B, N, D)

Weight sharing covers the published variants:
- paper (Jaegle et al. 2021): cross-attends 2..n share weights (`share_cross_attends=True`), every latent block
  shares one set of weights (`share_latent_blocks="all"`);
- perceiver-pytorch's `weight_tie_layers=True`: cross-attend 1 and its latent block are unique, all later ones share
  one set (`share_cross_attends=True, share_latent_blocks="after_first"`);
- Perceiver IO (DeepMind / HF): one cross-attend, a latent block of k layers applied `num_blocks` times.
Shared modules are the same Python objects, so their parameters are counted and updated once.

Options of perceiver-pytorch (default off): `inverted_cross_attention` (a bool or one per cross-attend) and attention
residuals (`perceiver.nn.residual`), a learned depth-wise mix of the earlier outputs that replaces the latents after
every cross-attend step (`attn_residual="cross_attend"`, the classic Perceiver: the history starts with the initial
latents) or after every latent self-attention layer (`"self_attend"`, PerceiverIO: the history restarts with each
cross-attend's output). Residual modules are shared as the blocks they follow are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from perceiver.checks import InputTypeError, check_float_input, check_int_fields, to_bool_mask
from perceiver.core.model import checkpoints
from perceiver.nn.attention import reassociation_saves
from perceiver.nn.inputs import InputFactors, normalize_factored, normalize_inputs
from perceiver.nn.layers import Activation, CrossAttentionLayer, SelfAttentionLayer
from perceiver.nn.residual import AttentionResidual

LatentSharing = Literal["all", "after_first", "none"]
ResidualMode = Literal["none", "cross_attend", "self_attend"]


@dataclass
class EncoderConfig:
    """Hyper-parameters of a `PerceiverEncoder` (see the class docstring).

    input_dim: channels `C` of the inputs; None inside a model config, where the input adapter gives it (the model
    builds its encoder with `for_inputs(adapter.num_channels)`).
    cross_attention_shape: the q/k width of the cross-attention when `cross_qk_channels` is None: `'q'` the latents'
    width, `'kv'` the inputs' width (DeepMind's `cross_attention_shape_for_attention='kv'`, the Perceiver IO default).
    """

    input_dim: int | None = None
    num_latents: int = 256
    latent_dim: int = 512
    num_cross_attends: int = 1
    num_self_attends_per_block: int = 6
    num_blocks: int = 1
    cross_heads: int = 1
    latent_heads: int = 8
    cross_qk_channels: int | None = None
    cross_v_channels: int | None = None
    latent_qk_channels: int | None = None
    latent_v_channels: int | None = None
    cross_widening_factor: int = 1
    latent_widening_factor: int = 1
    activation: Activation = "gelu"
    qkv_bias: bool = True
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    use_query_residual: bool = True
    share_cross_attends: bool = True
    share_latent_blocks: LatentSharing = "all"
    latent_init_std: float = 0.02
    reassociate_cross_attention: bool | None = None
    inverted_cross_attention: bool | tuple[bool, ...] = False
    attn_residual: ResidualMode = "none"
    attn_residual_rank: int = 64
    attn_residual_norm: bool = True
    cross_attention_shape: Literal["q", "kv"] = "q"

    def __post_init__(self) -> None:
        # sizes: positive integers (None: set by the model / the layer's default); no latent layers is allowed
        check_int_fields(self, zero_ok=("num_self_attends_per_block",))
        if self.cross_attention_shape not in ("q", "kv"):
            raise ValueError(f"cross_attention_shape must be 'q' or 'kv', got {self.cross_attention_shape!r}")
        if isinstance(self.inverted_cross_attention, list):  # from config.json
            self.inverted_cross_attention = tuple(self.inverted_cross_attention)

    def for_inputs(self, input_dim: int) -> EncoderConfig:
        """This config for inputs of `input_dim` channels (a copy); an explicit different `input_dim` is an error."""
        if self.input_dim is not None and self.input_dim != input_dim:
            raise ValueError(f"encoder input_dim is {self.input_dim}, but the input adapter gives {input_dim} channels")
        return replace(self, input_dim=input_dim)

    @property
    def cross_qk(self) -> int:
        """The cross-attention's q/k width: `cross_qk_channels`, else by `cross_attention_shape`."""
        if self.cross_qk_channels is not None:
            return self.cross_qk_channels
        if self.cross_attention_shape == "kv":
            if self.input_dim is None:
                raise ValueError("cross_attention_shape='kv' needs input_dim (set by the model from its adapter)")
            return self.input_dim
        return self.latent_dim

    def inverted_steps(self) -> tuple[bool, ...]:
        """`inverted_cross_attention` as one bool per cross-attend."""
        inv = self.inverted_cross_attention
        steps = (bool(inv),) * self.num_cross_attends if isinstance(inv, bool) else tuple(bool(v) for v in inv)
        if len(steps) != self.num_cross_attends:
            raise ValueError(
                f"inverted_cross_attention needs one bool per cross-attend ({self.num_cross_attends}), got {inv!r}"
            )
        return steps


@dataclass
class EncoderOutput:
    """What `PerceiverEncoder.forward` returns when asked for more than the latents.

    latents: `(B, N, D)`. attentions (with `return_attention`): each cross-attend's probabilities `(B, H, N, M)`;
    latent_attentions (with `return_attention`): each latent self-attention layer's `(B, H, N, N)`, in the order they
    ran (`num_cross_attends * num_blocks * num_self_attends_per_block` of them). hidden_states (with
    `return_hidden_states`): the latents `(B, N, D)` after every cross-attend and after every latent layer, as the next
    step receives them (after the attention residual's mix, where there is one), `num_cross_attends * (1 + num_blocks
    * num_self_attends_per_block)` of them; the last is `latents`.
    """

    latents: Tensor
    attentions: list[Tensor] | None = None
    latent_attentions: list[Tensor] | None = None
    hidden_states: list[Tensor] | None = None


def resolve_reassociation(c: EncoderConfig) -> bool:
    """`c.reassociate_cross_attention`, or where it is None whether the reassociated form of the encoder's
    cross-attention needs at most 80% of the standard form's multiply-adds (`perceiver.nn.reassociation_saves`):
    True for latents reading narrow inputs (pixels, 3-channel points), False for wide ones (text embeddings)."""
    if c.reassociate_cross_attention is not None:
        return bool(c.reassociate_cross_attention)
    qk = c.cross_qk
    v = c.cross_v_channels if c.cross_v_channels is not None else qk
    assert c.input_dim is not None  # PerceiverEncoder checks it before building its layers
    return reassociation_saves(c.num_latents, c.input_dim, c.cross_heads, qk, v)


class PerceiverEncoder(nn.Module):
    """Encode inputs `(B, M, C)` (with an optional boolean mask `(B, M)`, True = valid) into latents `(B, N, D)`."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        c = config
        if c.input_dim is None:
            raise ValueError("EncoderConfig.input_dim is None: give the input width (models set it from their adapter)")
        check_int_fields(c, zero_ok=("num_self_attends_per_block",))  # again: fields may be set after __post_init__
        if c.share_latent_blocks not in ("all", "after_first", "none"):
            raise ValueError(
                f"share_latent_blocks must be 'all', 'after_first' or 'none', got {c.share_latent_blocks!r}"
            )
        if c.attn_residual not in ("none", "cross_attend", "self_attend"):
            raise ValueError(f"attn_residual must be 'none', 'cross_attend' or 'self_attend', got {c.attn_residual!r}")
        self.inverted = c.inverted_steps()
        self.config = c
        self.latents = nn.Parameter(torch.empty(c.num_latents, c.latent_dim))
        self.reset_parameters()

        n = c.num_cross_attends
        # Which unique module each step uses.
        self.cross_index = [0] + [1 if c.share_cross_attends else i for i in range(1, n)]
        self.latent_index = {"all": [0] * n, "after_first": [0] + [1] * (n - 1), "none": list(range(n))}[
            c.share_latent_blocks
        ]
        # Recompute each layer's activations in the backward pass instead of keeping them (set_grad_checkpointing).
        self.gradient_checkpointing = False
        self.cross_attends = nn.ModuleList(self._cross_layer() for _ in range(max(self.cross_index) + 1))
        self.latent_blocks = nn.ModuleList(
            nn.ModuleList(self._self_layer() for _ in range(c.num_self_attends_per_block))
            for _ in range(max(self.latent_index) + 1)
        )
        # Attention residuals: which unique module follows each step (cross_attend) or latent layer (self_attend).
        k = c.num_self_attends_per_block
        if c.attn_residual == "cross_attend":
            self.residual_index = list(self.latent_index)
        elif c.attn_residual == "self_attend":
            self.residual_index = [
                li * k + j for li in self.latent_index for _ in range(c.num_blocks) for j in range(k)
            ]
        else:
            self.residual_index = []
        unique = sorted(set(self.residual_index))
        self.residual_index = [unique.index(r) for r in self.residual_index]
        self.residuals = nn.ModuleList(
            AttentionResidual(c.latent_dim, c.attn_residual_rank, c.attn_residual_norm) for _ in unique
        )

    def reset_parameters(self) -> None:
        """Draw the latents `(N, D)` again (normal, std `latent_init_std`, truncated at 2 std), as `torch.nn` layers
        do: after building on the meta device and `to_empty()`, calling `reset_parameters()` on every module that
        has one (FSDP's materialisation) initialises the whole encoder; its layers reset their own weights."""
        std = self.config.latent_init_std
        nn.init.trunc_normal_(self.latents, std=std, a=-2 * std, b=2 * std)

    def extra_repr(self) -> str:
        """The latents and how often each unique module runs (the module list shows each shared one once)."""
        c = self.config
        steps = [
            f"cross_attends[{ci}], latent_blocks[{li}] x {c.num_blocks}"
            for ci, li in zip(self.cross_index, self.latent_index)
        ]
        return f"latents=({c.num_latents}, {c.latent_dim}), input_dim={c.input_dim}, order=[{', '.join(steps)}]"

    def _cross_layer(self) -> CrossAttentionLayer:
        c = self.config
        assert c.input_dim is not None  # checked in __init__
        return CrossAttentionLayer(
            c.latent_dim,
            c.input_dim,
            c.cross_heads,
            c.cross_qk,
            c.cross_v_channels,
            c.cross_widening_factor,
            c.activation,
            c.qkv_bias,
            c.attn_dropout,
            c.ff_dropout,
            c.use_query_residual,
            reassociate=resolve_reassociation(c),
        )

    def _self_layer(self) -> SelfAttentionLayer:
        c = self.config
        return SelfAttentionLayer(
            c.latent_dim,
            c.latent_heads,
            c.latent_qk_channels,
            c.latent_v_channels,
            c.latent_widening_factor,
            c.activation,
            c.qkv_bias,
            c.attn_dropout,
            c.ff_dropout,
        )

    def uses_factors(self, factors: InputFactors | None) -> bool:
        """Whether inputs given as `factors` are attended in their coordinates: where those are narrower than the
        inputs (`InputFactors.narrower`)."""
        return factors is not None and factors.narrower()

    def _check_inputs(self, inputs: Tensor | None, mask: Tensor | None, factors: InputFactors | None) -> Tensor | None:
        """The shapes of `inputs` `(B, M, input_dim)` (or of `factors`) and of `mask` `(B, M)`; the mask as bool.

        The inputs are normalised and zero-padded to a multiple of `ALIGN` channels before the cross-attends fold
        their weights in, so a width that pads to the same size (6 instead of 5 channels) would otherwise pass
        silently, normalised over the wrong channels and with the extra ones dropped."""
        width = self.config.input_dim
        if inputs is not None:
            expected = f"(B, M, {width}) (input_dim={width})"
            inputs = check_float_input(inputs, "encoder inputs", expected)
            if inputs.ndim != 3 or inputs.shape[-1] != width:
                raise ValueError(f"expected encoder inputs of shape {expected}, got {tuple(inputs.shape)}")
            tokens = tuple(inputs.shape[:2])
            shape = tuple(inputs.shape)
        elif factors is not None:
            if factors.num_channels != width:
                raise ValueError(
                    f"expected factors of {width} channels (input_dim), got {factors.num_channels} "
                    f"({factors.weight.shape[0]} features + {factors.positions.shape[-1]} positions)"
                )
            tokens = tuple(factors.raw.shape[:2])
            shape = (*tokens, width)
        else:
            raise ValueError("expected inputs (B, M, C) or their factors, got neither")
        if 0 in tokens:  # no tokens: the latents would attend to nothing and come out as if no input was given
            raise ValueError(
                f"expected encoder inputs of shape (B, M, {width}) with no zero-size axis (B, M >= 1), got {shape}; "
                "skip the call for an empty batch"
            )
        return to_bool_mask(mask, "mask", (tokens,))

    def _check_history(self, history: list[Tensor] | None, shape: tuple[int, ...]) -> list[Tensor] | None:
        """`residual_history` as a new list of tensors of the latents' `shape` `(B, N, D)`, in their dtype."""
        if history is None:
            return None
        if isinstance(history, Tensor) or not isinstance(history, (list, tuple)) or not history:
            got = f"a tensor of shape {tuple(history.shape)}" if isinstance(history, Tensor) else repr(history)[:80]
            raise InputTypeError(
                f"expected residual_history (perceiver-pytorch's block_outputs) as a non-empty list of tensors {shape}, "
                f"got {got}"
            )
        for i, h in enumerate(history):
            if not isinstance(h, Tensor) or tuple(h.shape) != shape:
                came = str(tuple(h.shape)) if isinstance(h, Tensor) else type(h).__name__
                raise ValueError(
                    f"expected residual_history[{i}] (perceiver-pytorch's block_outputs) of the latents' shape {shape} "
                    f"(B, N, D), got {came}"
                )
        return [h.to(self.latents.dtype) for h in history]

    def forward(
        self,
        inputs: Tensor | None,
        mask: Tensor | None = None,
        return_attention: bool = False,
        factors: InputFactors | None = None,
        return_hidden_states: bool = False,
        residual_history: list[Tensor] | None = None,
    ) -> Tensor | EncoderOutput:
        """`inputs` `(B, M, C)`, `mask` `(B, M)` -> latents `(B, N, D)`.

        `residual_history`: earlier outputs `[(B, N, D)] * L` (e.g. another model's) that the first attention
        residual's history starts with instead of the latents it would start with (the initial latents for
        `attn_residual="cross_attend"`, the first cross-attend's output for `"self_attend"`): perceiver-pytorch's
        `block_outputs`. Without attention residuals it changes nothing.

        `factors`: the same inputs as `cat([raw W^T + b, pos])` (`perceiver.nn.InputFactors`, from an adapter);
        where their normalised coordinates are narrower than `C` (`uses_factors`), the cross-attends use those (the
        same function), and `inputs` may then be None (never formed).

        With `return_attention` (the cross-attends' and latent layers' probabilities) or `return_hidden_states` (the
        latents after every step), an `EncoderOutput` instead of the latents.
        """
        mask = self._check_inputs(inputs, mask, factors)
        batch_size = inputs.shape[0] if inputs is not None else cast(InputFactors, factors).raw.shape[0]
        x = self.latents.expand(batch_size, -1, -1)
        maps: list[Tensor] = []
        latent_maps: list[Tensor] = []
        states: list[Tensor] | None = [] if return_hidden_states else None
        checkpointing = checkpoints(self)  # set_grad_checkpointing: training with gradients
        mode = self.config.attn_residual
        given = self._check_history(residual_history, tuple(x.shape))
        history = [x] if given is None else given  # outputs mixed by the attention residuals
        residual = iter(self.residual_index)
        # The inputs are LayerNormed once (per eps) for all cross-attends; each folds its own affine (perceiver.nn.inputs).
        if factors is not None and inputs is not None and factors.num_channels != inputs.shape[-1]:
            raise ValueError(
                f"expected factors of {inputs.shape[-1]} channels (the inputs'), got {factors.num_channels}"
            )
        # the factors where the cross-attends use them, else None (then `inputs` are given)
        factored = factors if factors is not None and (inputs is None or self.uses_factors(factors)) else None
        normalized: dict[float, tuple[Tensor, Tensor | None]] = {}
        for ci, li, inverted in zip(self.cross_index, self.latent_index, self.inverted):
            cross = cast(CrossAttentionLayer, self.cross_attends[ci])  # nn.ModuleList items are typed as Module
            eps = cross.kv_norm.eps
            if eps not in normalized:
                if factored is not None:
                    normalized[eps] = normalize_factored(factored, eps)
                else:
                    assert inputs is not None  # without inputs the factors are used
                    normalized[eps] = (normalize_inputs(inputs, eps), None)
            z, basis = normalized[eps]
            if checkpointing and not return_attention:
                x, probs = checkpoint(cross, x, z, mask, False, inverted, True, basis, use_reentrant=False)
            else:
                x, probs = cross(x, z, mask, return_attention, inverted, kv_normalized=True, kv_basis=basis)
            if probs is not None:
                maps.append(probs)
            if mode == "self_attend":
                history = [x] if given is None else given
                given = None  # the given history replaces the first cross-attend's output only
            if states is not None:
                states.append(x)
            for _ in range(self.config.num_blocks):
                for layer in cast(nn.ModuleList, self.latent_blocks[li]):
                    if return_attention:
                        x, probs = layer(x, return_attention=True)
                        latent_maps.append(probs)
                    else:
                        x = checkpoint(layer, x, use_reentrant=False) if checkpointing else layer(x)
                    if mode == "self_attend":
                        history.append(x)
                        x = self.residuals[next(residual)](history)
                    if states is not None:
                        states.append(x)
            if mode == "cross_attend":
                history.append(x)
                x = self.residuals[next(residual)](history)
                if states is not None:
                    states[-1] = x  # what the next cross-attend receives
        if not (return_attention or return_hidden_states):
            return x
        cross_maps, self_maps = (maps, latent_maps) if return_attention else (None, None)
        return EncoderOutput(x, cross_maps, self_maps, states)
