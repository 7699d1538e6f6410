"""Tiny configurations of every registry preset and example inputs for them, shared by the compile, export and
property tests (`TINY[name] = (overrides, make_inputs)`, where `make_inputs(batch, size)` returns the positional
arguments of the model's forward; `size` scales the input length where the model takes variable lengths)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import perceiver

IO = dict(num_latents=6, latent_dim=16, num_blocks=1, num_self_attends_per_block=1, latent_heads=2)
TEXT = dict(IO, max_seq_len=16, d_model=16, cross_qk_channels=None, cross_v_channels=None)
TEXT |= dict(latent_qk_channels=None, latent_v_channels=None, cross_heads=1)


def _image(b: int, size: int = 16) -> tuple:
    return (torch.randn(b, 3, size, size),)


def _ids(b: int, size: int = 10) -> tuple:
    return (torch.randint(6, 262, (b, size)),)


TINY: dict[str, tuple[dict[str, Any], Callable[..., tuple]]] = {
    "perceiver": (
        dict(
            input_channels=3,
            input_axis=2,
            num_freq_bands=2,
            max_freq=4.0,
            depth=2,
            num_latents=6,
            latent_dim=16,
            latent_heads=2,
            cross_dim_head=8,
            latent_dim_head=8,
            num_classes=5,
        ),
        lambda b, size=8: (torch.randn(b, size, size, 3),),
    ),  # fmt: skip
    "language-perceiver": (dict(TEXT, decoder_qk_channels=16), _ids),
    "text-classifier": (dict(TEXT, num_labels=3), _ids),
    "vision-perceiver-learned": (dict(IO, image_size=16, num_labels=5), lambda b, size=16: _image(b, 16)),
    "vision-perceiver-fourier": (dict(IO, image_size=16, num_labels=5, num_bands=4, max_resolution=(16, 16)), _image),
    "vision-perceiver-conv": (dict(IO, image_size=16, num_labels=5, num_bands=4, max_resolution=(4, 4)), _image),
    "optical-flow-perceiver": (
        dict(IO, train_size=(12, 16), num_bands=4, out_channels=8, output_init_zeros=False, query_chunk_size=64),
        lambda b, size=12: (torch.randn(b, 2, 27, size, 16),),
    ),
    "multimodal-perceiver": (
        dict(
            num_frames=2,
            image_size=16,
            audio_samples_per_frame=32,
            num_labels=5,
            num_latents=8,
            latent_dim=32,
            num_self_attends_per_block=1,
            latent_heads=2,
            label_query_channels=24,
            output_num_channels=16,
        ),
        lambda b, size=0: (
            {"image": torch.randn(b, 2, 3, 16, 16), "audio": torch.randn(b, 64, 1), "label": torch.zeros(b, 5)},
        ),
    ),  # fmt: skip
    "audio-classifier": (
        dict(IO, num_samples=None, samples_per_patch=4, num_bands=4, max_resolution=64, num_classes=5),
        lambda b, size=16: (torch.randn(b, 4 * size),),
    ),
    "video-classifier": (
        dict(
            IO,
            num_frames=4,
            image_size=(8, 12),
            spatial_block_size=4,
            temporal_block_size=2,
            num_bands=3,
            max_resolution=(4, 8, 12),
            num_classes=5,
        ),
        lambda b, size=0: (torch.randn(b, 4, 3, 8, 12),),
    ),  # fmt: skip
    "point-cloud-classifier": (
        dict(IO, num_bands=4, num_classes=5),
        lambda b, size=20: (torch.rand(b, size, 3) * 2 - 1,),
    ),
    "token-classifier": (dict(TEXT, decoder_qk_channels=16, num_labels=3), _ids),
    "question-answering": (dict(TEXT, decoder_qk_channels=16), _ids),
    "perceiver-ar": (
        dict(max_seq_len=16, num_latents=4, d_model=16, num_heads=2, num_layers=1),
        lambda b, size=12: (torch.randint(0, 262, (b, size)),),
    ),
    "perceiver-ar-tiny": (
        dict(max_seq_len=16, num_latents=4, d_model=16, num_heads=2, num_layers=1),
        lambda b, size=12: (torch.randint(0, 262, (b, size)),),
    ),
    "perceiver-resampler": (
        dict(dim=16, depth=1, num_latents=4, num_heads=2, head_dim=8),
        lambda b, size=5: (torch.randn(b, 2, size, 16),),
    ),
}


def tiny(name: str, **overrides: Any) -> torch.nn.Module:
    """The preset `name` at its tiny size, in eval mode."""
    return perceiver.create_model(name, **(TINY[name][0] | overrides)).eval()


def inputs(name: str, batch: int = 2, **kwargs: Any) -> tuple:
    return TINY[name][1](batch, **kwargs)


def logits(output: Any) -> Any:
    """The model's task output (a tensor, `.logits` of an output object, or its `.last_hidden_state` where it has no
    logits: the resampler)."""
    if isinstance(output, torch.Tensor):
        return output
    return output.logits if getattr(output, "logits", None) is not None else output.last_hidden_state


def flat(value: Any) -> list[torch.Tensor]:
    """Tensors of a tensor / dict / output in a fixed order (for comparisons)."""
    value = logits(value)
    if isinstance(value, dict):
        return [value[k] for k in sorted(value)]
    return [value]


def perturb_trainable(model: torch.nn.Module, scale: float = 0.3) -> None:
    """Move the trainable tensors (adapters, a new head) away from their start (LoRA's B = 0: no change at first),
    as training would; seeded, so the same model moves the same way."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)
