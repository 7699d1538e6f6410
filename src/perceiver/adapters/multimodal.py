"""Multimodal adapters (video + audio + label) for Perceiver IO autoencoding, DeepMind's Kinetics model.

Encoder side (`MultimodalInputAdapter`), one adapter per modality, tokens padded to a common width and joined in
sorted modality order (audio, image, label):

    audio (B, S, 1)        --AudioAdapter (16-sample patches | 192 Fourier bands)--> (B, S/16, 401)
    image (B, T, 3, H, W)  --VideoAdapter (space-to-depth 4 | 32 Fourier bands)----> (B, T*H/4*W/4, 243)
    label (B, K)           --OneHotLabelAdapter-----------------------------------> (B, 1, K)
    each: [tokens | trainable padding (1, C - C_m)] -> optional mask token -> concat -> (B, M, C)

Decoder side (`MultimodalQueries`): per-modality query builders (`FourierQueries` of the output grids, one
`TrainableQueries` label query) padded to a common width; one shared cross-attention decodes them all;
`MultimodalOutput` applies the per-modality projections (audio: 16 samples per query, image: 3 colours per pixel,
label: K logits), one query chunk at a time.

Settings read at every forward live in small config objects the modules keep by reference
(`MultimodalInputConfig`: padding, mask probabilities, eval masking; `MultimodalQueryConfig`: padding, label query
width, subsampled positions), so the model config that holds the same objects switches them on a loaded model.

Queries are made only for the output positions asked for, so a whole video (16 x 224 x 224 = 802,816 queries) is
decoded in chunks without ever building the full query array.

Subsampled query positions: DeepMind / transformers map a flat output index `i` on an axis of size `n` to
`-1 + 2 * i / n`, while the full grid (and DeepMind's whole decode) uses `linspace(-1, 1, n)`, i.e.
`-1 + 2 * i / (n - 1)`. `position_mode="grid"` (ours) makes a subsampled query equal to the same row of the full
decode; `position_mode="transformers"` reproduces their formula (needed for parity of subsampled decodes). Both are
`FourierQueries`' modes; `MultimodalQueryConfig.subsampled_positions` picks one for every Fourier modality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, cast

import torch
from torch import Tensor, nn

from perceiver.checks import check_int_fields, to_bool_mask
from perceiver.core.decoder import AdaptedInputs, FourierQueries, Index, QueryBuilder
from perceiver.core.io import InputAdapter, OutputAdapter

EvalMasking = Literal["deterministic", "none", "random"]
PositionMode = Literal["grid", "transformers"]


def _default_mask_probs() -> dict[str, float]:
    return {"audio": 0.0, "image": 0.0, "label": 1.0}


def check_mask_probs(mask_probs: Mapping[str, float], modalities: Sequence[str] | None = None) -> dict[str, float]:
    """`mask_probs` as `{name: float}`, each in [0, 1] (and, given `modalities`, naming only those)."""
    try:
        probs = {str(k): float(v) for k, v in mask_probs.items()}
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"mask_probs must map modality names to probabilities, got {mask_probs!r}") from None
    unknown = sorted(set(probs) - set(modalities)) if modalities is not None else []
    if unknown or any(not 0.0 <= p <= 1.0 for p in probs.values()):
        names = f"some of {list(modalities)}" if modalities is not None else "modality names"
        raise ValueError(f"mask_probs must map {names} to [0, 1], got {dict(mask_probs)}")
    return probs


def check_eval_masking(mode: str) -> str:
    if mode not in ("deterministic", "none", "random"):
        raise ValueError(f"eval_masking must be 'deterministic', 'none' or 'random', got {mode!r}")
    return mode


@dataclass
class MultimodalInputConfig:
    """Settings of `MultimodalInputAdapter` (it keeps this object: `mask_probs` and `eval_masking` are read at every
    forward, so changing them on a loaded model's config takes effect; change the fields, do not replace the object).

    min_padding_size: the common token width is the widest modality's plus this (DeepMind: 4).
    mask_probs: name -> probability of replacing each of the modality's tokens by its trainable mask token (DeepMind:
        audio 0, image 0, label 1, i.e. the label input is never seen); modalities left out are not masked.
    eval_masking: what masking does in eval mode. "deterministic" (default): a modality with probability 1 is always
        masked, other probabilities are not applied, so eval outputs never depend on the random state; "none": no
        masking at all in eval; "random": Bernoulli sampling in eval too (transformers / DeepMind). Training mode
        always samples. Probabilities 0 and 1 give the same result in every mode except "none".
    """

    min_padding_size: int = 4
    mask_probs: dict[str, float] = field(default_factory=_default_mask_probs)
    eval_masking: EvalMasking = "deterministic"

    def __post_init__(self) -> None:
        check_int_fields(self, zero_ok=("min_padding_size",))
        self.mask_probs = check_mask_probs(self.mask_probs)
        check_eval_masking(self.eval_masking)


@dataclass
class MultimodalQueryConfig:
    """Settings of the decoder queries (`MultimodalQueries` keeps this object and reads `subsampled_positions` at
    every forward).

    label_channels: width of the trainable label query (DeepMind: 1024).
    min_padding_size: the common query width is the widest modality's plus this (DeepMind: 2).
    subsampled_positions: "grid" (a subsampled decode gives the same rows as the whole decode) or "transformers"
        (their `-1 + 2 i / n` positions, for parity), the `position_mode` of the Fourier query builders.
    """

    label_channels: int = 1024
    min_padding_size: int = 2
    subsampled_positions: PositionMode = "grid"

    def __post_init__(self) -> None:
        check_int_fields(self, zero_ok=("min_padding_size",))
        check_subsampled_positions(self.subsampled_positions)


def check_subsampled_positions(mode: str) -> str:
    if mode not in ("grid", "transformers"):
        raise ValueError(f"subsampled_positions must be 'grid' or 'transformers', got {mode!r}")
    return mode


class OneHotLabelAdapter(nn.Module):
    """A (one-hot or soft) label vector as a single token: `(B, K) -> (B, 1, K)` (transformers'
    `PerceiverOneHotPreprocessor`, no positions)."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.num_labels = self.num_channels = num_labels

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> AdaptedInputs:
        if inputs.ndim != 2 or inputs.shape[1] != self.num_labels:
            raise ValueError(f"expected label of shape (B, {self.num_labels}), got {tuple(inputs.shape)}")
        x = inputs[:, None, :]
        return AdaptedInputs(tokens=x, without_pos=x)


class _InputFreeQueries(Protocol):
    """A query builder whose queries do not depend on the inputs (`FourierQueries`, `TrainableQueries`)."""

    def num_queries(self, adapted: AdaptedInputs | None = None) -> int: ...


def _init_param(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.normal_(torch.empty(*shape), std=0.02))  # = randn * 0.02; skipped for a load


class MultimodalInputAdapter(InputAdapter):
    """Adapt each modality, pad to a common width with a trainable vector per modality, mask, concatenate.

    Args:
        modalities: name -> adapter returning `AdaptedInputs` with tokens `(B, M_m, C_m)` and a `num_channels`.
        config: a `MultimodalInputConfig` (padding, mask probabilities, eval masking; see there), kept by reference
            and read at every forward. Every modality has a trainable mask token, so any of them can be masked.
            With DeepMind's probabilities (label 1, audio and image 0) the audio and image mask tokens and the label's
            padding never reach the output: their gradients are zero (they are kept for its checkpoint's layout).

    `forward(inputs: dict name -> tensor, mask (B, M) or None)` -> `AdaptedInputs(tokens (B, M, C), mask,
    modality_sizes={name: M_m})` with modalities in sorted order.
    """

    def __init__(self, modalities: Mapping[str, nn.Module], config: MultimodalInputConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else MultimodalInputConfig()
        self.modalities = nn.ModuleDict(dict(sorted(modalities.items())))
        check_mask_probs(self.config.mask_probs, list(self.modalities))
        # each modality's adapter has an int `num_channels` (see Args); nn.Module types the attribute as Tensor | Module
        widths = {k: cast(int, m.num_channels) for k, m in self.modalities.items()}
        self.num_channels = max(widths.values()) + self.config.min_padding_size
        self.padding = nn.ParameterDict({k: _init_param(1, self.num_channels - c) for k, c in widths.items()})
        self.mask_tokens = nn.ParameterDict({k: _init_param(1, self.num_channels) for k in self.modalities})

    def _mask(self, name: str, x: Tensor, p: float, mode: str) -> Tensor:
        """Replace tokens of `x` `(B, M_m, C)` by the mask token with probability `p`."""
        if mode == "random":
            # Same draw as transformers (and in the same modality order), so seeded runs agree.
            hit = torch.bernoulli(torch.full(x.shape[:2], p, device=x.device)).bool()
        elif mode == "deterministic" and p >= 1.0:
            hit = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        else:
            return x
        return torch.where(hit[..., None], self.mask_tokens[name].to(x.dtype), x)

    def forward(self, inputs: Mapping[str, Tensor], mask: Tensor | None = None) -> AdaptedInputs:
        if not isinstance(inputs, Mapping):
            raise ValueError(f"expected a dict with keys {list(self.modalities)}, got {type(inputs).__name__}")
        missing, extra = sorted(set(self.modalities) - set(inputs)), sorted(set(inputs) - set(self.modalities))
        if missing or extra:
            raise ValueError(
                f"expected inputs with keys {list(self.modalities)}, got {sorted(inputs)} "
                f"(missing {missing}, unexpected {extra})"
            )
        batch = {k: v.shape[0] for k, v in inputs.items()}
        first = next(iter(batch.values()))
        if any(b != first for b in batch.values()):  # not set(): torch.export's symbolic batch is unhashable
            raise ValueError(f"expected the same batch size for all modalities, got {batch}")
        probs = check_mask_probs(self.config.mask_probs, list(self.modalities))  # read now: the config may change
        mode = "random" if self.training else check_eval_masking(self.config.eval_masking)
        tokens, sizes = [], {}
        for name, adapter in self.modalities.items():
            x = adapter(inputs[name]).tokens
            pad = self.padding[name].to(x.dtype).expand(x.shape[0], x.shape[1], -1)
            x = torch.cat([x, pad], dim=-1)
            x = self._mask(name, x, probs.get(name, 0.0), mode)  # every modality draws in "random" mode
            tokens.append(x)
            sizes[name] = x.shape[1]
        x = torch.cat(tokens, dim=1)
        if mask is not None:
            mask = to_bool_mask(mask, "attention_mask (B, tokens)", (tuple(x.shape[:2]),))  # 0 / 1 or bool
        return AdaptedInputs(tokens=x, mask=mask, modality_sizes=sizes)


class MultimodalQueries(QueryBuilder):
    """Decoder queries of all modalities on one flat axis: modality `m` owns positions `[offset_m, offset_m + O_m)`,
    in sorted modality order; each modality's queries are padded with its trainable vector to the common width
    `max(E_m) + config.min_padding_size`.

    `modalities`: name -> a query builder whose queries do not depend on the inputs (`FourierQueries`,
    `TrainableQueries`); `config`: a `MultimodalQueryConfig`, kept by reference: its `subsampled_positions` is the
    `position_mode` of the Fourier builders at every forward. `forward(adapted, index (O',), a slice or None)` ->
    `(B, O', E)`.
    """

    def __init__(self, modalities: Mapping[str, QueryBuilder], config: MultimodalQueryConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else MultimodalQueryConfig()
        builders = dict(sorted(modalities.items()))
        self.modalities = nn.ModuleDict(builders)
        self.num_channels = max(m.num_channels for m in builders.values()) + self.config.min_padding_size
        self.padding = nn.ParameterDict(
            {k: _init_param(1, self.num_channels - m.num_channels) for k, m in builders.items()}
        )

    @property
    def sizes(self) -> dict[str, int]:
        """Output positions per modality, in order."""
        # the builders' queries do not depend on the inputs, so they count their positions without any (None)
        return {k: cast(_InputFreeQueries, m).num_queries(None) for k, m in self.modalities.items()}

    def offsets(self) -> dict[str, tuple[int, int]]:
        """`[start, stop)` of each modality on the flat output axis."""
        out, start = {}, 0
        for k, n in self.sizes.items():
            out[k] = (start, start + n)
            start += n
        return out

    def num_queries(self, adapted: AdaptedInputs | None = None) -> int:
        return sum(self.sizes.values())

    def _padded(self, name: str, index: Index, one: AdaptedInputs) -> Tensor:
        """Queries `(O', E)` of modality `name` at its own positions `index`, padded to the common width."""
        builder = self.modalities[name]
        if isinstance(builder, FourierQueries):
            q = builder(one, index, position_mode=check_subsampled_positions(self.config.subsampled_positions))
        else:
            q = builder(one, index)
        q = q[0].to(one.tokens.dtype)  # the same for every batch entry: built once, expanded by the caller
        return torch.cat([q, self.padding[name].to(q.dtype).expand(q.shape[0], -1)], dim=-1)

    def forward(self, adapted: AdaptedInputs, index: Index = None) -> Tensor:
        b, device, dtype = adapted.tokens.shape[0], adapted.tokens.device, adapted.tokens.dtype
        one = AdaptedInputs(adapted.tokens[:1])
        if index is None:
            index = slice(0, self.num_queries())
        if isinstance(index, slice):  # contiguous positions: each modality's part is known without looking at data
            parts = []
            for name, (start, stop) in self.offsets().items():
                lo, hi = max(index.start, start), min(index.stop, stop)
                if lo < hi:
                    local: Index = None if (lo, hi) == (start, stop) else slice(lo - start, hi - start)
                    parts.append(self._padded(name, local, one))
            q = torch.cat(parts, dim=0) if parts else torch.empty(0, self.num_channels, device=device, dtype=dtype)
            return q.expand(b, -1, -1)
        index = index.to(device)
        q = torch.zeros(index.numel(), self.num_channels, device=device, dtype=dtype)
        for name, (start, stop) in self.offsets().items():
            hit = (index >= start) & (index < stop)
            local = (index - start).clamp(0, stop - start - 1)
            q = torch.where(hit[:, None], self._padded(name, local, one), q)
        return q.expand(b, -1, -1)


class MultimodalOutput(OutputAdapter):
    """Per-modality projections of the shared decoder's output, as transformers' `PerceiverMultimodalPostprocessor`.

    Args:
        in_channels: decoder output channels `F`.
        out_channels: name -> channels per query (audio: samples per patch, image: 3, label: K).
        sizes: name -> output positions of the modality (the query builder's `sizes`, in order).
        flatten: modalities whose per-query outputs are flattened into one axis (audio: `(B, O, p) -> (B, O * p)`);
        single: modalities with one query returned without the query axis (label: `(B, 1, K) -> (B, K)`).

    `forward(x (B, O', F), adapted, output_index (O',) or None)` -> dict name -> output, for the modalities with
    at least one decoded position; `output_index` must be grouped by modality in order (as the model builds it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: Mapping[str, int],
        sizes: Mapping[str, int],
        flatten: Sequence[str] = ("audio",),
        single: Sequence[str] = ("label",),
    ) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({k: nn.Linear(in_channels, c) for k, c in sorted(out_channels.items())})
        self.sizes = dict(sizes)
        self.flatten, self.single = tuple(flatten), tuple(single)

    def counts(self, output_index: Tensor | slice | None) -> dict[str, int]:
        """Decoded positions per modality for the flat `output_index` (a tensor is counted in eager mode only)."""
        if output_index is None:
            return dict(self.sizes)
        out, start = {}, 0
        if isinstance(output_index, slice):
            for k, n in self.sizes.items():
                out[k] = max(0, min(output_index.stop, start + n) - max(output_index.start, start))
                start += n
            return out
        for k, n in self.sizes.items():
            out[k] = int(((output_index >= start) & (output_index < start + n)).sum())
            start += n
        return out

    def forward(
        self, x: Tensor, adapted: AdaptedInputs, output_index: Tensor | slice | None = None
    ) -> dict[str, Tensor]:
        out, start = {}, 0
        for name, n in self.counts(output_index).items():
            if n == 0:
                continue
            y = self.heads[name](x[:, start : start + n])
            start += n
            if name in self.flatten:
                y = y.reshape(y.shape[0], -1)
            elif name in self.single:
                y = y[:, 0]
            out[name] = y
        return out
