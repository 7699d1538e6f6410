"""Raw audio input adapter: patches of `p` samples per token plus 1-D Fourier positions.

    audio (B, S) or (B, S, 1) --reshape--> patches (B, S/p, p) --[Linear]--> (B, M, C')
    tokens = [patches | fourier(M)]  (B, M, C_tok), M = S / p

This is transformers' `PerceiverAudioPreprocessor` (prep_type "patches", Fourier positions, concat): the positions
are `linspace(-1, 1, M)` over the token grid with bands up to `max_resolution / 2` (transformers' multimodal model
uses `max_resolution = S`, the number of samples, not the number of tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from perceiver.checks import check_float_input, check_int_fields, check_number, to_bool_mask
from perceiver.core.config import PartConfig
from perceiver.core.decoder import AdaptedInputs
from perceiver.core.io import InputAdapter
from perceiver.nn.position import FourierPositionEncoding


class AudioAdapter(InputAdapter):
    """Raw waveform -> tokens of `samples_per_patch` samples with 1-D Fourier positions.

    Args:
        num_samples: expected length `S` (None: any length that is a multiple of `samples_per_patch`).
        samples_per_patch: samples per token `p` (1: one token per sample, as the Perceiver's raw audio).
        num_bands: Fourier bands; max_resolution: Nyquist resolution of the positions (default: tokens of
            `num_samples`, else of the actual input).
        project_dim: if set, a Linear `p -> project_dim` on each patch before the positions are concatenated.

    `forward(inputs (B, S) or (B, S, 1), mask (B, S) or None)` -> `AdaptedInputs(tokens (B, S/p, num_channels),
    mask (B, S/p) or None, without_pos (B, S/p, p or project_dim))`. A token is valid if any of its samples is;
    masked samples are zeroed first.
    """

    def __init__(
        self,
        num_samples: int | None = None,
        samples_per_patch: int = 1,
        num_bands: int = 192,
        max_resolution: float | None = None,
        project_dim: int | None = None,
        concat_pos: bool = True,
        sine_only: bool = False,
    ) -> None:
        super().__init__()
        if samples_per_patch < 1:
            raise ValueError(f"samples_per_patch must be >= 1, got {samples_per_patch}")
        if num_samples is not None and num_samples % samples_per_patch:
            raise ValueError(
                f"num_samples ({num_samples}) must be a multiple of samples_per_patch ({samples_per_patch})"
            )
        self.num_samples = num_samples
        self.samples_per_patch = samples_per_patch
        if max_resolution is None and num_samples is not None:
            max_resolution = num_samples // samples_per_patch
        self.projection = nn.Linear(samples_per_patch, project_dim) if project_dim else None
        res = (max_resolution,) if max_resolution is not None else None
        self.position = FourierPositionEncoding(num_bands, res, concat_pos, sine_only)
        self.num_channels = (project_dim or samples_per_patch) + self.position.num_channels(1)

    def _expected(self) -> str:
        s = self.num_samples if self.num_samples is not None else f"S (a multiple of {self.samples_per_patch})"
        return f"(B, {s}) or (B, {s}, 1)"

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> AdaptedInputs:
        inputs = check_float_input(inputs, "audio", self._expected())
        x = inputs[..., 0] if inputs.ndim == 3 and inputs.shape[-1] == 1 else inputs
        if x.ndim != 2:
            raise ValueError(f"expected audio of shape {self._expected()}, got {tuple(inputs.shape)}")
        b, s = x.shape
        p = self.samples_per_patch
        if (self.num_samples is not None and s != self.num_samples) or s % p or s == 0:
            raise ValueError(
                f"expected audio of shape {self._expected()}, got {tuple(inputs.shape)}"
                + (f": {s} samples is not a multiple of samples_per_patch={p}" if s % p else "")
            )
        token_mask = None
        if mask is not None:
            mask = to_bool_mask(
                mask, "mask (B, samples)", ((b, s),)
            )  # 0 / 1 or bool; an additive float mask is refused
            x = x.masked_fill(~mask, 0.0)
            token_mask = mask.view(b, s // p, p).any(dim=-1)
        x = x.reshape(b, s // p, p)
        if self.projection is not None:
            x = self.projection(x)
        pos = self.position((s // p,), dtype=x.dtype).unsqueeze(0).expand(b, -1, -1)
        return AdaptedInputs(tokens=torch.cat([x, pos], dim=-1), mask=token_mask, without_pos=x)


@dataclass
class AudioAdapterConfig(PartConfig):
    """`AudioAdapter`'s keywords; defaults: the `audio-classifier` preset (61,440 samples, 16 per token, 192 bands)."""

    part_class: ClassVar[type] = AudioAdapter

    num_samples: int | None = 61440
    samples_per_patch: int = 16
    num_bands: int = 192
    max_resolution: float | None = 61440
    project_dim: int | None = None
    concat_pos: bool = True
    sine_only: bool = False

    def __post_init__(self) -> None:
        check_int_fields(self, zero_ok=("project_dim",))  # project_dim 0 or None: no projection
        name = "AudioAdapterConfig.max_resolution"
        self.max_resolution = check_number(self.max_resolution, name, optional=True)
