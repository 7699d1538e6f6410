"""`perceiver plot RUN_DIR` and `perceiver attention MODEL_DIR IMAGE...`: look at a run instead of reading it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from perceiver.core.model import Features, ModelOutput
from perceiver.training.plots import plot_attention_maps, plot_training_curves
from perceiver.training.predict import (
    check_file_kinds,
    image_geometry,
    load_image,
    model_inputs,
    open_model_dir,
    positive_int,
)

__all__ = ["attention_main", "cross_attention", "plot_main"]


@runtime_checkable
class AttentionModel(Protocol):
    """What `cross_attention` calls: the `forward_features` / `forward_head` contract (classic `Perceiver`,
    Perceiver IO classifiers)."""

    def forward_features(self, inputs: Tensor, /, *, return_attention: bool = ...) -> Features: ...

    def forward_head(self, features: Features, /) -> ModelOutput: ...


def plot_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="perceiver plot", description="PNG training curves of a run.")
    parser.add_argument("run_dir", help="run directory (trainer.default_root_dir) or a metrics.csv")
    parser.add_argument("-o", "--output", help="PNG path (default RUN_DIR/training_curves.png)")
    args = parser.parse_args(argv)
    try:
        out = plot_training_curves(args.run_dir, args.output)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    print(f"wrote {out}")


@torch.no_grad()
def cross_attention(model: torch.nn.Module, images: Tensor, cross_attend: int = 0) -> tuple[Tensor, Tensor]:
    """Logits `(B, K)` and the attention `(B, H, N, M)` of cross-attend `cross_attend` of an image model (the classic
    `Perceiver` or a Perceiver IO classifier: both follow the `forward_features` / `forward_head` contract).
    `images` are channels-last `(B, H, W, C)`; models whose `input_layout` is channels-first get them permuted."""
    if not isinstance(model, AttentionModel):  # has forward_features and forward_head
        raise SystemExit(f"error: {type(model).__name__} has no forward_features(return_attention=True)")
    if getattr(model, "input_layout", "channels_last") == "channels_first":
        images = images.permute(0, 3, 1, 2)
    features = model.forward_features(images, return_attention=True)
    maps = features.encoder_attentions or []  # a list with return_attention=True
    if not 0 <= cross_attend < len(maps):
        raise SystemExit(f"error: the model has {len(maps)} cross-attends, got --cross-attend {cross_attend}")
    return model.forward_head(features).logits, maps[cross_attend]


def attention_figure(
    model: torch.nn.Module,
    images: Tensor,
    out: str | Path,
    class_names: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    latents: Sequence[int] | None = None,
    cross_attend: int = 0,
) -> Path:
    """Images `(B, H, W, C)` -> PNG of the model's cross-attention over them, titled with the predictions."""
    logits, att = cross_attention(model, images, cross_attend)
    n = att.shape[2]
    if latents is not None and any(not -n <= i < n for i in latents):
        shown = " ".join(map(str, latents))
        raise SystemExit(f"error: the model has {n} latents (0..{n - 1}), got --latents {shown}")
    probs = logits.float().softmax(-1)
    names = list(class_names) if class_names else [str(i) for i in range(probs.shape[-1])]
    titles = []
    for i, (p, k) in enumerate(zip(*probs.max(-1))):
        title = f"pred {names[k]} ({p:.2f})"
        if labels is not None:
            title = f"label {names[labels[i]]}\n" + title
        titles.append(title)
    heads = att.shape[1]
    return plot_attention_maps(
        images,
        att,
        out,
        latents=latents,
        titles=titles,
        suptitle=f"cross-attend {cross_attend} ({heads} head{'s' if heads > 1 else ''}, {att.shape[2]} latents): "
        "attention over the input grid",
    )


def attention_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="perceiver attention",
        description="PNG of the cross-attention maps of a classic Perceiver over images: per image the mean over "
        "heads and latents and a few single latents, overlaid on the (resized) image.",
    )
    parser.add_argument("model_dir", help="model folder (e.g. RUN_DIR/model)")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("-o", "--output", default="attention.png", help="PNG path (default attention.png)")
    parser.add_argument("--latents", type=int, nargs="*", help="latents to show (default: 3 most focused)")
    parser.add_argument("--cross-attend", type=int, default=0, help="which cross-attend (default 0, the first)")
    parser.add_argument("--image-size", type=positive_int, nargs=2, metavar=("H", "W"), help="resize images to H x W")
    parser.add_argument("--channels", type=int, choices=[1, 3], help="1 = greyscale, 3 = RGB")
    args = parser.parse_args(argv)
    model, info = open_model_dir(args.model_dir)
    what, kind, _ = model_inputs(model)
    flow = getattr(model, "model_type", None) == "perceiver-optical-flow"
    if kind not in (None, "image") or flow:
        raise SystemExit(
            f"error: perceiver attention draws the cross-attention of image classifiers (and classic Perceivers) over "
            f"images; {args.model_dir} holds {what}, which takes {'image pairs' if flow else f'{kind} inputs'}"
        )
    check_file_kinds(what, "image", args.images)
    hw, channels = image_geometry(info, model, args.image_size, args.channels)
    try:
        images = torch.from_numpy(np.stack([load_image(f, hw, channels) for f in args.images]))
    except (ValueError, FileNotFoundError) as e:  # a missing or undecodable image
        raise SystemExit(f"error: {e}") from e
    out = attention_figure(model, images, args.output, info.get("class_names"), None, args.latents, args.cross_attend)
    print(f"wrote {out}")
