"""perceiver-pytorch's (lucidrains) `PerceiverIO`, `PerceiverLM` and `PerceiverBlock`, built from our parts.

    data (B, M, dim) --[seq dropout]--> PerceiverEncoder (1 cross-attend, `depth` latent layers) --> (B, N, D)
    queries (B, O, E) or (O, E) --LN, cross-attend to LN(latents) [+ GEGLU ff]--> (B, O, E) --Linear--> (B, O, F)

The decoder cross-attention has no query residual (as the peer), `decoder_ff` adds a residual GEGLU feed-forward;
`weight_tie_layers` shares all `depth` latent layers; `seq_dropout_prob` drops that fraction of the input tokens in
training (Perceiver AR's structured dropout, with the peer's random draw so seeded runs agree); `attn_residual` mixes
the outputs of the latent layers (`perceiver.nn.residual`); `inverted_cross_attn` inverts the encoder cross-attend.
State dicts of every perceiver-pytorch version load with `from_perceiver_pytorch` (see
`perceiver.interop.perceiver_pytorch`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from perceiver.checks import (
    check_float_input,
    check_int,
    check_int_fields,
    check_nonempty,
    check_token_ids,
    model_dtype,
    to_bool_mask,
    token_mask,
)
from perceiver.core.encoder import EncoderConfig, PerceiverEncoder
from perceiver.core.model import GradCheckpointingMixin, check_class_ids, check_labels, token_cross_entropy
from perceiver.hub import PretrainedMixin
from perceiver.models.classic import (
    PeerStateDictMixin,
    as_block_list,
    lucidrains_encoder_config,
    run_with_block_outputs,
)
from perceiver.models.registry import register_model_type
from perceiver.nn.attention import MultiHeadAttention
from perceiver.nn.layers import MLP, CrossAttentionLayer, SelfAttentionLayer


def dropout_seq(seq: Tensor, mask: Tensor | None, prob: float) -> tuple[Tensor, Tensor | None]:
    """Keep a random `1 - prob` of the tokens of `seq` `(B, M, C)` (valid ones first), as perceiver-pytorch.

    Returns `(B, K, C)` with `K = max(1, int((1 - prob) * M))` and the mask `(B, K)` (None when `mask` is None); with
    a mask, each sample keeps `ceil(valid * (1 - prob))` valid tokens. The draw is `torch.randn(B, M)`, the peer's.
    """
    b, n = seq.shape[:2]
    logits = torch.randn(b, n, device=seq.device)
    if mask is not None:
        logits = logits.masked_fill(~mask, -torch.finfo(logits.dtype).max)
    keep_prob = 1.0 - prob
    num_keep = max(1, int(keep_prob * n))
    keep = logits.topk(num_keep, dim=1).indices
    rows = torch.arange(b, device=seq.device)[:, None]
    seq = seq[rows, keep]
    if mask is not None:
        keep_counts = torch.ceil(mask.sum(dim=-1) * keep_prob).int()
        mask = mask[rows, keep] & (torch.arange(num_keep, device=seq.device) < keep_counts[:, None])
    return seq, mask


def _config_or_keywords(config: object, kwargs: dict[str, Any], config_class: type) -> None:
    """A config or keywords, as the classic `Perceiver`: keywords beside a config were ignored silently."""
    if config is not None and kwargs:
        raise ValueError(f"pass a {config_class.__name__} or keywords, not both (got config and {sorted(kwargs)})")
    if config is not None and not isinstance(config, config_class):
        raise ValueError(f"expected a {config_class.__name__}, got {type(config).__name__}")


class QueryDecoder(nn.Module):
    """`LN(queries)` `(B, O, E)` cross-attend to `LN(latents)` `(B, N, D)` (no query residual), then an optional
    residual GEGLU feed-forward and a Linear to `output_dim` -> `(B, O, F)`."""

    def __init__(
        self,
        query_dim: int,
        latent_dim: int,
        num_heads: int,
        dim_head: int,
        output_dim: int | None,
        feed_forward: bool = False,
    ) -> None:
        super().__init__()
        self.q_norm = nn.LayerNorm(query_dim)
        self.kv_norm = nn.LayerNorm(latent_dim)
        inner = num_heads * dim_head
        self.attention = MultiHeadAttention(query_dim, latent_dim, num_heads, inner, inner, query_dim, qkv_bias=False)
        self.mlp_norm = nn.LayerNorm(query_dim) if feed_forward else None
        self.mlp = MLP(query_dim, 4, "geglu") if feed_forward else None
        self.to_logits = nn.Linear(query_dim, output_dim) if output_dim is not None else nn.Identity()

    def forward(self, queries: Tensor, latents: Tensor) -> Tensor:
        """`queries` `(B, O, E)`, `latents` `(B, N, D)` -> `(B, O, F)`."""
        h = self.attention(self.q_norm(queries), self.kv_norm(latents))[0]
        if self.mlp is not None and self.mlp_norm is not None:  # both or neither (feed_forward)
            h = h + self.mlp(self.mlp_norm(h))
        return self.to_logits(h)


@dataclass
class LucidrainsIOConfig:
    """perceiver-pytorch `PerceiverIO`'s constructor keywords (and its defaults); `attn_residual_norm=False` is the
    0.10.0 residual without RMSNorm."""

    depth: int = 6
    dim: int = 32
    queries_dim: int = 32
    logits_dim: int | None = None
    num_latents: int = 512
    latent_dim: int = 512
    cross_heads: int = 1
    latent_heads: int = 8
    cross_dim_head: int = 64
    latent_dim_head: int = 64
    weight_tie_layers: bool = False
    decoder_ff: bool = False
    seq_dropout_prob: float = 0.0
    attn_residual: bool = False
    attn_residual_rank: int = 64
    attn_residual_norm: bool = True
    inverted_cross_attn: bool = False

    def __post_init__(self) -> None:
        # sizes: positive integers (logits_dim None: no projection); the rank matters with attn_residual only
        check_int_fields(self, type_only=("attn_residual_rank",))
        if self.attn_residual:
            check_int(self.attn_residual_rank, "LucidrainsIOConfig.attn_residual_rank")
        if not 0.0 <= self.seq_dropout_prob < 1.0:
            raise ValueError(f"seq_dropout_prob must be in [0, 1), got {self.seq_dropout_prob}")

    def encoder_config(self) -> EncoderConfig:
        tied = self.weight_tie_layers
        return lucidrains_encoder_config(
            self,
            input_dim=self.dim,
            num_cross_attends=1,
            num_self_attends_per_block=1 if tied else self.depth,
            num_blocks=self.depth if tied else 1,
            share_latent_blocks="all",
            attn_residual="self_attend" if self.attn_residual else "none",
        )


_IO_FIELDS = {f.name for f in fields(LucidrainsIOConfig)}


@register_model_type
class LucidrainsPerceiverIO(PeerStateDictMixin, GradCheckpointingMixin, PretrainedMixin, nn.Module):
    """perceiver-pytorch's `PerceiverIO`: `model(data (B, M, dim), mask (B, M), queries (B, O, E) | (O, E))`.

    Without queries it returns the latents `(B, N, latent_dim)`, with them `(B, O, logits_dim or E)`.
    """

    config_class = LucidrainsIOConfig
    model_type = "lucidrains-perceiver-io"
    checkpointed_modules = ("encoder",)

    def __init__(self, config: LucidrainsIOConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        _config_or_keywords(config, kwargs, LucidrainsIOConfig)
        if config is None:
            config = LucidrainsIOConfig(**{k: v for k, v in kwargs.items() if k in _IO_FIELDS})
            unknown = sorted(set(kwargs) - _IO_FIELDS)
            if unknown:
                raise ValueError(f"unknown PerceiverIO keywords {unknown}; expected a subset of {sorted(_IO_FIELDS)}")
        self.config = c = config
        self.encoder = PerceiverEncoder(c.encoder_config())
        self.decoder = QueryDecoder(
            c.queries_dim, c.latent_dim, c.cross_heads, c.cross_dim_head, c.logits_dim, c.decoder_ff
        )

    @classmethod
    def from_perceiver_pytorch(cls, state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any) -> LucidrainsPerceiverIO:
        """From a perceiver-pytorch `PerceiverIO(**kwargs)` state dict of any version 0.8 - 0.11."""
        from perceiver.interop.perceiver_pytorch import from_perceiver_pytorch_io

        return from_perceiver_pytorch_io(state_dict, **kwargs)

    def forward_features(
        self, data: Tensor, mask: Tensor | None = None, block_outputs: Tensor | list[Tensor] | None = None
    ) -> Tensor:
        """`data` `(B, M, dim)` (floating, cast to the model's dtype), `mask` `(B, M)` (bool or 0 / 1) -> latents
        `(B, N, latent_dim)`; `block_outputs` as in `forward`."""
        return self._encode(data, mask, False, block_outputs)[0]

    def _encode(
        self, data: Tensor, mask: Tensor | None, return_blocks: bool, given: Tensor | list[Tensor] | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """The latents and, with `return_blocks`, perceiver-pytorch's `return_hiddens` list: the latents after the
        cross-attend (or the `given` block outputs instead) and after each of the `depth` latent layers (before the
        attention residual's mix)."""
        expected = f"(B, M, {self.config.dim})"
        data = check_float_input(data, "data", expected, model_dtype(self))
        if data.ndim != 3 or data.shape[-1] != self.config.dim:
            raise ValueError(f"expected data of shape {expected}, got {tuple(data.shape)}")
        check_nonempty(data, "data", expected)  # an empty batch is an error in every model (docs/reliability.md)
        mask = to_bool_mask(mask, "mask", (tuple(data.shape[:2]),))
        if self.training and self.config.seq_dropout_prob > 0.0:
            data, mask = dropout_seq(data, mask, self.config.seq_dropout_prob)
        history = as_block_list(given)
        if not return_blocks:
            return self.encoder(data, mask, residual_history=history), []
        encoded, mixed = run_with_block_outputs(
            self.encoder, lambda: self.encoder(data, mask, return_hidden_states=True, residual_history=history)
        )
        if mixed is not None:
            return encoded.latents, mixed
        states = list(encoded.hidden_states)
        return encoded.latents, states if history is None else [*history, *states[1:]]

    def forward_head(self, latents: Tensor, queries: Tensor) -> Tensor:
        """`latents` `(B, N, D)`, `queries` `(B, O, E)` or `(O, E)` (floating, cast to the model's dtype) ->
        `(B, O, F)`."""
        b, e = latents.shape[0], self.config.queries_dim
        expected = f"({b}, O, {e}) or (O, {e})"
        queries = check_float_input(queries, "queries", expected, model_dtype(self))
        if queries.ndim not in (2, 3) or queries.shape[-1] != e or (queries.ndim == 3 and queries.shape[0] != b):
            raise ValueError(f"expected queries of shape {expected} (queries_dim={e}), got {tuple(queries.shape)}")
        if queries.ndim == 2:
            queries = queries.expand(b, -1, -1)
        return self.decoder(queries, latents)

    def forward(
        self,
        data: Tensor,
        mask: Tensor | None = None,
        queries: Tensor | None = None,
        block_outputs: Tensor | list[Tensor] | None = None,
        return_hiddens: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Latents `(B, N, latent_dim)`, or `(B, O, logits_dim or E)` with `queries`; with `return_hiddens` (as
        perceiver-pytorch 0.11) also the `depth + 1` latents `(B, N, latent_dim)` after the cross-attend and after
        each latent layer: `(output, block_outputs)`. `block_outputs` (perceiver-pytorch 0.11's, e.g. another
        model's `return_hiddens` list): earlier latents `(B, N, latent_dim)` (one tensor or a list) that replace the
        cross-attend's output at the start of that list: the attention residuals (`attn_residual=True`) mix them in,
        and `return_hiddens` returns them first."""
        latents, blocks = self._encode(data, mask, return_hiddens, block_outputs)
        out = latents if queries is None else self.forward_head(latents, queries)
        return (out, blocks) if return_hiddens else out


@dataclass
class LucidrainsLMConfig(LucidrainsIOConfig):
    """perceiver-pytorch `PerceiverLM`: `num_tokens` ids, `max_seq_len` learned positions, `dim` embedding width."""

    num_tokens: int = 256
    max_seq_len: int = 512

    def io_config(self) -> LucidrainsIOConfig:
        io = {k: v for k, v in asdict(self).items() if k in _IO_FIELDS}
        return LucidrainsIOConfig(**{**io, "queries_dim": self.dim, "logits_dim": self.num_tokens})


@register_model_type
class LucidrainsPerceiverLM(PeerStateDictMixin, GradCheckpointingMixin, PretrainedMixin, nn.Module):
    """perceiver-pytorch's `PerceiverLM`: token ids `(B, L)` -> logits `(B, L, num_tokens)`; the embedded inputs
    (token + position embeddings) are both the encoder inputs and the decoder queries. With `labels` `(B, L)`
    (-100 = ignore) it returns `(logits, loss)`."""

    config_class = LucidrainsLMConfig
    model_type = "lucidrains-perceiver-lm"
    checkpointed_modules = ("perceiver_io.encoder",)

    def __init__(self, config: LucidrainsLMConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        _config_or_keywords(config, kwargs, LucidrainsLMConfig)
        if config is None:
            # perceiver-pytorch's PerceiverLM sets both itself (passing either is a TypeError there): the same value
            # is harmless, another one would be ignored silently
            d = LucidrainsLMConfig  # its defaults
            fixed = {"queries_dim": kwargs.get("dim", d.dim), "logits_dim": kwargs.get("num_tokens", d.num_tokens)}
            wrong = [f"{k}={kwargs[k]!r}" for k, v in fixed.items() if k in kwargs and kwargs[k] != v]
            if wrong:
                raise ValueError(
                    f"PerceiverLM sets queries_dim = dim ({fixed['queries_dim']}) and logits_dim = num_tokens "
                    f"({fixed['logits_dim']}), got {', '.join(wrong)}; leave them out"
                )
            config = LucidrainsLMConfig(**{k: v for k, v in kwargs.items() if k not in fixed})
        self.config = config
        self.token_emb = nn.Embedding(config.num_tokens, config.dim)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.dim)
        self.perceiver_io = LucidrainsPerceiverIO(config.io_config())

    @classmethod
    def from_perceiver_pytorch(cls, state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any) -> LucidrainsPerceiverLM:
        """From a perceiver-pytorch `PerceiverLM(**kwargs)` state dict of any version 0.8 - 0.11."""
        from perceiver.interop.perceiver_pytorch import from_perceiver_pytorch_lm

        return from_perceiver_pytorch_lm(state_dict, **kwargs)

    def forward(
        self, input_ids: Tensor, mask: Tensor | None = None, labels: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """`input_ids` `(B, L)` with `L <= max_seq_len` (ids in `[0, num_tokens)`), `mask` `(B, L)` (bool or 0 / 1)
        -> logits `(B, L, num_tokens)`; with `labels` `(B, L)` (ids, -100 = ignored) also the cross-entropy."""
        if isinstance(input_ids, Tensor) and (input_ids.ndim != 2 or input_ids.shape[1] > self.config.max_seq_len):
            raise ValueError(
                f"expected input_ids of shape (B, L) with L <= {self.config.max_seq_len}, got {tuple(input_ids.shape)}"
            )
        input_ids = check_token_ids(input_ids, self.config.num_tokens)
        mask = token_mask(mask, input_ids, "mask")
        n = input_ids.shape[1]
        x = self.token_emb(input_ids) + self.pos_emb(torch.arange(n, device=input_ids.device))[None]
        logits = self.perceiver_io(x, mask=mask, queries=x)
        if labels is None:
            return logits
        labels = check_labels(labels)
        if tuple(labels.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"expected labels of shape {tuple(input_ids.shape)} (input_ids'), got {tuple(labels.shape)}"
            )
        labels = check_class_ids(labels, self.config.num_tokens, "labels (token ids)").long()
        return logits, token_cross_entropy(logits, labels)


@dataclass
class LucidrainsBlockConfig:
    """perceiver-pytorch 0.11 `PerceiverBlock`'s keywords."""

    dim: int = 512
    context_dim: int | None = None
    cross_heads: int = 1
    latent_heads: int = 8
    cross_dim_head: int = 64
    latent_dim_head: int = 64
    self_per_cross_attn: int = 1
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    has_cross_attn: bool = True
    queries_contribute_kv: bool = False

    def __post_init__(self) -> None:
        # sizes: positive integers (context_dim None: dim), no latent layers allowed (docs/reliability.md)
        check_int_fields(self, zero_ok=("self_per_cross_attn",))
        for name in ("attn_dropout", "ff_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"LucidrainsBlockConfig.{name} must be in [0, 1), got {getattr(self, name)}")


@register_model_type
class LucidrainsPerceiverBlock(PeerStateDictMixin, PretrainedMixin, nn.Module):
    """perceiver-pytorch 0.11's `PerceiverBlock`: `x` `(B, N, dim)` cross-attends to `context` `(B, M, context_dim)`
    (with `queries_contribute_kv`, to `[x, context]`, as the Flamingo resampler), then `self_per_cross_attn` latent
    self-attention layers -> `(B, N, dim)`."""

    config_class = LucidrainsBlockConfig
    model_type = "lucidrains-perceiver-block"

    def __init__(self, config: LucidrainsBlockConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        _config_or_keywords(config, kwargs, LucidrainsBlockConfig)
        self.config = c = config if config is not None else LucidrainsBlockConfig(**kwargs)
        context_dim = c.context_dim if c.context_dim is not None else c.dim
        cross_inner, latent_inner = c.cross_heads * c.cross_dim_head, c.latent_heads * c.latent_dim_head
        self.cross = (
            CrossAttentionLayer(
                c.dim,
                context_dim,
                c.cross_heads,
                cross_inner,
                cross_inner,
                4,
                "geglu",
                qkv_bias=False,
                attn_dropout=c.attn_dropout,
                ff_dropout=c.ff_dropout,
                queries_contribute_kv=c.queries_contribute_kv,
            )
            if c.has_cross_attn
            else None
        )
        self.self_attns = nn.ModuleList(
            SelfAttentionLayer(
                c.dim, c.latent_heads, latent_inner, latent_inner, 4, "geglu", False, c.attn_dropout, c.ff_dropout
            )
            for _ in range(c.self_per_cross_attn)
        )

    @classmethod
    def from_perceiver_pytorch(
        cls, state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any
    ) -> LucidrainsPerceiverBlock:
        """From a perceiver-pytorch 0.11 `PerceiverBlock(**kwargs)` state dict (or the module), as the other ports."""
        from perceiver.interop.perceiver_pytorch import from_perceiver_block

        return from_perceiver_block(state_dict, **kwargs)

    def forward(
        self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None, inverted_attention: bool = False
    ) -> Tensor:
        """`x` `(B, N, dim)`, `context` `(B, M, context_dim)` (floating, cast to the model's dtype), `mask` `(B, M)`
        (bool or 0 / 1) -> `(B, N, dim)`."""
        c, dtype = self.config, model_dtype(self)
        x = check_float_input(x, "x", f"(B, N, {c.dim})", dtype)
        if x.ndim != 3 or x.shape[-1] != c.dim:
            raise ValueError(f"expected x of shape (B, N, {c.dim}), got {tuple(x.shape)}")
        check_nonempty(x, "x", f"(B, N, {c.dim})")
        if self.cross is not None:
            width = c.context_dim if c.context_dim is not None else c.dim
            expected = f"({x.shape[0]}, M, {width})"
            if context is None:
                raise ValueError(f"expected a context {expected} for the cross-attention, got None")
            context = check_float_input(context, "context", expected, dtype)
            if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != width:
                raise ValueError(
                    f"expected context of shape {expected} (context_dim={width}), got {tuple(context.shape)}"
                )
            mask = to_bool_mask(mask, "mask", (tuple(context.shape[:2]),))
            x = self.cross(x, context, mask, inverted=inverted_attention)[0]
        for layer in self.self_attns:
            x = layer(x)
        return x
