"""Multimodal autoencoding Perceiver IO (DeepMind's Kinetics-700 model, transformers'
`PerceiverForMultimodalAutoencoding`): video, audio and a label in, the same three out.

    {"image": (B, T, 3, H, W), "audio": (B, S, 1), "label": (B, K)}
      --MultimodalInputAdapter--> (B, M, C) --PerceiverEncoder--> latents (B, N, D)
    MultimodalQueries (audio patches | video pixels | 1 label query) --shared cross-attention--> (B, O, F)
      --MultimodalOutput--> {"audio": (B, O_a * 16), "image": (B, O_i, 3), "label": (B, K)}

`MultimodalAutoencodingConfig(audio=AudioAdapterConfig(...), image=VideoAdapterConfig(...),
inputs=MultimodalInputConfig(...), queries=MultimodalQueryConfig(...), encoder=EncoderConfig(...),
decoder=DecoderConfig(...), num_classes=700)`. The preset takes the flat keywords of earlier releases too
(`create_model("multimodal-perceiver", num_frames=2, image_size=16, audio_samples_per_frame=32, num_labels=5)`: the
video length sets the audio length and both Fourier resolutions, as before; see `multimodal_config`).

Output shapes are transformers' (the image comes back per decoded pixel, flat); `reconstruct` reshapes a whole decode
to the input layout. The label input is replaced by a mask token (mask probability 1, as DeepMind trained it), so the
model classifies a video from its frames and sound: `classify(video, audio)` feeds a zero label, as DeepMind's colab,
and decodes only the label query.

Decoding runs in chunks of `query_chunk_size` flat output positions (audio, then image, then label) in
`PerceiverIO.forward_head`; each chunk is projected to its few output channels at once, so a whole 16 x 224 x 224
video never holds more than a chunk of queries or decoder features.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from perceiver.adapters.audio import AudioAdapterConfig
from perceiver.adapters.image import pair
from perceiver.adapters.multimodal import (
    MultimodalInputAdapter,
    MultimodalInputConfig,
    MultimodalOutput,
    MultimodalQueries,
    MultimodalQueryConfig,
    OneHotLabelAdapter,
    check_mask_probs,
)
from perceiver.adapters.video import VideoAdapterConfig
from perceiver.checks import InputTypeError, check_float_input, check_nonempty, model_dtype, to_bool_mask
from perceiver.core.config import rename_keys
from perceiver.core.decoder import (
    DecoderConfig,
    FourierQueries,
    PerceiverDecoder,
    TrainableQueries,
    check_query_chunk_size,
)
from perceiver.core.encoder import EncoderConfig, PerceiverEncoder
from perceiver.core.io import PerceiverIO
from perceiver.core.model import ModelOutput, hf_output_flags
from perceiver.hub import apply_overrides
from perceiver.models._io_config import IO_LEGACY_KEYS, classifier_decoder, imagenet_encoder
from perceiver.models.registry import register_model, register_model_type

MODALITIES = ("audio", "image", "label")


def multimodal_audio(**fields: Any) -> AudioAdapterConfig:
    """DeepMind's audio input: 30,720 samples (16 frames x 1,920), 16 per token, 192 bands, max resolution 30,720."""
    return AudioAdapterConfig(
        **(dict(num_samples=30720, samples_per_patch=16, num_bands=192, max_resolution=30720) | fields)
    )


def multimodal_video(**fields: Any) -> VideoAdapterConfig:
    """DeepMind's video input: 16 x 3 x 224 x 224, space-to-depth 4, 32 bands, max resolution (16, 224, 224)."""
    base: dict[str, Any] = dict(
        num_frames=16, image_size=(224, 224), spatial_block_size=4, num_bands=32, max_resolution=(16, 224, 224)
    )
    return VideoAdapterConfig(**(base | fields))


def multimodal_encoder(**fields: Any) -> EncoderConfig:
    """DeepMind's multimodal encoder: 784 x 512 latents, one block of 8 self-attention layers (8 heads)."""
    return imagenet_encoder(
        **(dict(num_latents=784, latent_dim=512, num_blocks=1, num_self_attends_per_block=8) | fields)
    )


def multimodal_decoder(**fields: Any) -> DecoderConfig:
    """DeepMind's multimodal decoder: one head, q/k as wide as the latents, no query residual, 512 output channels."""
    return classifier_decoder(**(dict(use_query_residual=False, output_dim=512) | fields))


@dataclass
class MultimodalAutoencodingConfig:
    """`PerceiverForMultimodalAutoencoding` (defaults: DeepMind's / transformers' checkpoint).

    audio, image: the adapter configs of the audio (`(B, S, 1)`, `num_samples` fixed) and the video (channels first
        `(B, T, C, H, W)`, `num_frames` and `image_size` fixed); the label input is a one-hot `(B, num_classes)`.
        The decoder queries are Fourier features of the output grids (audio tokens, video pixels) with the adapters'
        bands and max resolutions; the outputs reconstruct `samples_per_patch` samples per audio query, `in_channels`
        colours per pixel and `num_classes` label logits.
    inputs: padding and masking of the encoder tokens (`MultimodalInputConfig`).
    queries: the label query width, the query padding and the subsampled position formula (`MultimodalQueryConfig`).
    encoder, decoder: the parts (the decoder's `output_dim` is the width the per-modality heads read; None: the
        query width, no projection).
    num_classes: the label count (transformers' `num_labels`).

    `inputs` and `queries` are the very objects the model's input adapter and query builder read at every forward,
    so `model.config.inputs.mask_probs`, `.inputs.eval_masking` and `.queries.subsampled_positions` can be changed
    on a loaded model (change the fields; replacing the objects would detach them). The flat names of earlier
    releases (`config.mask_probs`, `config.eval_masking`, `config.subsampled_positions`) read and write the same
    fields.
    """

    audio: AudioAdapterConfig = field(default_factory=multimodal_audio)
    image: VideoAdapterConfig = field(default_factory=multimodal_video)
    inputs: MultimodalInputConfig = field(default_factory=MultimodalInputConfig)
    queries: MultimodalQueryConfig = field(default_factory=MultimodalQueryConfig)
    encoder: EncoderConfig = field(default_factory=multimodal_encoder)
    decoder: DecoderConfig = field(default_factory=multimodal_decoder)
    num_classes: int = 700

    def __post_init__(self) -> None:
        a, v = self.audio, self.image
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes (the label count) must be an integer >= 1, got {self.num_classes!r}")
        if v.num_frames is None or v.image_size is None:
            raise ValueError("image.num_frames and image.image_size must be set: they are the video decoder's grid")
        if v.channels_last:
            raise ValueError("image.channels_last must be False: the autoencoder takes (B, T, C, H, W) video")
        s, t = v.spatial_block_size, v.temporal_block_size
        if s < 1 or t < 1 or any(n % s for n in v.image_size) or v.num_frames % t:
            raise ValueError(
                f"image.image_size {v.image_size} must be divisible by image.spatial_block_size {s} and "
                f"image.num_frames {v.num_frames} by image.temporal_block_size {t}"
            )
        if a.num_samples is None or a.num_samples % a.samples_per_patch:
            raise ValueError(
                f"audio.num_samples ({a.num_samples}) must be a multiple of audio.samples_per_patch "
                f"({a.samples_per_patch}): it fixes the audio decoder's grid"
            )
        self.inputs.mask_probs = check_mask_probs(self.inputs.mask_probs, MODALITIES)

    # the flat names of earlier releases for the switches read at every forward (same objects as `inputs` / `queries`)
    @property
    def mask_probs(self) -> dict[str, float]:
        return self.inputs.mask_probs

    @mask_probs.setter
    def mask_probs(self, value: dict[str, float]) -> None:
        self.inputs.mask_probs = value

    @property
    def eval_masking(self) -> str:
        return self.inputs.eval_masking

    @eval_masking.setter
    def eval_masking(self, value: str) -> None:
        self.inputs.eval_masking = value  # type: ignore[assignment]

    @property
    def subsampled_positions(self) -> str:
        return self.queries.subsampled_positions

    @subsampled_positions.setter
    def subsampled_positions(self, value: str) -> None:
        self.queries.subsampled_positions = value  # type: ignore[assignment]

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        """`(T, C, H, W)` of the expected video."""
        v = self.image
        assert v.num_frames is not None and v.image_size is not None  # __post_init__ requires them
        return (v.num_frames, v.in_channels, *v.image_size)


#: flat keys of format-1 files and earlier preset keywords that moved (other flat keys route by their field name)
LEGACY_KEYS: dict[str, str | tuple[str, ...]] = IO_LEGACY_KEYS | {
    "image_channels": "image.in_channels",
    "spatial_downsample": "image.spatial_block_size",
    "temporal_downsample": "image.temporal_block_size",
    "image_num_bands": "image.num_bands",
    "audio_num_bands": "audio.num_bands",
    "samples_per_patch": "audio.samples_per_patch",
    "input_padding": "inputs.min_padding_size",
    "label_query_channels": "queries.label_channels",
    "query_padding": "queries.min_padding_size",
    "output_num_channels": "decoder.output_dim",
}
#: flat keys of earlier releases that set several fields: the video's `num_frames` x `image_size` with its
#: max resolution (T, H, W), and `num_frames * audio_samples_per_frame` audio samples (= the audio max resolution)
DERIVED_KEYS = ("num_frames", "image_size", "audio_samples_per_frame")


def legacy_overrides(base: MultimodalAutoencodingConfig, flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat keywords of earlier releases (format-1 files, preset keywords) as overrides of the nested config `base`:
    renamed keys to their paths, the video / audio sizes to every field they set. Other keys pass unchanged (dotted
    keys win over what the flat sizes set)."""
    flat = dict(flat)
    given = {k: flat.pop(k) for k in DERIVED_KEYS if k in flat}
    for key, value in given.items():
        if key != "image_size" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(
                f"multimodal-perceiver {key} must be an integer >= 1, got {value!r} ({type(value).__name__})"
            )
    out: dict[str, Any] = {}
    frames, image_size, samples = base.image.num_frames, base.image.image_size, base.audio.num_samples
    assert frames is not None and image_size is not None and samples is not None  # __post_init__ requires them
    t = given.get("num_frames", frames)
    if "num_frames" in given or "image_size" in given:
        size = pair("multimodal-perceiver image_size", given["image_size"]) if "image_size" in given else image_size
        out |= {"image.num_frames": t, "image.image_size": size, "image.max_resolution": (t, *size)}
    if "num_frames" in given or "audio_samples_per_frame" in given:
        per_frame = given.get("audio_samples_per_frame", samples // frames)
        out |= {"audio.num_samples": t * per_frame, "audio.max_resolution": t * per_frame}
    return out | rename_keys(LEGACY_KEYS, flat)


def multimodal_config(**overrides: Any) -> MultimodalAutoencodingConfig:
    """The preset's config with `overrides`: dotted or field keys (`perceiver.hub.apply_overrides`) and the flat
    keywords of earlier releases (`num_frames`, `image_size`, `audio_samples_per_frame`, `num_labels`,
    `input_padding`, ... see `LEGACY_KEYS` / `DERIVED_KEYS`)."""
    base = MultimodalAutoencodingConfig()
    return apply_overrides(base, legacy_overrides(base, overrides))


@register_model_type
class PerceiverForMultimodalAutoencoding(PerceiverIO):
    """Perceiver IO autoencoder of video + audio + label; see the module docstring and
    `MultimodalAutoencodingConfig`."""

    config_class = MultimodalAutoencodingConfig
    model_type = "perceiver_multimodal_autoencoding"
    legacy_keys = LEGACY_KEYS
    classifier_name = None
    head_kind = "an autoencoding of video, audio and label (a dict per modality); num_classes is the label count"

    query_builder: MultimodalQueries

    def __init__(self, config: MultimodalAutoencodingConfig) -> None:
        c = config = copy.deepcopy(config)  # the model's own: its parts keep `inputs` / `queries` by reference
        audio, image = c.audio.build(), c.image.build()
        inputs = MultimodalInputAdapter(
            {"audio": audio, "image": image, "label": OneHotLabelAdapter(c.num_classes)}, c.inputs
        )
        assert c.image.num_frames is not None and c.image.image_size is not None  # __post_init__ requires them
        assert c.audio.num_samples is not None
        t, (h, w) = c.image.num_frames, c.image.image_size
        ap, vp = audio.position, image.position  # the queries take the adapters' Fourier settings
        queries = MultimodalQueries(
            {
                "audio": FourierQueries(
                    (c.audio.num_samples // c.audio.samples_per_patch,), ap.num_bands, ap.max_resolution,
                    ap.concat_pos, ap.sine_only,
                ),
                "image": FourierQueries((t, h, w), vp.num_bands, vp.max_resolution, vp.concat_pos, vp.sine_only),
                "label": TrainableQueries(1, c.queries.label_channels),
            },
            c.queries,
        )  # fmt: skip
        encoder = PerceiverEncoder(c.encoder.for_inputs(inputs.num_channels))
        decoder = PerceiverDecoder(
            c.decoder.for_parts(query_dim=queries.num_channels, latent_dim=encoder.config.latent_dim)
        )
        outputs = MultimodalOutput(
            decoder.config.output_dim or queries.num_channels,
            {"audio": c.audio.samples_per_patch, "image": c.image.in_channels, "label": c.num_classes},
            queries.sizes,
        )
        super().__init__(inputs, encoder, queries, decoder, outputs)
        self.config = c

    @classmethod
    def config_from_file(cls, data: dict[str, Any], source: str | os.PathLike, overrides: dict[str, Any]) -> Any:
        if data.get("format_version", 1) != 1:
            return super().config_from_file(data, source, overrides)
        data = {k: v for k, v in data.items() if k != "format_version"}
        base = cls.config_class()
        config = apply_overrides(base, legacy_overrides(base, data), source=source)
        return apply_overrides(config, overrides, source=f"{source} + overrides") if overrides else config

    # -- inputs ---------------------------------------------------------------------------------------------------

    def check_inputs(self, inputs: Any, mask: Tensor | None) -> tuple[dict[str, Tensor], Tensor | None]:
        """Clear errors for the common mistakes before the adapters see the tensors; returns the inputs cast to the
        model's dtype (floating tensors only, see docs/reliability.md) and the mask as booleans."""
        c = self.config
        if not isinstance(inputs, Mapping):
            raise ValueError(f"expected inputs as a dict with keys {list(MODALITIES)}, got {type(inputs).__name__}")
        missing = [k for k in MODALITIES if k not in inputs]
        if missing:
            hint = " (to classify a video without a label, use classify(video, audio))" if missing == ["label"] else ""
            raise ValueError(f"inputs is missing {missing}; expected keys {list(MODALITIES)}{hint}")
        shapes = {"image": "(B, T, C, H, W)", "audio": "(B, S, 1)", "label": f"(B, {c.num_classes})"}
        dtype = model_dtype(self)
        inputs = {**inputs}
        image = inputs["image"]
        if isinstance(image, Tensor) and image.dtype == torch.uint8:  # decoded frames (PyAV, torchvision.io, ...)
            raise InputTypeError(
                "expected inputs['image'] as a floating-point tensor of shape (B, T, C, H, W) in [0, 1], got dtype "
                "torch.uint8; convert it with .float() / 255 (DeepMind's video range)"
            )
        for name in MODALITIES:
            inputs[name] = check_float_input(inputs[name], f"inputs[{name!r}]", shapes[name], dtype)
            check_nonempty(inputs[name], f"inputs[{name!r}]", shapes[name])
        image = inputs["image"]
        if image.ndim == 5:
            channels = c.image.in_channels
            if image.shape[2] != channels:
                hint = (
                    "; it looks channels-last (B, T, H, W, C): pass video.permute(0, 1, 4, 2, 3)"
                    if image.shape[-1] == channels
                    else ""
                )
                raise ValueError(
                    f"expected inputs['image'] of shape {self._video_input_shape()} (B, T, C, H, W), channels first, "
                    f"got {tuple(image.shape)}{hint}"
                )
            (n, _, h, w), s = image.shape[1:], c.image.spatial_block_size
            if h % s or w % s:
                raise ValueError(
                    f"expected image height and width that are multiples of the space-to-depth factor {s}, got {h} x {w} "
                    f"(inputs['image'] of shape {tuple(image.shape)})"
                )
            if n != c.image.num_frames:
                raise ValueError(
                    f"expected {c.image.num_frames} frames (image.num_frames) in inputs['image'] (B, T, C, H, W), got "
                    f"{n} (shape {tuple(image.shape)})"
                )
        return inputs, to_bool_mask(mask, "attention_mask")

    def _video_input_shape(self) -> str:
        """The expected video shape as text, `(B, T, C, H, W)` with the config's sizes."""
        t, ch, h, w = self.config.video_shape
        return f"(B, {t}, {ch}, {h}, {w})"

    def output_index(
        self, subsampled_output_points: Mapping[str, Any] | None, device: torch.device | str | None = None
    ) -> Tensor | None:
        """Flat output index `(O',)` for transformers' `subsampled_output_points` (None: every position).

        Per modality: an index tensor into its flat output grid (audio: patches, image: T*H*W pixels, label: 1),
        None or absent for all of its positions, an empty tensor for none (the modality is then left out of
        `.logits`).
        """
        if subsampled_output_points is None:
            return None
        unknown = sorted(set(subsampled_output_points) - set(MODALITIES))
        if unknown:
            raise ValueError(f"subsampled_output_points has unknown modalities {unknown}; expected {list(MODALITIES)}")
        parts = []
        for name, (start, stop) in self.query_builder.offsets().items():
            idx = subsampled_output_points.get(name)
            if idx is None:
                parts.append(torch.arange(start, stop, device=device))
                continue
            idx = torch.as_tensor(idx, device=device)
            if idx.dtype == torch.bool:  # `.long()` would silently decode positions 0 and 1 over and over
                raise ValueError(
                    f"subsampled_output_points[{name!r}] must hold integer indices, got a boolean tensor; for a "
                    f"selection mask pass its indices, mask.nonzero().flatten()"
                )
            if idx.numel() and (idx.is_floating_point() or idx.is_complex()):
                raise ValueError(f"subsampled_output_points[{name!r}] must hold integer indices, got {idx.dtype}")
            idx = idx.long().flatten()
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= stop - start):
                raise ValueError(
                    f"subsampled_output_points[{name!r}] must lie in [0, {stop - start}), got values in "
                    f"[{int(idx.min())}, {int(idx.max())}]"
                )
            parts.append(idx + start)
        return torch.cat(parts)

    # -- forward --------------------------------------------------------------------------------------------------

    def forward(  # type: ignore[override]  # the transformers head's arguments, not PerceiverIO's
        self,
        inputs: Mapping[str, Tensor],
        attention_mask: Tensor | None = None,
        subsampled_output_points: Mapping[str, Any] | None = None,
        query_chunk_size: int | None = None,
        return_attention: bool = False,
        return_hidden_states: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ModelOutput | tuple[Any, ...]:
        """Encode `inputs` {"image": (B, T, C, H, W), "audio": (B, S, 1), "label": (B, K)} and decode.

        attention_mask: `(B, M)` over the input tokens (True = valid), as transformers. subsampled_output_points:
        see `output_index`. query_chunk_size: output positions decoded at a time (None: all at once). Returns
        `.logits` {"audio": (B, O_a * samples_per_patch), "image": (B, O_i, C), "label": (B, K)} with `O_a`, `O_i`
        the decoded positions (all: S / samples_per_patch and T * H * W), `.last_hidden_state` (B, N, D) and, with
        `return_attention`, the encoder maps and the decoder map `(B, H, O, N)`; with `return_hidden_states`, the
        latents after every encoder step. transformers' `output_attentions` / `output_hidden_states` spell
        `return_attention` / `return_hidden_states`; `return_dict=False` returns `ModelOutput.to_tuple()`.
        """
        return_attention, return_hidden_states = hf_output_flags(
            return_attention, return_hidden_states, output_attentions, output_hidden_states, return_dict
        )
        check_query_chunk_size(query_chunk_size)  # before the encoder runs
        index = self.output_index(subsampled_output_points, self.encoder.latents.device)
        out = super().forward(
            inputs, attention_mask, index, query_chunk_size, return_attention, return_hidden_states=return_hidden_states
        )
        return out.to_tuple() if return_dict is False else out

    def classify(self, video: Tensor, audio: Tensor, query_chunk_size: int | None = None) -> Tensor:
        """Label logits `(B, K)` of a video `(B, T, C, H, W)` with its audio `(B, S, 1)`: feeds a zero label (which
        the label's mask token replaces, as in DeepMind's colab) and decodes only the label query (in chunks of
        `query_chunk_size`, as `forward`), named by its position range, a slice: static shapes, so that
        `torch.export` and ONNX take it (`perceiver.export_multimodal.MultimodalClassifier`)."""
        check_query_chunk_size(query_chunk_size)
        label = video.new_zeros(video.shape[0], self.config.num_classes)
        start, stop = self.query_builder.offsets()["label"]
        data = {"image": video, "audio": audio, "label": label}
        out = PerceiverIO.forward(self, data, output_index=slice(start, stop), query_chunk_size=query_chunk_size)
        return out.logits["label"]

    @torch.no_grad()
    def reconstruct(self, inputs: Mapping[str, Tensor], query_chunk_size: int | None = 16384) -> dict[str, Tensor]:
        """Whole autoencoding in chunks of `query_chunk_size` queries, shaped like the inputs: {"image":
        (B, T, C, H, W), "audio": (B, S, 1), "label": (B, K) logits}."""
        logits = self(inputs, query_chunk_size=query_chunk_size).logits
        t, ch, h, w = self.config.video_shape
        b = logits["image"].shape[0]
        image = logits["image"].reshape(b, t, h, w, ch).permute(0, 1, 4, 2, 3)
        return {"image": image, "audio": logits["audio"].reshape(b, -1, 1), "label": logits["label"]}


@register_model("multimodal-perceiver", hub_id="deepmind/multimodal-perceiver")
def multimodal_perceiver(**overrides: Any) -> PerceiverForMultimodalAutoencoding:
    """DeepMind's Kinetics-700 autoencoder (`deepmind/multimodal-perceiver`): 16 frames at 224 x 224, 30,720 audio
    samples, 700 labels; 784 x 512 latents, 8 self-attention layers (8 heads), 1 cross-attention head."""
    return PerceiverForMultimodalAutoencoding(multimodal_config(**overrides))


__all__ = [
    "MODALITIES",
    "MultimodalAutoencodingConfig",
    "PerceiverForMultimodalAutoencoding",
    "multimodal_config",
    "multimodal_perceiver",
]
