"""The argument checks, the check's inputs, comparison and tolerance, and the folder handling of `perceiver.export`."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "check_batch_sizes",
    "check_cases",
    "check_length",
    "make_folders",
    "max_diff",
    "outputs",
    "quiet_onnx_exporter",
    "remove_empty",
    "require_fp32",
    "require_weights",
    "resized",
    "ShapeCheckedPackage",
    "ShapeCheckedProgram",
    "fits",
    "shape_error",
    "tolerance",
]


def make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns those it created, deepest first (see `remove_empty`).
    `ValueError` where a file stands in the way (before exporting, not after)."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    blocking = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ValueError(f"expected a folder to write the file into, got the file {str(blocking)!r} in its path")
    folder.mkdir(parents=True, exist_ok=True)
    return made


def remove_empty(folders: list[Path], unless: Path) -> None:
    """After a failed export (no file at `unless`), remove the `folders` it created if they are still empty."""
    if unless.exists():
        return
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or not ours any more): keep it and its parents
            return


def check_batch_sizes(sizes: Sequence[int]) -> None:
    """`ValueError` unless the check batch sizes are one or more ints >= 1 (checked before exporting, not after):
    none would make `check=True` check nothing."""
    if isinstance(sizes, int) or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in sizes):
        raise ValueError(f"expected check_batch_sizes as batch sizes >= 1, got {sizes!r}")
    if not len(sizes):
        raise ValueError(f"expected at least one batch size in check_batch_sizes, got {sizes!r}")


def require_weights(model: nn.Module) -> None:
    """`ValueError` for a model whose weights are on the meta device: they have no values to write."""
    if isinstance(model, nn.Module) and any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ValueError(
            "expected a model with weights, got one whose parameters are on the meta device (shapes without values); "
            "load its weights first, e.g. perceiver.from_pretrained(folder) or model.to_empty(device='cpu') and "
            "model.load_state_dict(...)"
        )


def tolerance(atol: float, scale: float, dtype: torch.dtype) -> tuple[float, str]:
    """The check's limit on the max abs difference and how it was set: `atol`, plus for an fp16 / bf16 output 8 of its
    rounding steps (`torch.finfo(dtype).eps`) times the largest output `scale` (eager and the exported graph round
    differently: an fp16 model's logits differ by ~1e-3, a bf16 one's by ~1e-2 of their size)."""
    if dtype not in (torch.float16, torch.bfloat16):
        return atol, ""
    rtol = 8 * torch.finfo(dtype).eps
    name = str(dtype).removeprefix("torch.")
    return atol + rtol * scale, f" = {atol} + {rtol:.3g} x the largest output {scale:.3g}, for {name} outputs"


def require_fp32(model: nn.Module, what: str) -> None:
    """`ValueError` naming `what` for a model with floating weights in another dtype than float32."""
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()})
    if dtypes and dtypes != ["float32"]:
        raise ValueError(f"{what}: expected a float32 model, got {' and '.join(dtypes)} weights; export model.float()")


def outputs(out: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    """The task output as a tuple of tensors (one tensor as `(out,)`; a runner's list of outputs as a tuple)."""
    return (out,) if isinstance(out, Tensor) else tuple(out)


def max_diff(got: Sequence[Tensor], expected: Sequence[Tensor]) -> tuple[float, float]:
    """(max abs difference over every output, max abs value of the expected ones); inf for another output count."""
    if len(got) != len(expected):
        return float("inf"), 0.0
    diff = max(float((g.float().cpu() - e.float().cpu()).abs().max()) for g, e in zip(got, expected))
    return diff, max(float(e.float().abs().max()) for e in expected)


def resized(inputs: Sequence[Tensor], batch: int, length: int | None = None) -> tuple[Tensor, ...]:
    """Fresh random inputs like `inputs` with `batch` samples (ids stay ids, masks stay all-valid: a tensor of 0s and
    1s, as a float or int mask, is all 1s), each in its dtype (int32 ids stay int32) and on its device. `length`: the
    new length of a text model's ids and mask `(B, L)` (2-D inputs as long as the first)."""
    out = []
    for x in inputs:
        shape = (batch, *x.shape[1:])
        if length is not None and x.ndim == 2 and x.shape[1] == inputs[0].shape[1]:
            shape = (batch, length)
        if x.dtype == torch.bool or (x.numel() and bool(((x == 0) | (x == 1)).all())):
            out.append(torch.ones(shape, dtype=x.dtype, device=x.device))
        elif not x.is_floating_point():
            out.append(torch.randint(int(x.min()), int(x.max()) + 1, shape, dtype=x.dtype, device=x.device))
        else:
            out.append(torch.randn(shape, dtype=x.dtype, device=x.device).clamp(-1, 1))
    return tuple(out)


def check_length(inputs: Sequence[Tensor], lengths: tuple[int, int | None]) -> int:
    """The shorter length the check runs for an export whose ids take `lengths` `(shortest, longest)`: half the
    example's, or the shortest the export takes if that is longer."""
    return max(lengths[0], 1, int(inputs[0].shape[1]) // 2)


def check_cases(
    inputs: Sequence[Tensor], batch_sizes: Sequence[int], lengths: tuple[int, int | None] | None
) -> list[tuple[str, tuple[Tensor, ...]]]:
    """The check's inputs, each with how its message names it: random inputs at each of `batch_sizes` ("batch 3"),
    and for an export whose length is dynamic (`lengths`: the `(shortest, longest)` it takes) also at a shorter length
    (`check_length`: "batch 1, length 8") with the first position of the first sample's mask (a bool mask) padded (a
    left-padded row, as every sequence model takes), so that both the length and the mask are checked."""
    cases = [(f"batch {b}", resized(inputs, b)) for b in batch_sizes]
    if lengths is not None:
        b, length = batch_sizes[0], check_length(inputs, lengths)
        x = resized(inputs, b, length)
        if length > 1 and len(x) > 1 and x[1].dtype == torch.bool:
            x[1][0, 0] = False
        cases.append((f"batch {b}, length {length}", x))
    return cases


@contextlib.contextmanager
def quiet_onnx_exporter() -> Iterator[None]:
    """Silence what torch's ONNX exporter says on every export that is no news to the user: "torchvision is not
    installed. Skipping torchvision::nms" (4 log lines: it registers torchvision's ops when it can) and "The axis
    name: batch will not be used, since it shares the same shape constraints with another axis: batch" (every input
    shares the batch)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*will not be used, since it shares the same shape constraints")
            yield
    finally:
        registration.setLevel(level)


class ShapeCheckedProgram(nn.Module):
    """A loaded `torch.export` program (`ExportedProgram.module()`) whose shape guard failures (a bare
    `AssertionError: Guard failed: inputs_0.size()[1] == 10`) become a `ValueError` naming the shapes it takes
    (`batch` and the ranges of the other dynamic dimensions, e.g. `(batch, 1..2048)`; other sizes are the export's)
    and the shapes it got."""

    def __init__(self, program: nn.Module, takes: list[str]) -> None:
        """`takes`: each input's shape as the program takes it (`perceiver.export_shapes.describe_inputs`)."""
        super().__init__()
        self.program, self.takes = program, takes

    def forward(self, *inputs: Tensor) -> Tensor:
        try:
            return self.program(*inputs)
        except AssertionError as e:
            if "Guard failed" not in str(e):
                raise
            raise shape_error(self.takes, inputs, f" ({e})") from e


def shape_error(takes: list[str], inputs: Sequence[Any], detail: str = "") -> ValueError:
    """The `ValueError` for inputs of other shapes than an exported file takes (`takes`: each input's shape as
    `perceiver.export_shapes.describe_spec` writes it)."""
    got = ", ".join(str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__ for x in inputs)
    return ValueError(
        f"this .pt2 file takes inputs of shape {', '.join(takes)} (batch: any; a range: any size in it; a number: "
        f"the export's), got {got}; pad or resize the inputs, or export again with inputs of that shape{detail}"
    )


def fits(spec: list[list[Any]], inputs: Sequence[Any]) -> bool:
    """Whether `inputs` are tensors of the shapes `spec` (`perceiver.export_shapes.input_spec`) allows."""
    if len(inputs) != len(spec) or not all(isinstance(x, Tensor) and x.ndim == len(s) for x, s in zip(inputs, spec)):
        return False
    for x, dims in zip(inputs, spec):
        for size, d in zip(x.shape, dims):
            low, high = (d, d) if isinstance(d, int) else d
            if size < low or (high is not None and size > high):
                return False
    return True


class ShapeCheckedPackage:
    """An AOTInductor package's runner (`torch._inductor.aoti_load_package`) that checks the input shapes first:
    the compiled code does not (unless `AOTI_RUNTIME_CHECK_INPUTS=1` is set), so a longer text or a larger image
    ran into memory past its tensors and returned garbage without an error."""

    def __init__(self, runner: Any, spec: list[list[Any]]) -> None:
        from perceiver.export_shapes import describe_spec

        self.runner, self.spec, self.takes = runner, spec, describe_spec(spec)

    def __call__(self, *inputs: Tensor) -> Any:
        if not fits(self.spec, inputs):
            raise shape_error(self.takes, inputs)
        return self.runner(*inputs)

    def __getattr__(self, name: str) -> Any:  # get_metadata, get_constant_fqns, load_constants, loader
        return getattr(self.__dict__["runner"], name)
