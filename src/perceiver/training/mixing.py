"""Mixup (Zhang et al. 2018, arXiv 1710.09412) and CutMix (Yun et al. 2019, arXiv 1905.04899) of image / video
batches, as in timm's `Mixup` with `mode="batch"`: one mixing coefficient per batch, the batch mixed with a
permutation of itself. The loss is then `lam * CE(logits, labels) + (1 - lam) * CE(logits, labels[perm])`, which equals
cross-entropy against the mixed (and label-smoothed) one-hot targets.
"""

from __future__ import annotations

import torch
from torch import Tensor

from perceiver.training.layouts import CHANNELS_LAST, LAYOUTS

__all__ = ["check_mixing", "mix_batch"]


def check_mixing(mixup_alpha: float, cutmix_alpha: float) -> None:
    """Both alphas must be finite and >= 0 (0 = off)."""
    for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < float("inf"):
            raise ValueError(f"{name} must be a number >= 0 (0 = off), got {value!r}")


def _beta(alpha: float) -> float:
    """One draw of Beta(alpha, alpha) (torch's global generator, which `seed_everything` seeds), in fp32 whatever
    the default dtype (`precision: bf16-true` makes it bf16, where torch has no Dirichlet sampler)."""
    a = torch.tensor(float(alpha), dtype=torch.float32)
    return float(torch.distributions.Beta(a, a).sample())


def mix_batch(
    inputs: Tensor,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    layout: str = CHANNELS_LAST,
) -> tuple[Tensor, Tensor, float]:
    """Mix a batch of images `(B, H, W, C)` / `(B, C, H, W)` or videos `(B, T, H, W, C)` / `(B, T, C, H, W)` (in
    `layout`) with a permutation of itself.

    Mixup: `lam ~ Beta(mixup_alpha, mixup_alpha)`, `lam * x + (1 - lam) * x[perm]`. CutMix: a box of area
    `(1 - lam) * H * W`, `lam ~ Beta(cutmix_alpha, cutmix_alpha)`, pasted from `x[perm]` at the same place (`lam` is
    then the exact share of pixels kept). With both alphas > 0 each batch uses one of them, chosen with equal odds.
    Random draws come from torch's global generator (seeded by `seed_everything`).

    Returns `(mixed inputs, perm (B,), lam)`: the loss is `lam * CE(logits, y) + (1 - lam) * CE(logits, y[perm])`.
    """
    check_mixing(mixup_alpha, cutmix_alpha)
    if layout not in LAYOUTS:
        raise ValueError(f"expected an input layout of {LAYOUTS}, got {layout!r}")
    if inputs.ndim not in (4, 5) or not inputs.is_floating_point():
        raise ValueError(
            f"mixup / cutmix mix images (B, H, W, C) or videos (B, T, H, W, C) of floats, got inputs of shape "
            f"{tuple(inputs.shape)} and dtype {inputs.dtype} (point clouds and text cannot be mixed this way)"
        )
    perm = torch.randperm(inputs.shape[0]).to(inputs.device)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or bool(torch.rand(()) < 0.5))
    if not use_cutmix:
        if mixup_alpha <= 0:
            return inputs, perm, 1.0
        lam = _beta(mixup_alpha)
        return inputs * lam + inputs[perm] * (1.0 - lam), perm, lam
    h_dim, w_dim = (-3, -2) if layout == CHANNELS_LAST else (-2, -1)
    height, width = inputs.shape[h_dim], inputs.shape[w_dim]
    cut = (1.0 - _beta(cutmix_alpha)) ** 0.5  # side ratio of the box
    ch, cw = int(height * cut), int(width * cut)
    cy = int(torch.randint(height, ()))
    cx = int(torch.randint(width, ()))
    y0, y1 = max(cy - ch // 2, 0), min(cy + (ch - ch // 2), height)
    x0, x1 = max(cx - cw // 2, 0), min(cx + (cw - cw // 2), width)
    mixed = inputs.clone()
    box = [slice(None)] * inputs.ndim
    box[h_dim], box[w_dim] = slice(y0, y1), slice(x0, x1)
    mixed[tuple(box)] = inputs[perm][tuple(box)]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    return mixed, perm, lam
