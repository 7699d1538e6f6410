"""The multimodal autoencoder's side of `perceiver.export`: its forward takes a dict and returns a dict of logits, so
it is exported through one of two wrappers with positional tensors in and tensors out.

    MultimodalClassifier(model)      (video (B, T, C, H, W), audio (B, S, 1)) -> label logits (B, K)  (the default)
    MultimodalReconstruction(model)  (video, audio, label (B, K)) -> (video (B, T, C, H, W), audio (B, S, 1),
                                     label logits (B, K))                                        (opt-in, `reconstruct`)

`perceiver.export` wraps a `PerceiverForMultimodalAutoencoding` in `MultimodalClassifier` itself (`LogitsOnly`);
export `MultimodalReconstruction(model)` for the whole autoencoding. `classify` names the label query by its
position range (a slice), not an index tensor: the output adapter counts each modality's positions in an index
tensor with `int(...)`, a data-dependent value torch.export cannot trace.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from perceiver.models.multimodal import PerceiverForMultimodalAutoencoding

__all__ = ["MultimodalClassifier", "MultimodalReconstruction", "multimodal_example_inputs"]


def _check_exportable(model: PerceiverForMultimodalAutoencoding, inputs: tuple[Tensor, ...], names: list[str]) -> None:
    """`ValueError` for another number of inputs than `names`, or a model that masks at random in eval mode (an
    exported graph would draw a new mask at every call: its outputs would match nothing)."""
    if len(inputs) != len(names):
        raise ValueError(f"expected {len(names)} input tensors ({', '.join(names)}), got {len(inputs)}")
    if model.config.inputs.eval_masking == "random":
        raise ValueError(
            "expected eval_masking 'deterministic' or 'none' to export the multimodal model, got 'random' (a new "
            "random mask at every call); set model.config.inputs.eval_masking = 'deterministic'"
        )


class MultimodalClassifier(nn.Module):
    """`(video (B, T, C, H, W), audio (B, S, 1))` -> label logits `(B, K)` of a multimodal autoencoder: what
    `model.classify(video, audio)` computes (a zero label, which the label's mask token replaces; only the label
    query decoded)."""

    onnx_input_names = ("video", "audio")
    onnx_output_names = ("logits",)

    def __init__(self, model: PerceiverForMultimodalAutoencoding) -> None:
        super().__init__()
        if not isinstance(model, PerceiverForMultimodalAutoencoding):
            raise TypeError(f"expected a PerceiverForMultimodalAutoencoding, got {type(model).__name__}")
        self.model = model

    def forward(self, *inputs: Tensor) -> Tensor:
        _check_exportable(self.model, inputs, list(self.onnx_input_names))
        video, audio = inputs
        return self.model.classify(video, audio)


class MultimodalReconstruction(nn.Module):
    """`(video (B, T, C, H, W), audio (B, S, 1), label (B, K))` -> `(video (B, T, C, H, W), audio (B, S, 1),
    label logits (B, K))`: the whole autoencoding (`model.reconstruct`), decoded in chunks of `query_chunk_size`
    queries. Export it for every output: `export_onnx(MultimodalReconstruction(model), "autoencoder.onnx")`."""

    onnx_input_names = ("video", "audio", "label")
    onnx_output_names = ("video_reconstruction", "audio_reconstruction", "label_logits")
    task_output = "reconstruction"

    def __init__(self, model: PerceiverForMultimodalAutoencoding, query_chunk_size: int | None = 16384) -> None:
        super().__init__()
        if not isinstance(model, PerceiverForMultimodalAutoencoding):
            raise TypeError(f"expected a PerceiverForMultimodalAutoencoding, got {type(model).__name__}")
        self.model = model
        self.query_chunk_size = query_chunk_size

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _check_exportable(self.model, inputs, list(self.onnx_input_names))
        video, audio, label = inputs
        out = self.model.reconstruct({"image": video, "audio": audio, "label": label}, self.query_chunk_size)
        return out["image"], out["audio"], out["label"]


def multimodal_model(model: nn.Module) -> PerceiverForMultimodalAutoencoding | None:
    """The multimodal autoencoder `model` is or wraps (`MultimodalReconstruction`, `MultimodalClassifier`), or None."""
    inner = (
        getattr(model, "model", None) if isinstance(model, MultimodalClassifier | MultimodalReconstruction) else model
    )
    return inner if isinstance(inner, PerceiverForMultimodalAutoencoding) else None


def multimodal_example_inputs(model: nn.Module, batch: int, video_shape: tuple[int, ...] | None) -> tuple[Tensor, ...]:
    """Random `(video (B, T, C, H, W), audio (B, S, 1))` of the config's `video_shape` (or `video_shape` given) and
    audio length, and for `MultimodalReconstruction` a one-hot label `(B, K)`; in the model's dtype and device."""
    m = multimodal_model(model)
    assert m is not None
    p = next(m.parameters())
    video = torch.randn(batch, *(video_shape or m.config.video_shape), dtype=p.dtype, device=p.device)
    assert m.config.audio.num_samples is not None  # the config requires it
    audio = torch.randn(batch, m.config.audio.num_samples, 1, dtype=p.dtype, device=p.device)
    if not isinstance(model, MultimodalReconstruction):
        return video, audio
    k = m.config.num_classes
    label = nn.functional.one_hot(torch.randint(0, k, (batch,), device=p.device), k).to(p.dtype)
    return video, audio, label
