"""Deployment audit: exporting what `perceiver.optimize` returned. The exported file is the model inside the
`OptimizedModel` (the choice is for this machine; the file's runtime compiles it its own way). Before, the export
traced the chosen candidate: an int8 choice failed in the ONNX converter with torch's "Failed to convert the exported
program to an ONNX model" and its .pt2 check failed, a bf16 one wrote a file onnxruntime could not run ("could not
find an implementation for MatMul" with fp32 inputs)."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from tiny_models import tiny

from perceiver.export import LogitsOnly, example_inputs, export_onnx, export_pt2, load_pt2, onnx_max_abs_diff
from perceiver.optimization import OptimizedModel, OptimizeReport

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _optimized(model, chosen, fn):
    return OptimizedModel(model, fn, contextlib.nullcontext, OptimizeReport(chosen=chosen, mode="inference"))


def test_an_int8_choice_exports_the_float_model_with_a_warning(tmp_path):
    torchao = pytest.importorskip("torchao.quantization")
    model = tiny("text-classifier")
    quantized = copy.deepcopy(model)
    torchao.quantize_(quantized, torchao.Int8DynamicActivationInt8WeightConfig())
    fast = _optimized(model, "int8-dynamic", quantized)
    x = example_inputs(model, 2)
    with pytest.warns(UserWarning, match=r"not optimize's choice 'int8-dynamic'.*quantize='int8'"):
        path = export_onnx(fast, tmp_path / "fast.onnx", check=True)
    assert onnx_max_abs_diff(model, path, x) <= 1e-4  # the model's float32 graph
    with pytest.warns(UserWarning, match="int8-dynamic"):
        runner = load_pt2(export_pt2(fast, tmp_path / "fast.pt2", check=True))
    with torch.no_grad():
        torch.testing.assert_close(runner(*x), LogitsOnly(model)(*x), atol=1e-5, rtol=1e-5)


def test_a_bf16_autocast_choice_exports_a_file_onnxruntime_runs(tmp_path):
    model = tiny("vision-perceiver-learned")

    def bf16(*args):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(*args)

    fast = _optimized(model, "bf16-autocast", bf16)
    with pytest.warns(UserWarning, match="float32 graph, not optimize's choice 'bf16-autocast'"):
        path = export_onnx(fast, tmp_path / "fast.onnx", check=True)
    x = example_inputs(model, 3)
    assert onnx_max_abs_diff(model, path, x) <= 1e-4


def test_a_compiled_choice_exports_quietly(tmp_path, recwarn):
    model = tiny("perceiver")
    fast = _optimized(model, "compile", torch.compile(model))
    x = (torch.randn(2, 8, 8, 3),)
    was_training = model.train().training
    export_pt2(fast, tmp_path / "fast.pt2", x, check=True)
    assert not [w for w in recwarn if "optimize's choice" in str(w.message)]
    assert fast.module is model and model.training == was_training  # the mode it came in
