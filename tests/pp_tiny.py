"""Tiny perceiver-pytorch configurations and weights shared by its parity, switching and version tests."""

from __future__ import annotations

import torch

#: keywords of perceiver-pytorch's `Perceiver` (and ours): a tiny classic model on 2-D, 3-channel inputs
CLASSIC = dict(
    input_channels=3,
    input_axis=2,
    num_freq_bands=3,
    max_freq=6.0,
    depth=3,
    num_latents=5,
    latent_dim=16,
    cross_heads=2,
    latent_heads=2,
    cross_dim_head=8,
    latent_dim_head=8,
    num_classes=7,
)
#: keywords of perceiver-pytorch's `PerceiverIO` (and `LucidrainsPerceiverIO`)
IO = dict(
    depth=3,
    dim=12,
    queries_dim=10,
    logits_dim=9,
    num_latents=6,
    latent_dim=16,
    cross_heads=2,
    latent_heads=2,
    cross_dim_head=8,
    latent_dim_head=8,
)


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial LayerNorm affines, so a mis-mapped norm cannot go unnoticed; returns `module` in eval mode."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
    return module.eval()
