"""A tiny Perceiver AR with weights large enough that tokens visibly change its outputs, and token ids for it
(shared by the Perceiver AR model tests; imported as `ar_util`)."""

from __future__ import annotations

import torch

from perceiver import PerceiverAR
from perceiver.models.ar import PerceiverARConfig

V = 41  # the tiny model's vocabulary


def tiny(**overrides) -> PerceiverAR:
    torch.manual_seed(0)
    kwargs = dict(vocab_size=V, max_seq_len=24, num_latents=6, d_model=32, num_heads=2, num_layers=2)
    model = PerceiverAR(PerceiverARConfig(**{**kwargs, **overrides})).eval()
    with torch.no_grad():  # larger weights than the 0.02 init, so that tokens visibly change the outputs
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


def ids(b: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(6, V, (b, length), generator=torch.Generator().manual_seed(seed))
