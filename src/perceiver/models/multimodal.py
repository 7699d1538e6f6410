"""Multimodal autoencoding Perceiver IO (DeepMind's Kinetics-700 model, transformers'
`PerceiverForMultimodalAutoencoding`): video, audio and a label in, the same three out.

    {"image": (B, T, 3, H, W), "audio": (B, S, 1), "label": (B, K)}
      --MultimodalInputAdapter--> (B, M, C) --PerceiverEncoder--> latents (B, N, D)
    MultimodalQueries (audio patches | video pixels | 1 label query) --shared cross-attention--> (B, O, F)
      --MultimodalOutput--> {"audio": (B, O_a * 16), "image": (B, O_i, 3), "label": (B, K)}

Output shapes are transformers' (the image comes back per decoded pixel, flat); `reconstruct` reshapes a whole decode
to the input layout. The label input is replaced by a mask token (mask probability 1, as DeepMind trained it), so the
model classifies a video from its frames and sound: `classify(video, audio)` feeds a zero label, as DeepMind's colab,
and decodes only the label query.

Decoding runs in chunks of `query_chunk_size` flat output positions (audio, then image, then label); each chunk is
projected to its few output channels at once, so a whole 16 x 224 x 224 video never holds more than a chunk of
queries or decoder features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from perceiver.adapters.audio import AudioAdapter
from perceiver.adapters.multimodal import (
    FourierGridQueries,
    LabelQuery,
    MultimodalInputAdapter,
    MultimodalOutput,
    MultimodalQueries,
    OneHotLabelAdapter,
)
from perceiver.adapters.video import VideoAdapter
from perceiver.checks import check_float_input, check_nonempty, model_dtype, to_bool_mask
from perceiver.core.decoder import PerceiverDecoder, decode
from perceiver.core.encoder import PerceiverEncoder
from perceiver.core.io import PerceiverIO, PerceiverIOOutput
from perceiver.models._io_config import PerceiverIOConfig
from perceiver.models.registry import register_model, register_model_type

MODALITIES = ("audio", "image", "label")


@dataclass
class MultimodalAutoencodingConfig(PerceiverIOConfig):
    """Hyper-parameters of `PerceiverForMultimodalAutoencoding` (defaults: DeepMind's / transformers' checkpoint).

    Inputs: `num_frames` x `image_size` video (space-to-depth `spatial_downsample`, `temporal_downsample`, Fourier
    bands `image_num_bands` with max resolution (T, H, W)); `num_frames * audio_samples_per_frame` audio samples in
    patches of `samples_per_patch` (`audio_num_bands` bands, max resolution = samples); `num_labels` label channels.
    Tokens are padded to `max(width) + input_padding`; `mask_probs` / `eval_masking`: see `MultimodalInputAdapter`.
    Encoder / decoder fields are `PerceiverIOConfig`'s; channel counts left None follow transformers' defaults
    (`cross_attention_shape="kv"`: the input width in the encoder, the latent width in the decoder). Decoder queries: Fourier features of the output grids and a `label_query_channels` trainable
    query, padded to `max(width) + query_padding`. `subsampled_positions`: "grid" (a subsampled decode gives the
    same rows as the whole decode) or "transformers" (their `-1 + 2 i / n` positions; set for parity). These three
    (`mask_probs`, `eval_masking`, `subsampled_positions`) are read at every forward, so they can be changed on a
    loaded model.
    """

    num_frames: int = 16
    image_size: Sequence[int] | int = (224, 224)
    image_channels: int = 3
    spatial_downsample: int = 4
    temporal_downsample: int = 1
    image_num_bands: int = 32
    audio_samples_per_frame: int = 1920
    samples_per_patch: int = 16
    audio_num_bands: int = 192
    num_labels: int = 700
    input_padding: int = 4
    mask_probs: dict[str, float] = field(default_factory=lambda: {"audio": 0.0, "image": 0.0, "label": 1.0})
    eval_masking: str = "deterministic"
    label_query_channels: int = 1024
    query_padding: int = 2
    output_num_channels: int = 512
    subsampled_positions: str = "grid"
    # encoder / decoder: PerceiverIOConfig's fields, at the checkpoint's sizes
    num_latents: int = 784
    latent_dim: int = 512
    num_blocks: int = 1
    num_self_attends_per_block: int = 8
    decoder_use_query_residual: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        size = self.image_size
        self.image_size = (int(size), int(size)) if isinstance(size, int) else tuple(int(n) for n in size)
        if len(self.image_size) != 2:
            raise ValueError(f"image_size must be an int or (H, W), got {size}")
        s, t = self.spatial_downsample, self.temporal_downsample
        if s < 1 or t < 1 or any(n % s for n in self.image_size) or self.num_frames % t:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by spatial_downsample {s} and num_frames "
                f"{self.num_frames} by temporal_downsample {t}"
            )
        if self.num_audio_samples % self.samples_per_patch:
            raise ValueError(
                f"num_frames * audio_samples_per_frame ({self.num_audio_samples}) must be a multiple of "
                f"samples_per_patch ({self.samples_per_patch})"
            )
        self.mask_probs = {str(k): float(v) for k, v in self.mask_probs.items()}
        if set(self.mask_probs) - set(MODALITIES) or any(not 0.0 <= p <= 1.0 for p in self.mask_probs.values()):
            raise ValueError(f"mask_probs must map some of {list(MODALITIES)} to [0, 1], got {self.mask_probs}")
        if self.eval_masking not in ("deterministic", "none", "random"):
            raise ValueError(f"eval_masking must be 'deterministic', 'none' or 'random', got {self.eval_masking!r}")
        if self.subsampled_positions not in ("grid", "transformers"):
            raise ValueError(
                f"subsampled_positions must be 'grid' or 'transformers', got {self.subsampled_positions!r}"
            )

    @property
    def num_audio_samples(self) -> int:
        return self.num_frames * self.audio_samples_per_frame

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        """`(T, C, H, W)` of the expected video."""
        return (self.num_frames, self.image_channels, *self.image_size)


@register_model_type
class PerceiverForMultimodalAutoencoding(PerceiverIO):
    """Perceiver IO autoencoder of video + audio + label; see the module docstring and
    `MultimodalAutoencodingConfig`."""

    config_class = MultimodalAutoencodingConfig
    model_type = "perceiver_multimodal_autoencoding"

    def __init__(self, config: MultimodalAutoencodingConfig) -> None:
        c = config
        t, (h, w) = c.num_frames, c.image_size
        inputs = MultimodalInputAdapter(
            {
                "audio": AudioAdapter(
                    num_samples=c.num_audio_samples,
                    samples_per_patch=c.samples_per_patch,
                    num_bands=c.audio_num_bands,
                    max_resolution=c.num_audio_samples,
                ),
                "image": VideoAdapter(
                    in_channels=c.image_channels,
                    num_frames=t,
                    image_size=(h, w),
                    temporal_block_size=c.temporal_downsample,
                    spatial_block_size=c.spatial_downsample,
                    num_bands=c.image_num_bands,
                    max_resolution=(t, h, w),
                ),
                "label": OneHotLabelAdapter(c.num_labels),
            },
            c.input_padding,
            {m: c.mask_probs.get(m, 0.0) for m in MODALITIES},  # a mask token for every modality
            c.eval_masking,  # type: ignore[arg-type]
        )
        audio_tokens = c.num_audio_samples // c.samples_per_patch
        queries = MultimodalQueries(
            {
                "audio": FourierGridQueries((audio_tokens,), c.audio_num_bands, (c.num_audio_samples,)),
                "image": FourierGridQueries((t, h, w), c.image_num_bands, (t, h, w)),
                "label": LabelQuery(c.label_query_channels),
            },
            c.query_padding,
        )
        encoder = PerceiverEncoder(c.encoder_config(inputs.num_channels))
        decoder = PerceiverDecoder(c.decoder_config(queries.num_channels, c.output_num_channels))
        outputs = MultimodalOutput(
            c.output_num_channels,
            {"audio": c.samples_per_patch, "image": c.image_channels, "label": c.num_labels},
            queries.sizes,
        )
        super().__init__(inputs, encoder, queries, decoder, outputs)
        self.config = c

    # -- inputs ---------------------------------------------------------------------------------------------------

    def _check_inputs(self, inputs: Any) -> dict[str, Tensor]:
        """Clear errors for the common mistakes before the adapters see the tensors; returns the inputs cast to the
        model's dtype (floating tensors only, see docs/reliability.md)."""
        c = self.config
        if not isinstance(inputs, Mapping):
            raise ValueError(f"expected inputs as a dict with keys {list(MODALITIES)}, got {type(inputs).__name__}")
        missing = [k for k in MODALITIES if k not in inputs]
        if missing:
            hint = " (to classify a video without a label, use classify(video, audio))" if missing == ["label"] else ""
            raise ValueError(f"inputs is missing {missing}; expected keys {list(MODALITIES)}{hint}")
        shapes = {"image": "(B, T, C, H, W)", "audio": "(B, S, 1)", "label": f"(B, {c.num_labels})"}
        dtype = model_dtype(self)
        inputs = {**inputs}
        for name in MODALITIES:
            inputs[name] = check_float_input(inputs[name], f"inputs[{name!r}]", shapes[name], dtype)
            check_nonempty(inputs[name], f"inputs[{name!r}]", shapes[name])
        image = inputs["image"]
        if image.ndim == 5:
            (n, _, h, w), s = image.shape[1:], c.spatial_downsample
            if h % s or w % s:
                raise ValueError(
                    f"expected image height and width that are multiples of the space-to-depth factor {s}, got {h} x {w} "
                    f"(inputs['image'] of shape {tuple(image.shape)})"
                )
            if n != c.num_frames:
                raise ValueError(
                    f"expected {c.num_frames} frames (num_frames) in inputs['image'] (B, T, C, H, W), got {n} "
                    f"(shape {tuple(image.shape)})"
                )
        return inputs

    def output_index(self, subsampled_output_points: Mapping[str, Any] | None, device=None) -> Tensor | None:
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

    def forward(
        self,
        inputs: Mapping[str, Tensor],
        attention_mask: Tensor | None = None,
        subsampled_output_points: Mapping[str, Any] | None = None,
        query_chunk_size: int | None = None,
        return_attention: bool = False,
    ) -> PerceiverIOOutput:
        """Encode `inputs` {"image": (B, T, C, H, W), "audio": (B, S, 1), "label": (B, K)} and decode.

        attention_mask: `(B, M)` over the input tokens (True = valid), as transformers. subsampled_output_points:
        see `output_index`. Returns `.logits` {"audio": (B, O_a * samples_per_patch), "image": (B, O_i, C),
        "label": (B, K)} with `O_a`, `O_i` the decoded positions (all: S / samples_per_patch and T * H * W),
        `.last_hidden_state` (B, N, D) and, with `return_attention`, the encoder maps and the decoder map
        `(B, H, O, N)`.
        """
        inputs = self._check_inputs(inputs)
        attention_mask = to_bool_mask(attention_mask, "attention_mask")
        self.input_adapter.eval_masking = self.config.eval_masking
        self.input_adapter.mask_probs = {m: float(self.config.mask_probs.get(m, 0.0)) for m in MODALITIES}
        self.query_builder.position_mode = self.config.subsampled_positions
        if query_chunk_size is not None and query_chunk_size < 1:
            raise ValueError(f"query_chunk_size must be >= 1, got {query_chunk_size}")
        adapted, latents, enc_maps = self.forward_features(inputs, attention_mask, return_attention)
        index = self.output_index(subsampled_output_points, latents.device)
        count = self.query_builder.num_queries() if index is None else index.numel()
        chunk = query_chunk_size or max(count, 1)
        pieces: dict[str, list[Tensor]] = {}
        maps = []
        for start in range(0, count, chunk):
            stop = min(start + chunk, count)
            if index is not None:
                idx = index[start:stop]
            else:
                idx = None if (start, stop) == (0, count) else slice(start, stop)
            out, probs = decode(self.decoder, self.query_builder, adapted, latents, idx, None, return_attention)
            for name, y in self.output_adapter(out, adapted, idx).items():
                pieces.setdefault(name, []).append(y)
            if probs is not None:
                maps.append(probs)
        logits = {k: v[0] if len(v) == 1 else torch.cat(v, dim=1) for k, v in pieces.items()}
        return PerceiverIOOutput(logits, latents, enc_maps, torch.cat(maps, dim=2) if maps else None)

    def classify(self, video: Tensor, audio: Tensor, query_chunk_size: int | None = None) -> Tensor:
        """Label logits `(B, K)` of a video `(B, T, C, H, W)` with its audio `(B, S, 1)`: feeds a zero label (which
        the label's mask token replaces, as in DeepMind's colab) and decodes only the label query."""
        label = video.new_zeros(video.shape[0], self.config.num_labels)
        empty = torch.empty(0, dtype=torch.long)
        out = self(
            {"image": video, "audio": audio, "label": label},
            subsampled_output_points={"audio": empty, "image": empty, "label": None},
        )
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


@register_model("multimodal-perceiver")
def multimodal_perceiver(**overrides: Any) -> PerceiverForMultimodalAutoencoding:
    """DeepMind's Kinetics-700 autoencoder (`deepmind/multimodal-perceiver`): 16 frames at 224 x 224, 30,720 audio
    samples, 700 labels; 784 x 512 latents, 8 self-attention layers (8 heads), 1 cross-attention head."""
    return PerceiverForMultimodalAutoencoding(MultimodalAutoencodingConfig(**overrides))
