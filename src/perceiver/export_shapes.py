"""The input side of `perceiver.export`: example inputs, the model inside a wrapper, and which input dimensions an
exported graph leaves dynamic.

Every export takes any batch (dim 0, "batch"). The resampler's media also take any number of tokens per media
("media_tokens"). The text models (masked LM, text, token and question-answering heads) also take any length from 1 to
`max_seq_len` ("sequence") where their code allows it, Perceiver AR any window from two prefix positions beyond its
latents to `max_seq_len` (`sequence_limits`): the export is traced with a symbolic length first and, if the model's
code fixes the length (a decode that counts its positions in Python), traced again at the length of the example
inputs, as before. `dynamic_length(program)` / `length_range(program)` say which one was written. Every other size
is the export's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from perceiver.checks import InputTypeError

__all__ = [
    "describe_inputs",
    "describe_spec",
    "dynamic_dims",
    "dynamic_length",
    "example_inputs",
    "export_dynamic",
    "input_spec",
    "length_range",
    "sequence_limits",
    "text_max_length",
    "unwrapped",
]

#: the batch of every input; 4096 is a bound for the tracer, not a limit of the models
BATCH_LIMIT = 4096


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside `torch.compile(model)` (`_orig_mod`) or an `OptimizedModel` / `CompiledModel` (`module`)."""
    from perceiver.optimization import CompiledModel

    while True:
        inner = model.module if isinstance(model, CompiledModel) else getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def text_max_length(model: nn.Module) -> int | None:
    """`max_seq_len` of a text Perceiver IO model (ids `(B, L)` and mask `(B, L)` in, L <= max_seq_len), else None."""
    from perceiver.models import (
        PerceiverForMaskedLM,
        PerceiverForSequenceClassification,
        PerceiverForTokenClassification,
    )

    model = unwrapped(model)
    text_models = PerceiverForMaskedLM | PerceiverForSequenceClassification | PerceiverForTokenClassification
    return int(model.config.adapter.max_seq_len) if isinstance(model, text_models) else None


def sequence_limits(model: nn.Module) -> tuple[int, int] | None:
    """The shortest and longest ids length L `(B, L)` a sequence model's export may leave dynamic, or None (not a
    sequence model, or a window too short to vary): a text Perceiver IO model 1 to `max_seq_len`; Perceiver AR from
    two prefix positions beyond its N latents (N + 2 with `num_latents`, `prefix_len` + 2 with a fixed prefix, where
    N = L - prefix_len) to `max_seq_len`: torch.export specialises a dimension of size 0 or 1, so the traced graph
    takes a prefix (or N) of at least 2."""
    from perceiver.models.ar import PerceiverAR

    limit = text_max_length(model)
    if limit is not None:
        return 1, limit
    model = unwrapped(model)
    if not isinstance(model, PerceiverAR):
        return None
    c = model.config
    low = (c.prefix_len if c.prefix_len is not None else c.num_latents) + 2
    return (low, c.max_seq_len) if low < c.max_seq_len else None


def example_inputs(model: nn.Module, batch_size: int = 2, shape: Sequence[int] | None = None) -> tuple[Tensor, ...]:
    """Random inputs `(B, ...)` of the size `model` is built for (`shape` replaces the per-sample shape).

    Classic `Perceiver` `(B, *axes, C)` (224 per axis for images, 1024 samples for 1-D, 8 x 64 x 64 for video);
    text `(B, max_seq_len)` ids and a boolean mask; images `(B, C, H, W)`; flow `(B, 2, 27, H, W)`; point clouds
    `(B, 1024, C)` and a mask; audio `(B, S)`; video `(B, T, C, H, W)`; Perceiver AR `(B, max_seq_len)` ids and a
    boolean mask (its forward: next-token logits `(B, N, V)` of the last N positions); the resampler's media
    `(B, T, 64, dim)` (T = `num_media_embeds`, at least 1); the multimodal autoencoder's video `(B, T, C, H, W)`
    (`shape`: the video's) and audio `(B, S, 1)`, and a one-hot label `(B, K)` for `MultimodalReconstruction`. A
    `torch.compile`d model or an `OptimizedModel` gets its model's inputs.
    """
    from perceiver.export_multimodal import multimodal_example_inputs, multimodal_model
    from perceiver.models import (
        Perceiver,
        PerceiverForAudioClassification,
        PerceiverForImageClassification,
        PerceiverForOpticalFlow,
        PerceiverForPointCloudClassification,
        PerceiverForVideoClassification,
    )
    from perceiver.models.ar import PerceiverAR
    from perceiver.models.resampler import PerceiverResampler

    model = unwrapped(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise InputTypeError(f"expected batch_size as an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    if shape is not None and (
        not isinstance(shape, Sequence) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    ):
        raise InputTypeError(f"expected shape as a sequence of ints (the per-sample input shape), got {shape!r}")
    b = batch_size
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device

    def randn(*size: int) -> Tensor:
        return torch.randn(*size, dtype=dtype, device=device)

    sample = tuple(shape) if shape is not None else None
    sequences = isinstance(model, PerceiverAR) or text_max_length(model) is not None
    if sequences and sample is not None and len(sample) != 1:  # the ids' length; the mask has the same
        raise ValueError(f"expected shape (L,) for {type(model).__name__}'s ids (B, L), got {sample}")
    if multimodal_model(model) is not None:
        return multimodal_example_inputs(model, b, sample)
    if isinstance(model, Perceiver):
        c = model.config
        default = {1: (1024,), 2: (224, 224), 3: (8, 64, 64)}.get(c.input_axis, (16,) * c.input_axis)
        return (randn(b, *(sample or (*default, c.input_channels))),)
    if isinstance(model, PerceiverAR):
        length = sample[0] if sample else model.config.max_seq_len
        ids = torch.randint(0, model.config.vocab_size, (b, length), device=device)
        return ids, torch.ones(b, length, dtype=torch.bool, device=device)
    # Perceiver IO models: sizes from the input adapter's config
    max_len = text_max_length(model)
    if max_len is not None:  # masked LM, text / token classifiers, question answering
        length = sample[0] if sample else max_len
        vocab_size = int(cast(Any, model).config.adapter.vocab_size)
        ids = torch.randint(6, vocab_size, (b, length), device=device)
        return ids, torch.ones(b, length, dtype=torch.bool, device=device)
    if isinstance(model, PerceiverForImageClassification):
        image = model.config.adapter
        return (randn(b, *(sample or (image.in_channels, *image.image_size))),)
    if isinstance(model, PerceiverForOpticalFlow):
        flow = model.config.adapter
        return (randn(b, *(sample or (2, 3 * flow.patch_size**2, *flow.train_size))),)
    if isinstance(model, PerceiverForPointCloudClassification):
        points = randn(b, *(sample or (1024, model.config.adapter.in_channels))).clamp(-1, 1)
        return points, torch.ones(b, points.shape[1], dtype=torch.bool, device=device)
    if isinstance(model, PerceiverForAudioClassification):
        a = model.config.adapter
        return (randn(b, *(sample or (a.num_samples or 16 * a.samples_per_patch,))),)
    if isinstance(model, PerceiverForVideoClassification):
        a = model.config.adapter
        return (randn(b, *(sample or (a.num_frames or 8, a.in_channels, *(a.image_size or (64, 64))))),)
    if isinstance(model, PerceiverResampler):
        r = model.config
        return (randn(b, *(sample or (max(1, r.num_media_embeds), 64, r.dim))),)
    raise ValueError(
        f"no example inputs for {type(model).__name__}; pass the inputs to export yourself "
        "(export_program(model, inputs=...) / export_onnx(model, path, inputs=...))"
    )


def _sequence_length(model: nn.Module, inputs: Sequence[Tensor]) -> int | None:
    """The length L of a sequence model's ids `(B, L)` when the export may leave it dynamic (in `sequence_limits`
    and at least 2: torch.export fixes a dimension of size 1, and the model refuses longer ids), else None."""
    limits = sequence_limits(model)
    if limits is None or not inputs or inputs[0].ndim != 2:
        return None
    length = int(inputs[0].shape[1])
    return length if max(2, limits[0]) <= length <= limits[1] else None


def dynamic_dims(model: nn.Module, inputs: Sequence[Tensor], sequence: bool = True, names: bool = False) -> Any:
    """torch.export's `dynamic_shapes` of `LogitsOnly(model)(*inputs)` (one entry for its `*inputs`): dim 0 of every
    input is the shared batch; the resampler's media `(B, T, M, D)` (and mask `(B, T, M)`) take any number M of
    tokens per media; with `sequence`, a sequence model's ids and mask `(B, L)` any length of `sequence_limits`.
    `names`: the dimensions' names instead ("batch", "media_tokens", "sequence"), as `torch.onnx.export` takes them
    to name the ONNX file's dynamic axes."""
    from perceiver.models.resampler import PerceiverResampler

    batch = "batch" if names else torch.export.Dim("batch", min=1, max=BATCH_LIMIT)
    dims: list[dict[int, Any]] = [{0: batch} for _ in inputs]
    if isinstance(unwrapped(model), PerceiverResampler) and inputs and inputs[0].ndim == 4:
        media = "media_tokens" if names else torch.export.Dim("media_tokens", min=2, max=65536)
        for d, t in zip(dims, inputs):
            if t.ndim >= 3:
                d[2] = media
    length = _sequence_length(model, inputs) if sequence else None
    limits = sequence_limits(model)
    if length is not None and limits is not None:
        seq = "sequence" if names else torch.export.Dim("sequence", min=limits[0], max=limits[1])
        for d, t in zip(dims, inputs):
            if t.ndim == 2 and t.shape[1] == length:
                d[1] = seq
    return (tuple(dims),)


def export_dynamic(module: nn.Module, model: nn.Module, inputs: tuple[Tensor, ...]) -> torch.export.ExportedProgram:
    """`torch.export.export(module, inputs)` (`module`: `LogitsOnly(model)`) with the dynamic dimensions of
    `dynamic_dims`: a text model first with its length dynamic, and if that fails (the model's code fixes the
    length, or the symbolic length meets an operation torch.export cannot trace) again at the inputs' length."""
    if _sequence_length(model, inputs) is not None:
        try:
            return torch.export.export(module, inputs, dynamic_shapes=dynamic_dims(model, inputs))
        except Exception:  # noqa: BLE001 - any failure: the fixed length below, whose error (if any) is raised
            pass
    return torch.export.export(module, inputs, dynamic_shapes=dynamic_dims(model, inputs, sequence=False))


def _user_input_shapes(program: torch.export.ExportedProgram) -> list[tuple[Any, ...]]:
    """The shapes of the program's user inputs, a symbolic dimension as its sympy expression."""
    from torch.export.graph_signature import InputKind

    names = {s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT}
    shapes = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names and isinstance(node.meta.get("val"), Tensor):
            shapes.append(tuple(d.node.expr if isinstance(d, torch.SymInt) else int(d) for d in node.meta["val"].shape))
    return shapes


def dynamic_length(program: torch.export.ExportedProgram) -> bool:
    """True if the program's first input (a sequence model's ids `(B, L)`) takes any length L of a range."""
    shapes = _user_input_shapes(program)
    return bool(shapes) and len(shapes[0]) == 2 and not isinstance(shapes[0][1], int)


def length_range(program: torch.export.ExportedProgram) -> tuple[int, int | None] | None:
    """The lengths L the program's ids `(B, L)` take, `(shortest, longest)` (longest None: no bound), or None when
    the length is the export's."""
    if not dynamic_length(program):
        return None
    low, high = input_spec(program)[0][1]
    return int(low), None if high is None else int(high)


def input_spec(program: torch.export.ExportedProgram) -> list[list[Any]]:
    """Each user input's dimensions as the program takes them, JSON-able: an int (the export's size) or
    `[low, high]` (a dynamic dimension's range; high None for no bound). Dim 0 is the batch."""
    ranges = program.range_constraints
    spec: list[list[Any]] = []
    for shape in _user_input_shapes(program):
        dims: list[Any] = []
        for d in shape:
            r = ranges.get(d) if not isinstance(d, int) else None
            if isinstance(d, int):
                dims.append(d)
            else:
                dims.append(
                    [1 if r is None else max(1, int(r.lower)), int(r.upper) if r and r.upper.is_finite else None]
                )
        spec.append(dims)
    return spec


def describe_spec(spec: list[list[Any]]) -> list[str]:
    """`input_spec` as text: `(batch, 3, 16, 16)`, `(batch, 1..16)` (a dynamic dimension by its range)."""
    out = []
    for dims in spec:
        text = []
        for i, d in enumerate(dims):
            if isinstance(d, int):
                text.append(str(d))
            elif i == 0:
                text.append("batch")
            else:
                text.append(f"{d[0]}..{d[1]}" if d[1] is not None else f">={d[0]}")
        out.append(f"({', '.join(text)})")
    return out


def describe_inputs(program: torch.export.ExportedProgram) -> list[str]:
    """Each user input's shape as the program takes it: `(batch, 3, 16, 16)`, `(batch, 1..16)` (a dynamic dimension
    by its range)."""
    return describe_spec(input_spec(program))
