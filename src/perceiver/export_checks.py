"""The argument checks, the check's inputs, comparison and tolerance, and the folder handling of `perceiver.export`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "check_batch_sizes",
    "make_folders",
    "max_diff",
    "outputs",
    "remove_empty",
    "require_fp32",
    "require_weights",
    "resized",
    "ShapeCheckedProgram",
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


def resized(inputs: Sequence[Tensor], batch: int) -> tuple[Tensor, ...]:
    """Fresh random inputs like `inputs` with `batch` samples (ids stay ids, masks stay all-valid: a tensor of 0s and
    1s, as a float or int mask, is all 1s), each in its dtype (int32 ids stay int32) and on its device."""
    out = []
    for x in inputs:
        shape = (batch, *x.shape[1:])
        if x.dtype == torch.bool or (x.numel() and bool(((x == 0) | (x == 1)).all())):
            out.append(torch.ones(shape, dtype=x.dtype, device=x.device))
        elif not x.is_floating_point():
            out.append(torch.randint(int(x.min()), int(x.max()) + 1, shape, dtype=x.dtype, device=x.device))
        else:
            out.append(torch.randn(shape, dtype=x.dtype, device=x.device).clamp(-1, 1))
    return tuple(out)


class ShapeCheckedProgram(nn.Module):
    """A loaded `torch.export` program (`ExportedProgram.module()`) whose shape guard failures (a bare
    `AssertionError: Guard failed: inputs_0.size()[1] == 10`) become a `ValueError` naming the shapes it takes
    (dim 0, the batch, is dynamic; the other dimensions are those of the export) and the shapes it got."""

    def __init__(self, program: nn.Module, shapes: list[tuple[int, ...]]) -> None:
        """`shapes`: the export's example input shapes (batch first)."""
        super().__init__()
        self.program, self.shapes = program, shapes

    def forward(self, *inputs: Tensor) -> Tensor:
        try:
            return self.program(*inputs)
        except AssertionError as e:
            if "Guard failed" not in str(e):
                raise
            takes = ", ".join(f"(batch, {', '.join(map(str, s[1:]))})" for s in self.shapes)
            got = ", ".join(str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__ for x in inputs)
            raise ValueError(
                f"this .pt2 program takes inputs of shape {takes} (dim 0, the batch, is dynamic; the export fixed the others), got {got}; "
                f"pad or resize the inputs, or export again with inputs of that shape ({e})"
            ) from e
