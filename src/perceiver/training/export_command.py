"""`perceiver export MODEL_DIR OUT.onnx|OUT.pt2|OUT_DIR [--check] [--shape ...]`: the command-line face of
`perceiver.export` (and of `perceiver.interop.to_transformers` with `--transformers`); see that module for what is
exported and checked."""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

from torch import nn

from perceiver.export import example_inputs, export_onnx, export_program, export_pt2, task_output_name
from perceiver.export_checks import check_length
from perceiver.export_shapes import describe_inputs, length_range

__all__ = ["export_main", "trained_shape"]


def trained_shape(model: nn.Module, model_dir: str | os.PathLike) -> tuple[int, ...] | None:
    """The per-sample input shape a classic `Perceiver` was trained on, from the `task.json` `perceiver fit` writes
    beside it (`image_shape` `(H, W, C)`, `video_shape` `(T, H, W, C)`, or `num_samples` for 1-D inputs), so that
    `perceiver export runs/digits/model` takes 8 x 8 x 1 digits rather than the 224 x 224 default; None otherwise
    (Perceiver IO models carry their input size in their config)."""
    from perceiver.models.classic import Perceiver

    info_file = Path(model_dir) / "task.json"
    if not isinstance(model, Perceiver) or not info_file.is_file():
        return None

    info, c = json.loads(info_file.read_text()), model.config
    key = {1: "num_samples", 2: "image_shape", 3: "video_shape"}.get(c.input_axis)
    value = info.get(key)
    if value is None:
        return None
    shape = (int(value), c.input_channels) if key == "num_samples" else tuple(int(v) for v in value)
    return shape if len(shape) == c.input_axis + 1 and shape[-1] == c.input_channels else None


def export_main(argv: list[str] | None = None) -> None:
    """`perceiver export MODEL_DIR OUT.onnx [--check] [--batch-size N] [--shape D ...]`, `perceiver export MODEL_DIR
    OUT.pt2 [--aoti] [--check]`, or `perceiver export MODEL_DIR OUT_DIR --transformers` (a transformers model folder)."""
    parser = argparse.ArgumentParser(
        prog="perceiver export",
        description="Export a model folder (ours or a transformers Perceiver checkpoint) with a dynamic batch to ONNX "
        "(OUT.onnx) or to PyTorch's .pt2 archive (OUT.pt2: the torch.export program, or with --aoti an AOTInductor "
        "package compiled for this machine), or with --transformers to a transformers model folder.",
    )
    parser.add_argument("model_dir", help="a model folder (save_pretrained / perceiver fit's RUN_DIR/model) or Hub id")
    parser.add_argument("output", help="the .onnx or .pt2 file to write (the folder, with --transformers)")
    parser.add_argument(
        "--transformers",
        action="store_true",
        help="write a transformers Perceiver model folder instead (masked LM, text and image classifiers, optical "
        "flow; its outputs are checked against ours)",
    )
    parser.add_argument(
        "--aoti",
        action="store_true",
        help="with OUT.pt2: compile ahead of time with AOTInductor (a shared library for this machine inside the "
        "archive; torch._inductor.aoti_load_package or C++'s AOTIModelPackageLoader runs it)",
    )
    parser.add_argument(
        "--check", action="store_true", help="compare onnxruntime (or the loaded .pt2) with PyTorch on random inputs"
    )
    parser.add_argument("--batch-size", type=int, default=2, help="batch size of the example inputs (default 2)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs="+",
        help="per-sample input shape (default: the model's own; for a classic Perceiver trained by perceiver fit, "
        "the shape in its task.json)",
    )
    parser.add_argument("--atol", type=float, default=1e-4, help="max abs difference allowed by --check")
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="int8: onnxruntime's dynamic int8 quantisation of the graph (about 1/4 of the size, integer GEMMs); "
        "--check then allows --int8-rtol times the largest output",
    )
    parser.add_argument(
        "--int8-rtol", type=float, default=None, help="--check's relative tolerance with --quantize (default 0.1)"
    )
    args = parser.parse_args(argv)
    with warnings.catch_warnings():  # torch's own, from pickling a pytree spec: nothing for the user to do
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
        _export(parser, args)


def _export(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`export_main` after parsing: checks the options, loads the model, writes and reports the file."""
    suffix = Path(args.output).suffix.lower()  # as the Python API: any case
    pt2 = suffix == ".pt2"
    if not args.transformers and suffix not in (".onnx", ".pt2"):
        parser.error(f"expected OUT ending in .onnx or .pt2 (or --transformers and a folder), got {args.output!r}")
    if args.aoti and not pt2:
        parser.error(f"--aoti writes an AOTInductor package: expected OUT ending in .pt2, got {args.output!r}")
    if args.quantize and pt2:
        parser.error("--quantize int8 applies to ONNX files: expected OUT ending in .onnx with --quantize")
    if args.transformers:  # a model folder: no example inputs, no quantisation, no compiled package
        options = [("--quantize", args.quantize), ("--shape", args.shape), ("--int8-rtol", args.int8_rtol)]
        options.append(("--aoti", args.aoti or None))
        given = [o for o, v in options if v is not None] + (["--batch-size"] if args.batch_size != 2 else [])
        if given:
            parser.error(f"{', '.join(given)} apply to .onnx / .pt2 files, not to --transformers (a model folder)")
    elif args.int8_rtol is not None and not args.quantize:
        parser.error("--int8-rtol is the tolerance of --check with --quantize int8: expected --quantize int8 with it")
    args.int8_rtol = 0.1 if args.int8_rtol is None else args.int8_rtol
    from perceiver.pretrained import from_pretrained

    try:
        model = from_pretrained(args.model_dir)
    except (FileNotFoundError, ValueError) as e:  # no such folder, not a model folder
        raise SystemExit(f"error: {e}") from e
    from perceiver.lora import merge_lora

    merge_lora(model)  # an adapter folder: export the merged weights (no adapter matmuls, plain keys)
    if args.transformers:
        from perceiver.interop.to_transformers import to_transformers

        try:
            hf = to_transformers(model, atol=args.atol)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from e
        hf.save_pretrained(args.output)
        print(f"wrote {args.output}: transformers' {type(hf).__name__}, outputs equal to ours within {args.atol}")
        return
    try:
        inputs = example_inputs(model, args.batch_size, args.shape or trained_shape(model, args.model_dir))
    except ValueError as e:  # a model without example inputs (pass them from Python), --batch-size 0
        raise SystemExit(f"error: {e}") from e
    shapes = ", ".join(f"{tuple(x.shape[1:])} {x.dtype}".replace("torch.", "") for x in inputs)
    output = task_output_name(model)
    try:
        program = export_program(model, inputs)  # traced once, for the file and for the shapes it takes
        if pt2:
            path = export_pt2(
                model, args.output, inputs, aoti=args.aoti, check=args.check, atol=args.atol, program=program
            )
        else:
            path = export_onnx(
                model, args.output, inputs, check=args.check, atol=args.atol, quantize=args.quantize,
                int8_rtol=args.int8_rtol, program=program,
            )  # fmt: skip
    except (RuntimeError, ValueError, TypeError) as e:  # a failed check; the model's error on --shape
        raise SystemExit(f"error: {e}") from e
    length = length_range(program)
    takes = ", ".join(describe_inputs(program))
    lengths = f" and length {check_length(inputs, length)}" if length else ""
    kind = ("AOTInductor package" if args.aoti else "torch.export program") if pt2 else "int8" if args.quantize else ""
    size = f"{path.stat().st_size / 1e6:.1f} MB{', ' if pt2 else ' ' if kind else ''}{kind}"
    print(f"wrote {path} ({size}): inputs (batch, ...) per sample {shapes} -> {output}")
    if pt2:
        print(f"it takes inputs of shape {takes} (a range: any size in it; the other sizes are the export's)")
        if args.aoti:  # its compiled code does not check shapes: others read past the inputs, without an error
            print(
                "the compiled package does not check input shapes: run it with perceiver.export.load_pt2, which does, "
                "or set AOTI_RUNTIME_CHECK_INPUTS=1 (torch._inductor.aoti_load_package, C++'s AOTIModelPackageLoader)"
            )
    else:
        dims = f"batch any, sequence {length[0]}..{length[1]}" if length else "batch any"
        print(
            f"its inputs for onnxruntime: {onnx_inputs(path)} (named dimensions are dynamic: {dims}; pad the others to size)"
        )
    if args.check:
        where = "the loaded file" if pt2 else "onnxruntime"
        within = f"{args.int8_rtol} x the largest output" if args.quantize else f"{args.atol}"
        print(f"{where} matches PyTorch within {within} at batch sizes 1 and 3{lengths}")


def onnx_inputs(path: Path) -> str:
    """The names, element types and shapes of an ONNX file's inputs, as onnxruntime's `session.run` takes them
    (a dynamic dimension by its name, e.g. `inputs int64 [batch, 64]`)."""
    import onnx

    rows = []
    for i in onnx.load(str(path), load_external_data=False).graph.input:
        t = i.type.tensor_type
        dims = ", ".join(d.dim_param or str(d.dim_value) for d in t.shape.dim)
        rows.append(f"{i.name} {onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)} [{dims}]")
    return ", ".join(rows)
