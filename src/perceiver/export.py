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
its mask, ...); the exported graph takes any batch size and that input size, except that the text models' graphs
take any length up to `max_seq_len` (ONNX axis `sequence`), and Perceiver AR's any window from two prefix positions
beyond its latents up to `max_seq_len` (see `perceiver.export_shapes.sequence_limits`). `inputs=` given instead is a tuple of
tensors, the positional arguments of the model's forward (a single tensor is taken as `(tensor,)`, as
`torch.onnx.export` does). An error the model itself raises on them (a `ValueError` naming the expected shape) is
raised as it is, not wrapped in the exporter's. The graph returns the task output (`logits`; the resampler's
`last_hidden_state`) as one tensor, named after it in the ONNX file. The multimodal autoencoder (forward: dicts in and out) exports its classification,
`(video (B, T, C, H, W), audio (B, S, 1))` -> label logits `(B, K)` as `classify` computes them (ONNX inputs `video`,
`audio`, output `logits`); `export_*(perceiver.export_multimodal.MultimodalReconstruction(model), ...)` exports the
whole autoencoding instead (`reconstruct`: video, audio and label in, the three reconstructions out,
`video_reconstruction`, `audio_reconstruction`, `label_logits`; the check compares each). ONNX export needs the `onnx`
and `onnxscript` packages (`pip install 'perceiver-torch[export]'`), the check also `onnxruntime`. With `check`, a
file that fails its check is not written (it is checked before it is moved into place), nor are folders made for it
kept. The check allows `atol`, and for an fp16 / bf16 model also 8 rounding steps of its dtype times the largest
output (eager and the exported graph round differently). onnxruntime's CPU kernels have no bfloat16: check (and serve)
a bf16 model's ONNX as `model.float()`. A model on the meta device (no weights) is refused. A `torch.compile`d model
or `perceiver.optimize`'s `OptimizedModel` is exported as the model inside it: what `optimize` chose is for this
machine (a bf16 / int8 choice is not carried over, with a warning; `quantize="int8"` makes an int8 ONNX file).

Serving without perceiver: onnxruntime `InferenceSession(path).run(None, {"inputs": ids, "mask": mask})` (the names
and shapes `perceiver export` prints; `session.get_inputs()` lists them), or `torch.export.load(path).module()(*inputs)`
with the inputs in the order of the model's forward (`load_pt2` adds a `ValueError` naming the shapes it takes).

A `.pt2` file is PyTorch's own archive: `export_pt2` writes the exported program (`torch.export.save`; load it with
`torch.export.load(path).module()` or `load_pt2`), or with `aoti=True` an AOTInductor package: the program compiled
ahead of time by Inductor into a shared library for this machine (CPU, or the model's CUDA device), which
`load_pt2` / `torch._inductor.aoti_load_package(path)` runs in Python and `torch::inductor::AOTIModelPackageLoader`
in C++, without Python or compilation at serving time. Both take any batch size.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from torch import Tensor, nn

from perceiver import export_checks as checks
from perceiver.export_shapes import (
    describe_inputs,
    dynamic_dims,
    example_inputs,
    export_dynamic,
    input_spec,
    length_range,
    unwrapped,
)

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


def _deployable(model: nn.Module) -> nn.Module:
    """The model an export writes: the model itself for a `torch.compile` / `perceiver.optimize` wrapper. What
    `optimize` chose is a choice for this machine (the exported file is compiled by its own runtime); a bf16 / int8
    choice is not carried over, with a warning that says so."""
    from perceiver.optimization import OptimizedModel

    inner = unwrapped(model)
    chosen = str(getattr(getattr(model, "report", None), "chosen", "")) if isinstance(model, OptimizedModel) else ""
    if chosen.startswith(("bf16-", "int8-")):
        dtype = str(next(inner.parameters()).dtype).removeprefix("torch.")
        hint = "; for int8 ONNX pass quantize='int8' (--quantize int8)" if chosen.startswith("int8-") else ""
        warnings.warn(
            f"exporting the model's own {dtype} graph, not optimize's choice {chosen!r} (its arithmetic is chosen "
            f"for this machine and is not part of an exported file){hint}",
            UserWarning,
            stacklevel=3,
        )
    return inner


def _program(model: nn.Module, inputs: tuple[Tensor, ...]) -> torch.export.ExportedProgram:
    """`export_dynamic` of `LogitsOnly(model)`, raising the model's own error on bad inputs (see `_raise_ours`)."""
    try:
        return export_dynamic(LogitsOnly(model).eval(), model, inputs)
    except Exception as e:  # the model's own error on bad inputs, with concrete shapes
        _raise_ours(e, model, inputs)
        raise


@_keeps_mode
def export_program(model: nn.Module, inputs: Tensor | Sequence[Tensor] | None = None) -> torch.export.ExportedProgram:
    """`torch.export.export` of `model`'s task output with a dynamic batch dimension (eval mode).

    `inputs`: the forward's positional tensors (default `example_inputs(model, 2)`; one tensor is `(tensor,)`).
    Batch 1 is exported as batch 2 (torch.export specialises a size-1 dimension), the program takes any batch; a text
    model's program also any length from 1 to `max_seq_len` where its code allows (see `perceiver.export_shapes`).
    A `torch.compile`d model or an `OptimizedModel` is exported as the model inside it.
    """
    model = _deployable(model).eval()
    return _program(model, _as_inputs(model, inputs))


def _check_raise(what: str, diff: float, limit: float, why: str, case: str, path: Path) -> None:
    if not diff <= limit:
        raise RuntimeError(
            f"{what} differs from PyTorch by {diff:.3g} at {case} (> {limit:.3g}{why})"
            f"; {path} was not written (export without the check to inspect the file)"
        )


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
    program: torch.export.ExportedProgram | None = None,
) -> Path:
    """Write `model` as ONNX (`torch.onnx.export(..., dynamo=True)`, dynamic batch) to `path`.

    `inputs`: the forward's positional tensors (default `example_inputs(model, 2)`; one tensor is `(tensor,)`).
    With `check`, runs the file in onnxruntime at `check_batch_sizes` on random inputs (and, for a text model whose
    length is dynamic, at half the length) and raises if its output differs from eager PyTorch by more than `atol`
    (max abs; for an fp16 / bf16 model plus 8 rounding steps of its dtype times the largest output; with
    `quantize="int8"`, more than `int8_rtol` times the largest output). Returns the path (`path` ending in .onnx; a
    model over 2 GB also writes its weights to `NAME.data` beside it). The file is written in a folder next to `path`
    first, checked there and only then moved into place, so a failed export or a failed check leaves no file at
    `path` (nor a half-written one, nor the folders made for it).
    `quantize="int8"`: onnxruntime's dynamic int8 quantisation of the graph (see the module docstring).
    `program`: `export_program(model, inputs)` if already made (it is not traced again).
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
    model = _deployable(model)
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
        program = _program(model, inputs) if program is None else program
        length = length_range(program)
        with checks.quiet_onnx_exporter():
            onnx_program = torch.onnx.export(
                program,
                tuple(inputs),
                dynamo=True,
                dynamic_shapes=dynamic_dims(
                    model, inputs, sequence=length is not None, names=True
                ),  # names the dynamic axes
                input_names=names,
                output_names=list(getattr(wrapped.model, "onnx_output_names", [task_output_name(model)])),
                verbose=False,
            )
        assert onnx_program is not None  # dynamo=True: torch's hint also covers the legacy exporter's None
        tmp_folder.mkdir(exist_ok=True)
        onnx_program.save(str(tmp))
        if quantize == "int8":
            from perceiver.export_onnxruntime import quantize_int8

            quantize_int8(tmp)
        for case, x in checks.check_cases(inputs, check_batch_sizes, length) if check else ():
            try:
                diff, scale, dtype = _onnx_errors(model, tmp, x, f"the file for {path}")
            except RuntimeError as e:  # onnxruntime cannot run it (a bf16 graph, ...)
                raise RuntimeError(f"{e}; {path} was not written (export without the check to inspect the file)") from (
                    e.__cause__
                )
            limit, why = checks.tolerance(atol, scale, dtype)
            if quantize:
                limit, why = int8_rtol * scale, f" = {int8_rtol} x the largest output {scale:.3g}"
            _check_raise("onnxruntime output", diff, limit, why, case, path)
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
    program: torch.export.ExportedProgram | None = None,
) -> Path:
    """Write `model`'s task output as a `.pt2` archive with a dynamic batch (see the module docstring): the
    `torch.export` program, or with `aoti` an AOTInductor package compiled for this machine.

    `inputs`: the forward's positional tensors (default `example_inputs(model, 2)`; one tensor is `(tensor,)`).
    With `check`, loads the file back (`load_pt2`) and raises if its output on random inputs at `check_batch_sizes`
    (and, for a text model whose length is dynamic, at half the length) differs from eager PyTorch by more than
    `atol` (max abs; for an fp16 / bf16 model plus 8 rounding steps of its dtype times the largest output). Written
    next to `path`, checked there and moved into place: a failed export or check leaves no file at `path` (nor a
    half-written one, nor the folders made for it). Returns the path.
    `program`: `export_program(model, inputs)` if already made (it is not traced again).
    """
    path = Path(path).expanduser()
    if path.suffix != ".pt2":
        raise ValueError(f"expected a path ending in .pt2, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"expected the path of the .pt2 file to write, got the folder {str(path)!r}")
    checks.check_batch_sizes(check_batch_sizes)
    model = _deployable(model)
    checks.require_weights(model)
    model = model.eval()
    inputs = _as_inputs(model, inputs)
    made = checks.make_folders(path.parent)
    tmp = path.with_name(f".{path.stem}.tmp.pt2")  # AOTInductor wants the .pt2 suffix
    try:
        program = _program(model, inputs) if program is None else program
        if aoti:
            from torch._inductor import aoti_compile_and_package

            spec = {"perceiver_inputs": json.dumps(input_spec(program))}  # the shapes it takes, for `load_pt2`
            aoti_compile_and_package(program, package_path=str(tmp), inductor_configs={"aot_inductor.metadata": spec})
        else:
            torch.export.save(program, tmp)
        if check:
            runner = load_pt2(tmp)
            for case, x in checks.check_cases(inputs, check_batch_sizes, length_range(program)):
                with torch.no_grad():
                    expected = checks.outputs(LogitsOnly(model)(*x))
                    diff, scale = checks.max_diff(checks.outputs(runner(*x)), expected)
                limit, why = checks.tolerance(atol, scale, expected[0].dtype)
                _check_raise("the .pt2 file's output", diff, limit, why, case, path)
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

        runner = aoti_load_package(str(path))
        spec = runner.get_metadata().get("perceiver_inputs")  # written by `export_pt2`; none in other packages
        return runner if spec is None else checks.ShapeCheckedPackage(runner, json.loads(spec))
    program = torch.export.load(path)
    return checks.ShapeCheckedProgram(program.module(), describe_inputs(program))


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
