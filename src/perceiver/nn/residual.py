"""Attention residuals: a learned, depth-wise softmax mix of all earlier block outputs that replaces the latents.

    history [x_0, ..., x_L] each (B, N, D) --stack--> (B, N, L+1, D)
        logits = up(down(norm(h)))  (B, N, L+1, D)  --softmax over L+1--> weights;  x = sum_l weights_l * x_l

This is perceiver-pytorch's `EnformerAttentionResidual` (`attn_residual=True`, `attn_residual_rank`): an
Enformer-style attention pool over the depth axis (Chen et al., arXiv 2603.15031), one weight per token, channel and
earlier output. perceiver-pytorch 0.10.0 has no norm; 0.10.1 and later put an RMSNorm first (`norm=True`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AttentionResidual(nn.Module):
    """Mix a list of earlier outputs `[(B, N, D)] * L` into one `(B, N, D)` with per-channel softmax weights."""

    def __init__(self, dim: int, rank: int = 64, norm: bool = True) -> None:
        super().__init__()
        if dim < 1 or rank < 1:
            raise ValueError(f"dim and rank must be >= 1, got dim={dim}, rank={rank}")
        self.norm = nn.RMSNorm(dim) if norm else nn.Identity()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim, bias=False)

    def forward(self, history: list[Tensor]) -> Tensor:
        """`history`: L tensors `(B, N, D)` (oldest first) -> `(B, N, D)`."""
        past = torch.stack(history, dim=2)  # (B, N, L, D)
        weights = self.up(self.down(self.norm(past))).softmax(dim=2)
        return (past * weights).sum(dim=2)
