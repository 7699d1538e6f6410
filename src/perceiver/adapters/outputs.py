"""Output adapters shared by several task models."""

from __future__ import annotations

from torch import Tensor

from perceiver.core.decoder import AdaptedInputs, Index
from perceiver.core.io import OutputAdapter


class ClassificationOutput(OutputAdapter):
    """The single classification query's output: `(B, 1, K) -> (B, K)`."""

    def forward(self, x: Tensor, adapted: AdaptedInputs, output_index: Index = None) -> Tensor:
        return x[:, 0]
