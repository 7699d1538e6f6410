"""Whether a datamodule's inputs fit a model, checked before training starts: image channels and sizes, text
lengths and vocabularies, audio clip lengths, video frames, each a `ValueError` that names both sides and the flag
that reconciles them. Reads model configs through `config_value` (nested part configs, as flat preset keywords
address them). Plain Python: no Lightning import.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

__all__ = ["check_audio_geometry", "check_input_geometry", "check_video_geometry", "config_value"]


def config_value(config: Any, name: str, default: Any = None) -> Any:
    """Field `name` of a model config, searched in the config itself and then in its nested part configs
    (`adapter`, `encoder`, ... dataclasses), as flat preset keywords address them; `default` if none has it."""
    todo = [config]
    while todo:
        c = todo.pop(0)
        if c is None:
            continue
        if hasattr(c, name):
            return getattr(c, name)
        if dataclasses.is_dataclass(c):
            todo += [getattr(c, f.name) for f in dataclasses.fields(c) if dataclasses.is_dataclass(getattr(c, f.name))]
    return default


def check_input_geometry(model: nn.Module, datamodule: Any) -> None:
    """`ValueError` before training when the datamodule's inputs do not fit the model's config: the channels of its
    `image_shape` `(H, W, C)` (config `in_channels` / `input_channels`), the image size of a model with learned
    positions (`position_encoding="trainable"`, config `image_size`), text longer than the model's positions
    (`max_seq_len`), token ids of another vocabulary (`vocab_size`: a model embedding 32000 subword ids does not
    read bytes + 6), audio clips (`num_samples`) of another length than a model built for a fixed one, not a multiple
    of its `samples_per_patch`, or for a classic model not reading 1-D single-channel inputs, and video clips
    (`video_shape`) of other frames, frame size or channels than the model's. Fields a model or datamodule does not
    have are not checked."""
    config = getattr(model, "config", None)
    if config is None:
        return
    name, data = type(model).__name__, type(datamodule).__name__
    shape = getattr(datamodule, "image_shape", None)
    if shape is not None and len(shape) == 3:
        h, w, c = (int(v) for v in shape)
        key = next((k for k in ("in_channels", "input_channels") if config_value(config, k) is not None), None)
        channels = config_value(config, key) if key else None
        if isinstance(channels, int) and channels != c:
            grey = (
                "; or --data.grayscale " + ("false" if c == 1 else "true") if hasattr(datamodule, "grayscale") else ""
            )
            raise ValueError(
                f"{data} gives images of shape (H, W, C) = {(h, w, c)} ({c} channels) but {name} takes {channels} "
                f"channels ({key}={channels}); pass --model.model_kwargs.{key} {c}{grey}"
            )
        axes = config_value(config, "input_axis", 2)
        if axes != 2:
            raise ValueError(
                f"{data} gives 2-D images but {name} has input_axis={axes}; pass --model.model_kwargs.input_axis 2"
            )
        size = config_value(config, "image_size")
        if config_value(config, "position_encoding") == "trainable" and size is not None and tuple(size) != (h, w):
            raise ValueError(
                f"{data} gives {h}x{w} images but the learned positions of {name} are for {size[0]}x{size[1]} "
                f"images (image_size={list(size)}); pass --data.image_size [{size[0]}, {size[1]}], or (training "
                f"from scratch) --model.model_kwargs.image_size [{h}, {w}]"
            )
    samples = getattr(datamodule, "num_samples", None)
    if isinstance(samples, int):
        check_audio_geometry(config, name, data, samples)
    video = getattr(datamodule, "video_shape", None)
    if video is not None:
        check_video_geometry(config, name, data, tuple(int(v) for v in video))
    vocab, embeds = getattr(datamodule, "vocab_size", None), config_value(config, "vocab_size")
    if isinstance(vocab, int) and isinstance(embeds, int) and vocab != embeds:
        raise ValueError(
            f"{data} gives token ids of a {vocab}-token vocabulary but {name} embeds {embeds} tokens "
            f"(vocab_size={embeds}); pass --model.model_kwargs.vocab_size {vocab} (training from scratch), or train "
            f"the model on data tokenized its way"
        )
    length = getattr(datamodule, "max_seq_len", None)
    limit = config_value(config, "max_seq_len")
    if isinstance(length, int) and isinstance(limit, int) and length > limit:
        raise ValueError(
            f"{data} gives sequences of up to {length} tokens (max_seq_len={length}) but {name} has positions for "
            f"{limit} (max_seq_len={limit}); pass --data.max_seq_len {limit} or --model.model_kwargs.max_seq_len "
            f"{length}"
        )


def check_audio_geometry(config: Any, name: str, data: str, samples: int) -> None:
    """The audio part of `check_input_geometry`: clips of `samples` samples `(B, S, 1)` against the model's config."""
    fixed, patch = config_value(config, "num_samples"), config_value(config, "samples_per_patch")
    if isinstance(fixed, int) and fixed != samples:
        raise ValueError(
            f"{data} gives clips of {samples} samples but {name} takes {fixed} (num_samples={fixed}); pass "
            f"--data.num_samples {fixed}, or (training from scratch) --model.model_kwargs.num_samples {samples}"
        )
    if isinstance(patch, int) and samples % patch:
        raise ValueError(
            f"{data} gives clips of {samples} samples, not a multiple of the {patch} samples per token of {name} "
            f"(samples_per_patch={patch}); pass --data.num_samples {samples - samples % patch}"
        )
    axes, channels = config_value(config, "input_axis"), config_value(config, "input_channels")
    if (isinstance(axes, int) and axes != 1) or (isinstance(channels, int) and channels != 1):
        raise ValueError(
            f"{data} gives waveforms (B, S, 1) but {name} has input_axis={axes}, input_channels={channels}; pass "
            f"--model.model_kwargs.input_axis 1 --model.model_kwargs.input_channels 1"
        )


def check_video_geometry(config: Any, name: str, data: str, shape: tuple[int, ...]) -> None:
    """The video part of `check_input_geometry`: clips `(B, T, H, W, C)` against the model's frames, frame size and
    channels (those it fixes), or a classic model's `input_axis` (3) and `input_channels`."""
    t, h, w, c = shape
    frames, size = config_value(config, "num_frames"), config_value(config, "image_size")
    if isinstance(frames, int) and frames != t:
        raise ValueError(
            f"{data} gives clips of {t} frames but {name} takes {frames} (num_frames={frames}); pass --data.num_frames "
            f"{frames}, or (training from scratch) --model.model_kwargs.num_frames {t}"
        )
    if size is not None and tuple(size) != (h, w):
        raise ValueError(
            f"{data} gives {h}x{w} frames but {name} takes {size[0]}x{size[1]} (image_size={list(size)}); pass "
            f"--data.image_size [{size[0]}, {size[1]}], or (training from scratch) --model.model_kwargs.image_size "
            f"[{h}, {w}]"
        )
    channels = config_value(config, "in_channels")
    axes, classic_channels = config_value(config, "input_axis"), config_value(config, "input_channels")
    if (isinstance(channels, int) and channels != c) or (isinstance(classic_channels, int) and classic_channels != c):
        raise ValueError(f"{data} gives {c}-channel frames but {name} takes {channels or classic_channels} channels")
    if isinstance(axes, int) and axes != 3:
        raise ValueError(
            f"{data} gives videos (B, T, H, W, C) but {name} has input_axis={axes}; pass "
            f"--model.model_kwargs.input_axis 3"
        )
