"""How `perceiver predict` reads each kind of file and runs a model on it: images (as training reads them, or as a
transformers folder's `preprocessor_config.json` says), texts, sound, video, point clouds (OFF meshes) and frame pairs
for optical flow, each prepared as the datamodule prepares validation data; the top-k labels of a classifier."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perceiver.data._common import load_image as read_image
from perceiver.data._common import upright
from perceiver.image_processing import ImageProcessor
from perceiver.training.geometry import config_value
from perceiver.training.layouts import to_model_layout
from perceiver.training.tasks import logits_of


def load_image(path: str | Path, size: tuple[int, int] | None, channels: int = 3) -> np.ndarray:
    """Decode an image to float32 `(H, W, C)` in [0, 1] (`C` = 1 grey or 3 RGB), resized (bilinear) to `size`, as
    the training datamodules read it (`perceiver.data._common.load_image`: 16-bit images scaled, not clipped)."""
    return read_image(path, size, grayscale=channels == 1)


def transformers_preprocessor(args: argparse.Namespace, info: dict[str, Any]) -> ImageProcessor | None:
    """The `ImageProcessor` of the model folder's `preprocessor_config.json` (transformers' image processor config),
    unless task.json (`image_shape`) or the command line (`--image-size`, `--channels`) sets the image geometry;
    None when there is none."""
    config_file = Path(args.model_dir) / "preprocessor_config.json"
    if "image_shape" in info or args.image_size or args.channels or not config_file.is_file():
        return None
    return ImageProcessor.from_pretrained(args.model_dir)  # errors name the file


def read_rgb(path: str | Path, processor: ImageProcessor) -> np.ndarray:
    """An image file as `uint8` `(H, W, 3)`, upright by its EXIF orientation, as transformers' pipeline reads it
    (and 16-bit grey scaled, `ImageProcessor.to_uint8_rgb`); ValueError naming an undecodable file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return processor.to_uint8_rgb(upright(image))
    except (OSError, ValueError) as e:
        raise ValueError(f"image cannot be decoded: {path} ({type(e).__name__}: {e})") from e


def image_geometry(
    info: dict[str, Any], model: torch.nn.Module, size: list[int] | None, channels: int | None
) -> tuple[tuple[int, int], int]:
    """`(H, W), C` from the command line, else `task.json`'s `image_shape`, else the model config's `image_size` and
    channels."""
    shape = info.get("image_shape")
    config = getattr(model, "config", None)
    built_for = config_value(config, "image_size")
    if isinstance(built_for, int):
        built_for = (built_for, built_for)
    hw = tuple(size) if size else (tuple(shape[:2]) if shape else (tuple(built_for) if built_for else None))
    c = channels or (
        shape[2]
        if shape and len(shape) > 2
        else config_value(config, "in_channels") or config_value(config, "input_channels") or 3
    )
    if hw is None:
        raise SystemExit("error: the model folder has no task.json with image_shape; pass --image-size H W")
    return (int(hw[0]), int(hw[1])), int(c)


def label_names(class_names: list[str] | None, num_outputs: int) -> list[str]:
    """The names of a classifier's `num_outputs` classes (`task.json`'s `class_names`, else "0", "1", ...);
    `ValueError` when the names do not match the head (a model folder whose head and data disagree)."""
    if not class_names:
        return [str(i) for i in range(num_outputs)]
    if len(class_names) != num_outputs:
        raise ValueError(
            f"the model predicts {num_outputs} classes but its task.json names {len(class_names)} "
            f"({class_names[:10]}{' ...' if len(class_names) > 10 else ''}); the model was trained with a head of "
            f"another size than its data's classes: retrain it (perceiver fit now stops on such a mismatch), or fix "
            f"class_names in task.json"
        )
    return list(class_names)


@torch.no_grad()
def classify_images(
    model: torch.nn.Module, images: Tensor, class_names: list[str] | None = None, top_k: int = 5
) -> list[list[tuple[str, float]]]:
    """Images `(B, H, W, C)` (channels-last; permuted for models with `input_layout = "channels_first"`) -> for
    each the top-k `(label, probability)`."""
    return top_labels(logits_of(model(to_model_layout(model, images))), class_names, top_k)


def top_labels(logits: Tensor, class_names: list[str] | None, top_k: int) -> list[list[tuple[str, float]]]:
    """Logits `(B, K)` -> for each row the top-k `(label, probability)` of the softmax."""
    probs = logits.float().softmax(-1)
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    names = label_names(class_names, probs.shape[-1])
    return [[(names[i], float(p)) for i, p in zip(idx.tolist(), val)] for idx, val in zip(top.indices, top.values)]


@torch.no_grad()
def classify_texts(
    model: torch.nn.Module, texts: list[str], info: dict[str, Any], top_k: int = 5
) -> list[list[tuple[str, float]]]:
    """UTF-8 texts -> top-k labels; encoded as in training (`[CLS] bytes + 6 [SEP]`, `perceiver.data.text`), cut to
    `task.json`'s `max_seq_len`, else the model's."""
    from perceiver.data.text import encode_sequence

    max_len = int(info.get("max_seq_len") or config_value(getattr(model, "config", None), "max_seq_len") or 2048)
    seqs = [torch.from_numpy(encode_sequence(t, max_len)) for t in texts]
    input_ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=0)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(s), dtype=torch.bool) for s in seqs], batch_first=True)
    return top_labels(logits_of(model(input_ids, mask)), info.get("class_names"), top_k)


@torch.no_grad()
def classify_audio(
    model: torch.nn.Module,
    files: list[Path],
    info: dict[str, Any],
    top_k: int = 5,
    sample_rate: int | None = None,
    num_samples: int | None = None,
) -> list[list[tuple[str, float]]]:
    """Sound files -> top-k labels, each clip prepared as in validation (`perceiver.data.audio_folder`): mono at
    `sample_rate` (default `task.json`'s), the centre `num_samples` (default `task.json`'s, else the model's), a
    shorter file zero-padded with its mask."""
    from perceiver.data.audio_folder import fit_length, load_audio

    rate = sample_rate or info.get("sample_rate")
    length = num_samples or info.get("num_samples") or config_value(getattr(model, "config", None), "num_samples")
    if not rate or not length:
        raise SystemExit(
            "error: the model folder has no task.json with sample_rate and num_samples; pass --sample-rate HZ "
            "--num-samples S (as in training)"
        )
    clips = [fit_length(load_audio(f, int(rate)), int(length)) for f in files]
    inputs = torch.from_numpy(np.stack([c for c, _ in clips]))[..., None]  # (B, S, 1)
    mask = torch.from_numpy(np.stack([m for _, m in clips]))
    return top_labels(logits_of(model(inputs, mask)), info.get("class_names"), top_k)


@torch.no_grad()
def classify_videos(
    model: torch.nn.Module, files: list[Path], info: dict[str, Any], top_k: int = 5, size: list[int] | None = None
) -> list[list[tuple[str, float]]]:
    """Video files -> top-k labels, each clip sampled as in validation (`perceiver.data.video_folder`): `task.json`'s
    `video_shape` `(T, H, W, C)` frames (`size` overrides `(H, W)`), else the model config's `num_frames` /
    `image_size`."""
    from perceiver.data.video_folder import load_video_clip

    config = getattr(model, "config", None)
    shape = info.get("video_shape")
    frames = shape[0] if shape else config_value(config, "num_frames")
    hw = tuple(size) if size else (tuple(shape[1:3]) if shape else config_value(config, "image_size"))
    if not frames or not hw:
        raise SystemExit("error: the model folder has no task.json with video_shape; pass --image-size H W")
    clips = []
    for f in files:
        clips.append(load_video_clip(f, (int(hw[0]), int(hw[1])), int(frames)))
    inputs = torch.from_numpy(np.stack(clips)).float().div_(255.0)  # (B, T, H, W, 3)
    return top_labels(logits_of(model(to_model_layout(model, inputs))), info.get("class_names"), top_k)


@torch.no_grad()
def predict_flow(model: torch.nn.Module, frame1: np.ndarray, frame2: np.ndarray) -> Tensor:
    """Two RGB frames `(H, W, 3)` in [0, 1] -> flow `(H, W, 2)` in pixels of these frames: frames of the model's
    `train_size` in one pass, larger ones by overlapping tiles (`model.predict`), smaller ones upsampled to it and
    the flow resized back (its vectors scaled with it)."""
    from perceiver.adapters.flow import normalize_frames

    x = normalize_frames(torch.from_numpy(np.stack([frame1, frame2])))  # (2, H, W, 3) in [-1, 1]
    h, w = x.shape[1:3]
    flow_model: Any = model  # a PerceiverForOpticalFlow: `input_adapter.train_size`, `predict`
    th, tw = flow_model.input_adapter.train_size
    big = (max(h, th), max(w, tw))
    if big != (h, w):
        x = F.interpolate(x.permute(0, 3, 1, 2), size=big, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    flow = flow_model.predict(x[0], x[1]).float()  # floating frames: taken as normalised
    if big == (h, w):
        return flow
    flow = F.interpolate(flow.permute(2, 0, 1)[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return flow.permute(1, 2, 0) * torch.tensor([w / big[1], h / big[0]])


@torch.no_grad()
def classify_points(
    model: torch.nn.Module, files: list[Path], info: dict[str, Any], top_k: int = 5
) -> list[list[tuple[str, float]]]:
    """OFF meshes -> top-k labels, each cloud sampled as `ModelNetDataModule` samples its clouds
    (`perceiver.data.points_off.load_off_points`: task.json's `num_points` area-weighted surface samples, centred in
    the unit sphere; a vertex-only file's vertices) with a fixed seed (a file always gives the same cloud), padded
    to the batch's largest with a mask."""
    from perceiver.data.points_off import load_off_points

    num_points = int(info.get("num_points") or 1024)
    clouds = [torch.from_numpy(load_off_points(f, num_points, 0)).float() for f in files]
    points = torch.nn.utils.rnn.pad_sequence(clouds, batch_first=True)  # (B, P, 3)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(c), dtype=torch.bool) for c in clouds], batch_first=True)
    return top_labels(logits_of(model(points, mask)), info.get("class_names"), top_k)
