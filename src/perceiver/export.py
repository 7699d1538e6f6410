"""Deployment: `torch.export` and ONNX export of our models, with a dynamic batch dimension.

    program = perceiver.export.export_program(model)                      # torch.export.ExportedProgram
    perceiver.export.export_onnx(model, "model.onnx", check=True)          # ONNX (dynamo exporter) + onnxruntime check
    perceiver export MODEL_DIR OUT.onnx [--check] [--batch-size N] [--shape ...]   (the same from the command line)
    perceiver export MODEL_DIR OUT.onnx --quantize int8 --check     # int8 weights, dynamic int8 activations
    perceiver.export.export_pt2(model, "model.pt2", aoti=True, check=True)  # AOTInductor: compiled ahead of time
    perceiver export MODEL_DIR OUT.pt2 [--aoti] [--check]           # torch.export archive / AOTInductor package

`quantize="int8"` (`--quantize int8`) rewrites the exported graph with onnxruntime's dynamic quantisation
(`onnxruntime.quantization.quantize_dynamic`: MatMul weights in int8, activations quantised at run time): a file a
quarter of the size that onnxruntime runs with integer GEMMs (`benchmarks/bench_quant.py` on the Zen 4 EPYC, batch 1,
2 threads, random weights: language-perceiver on 2048 bytes 0.255 s against 0.620 s for the fp32 file, 806 -> 214 MB,
max rel. error 5.3%, every top-1 byte kept; vision-perceiver-learned no faster, its time is attention, not weight
GEMMs). It changes the arithmetic: `check` then compares relative to the largest output (`int8_rtol`). It takes
float32 models only (onnxruntime's quantisation of an fp16 graph writes a file onnxruntime cannot load).

`example_inputs(model, batch_size)` builds inputs of the shape each model is made for (images of `image_size`, text of
`max_seq_len` bytes with an attention mask, flow patches of `train_size`, a full Perceiver AR window of token ids with
its mask, ...); the exported graph takes any batch size and that input size. `inputs=` given instead is a tuple of
tensors, the positional arguments of the model's forward (a single tensor is taken as `(tensor,)`, as
`torch.onnx.export` does). An error the model itself raises on them (a `ValueError` naming the expected shape) is
raised as it is, not wrapped in the exporter's. The graph returns the task output (`logits`; the resampler's
`last_hidden_state`) as one tensor. The multimodal autoencoder (forward: dicts in and out) exports its classification,
`(video (B, T, C, H, W), audio (B, S, 1))` -> label logits `(B, K)` as `classify` computes them (ONNX inputs `video`,
`audio`, output `logits`); `export_*(perceiver.export_multimodal.MultimodalReconstruction(model), ...)` exports the
whole autoencoding instead (`reconstruct`: video, audio and label in, the three reconstructions out,
`video_reconstruction`, `audio_reconstruction`, `label_logits`; the check compares each). ONNX export needs the `onnx`
and `onnxscript` packages (`pip install 'perceiver-torch[export]'`), the check also `onnxruntime`. With `check`, a
file that fails its check is not written (it is checked before it is moved into place), nor are folders made for it
kept. The check allows `atol`, and for an fp16 / bf16 model also 8 rounding steps of its dtype times the largest
output (eager and the exported graph round differently). onnxruntime's CPU kernels have no bfloat16: check (and serve)
a bf16 model's ONNX as `model.float()`. A model on the meta device (no weights) is refused.

A `.pt2` file is PyTorch's own archive: `export_pt2` writes the exported program (`torch.export.save`; load it with
`torch.export.load(path).module()` or `load_pt2`), or with `aoti=True` an AOTInductor package: the program compiled
ahead of time by Inductor into a shared library for this machine (CPU, or the model's CUDA device), which
`load_pt2` / `torch._inductor.aoti_load_package(path)` runs in Python and `torch::inductor::AOTIModelPackageLoader`
in C++, without Python or compilation at serving time. Both take any batch size.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from perceiver import export_checks as checks
from perceiver.checks import InputTypeError

Exported = TypeVar("Exported", bound=Callable[..., Any])

__all__ = [
    "LogitsOnly",
    "example_inputs",
    "export_onnx",
    "export_program",
    "export_pt2",
    "load_pt2",
    "onnx_max_abs_diff",
    "task_output_name",
]


def task_output_name(model: nn.Module) -> str:
    """The output field an export holds: the model's `task_output` ("last_hidden_state" for the resampler, which
    has no head), else "logits"."""
    return str(getattr(model, "task_output", "logits"))


class LogitsOnly(nn.Module):
    """`model(*inputs)` -> the task output as one tensor: the `task_output_name` field of an output object
    (`.logits`; `.last_hidden_state` for a model without a head, as the resampler), or the tensor itself; a tuple of
    tensors as the model returns it (`MultimodalReconstruction`). The multimodal autoencoder is taken as its
    classifier, `MultimodalClassifier(model)`: `(video, audio)` -> label logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from perceiver.export_multimodal import MultimodalClassifier
        from perceiver.models.multimodal import PerceiverForMultimodalAutoencoding

        multimodal = isinstance(model, PerceiverForMultimodalAutoencoding)
        self.model = MultimodalClassifier(cast(PerceiverForMultimodalAutoencoding, model)) if multimodal else model

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        out = self.model(*inputs)
        if isinstance(out, tuple) and out and all(isinstance(t, Tensor) for t in out):
            return out
        if not isinstance(out, Tensor):
            out = getattr(out, task_output_name(self.model), None)
        if not isinstance(out, Tensor):
            raise TypeError(f"expected the model's task output to be one tensor, got {type(out).__name__}")
        return out


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
        PerceiverForMaskedLM,
        PerceiverForOpticalFlow,
        PerceiverForPointCloudClassification,
        PerceiverForSequenceClassification,
        PerceiverForTokenClassification,
        PerceiverForVideoClassification,
    )
    from perceiver.models.ar import PerceiverAR
    from perceiver.models.resampler import PerceiverResampler

    model = _unwrapped(model)
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
    text_models = PerceiverForMaskedLM | PerceiverForSequenceClassification | PerceiverForTokenClassification
    if isinstance(model, text_models):  # and question answering, a token classifier
        text = model.config.adapter
        length = sample[0] if sample else text.max_seq_len
        ids = torch.randint(6, text.vocab_size, (b, length), device=device)
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


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside `torch.compile(model)` (`_orig_mod`) or an `OptimizedModel` / `CompiledModel` (`module`)."""
    from perceiver.optimization import CompiledModel

    while True:
        inner = model.module if isinstance(model, CompiledModel) else getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _as_inputs(model: nn.Module, inputs: Tensor | Sequence[Tensor] | None) -> tuple[Tensor, ...]:
    """The export's positional inputs: `example_inputs(model, 2)` for None, `(inputs,)` for one tensor (as
    `torch.onnx.export` takes it; iterating it would split its batch), else `tuple(inputs)` of tensors. A batch of
    1 is repeated to 2: torch.export specialises a size-1 dimension, and the graph is to take any batch."""
    if inputs is None:
        return example_inputs(model, 2)
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    if isinstance(inputs, str | bytes) or not isinstance(inputs, Sequence):
        raise TypeError(f"expected inputs as a tensor or a tuple of tensors, got {type(inputs).__name__}")
    inputs = tuple(inputs)
    if not inputs:
        raise ValueError("expected at least one input tensor, got an empty inputs tuple")
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"expected inputs as a tuple of tensors, got {type(x).__name__} at position {i}")
    if inputs[0].shape[0] == 1:
        inputs = tuple(x.expand(2, *x.shape[1:]).contiguous() for x in inputs)
    return inputs


def _our_error(error: BaseException) -> Exception | None:
    """The first `ValueError` / `TypeError` raised by this package's code in `error`'s cause / context chain (the
    model's own message on bad inputs, which torch's exporters wrap in an error of their own), else None."""
    package = str(Path(__file__).resolve().parent)
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ValueError | TypeError):
            tb = e.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None and str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(package):
                return e
        todo += [e.__cause__, e.__context__]
    return None


def _raise_ours(error: BaseException, model: nn.Module, inputs: tuple[Tensor, ...]) -> None:
    """Raise the model's own `ValueError` / `TypeError` on `inputs` if `error` (an exporter's) comes from one (see
    `_our_error`), with the concrete shapes of an eager call (the exporter's message names its symbolic batch, "s0");
    return otherwise, for the caller to re-raise `error`. Runs only after a failed export."""
    ours = _our_error(error)
    if ours is None:
        return
    try:
        with torch.no_grad():
            LogitsOnly(model).eval()(*inputs)
    except (ValueError, TypeError) as eager:
        if _our_error(eager) is eager:
            raise eager from eager.__cause__
    raise ours from ours.__cause__


def _keeps_mode(fn: Exported) -> Exported:
    """`fn(model, ...)` runs `model` in eval mode and leaves it in the mode it came in (as `torch.onnx.export`
    does): an export in the middle of training does not switch its dropout off for the rest of it."""

    @functools.wraps(fn)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        was_training = getattr(model, "training", None)
        try:
            return fn(model, *args, **kwargs)
        finally:
            if isinstance(model, nn.Module) and was_training is not None:
                model.train(was_training)

    return cast(Exported, wrapper)


def _dynamic_batch(model: nn.Module, inputs: Sequence[Tensor]) -> tuple[tuple[dict[int, Any], ...]]:
    """Dim 0 of every input is the shared batch (one entry for `LogitsOnly.forward`'s `*inputs`); the resampler's
    media `(B, T, M, D)` (and mask `(B, T, M)`) also take any number M of tokens per media (images of other sizes)."""
    from perceiver.models.resampler import PerceiverResampler

    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=4096)}
    if isinstance(_unwrapped(model), PerceiverResampler) and inputs[0].ndim == 4:
        dims[2] = torch.export.Dim("media_tokens", min=2, max=65536)
    return (tuple(dict(dims) if t.ndim >= 3 else {0: dims[0]} for t in inputs),)


@_keeps_mode
def export_program(model: nn.Module, inputs: Tensor | Sequence[Tensor] | None = None) -> torch.export.ExportedProgram:
    """`torch.export.export` of `model`'s task output with a dynamic batch dimension (eval mode).

    `inputs`: the forward's positional tensors (default `example_inputs(model, 2)`; one tensor is `(tensor,)`).
    Batch 1 is exported as batch 2 (torch.export specialises a size-1 dimension), the program takes any batch.
    """
    model = model.eval()
    inputs = _as_inputs(model, inputs)
    try:
        return torch.export.export(LogitsOnly(model).eval(), inputs, dynamic_shapes=_dynamic_batch(model, inputs))
    except Exception as e:  # the model's own error on bad inputs, with concrete shapes
        _raise_ours(e, model, inputs)
        raise


@_keeps_mode
def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    inputs: Tensor | Sequence[Tensor] | None = None,
    check: bool = False,
    check_batch_sizes: Sequence[int] = (1, 3),
    atol: float = 1e-4,
    quantize: str | None = None,
    int8_rtol: float = 0.1,
) -> Path:
    """Write `model` as ONNX (`torch.onnx.export(..., dynamo=True)`, dynamic batch) to `path`.

    `inputs`: the forward's positional tensors (default `example_inputs(model, 2)`; one tensor is `(tensor,)`).
    With `check`, runs the file in onnxruntime at `check_batch_sizes` on random inputs and raises if its output
    differs from eager PyTorch by more than `atol` (max abs; for an fp16 / bf16 model plus 8 rounding steps of its
    dtype times the largest output; with `quantize="int8"`, more than `int8_rtol` times the largest output). Returns
    the path (`path` ending in .onnx; a model over 2 GB also writes its weights to `NAME.data` beside it). The file is
    written in a folder next to `path` first, checked there and only then moved into place, so a failed export or a
    failed check leaves no file at `path` (nor a half-written one, nor the folders made for it).
    `quantize="int8"`: onnxruntime's dynamic int8 quantisation of the graph (see the module docstring).
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"expected the path of the .onnx file to write, got the folder {str(path)!r}")
    if path.suffix.lower() != ".onnx":
        hint = " (export_pt2 writes .pt2 archives)" if path.suffix == ".pt2" else ""
        raise ValueError(f"expected a path ending in .onnx, got {str(path)!r}{hint}")
    checks.check_batch_sizes(check_batch_sizes)
    checks.require_weights(model)
    if quantize:
        checks.require_fp32(model, "quantize='int8' (onnxruntime's dynamic quantisation takes float32 graphs)")
    model = model.eval()
    inputs = _as_inputs(model, inputs)
    made = checks.make_folders(path.parent)
    # written in a folder of its own under the final name: a model over 2 GB comes with its weights in `NAME.data`,
    # which the .onnx file names (written as `.m.onnx.tmp`, it named `.m.onnx.tmp.data`, left there after a failure)
    tmp_folder = path.with_name(f".{path.name}.tmp")
    tmp = tmp_folder / path.name
    wrapped = LogitsOnly(model).eval()
    names = [f"input_{i}" for i in range(len(inputs))] if len(inputs) > 2 else ["inputs", "mask"][: len(inputs)]
    names = list(getattr(wrapped.model, "onnx_input_names", names))  # the multimodal model's video, audio (, label)
    try:
        try:
            program = torch.onnx.export(
                wrapped,
                tuple(inputs),
                dynamo=True,
                dynamic_shapes=_dynamic_batch(model, inputs),
                input_names=names,
                output_names=list(getattr(wrapped.model, "onnx_output_names", ["logits"])),
                verbose=False,
            )
        except Exception as e:  # the exporter wraps the model's own error on bad inputs: raise that one
            _raise_ours(e, model, inputs)
            raise
        assert program is not None  # dynamo=True: torch's hint also covers the legacy exporter's None
        tmp_folder.mkdir(exist_ok=True)
        program.save(str(tmp))
        if quantize == "int8":
            from perceiver.export_onnxruntime import quantize_int8

            quantize_int8(tmp)
        not_written = f"{path} was not written (export without the check to inspect the file)"
        for b in check_batch_sizes if check else ():
            try:
                diff, scale, dtype = _onnx_errors(model, tmp, checks.resized(inputs, b), f"the file for {path}")
            except RuntimeError as e:  # onnxruntime cannot run it (a bf16 graph, ...)
                raise RuntimeError(f"{e}; {not_written}") from e.__cause__
            limit, why = checks.tolerance(atol, scale, dtype)
            if quantize:
                limit, why = int8_rtol * scale, f" = {int8_rtol} x the largest output {scale:.3g}"
            if not diff <= limit:
                raise RuntimeError(
                    f"onnxruntime output differs from PyTorch by {diff:.3g} at batch {b} (> {limit:.3g}{why})"
                    f"; {not_written}"
                )
        data = tmp.with_name(f"{path.name}.data")
        if data.exists():
            os.replace(data, path.with_name(data.name))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_folder, ignore_errors=True)
        checks.remove_empty(made, unless=path)
    return path


@_keeps_mode
def export_pt2(
    model: nn.Module,
    path: str | os.PathLike,
    inputs: Tensor | Sequence[Tensor] | None = None,
    aoti: bool = False,
    check: bool = False,
    check_batch_sizes: Sequence[int] = (1, 3),
    atol: float = 1e-4,
) -> Path:
    """Write `model`'s task output as a `.pt2` archive with a dynamic batch (see the module docstring): the
    `torch.export` program, or with `aoti` an AOTInductor package compiled for this machine.

    `inputs`: the forward's positional tensors (default `example_inputs(model, 2)`; one tensor is `(tensor,)`).
    With `check`, loads the file back (`load_pt2`) and raises if its output on random inputs at `check_batch_sizes`
    differs from eager PyTorch by more than `atol` (max abs; for an fp16 / bf16 model plus 8 rounding steps of its
    dtype times the largest output). Written next to `path`, checked there and moved into place: a failed export or
    check leaves no file at `path` (nor a half-written one, nor the folders made for it). Returns the path.
    """
    path = Path(path).expanduser()
    if path.suffix != ".pt2":
        raise ValueError(f"expected a path ending in .pt2, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"expected the path of the .pt2 file to write, got the folder {str(path)!r}")
    checks.check_batch_sizes(check_batch_sizes)
    checks.require_weights(model)
    model = model.eval()
    inputs = _as_inputs(model, inputs)
    made = checks.make_folders(path.parent)
    tmp = path.with_name(f".{path.stem}.tmp.pt2")  # AOTInductor wants the .pt2 suffix
    try:
        program = export_program(model, inputs)
        if aoti:
            from torch._inductor import aoti_compile_and_package

            aoti_compile_and_package(program, package_path=str(tmp))
        else:
            torch.export.save(program, tmp)
        if check:
            runner = load_pt2(tmp)
            for b in check_batch_sizes:
                x = checks.resized(inputs, b)
                with torch.no_grad():
                    expected = checks.outputs(LogitsOnly(model)(*x))
                    diff, scale = checks.max_diff(checks.outputs(runner(*x)), expected)
                limit, why = checks.tolerance(atol, scale, expected[0].dtype)
                if not diff <= limit:
                    raise RuntimeError(
                        f"the .pt2 file's output differs from PyTorch by {diff:.3g} at batch {b} (> {limit:.3g}{why})"
                        f"; {path} was not written (export without the check to inspect the file)"
                    )
            del runner
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        checks.remove_empty(made, unless=path)
    return path


def load_pt2(path: str | os.PathLike) -> Any:
    """A callable `(*inputs) -> logits` for a `.pt2` file `export_pt2` wrote: an AOTInductor package
    (`torch._inductor.aoti_load_package`) or an exported program (`torch.export.load(path).module()`)."""
    import zipfile

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"expected a .pt2 archive at {str(path)!r}, but there is no such file")
    if path.is_dir():
        raise ValueError(f"expected a .pt2 archive (a zip file) at {str(path)!r}, got a folder")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"expected a .pt2 archive (a zip file) at {str(path)!r}, got another kind of file")
    with zipfile.ZipFile(path) as archive:
        compiled = any("/data/aotinductor/" in name for name in archive.namelist())
    if compiled:
        from torch._inductor import aoti_load_package

        return aoti_load_package(str(path))
    program = torch.export.load(path)
    args = program.example_inputs[0] if program.example_inputs else ()
    shapes = [tuple(x.shape) for x in args if isinstance(x, Tensor)]
    return checks.ShapeCheckedProgram(program.module(), shapes)


@_keeps_mode
def onnx_max_abs_diff(model: nn.Module, path: str | os.PathLike, inputs: Sequence[Tensor]) -> float:
    """Max abs difference between onnxruntime's output for the file `path` and eager `model` on `inputs` (the
    largest over every output, for a model with several)."""
    return _onnx_errors(model, path, inputs)[0]


def _onnx_errors(
    model: nn.Module, path: str | os.PathLike, inputs: Sequence[Tensor], name: str | None = None
) -> tuple[float, float, torch.dtype]:
    """(max abs difference between onnxruntime's outputs and eager `model`'s, over every output, max abs value of the
    latter, its dtype); `name`: what onnxruntime's errors call the file (default its path)."""
    from perceiver.export_onnxruntime import run_onnx_outputs

    got = run_onnx_outputs(path, inputs, any(p.dtype == torch.bfloat16 for p in model.parameters()), name)
    with torch.no_grad():
        expected = checks.outputs(LogitsOnly(model.eval())(*inputs))
    diff, scale = checks.max_diff(got, expected)
    return diff, scale, expected[0].dtype
