"""onnxruntime's side of `perceiver.export`: running an exported file (the `check`) and int8 quantisation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["quantize_int8", "run_onnx", "run_onnx_outputs"]


def run_onnx(
    path: str | os.PathLike, inputs: Sequence[Tensor], bf16_model: bool = False, name: str | None = None
) -> Tensor:
    """onnxruntime's (CPU) first output for the ONNX file `path` on `inputs`; see `run_onnx_outputs`."""
    return run_onnx_outputs(path, inputs, bf16_model, name)[0]


def run_onnx_outputs(
    path: str | os.PathLike, inputs: Sequence[Tensor], bf16_model: bool = False, name: str | None = None
) -> tuple[Tensor, ...]:
    """onnxruntime's (CPU) outputs for the ONNX file `path` on `inputs` (in the order of the file's inputs), in the
    order of the file's outputs (one for most models; the multimodal reconstruction's three).

    onnxruntime's own errors (plain `Exception`s of its own: no kernel for a dtype, inputs of another shape or dtype
    than the file takes) are raised as a `RuntimeError` naming the file's inputs and the ones given (`bf16_model`:
    also that onnxruntime's CPU kernels have no bfloat16; `name`: what the message calls the file, default its path)."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the ONNX check needs onnxruntime: pip install 'perceiver-torch[export]'") from e
    session = None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {i.name: x.detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
        return tuple(torch.from_numpy(out) for out in session.run(None, feed))
    except Exception as e:
        bf16 = bf16_model or any(x.dtype == torch.bfloat16 for x in inputs)
        hint = " (its CPU kernels have no bfloat16: export a float32 copy, model.float())" if bf16 else ""
        given = ", ".join(f"{tuple(x.shape)} {x.dtype}".replace("torch.", "") for x in inputs)
        takes = "" if session is None else ", ".join(f"{i.shape} {i.type}" for i in session.get_inputs())
        what = f"onnxruntime could not run {name or repr(str(path))}{hint}: "
        raise RuntimeError(
            what
            + (str(e).splitlines()[0] if str(e) else type(e).__name__)
            + f" (given inputs {given}"
            + (f"; the file takes {takes})" if takes else ")")
        ) from e


def quantize_int8(path: Path) -> None:
    """Rewrite the ONNX file `path` in place with onnxruntime's dynamic int8 quantisation (MatMul weights in int8)."""
    import logging

    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.registry import IntegerOpsRegistry
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("int8 quantisation needs onnxruntime: pip install 'perceiver-torch[export]'") from e
    out = path.with_name(f"{path.name}.int8")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs its advice to pre-process the model on the root logger
    try:
        # Convolutions stay fp32: onnxruntime <= 1.23 (the newest for Python 3.10) has no CPU kernel for ConvInteger
        # with int8 weights, and the Perceivers' convolutions (image stems) are a small share of their FLOPs.
        ops = [op for op in IntegerOpsRegistry if op != "Conv"]
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=ops)
        os.replace(out, path)
    finally:
        root.setLevel(level)
        out.unlink(missing_ok=True)
