"""`PerceiverDecoder` and query builders: output queries cross-attend to the latents.

    queries (B, O, E) --CrossAttention(latents (B, N, D))--> (B, O, E) --final Linear--> (B, O, F)

Queries do not interact, so decoding splits over query chunks exactly: `query_chunk_size` bounds the memory of the
decoder (the MLP's hidden `(B, chunk, widening * E)` and, when maps are asked for, the attention matrix) and
`output_index` decodes only some output positions. A query builder makes the queries for given positions only, so
neither the full query array nor the full output is needed unless asked for.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace
from math import prod
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
from torch import Tensor, nn

from perceiver.checks import InputTypeError, check_int, check_int_fields
from perceiver.nn.inputs import InputFactors
from perceiver.nn.layers import Activation, CrossAttentionLayer
from perceiver.nn.position import TrainablePositionEncoding, fourier_channels, fourier_features, linear_positions

if TYPE_CHECKING:
    from perceiver.core.io import OutputAdapter


@dataclass
class AdaptedInputs:
    """What an input adapter hands to the encoder and the query builder.

    tokens: `(B, M, C)` encoder inputs (with position features); mask: `(B, M)` boolean, True = valid, or None;
    without_pos: `(B, M, C')` the same tokens before position features, where a query builder needs them;
    modality_sizes: tokens per modality for multimodal inputs (in order);
    factors: the tokens as `cat([raw W^T + b, positions])` where an adapter knows that (the encoder may use it).
    """

    tokens: Tensor
    mask: Tensor | None = None
    without_pos: Tensor | None = None
    modality_sizes: dict[str, int] | None = None
    factors: InputFactors | None = None

    @property
    def batch_size(self) -> int:
        return self.factors.raw.shape[0] if self.factors is not None else self.tokens.shape[0]


class FactoredInputs(AdaptedInputs):
    """`AdaptedInputs` whose `tokens` (and `without_pos`) are built from `factors` only if someone reads them.

    An encoder that attends in the factors' coordinates never needs the `(B, M, F + P)` tokens (vision-learned:
    205 MB per 224x224 image kept alive for the backward pass), so they are not formed unless asked for.
    Construct as `FactoredInputs(None, mask, factors=factors)`.
    """

    _tokens: Tensor | None
    _without_pos: Tensor | None

    if TYPE_CHECKING:  # the dataclass __init__ of `AdaptedInputs`, which here also takes `tokens=None`

        def __init__(
            self,
            tokens: Tensor | None,
            mask: Tensor | None = None,
            without_pos: Tensor | None = None,
            modality_sizes: dict[str, int] | None = None,
            factors: InputFactors | None = None,
        ) -> None: ...

    @property
    def tokens(self) -> Tensor:
        if self._tokens is None:
            assert self.factors is not None  # constructed with factors where tokens are None
            self._tokens = self.factors.tokens(self.without_pos)
        return self._tokens

    @tokens.setter
    def tokens(self, value: Tensor | None) -> None:
        self._tokens = value

    @property
    def without_pos(self) -> Tensor:
        if self._without_pos is None:
            assert self.factors is not None  # constructed with factors where tokens are None
            self._without_pos = self.factors.features()
        return self._without_pos

    @without_pos.setter
    def without_pos(self, value: Tensor | None) -> None:
        self._without_pos = value


@dataclass
class DecoderConfig:
    """Hyper-parameters of a `PerceiverDecoder`.

    query_dim: channels `E` of the queries; latent_dim: channels `D` of the latents (both None inside a model config:
    the model fills them from its query builder and encoder with `for_parts`); output_dim: channels `F` of the final
    projection (None: no projection, the output keeps `E` channels; a classifier sets it to its `num_classes`).
    cross_attention_shape: the q/k width when `qk_channels` is None: `'q'` the queries', `'kv'` the latents'.
    """

    query_dim: int | None = None
    latent_dim: int | None = None
    output_dim: int | None = None
    num_heads: int = 1
    qk_channels: int | None = None
    v_channels: int | None = None
    widening_factor: int = 1
    activation: Activation = "gelu"
    use_query_residual: bool = False
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    cross_attention_shape: Literal["q", "kv"] = "q"

    def __post_init__(self) -> None:
        # Sizes: positive integers (None: filled by the model, or no projection for `output_dim`). The range of
        # `num_heads` is checked when the decoder is built, so that text configs name it by their flat key
        # (`decoder_heads`, `perceiver.models.text.check_text_parts`); its type is checked here.
        check_int_fields(self, type_only=("num_heads",))
        if self.cross_attention_shape not in ("q", "kv"):
            raise ValueError(f"cross_attention_shape must be 'q' or 'kv', got {self.cross_attention_shape!r}")

    def for_parts(self, query_dim: int, latent_dim: int, output_dim: int | None = None) -> DecoderConfig:
        """This config with the widths of the query builder and the latents (and, from a classifier, its class count
        as `output_dim`); a copy. Explicit widths that disagree are an error."""
        for name, value in (("query_dim", query_dim), ("latent_dim", latent_dim)):
            own = getattr(self, name)
            if own is not None and own != value:
                raise ValueError(f"decoder {name} is {own}, but the model's parts give {value}")
        return replace(
            self,
            query_dim=query_dim,
            latent_dim=latent_dim,
            output_dim=self.output_dim if output_dim is None else output_dim,
        )

    @property
    def qk(self) -> int | None:
        """The q/k width: `qk_channels`, else by `cross_attention_shape` (None: the layer's default, the queries')."""
        if self.qk_channels is not None:
            return self.qk_channels
        return self.latent_dim if self.cross_attention_shape == "kv" else None


class PerceiverDecoder(nn.Module):
    """Cross-attend from queries `(B, O, E)` to latents `(B, N, D)`; optionally project to `output_dim`."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        c = self.config = config
        if c.query_dim is None or c.latent_dim is None:
            raise ValueError("DecoderConfig needs query_dim and latent_dim (models set them with for_parts)")
        check_int_fields(c)  # num_heads' range, and fields set after __post_init__
        self.cross_attention = CrossAttentionLayer(
            c.query_dim,
            c.latent_dim,
            c.num_heads,
            c.qk,
            c.v_channels,
            c.widening_factor,
            c.activation,
            attn_dropout=c.attn_dropout,
            ff_dropout=c.ff_dropout,
            use_query_residual=c.use_query_residual,
        )
        self.final_layer = nn.Linear(c.query_dim, c.output_dim) if c.output_dim is not None else nn.Identity()

    def forward(self, queries: Tensor, latents: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """`queries` `(B, O, E)`, `latents` `(B, N, D)` -> `(B, O, F)` and maps `(B, H, O, N)` or None."""
        out, probs = self.cross_attention(queries, latents, return_attention=return_attention)
        return self.final_layer(out), probs


Index = Tensor | slice | None
"""Output positions to decode: a tensor of flat indices `(O',)`, a `slice` of them (what chunked decoding passes, so
no index tensor is built and compiled graphs see only static slicing), or None for all."""


class QueryBuilder(nn.Module):
    """Makes decoder queries for chosen output positions.

    `forward(adapted, index)` returns `(B, O', E)` for the flat output positions `index` (an `Index`: indices `(O',)`,
    a slice, or None for all). `num_queries(adapted)` is the number of output positions `O`.
    """

    num_channels: int

    def num_queries(self, adapted: AdaptedInputs) -> int:
        raise NotImplementedError

    def forward(self, adapted: AdaptedInputs, index: Index = None) -> Tensor:
        raise NotImplementedError


def select(x: Tensor, index: Index, dim: int = 0) -> Tensor:
    """Rows `index` of `x` along `dim`: all for None, a view for a slice, a gather for an index tensor."""
    if index is None:
        return x
    if isinstance(index, slice):
        return x[(slice(None),) * dim + (index,)]
    return x.index_select(dim, index.to(x.device))


class TrainableQueries(QueryBuilder):
    """Learned queries `(O, E)`, e.g. one classification query or one per output position."""

    def __init__(self, num_queries: int, num_channels: int, init_scale: float = 0.02) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.encoding = TrainablePositionEncoding(num_queries, num_channels, init_scale)

    def num_queries(self, adapted: AdaptedInputs) -> int:
        return self.encoding.num_positions

    def forward(self, adapted: AdaptedInputs, index: Index = None) -> Tensor:
        q = select(self.encoding(), index)
        return q.expand(adapted.batch_size, -1, -1)


class FourierQueries(QueryBuilder):
    """Fourier features of an output grid `index_dims` (DeepMind convention), optionally projected.

    Only the rows asked for are computed (a slice or an index tensor of flat grid positions), so a subset or a chunk
    of a large grid (a 16 x 224 x 224 video) never builds the whole feature table. `position_mode` places subsampled
    rows: "grid" (default) on the full grid's `linspace(-1, 1, n)` per axis, so a subset equals the same rows of the
    whole decode; "transformers" at `-1 + 2 i / n`, the formula of DeepMind's / transformers' subsampled decoding (for
    parity; it applies to whole decodes too). `forward(..., position_mode=...)` overrides it per call.
    """

    anchor: Tensor

    def __init__(
        self,
        index_dims: Sequence[int],
        num_bands: int,
        max_resolution: Sequence[float] | None = None,
        concat_pos: bool = True,
        sine_only: bool = False,
        project_dim: int | None = None,
        position_mode: Literal["grid", "transformers"] = "grid",
    ) -> None:
        super().__init__()
        check_int(num_bands, "num_bands")
        self.index_dims = tuple(int(n) for n in index_dims)
        self.num_bands = num_bands
        self.max_resolution = tuple(max_resolution) if max_resolution is not None else self.index_dims
        if len(self.max_resolution) != len(self.index_dims):
            raise ValueError(
                f"max_resolution needs one entry per grid axis {self.index_dims}, got {tuple(self.max_resolution)}"
            )
        self.concat_pos, self.sine_only = concat_pos, sine_only
        self.position_mode = _check_position_mode(position_mode)
        raw = fourier_channels(len(self.index_dims), num_bands, concat_pos, sine_only)
        self.projection = nn.Linear(raw, project_dim) if project_dim else None
        self.num_channels = project_dim or raw
        self.register_buffer("anchor", torch.empty(0), persistent=False)  # device and default dtype

    def num_queries(self, adapted: AdaptedInputs | None = None) -> int:
        return prod(self.index_dims)

    def positions(self, index: Index = None, position_mode: str | None = None) -> Tensor:
        """Positions `(O', d)` in fp32 of the flat grid positions `index` (all for None)."""
        mode = _check_position_mode(position_mode or self.position_mode)
        device = self.anchor.device
        if index is None and mode == "grid":
            return linear_positions(self.index_dims, device=device).reshape(-1, len(self.index_dims))
        if index is None or isinstance(index, slice):
            grid = range(self.num_queries())[slice(None) if index is None else index]
            index = torch.arange(grid.start, grid.stop, device=device)
        coords = torch.stack(torch.unravel_index(index.to(device), self.index_dims), dim=1)  # (O', d), long
        if mode == "transformers":
            return -1 + 2 * coords / torch.tensor(self.index_dims, device=device)[None, :]
        axes = [torch.linspace(-1.0, 1.0, n, device=device) for n in self.index_dims]
        return torch.stack([axis[coords[:, i]] for i, axis in enumerate(axes)], dim=1)

    def forward(self, adapted: AdaptedInputs, index: Index = None, position_mode: str | None = None) -> Tensor:
        pos = self.positions(index, position_mode)
        q = fourier_features(pos, self.num_bands, self.max_resolution, self.concat_pos, self.sine_only)
        q = q.to(self.anchor.dtype)  # built in fp32, as `FourierPositionEncoding`
        if self.projection is not None:
            q = self.projection(q)
        return q.expand(adapted.batch_size, -1, -1)


def _check_position_mode(mode: str) -> Any:
    if mode not in ("grid", "transformers"):
        raise ValueError(f"position_mode must be 'grid' or 'transformers', got {mode!r}")
    return mode


class InputQueries(QueryBuilder):
    """Queries taken from the adapted inputs (one output per input token, e.g. optical flow per pixel)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels

    def num_queries(self, adapted: AdaptedInputs) -> int:
        return adapted.tokens.shape[1]

    def forward(self, adapted: AdaptedInputs, index: Index = None) -> Tensor:
        return select(adapted.tokens, index, dim=1)


@overload
def check_output_index(output_index: Tensor, total: int, device: torch.device) -> Tensor: ...
@overload
def check_output_index(output_index: None, total: int, device: torch.device) -> None: ...
def check_output_index(output_index: Tensor | None, total: int, device: torch.device) -> Tensor | None:
    """`output_index` as a flat long tensor on `device`, its range checked in eager mode (a host sync)."""
    if output_index is None:
        return None
    output_index = torch.as_tensor(output_index, device=device)
    if output_index.is_floating_point() or output_index.is_complex() or output_index.dtype == torch.bool:
        raise ValueError(f"expected integer output positions, got dtype {output_index.dtype}")
    output_index = output_index.long().flatten()
    if output_index.numel() and not torch.compiler.is_compiling():
        low, high = int(output_index.min()), int(output_index.max())
        if low < 0 or high >= total:
            raise ValueError(f"output_index must lie in [0, {total}), got values in [{low}, {high}]")
    return output_index


def as_index(output_index: Any) -> Index:
    """`output_index` as an `Index`: a tensor, slice or None as given; a list, tuple, int or numpy array of
    positions as a long tensor (they reached `index_select` as they came: an AttributeError); an
    `InputTypeError` for anything else."""
    if output_index is None or isinstance(output_index, (Tensor, slice)):
        return output_index
    try:
        if isinstance(output_index, (bool, str, bytes, float)):
            raise TypeError
        index = torch.as_tensor(output_index)
    except (TypeError, ValueError, RuntimeError):
        index = None
    if index is None or index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
        raise InputTypeError(
            "expected output_index as integer positions (a tensor, a list of ints or an int), a slice or None, "
            f"got {output_index!r:.80} ({type(output_index).__name__})"
        )
    return index.long().flatten()


def check_query_chunk_size(query_chunk_size: Any) -> None:
    """`query_chunk_size` of a forward: None (all at once) or an integer >= 1."""
    if query_chunk_size is None:
        return
    if isinstance(query_chunk_size, bool) or not isinstance(query_chunk_size, numbers.Integral):
        got = f"{query_chunk_size!r} ({type(query_chunk_size).__name__})"
        raise InputTypeError(f"query_chunk_size must be an integer >= 1 or None, got {got}")
    if query_chunk_size < 1:
        raise ValueError(f"query_chunk_size must be >= 1, got {query_chunk_size}")


def decode(
    decoder: PerceiverDecoder,
    query_builder: QueryBuilder,
    adapted: AdaptedInputs,
    latents: Tensor,
    output_index: Index = None,
    query_chunk_size: int | None = None,
    return_attention: bool = False,
    output_adapter: OutputAdapter | None = None,
) -> tuple[Any, Tensor | None]:
    """Decode the output positions `output_index` (indices `(O',)`, a slice, or None for all) in chunks of
    `query_chunk_size`.

    Returns `(B, O', F)` and, with `return_attention`, the maps `(B, H, O', N)`. Chunked decoding equals one-shot
    decoding exactly (queries are independent), with memory bounded by the chunk. Chunks are slices of the positions
    (or of the index tensor), so the loop is static Python that compiled graphs unroll. With an `output_adapter`
    (see `perceiver.core.io.OutputAdapter`) each chunk is mapped as soon as it is decoded and the pieces are joined
    by its `assemble`, so the decoder's `(B, O, F)` features never exist for all positions at once.
    """
    check_query_chunk_size(query_chunk_size)
    output_index = as_index(output_index)
    if query_chunk_size is None and not isinstance(output_index, Tensor):  # one pass: a traced length stays symbolic
        if isinstance(output_index, slice) and output_index.step not in (None, 1):
            raise ValueError(f"expected a slice of output positions with step 1, got {output_index}")
        out, probs = decoder(query_builder(adapted, output_index), latents, return_attention)
        if output_adapter is not None:
            out = output_adapter.assemble([output_adapter(out, adapted, output_index)], adapted, output_index)
        return out, probs
    total = query_builder.num_queries(adapted)
    if isinstance(output_index, slice):
        positions = range(total)[output_index]  # slice semantics (negative, open ends), traced by dynamo < 2.13 too
        if positions.step != 1:
            raise ValueError(f"expected a slice of output positions with step 1, got {output_index}")
    elif output_index is None:
        positions = range(total)
    else:
        output_index = check_output_index(output_index, total, latents.device)
        positions = range(output_index.shape[0])
    count = len(positions)
    if query_chunk_size is None or query_chunk_size >= count:
        out, probs = decoder(query_builder(adapted, output_index), latents, return_attention)
        if output_adapter is not None:
            out = output_adapter.assemble([output_adapter(out, adapted, output_index)], adapted, output_index)
        return out, probs
    outs, maps = [], []
    for start in range(0, count, query_chunk_size):
        stop = min(start + query_chunk_size, count)
        if isinstance(output_index, Tensor):
            index: Index = output_index[start:stop]
        else:
            index = slice(positions.start + start, positions.start + stop)
        out, probs = decoder(query_builder(adapted, index), latents, return_attention)
        outs.append(out if output_adapter is None else output_adapter(out, adapted, index))
        if probs is not None:
            maps.append(probs)
    joined = torch.cat(outs, dim=1) if output_adapter is None else output_adapter.assemble(outs, adapted, output_index)
    return joined, (torch.cat(maps, dim=2) if maps else None)
