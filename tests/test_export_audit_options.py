"""Deployment audit: `perceiver export` options that did nothing. `--quantize int8`, `--shape`, `--aoti` and
`--batch-size` with `--transformers` (a model folder) were ignored, and so was `--int8-rtol` without `--quantize`;
`--shape 4 4` for a text model exported length 4 (the second number ignored). Each is now an error naming it."""

from __future__ import annotations

import pytest
from tiny_models import tiny

from perceiver.export import example_inputs
from perceiver.training.cli import main


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["hf", "--transformers", "--quantize", "int8"],
            "--quantize apply to .onnx / .pt2 files, not to --transformers",
        ),
        (["hf", "--transformers", "--shape", "8"], "--shape apply to .onnx / .pt2 files, not to --transformers"),
        (["hf", "--transformers", "--batch-size", "4"], "--batch-size apply to .onnx / .pt2 files"),
        (["t.onnx", "--int8-rtol", "0.5"], "--int8-rtol is the tolerance of --check with --quantize int8"),
    ],
)
def test_options_that_do_not_apply_are_refused(extra, message, tmp_path, capsys):
    folder = tiny("text-classifier").save_pretrained(tmp_path / "model")
    with pytest.raises(SystemExit):
        main(["export", str(folder), str(tmp_path / extra[0]), *extra[1:]])
    assert message in capsys.readouterr().err
    assert not (tmp_path / extra[0]).exists()


def test_a_text_shape_is_one_length(tmp_path):
    with pytest.raises(
        ValueError, match=r"expected shape \(L,\) for PerceiverForSequenceClassification's ids \(B, L\), got \(4, 4\)"
    ):
        example_inputs(tiny("text-classifier"), 2, (4, 4))
    with pytest.raises(ValueError, match=r"expected shape \(L,\) for PerceiverAR's ids"):
        example_inputs(tiny("perceiver-ar"), 2, (4, 4))
    folder = tiny("token-classifier").save_pretrained(tmp_path / "model")
    with pytest.raises(SystemExit, match=r"error: expected shape \(L,\)"):
        main(["export", str(folder), str(tmp_path / "t.onnx"), "--shape", "4", "4"])
    assert not (tmp_path / "t.onnx").exists()
