"""Output adapters shared by several task models."""

from __future__ import annotations

from torch import Tensor

from perceiver.core.decoder import AdaptedInputs, Index
from perceiver.core.io import OutputAdapter


class ClassificationOutput(OutputAdapter):
    """The single classification query's output: `(B, 1, K) -> (B, K)`."""

    def forward(self, x: Tensor, adapted: AdaptedInputs, output_index: Index = None) -> Tensor:
        if x.ndim != 3 or x.shape[1] != 1:  # more queries: all but the first were dropped silently
            raise ValueError(
                f"expected the decoder output of one classification query (B, 1, K), got {tuple(x.shape)}; build "
                "the model with one query (TrainableQueries(1, E)), or no output adapter to keep (B, O, K)"
            )
        return x[:, 0]
