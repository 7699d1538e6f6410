"""Deployment audit: a text model's exported graph takes any length up to `max_seq_len` where the model's code allows
it, Perceiver AR's any window from N + 2 (before: the export's length only, so short texts had to be padded); a graph whose length stays fixed names it;
the ONNX file's output is named after the task output (the resampler's was "logits"); torch's exporter noise about
torchvision is not printed by `perceiver export`."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny

from perceiver.export import LogitsOnly, export_onnx, export_program, export_pt2, load_pt2
from perceiver.export_shapes import describe_inputs, dynamic_length
from perceiver.training.cli import main

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _text(batch: int, length: int, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(6, 262, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.bool)
    if pad:
        mask[0, -pad:] = False
    return ids, mask


def test_text_classifier_onnx_and_pt2_take_two_lengths(tmp_path):
    model = tiny("text-classifier")  # max_seq_len 16
    x = _text(2, 12)
    program = export_program(model, x)
    assert dynamic_length(program) and describe_inputs(program) == ["(batch, 1..16)", "(batch, 1..16)"]
    onnx_path = export_onnx(model, tmp_path / "text.onnx", x, check=True, program=program)
    pt2 = load_pt2(export_pt2(model, tmp_path / "text.pt2", x, check=True, program=program))
    session = ort.InferenceSession(str(onnx_path))
    assert [i.shape for i in session.get_inputs()] == [["batch", "sequence"], ["batch", "sequence"]]
    for batch, length in ((3, 5), (1, 16)):
        ids, mask = _text(batch, length, pad=2)
        with torch.no_grad():
            want = LogitsOnly(model)(ids, mask)
            torch.testing.assert_close(pt2(ids, mask), want, atol=1e-5, rtol=1e-5)
        got = session.run(None, {"inputs": ids.numpy(), "mask": mask.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)


def test_the_check_covers_the_dynamic_length(tmp_path, monkeypatch):
    """`check=True` also runs a shorter length when the length is dynamic, and says which case failed."""
    model = tiny("text-classifier")
    seen = []
    import perceiver.export as export

    real = export._onnx_errors

    def spy(m, path, inputs, name=None):
        seen.append(tuple(inputs[0].shape))
        return real(m, path, inputs, name)

    monkeypatch.setattr(export, "_onnx_errors", spy)
    export_onnx(model, tmp_path / "t.onnx", check=True)
    assert seen == [(1, 16), (3, 16), (1, 8)]
    with pytest.raises(RuntimeError, match=r"differs from PyTorch by .* at batch 1 \(> -1\)"):
        export_pt2(model, tmp_path / "bad.pt2", check=True, atol=-1.0)


def test_export_command_prints_the_length_range(tmp_path, capsys, recwarn):
    folder = tiny("text-classifier").save_pretrained(tmp_path / "model")
    main(["export", str(folder), str(tmp_path / "t.onnx"), "--check"])
    out = capsys.readouterr()
    assert "inputs int64 [batch, sequence], mask bool [batch, sequence]" in out.out
    assert "sequence 1..16" in out.out and "at batch sizes 1 and 3 and length 8" in out.out
    main(["export", str(folder), str(tmp_path / "t.pt2"), "--check"])
    assert "it takes inputs of shape (batch, 1..16), (batch, 1..16)" in capsys.readouterr().out
    assert not [w for w in recwarn if "LeafSpec" in str(w.message)]  # torch's FutureWarning, nothing to act on


def _left_padded(batch: int, length: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = _text(batch, length)
    mask[0, :pad] = False
    return ids, mask


@pytest.mark.parametrize("layout", [dict(num_latents=4), dict(prefix_len=5)])
def test_perceiver_ar_exports_take_shorter_windows(layout, tmp_path, capsys):
    """Perceiver AR's exports take any window from two prefix positions beyond its latents (N + 2, or prefix_len + 2
    where N = L - prefix_len) to max_seq_len, equal to eager on left-padded rows; before, only the export's window,
    so a short prompt had to be padded to max_seq_len. A loaded .pt2 names the range when a window is too short."""
    model = tiny("perceiver-ar", **layout)  # max_seq_len 16
    low = 6 if "num_latents" in layout else 7
    folder = model.save_pretrained(tmp_path / "model")
    main(["export", str(folder), str(tmp_path / "ar.onnx"), "--check"])
    out = capsys.readouterr().out
    assert "inputs int64 [batch, sequence], mask bool [batch, sequence]" in out and f"sequence {low}..16" in out
    main(["export", str(folder), str(tmp_path / "ar.pt2"), "--check"])
    assert f"(batch, {low}..16), (batch, {low}..16)" in capsys.readouterr().out
    session, runner = ort.InferenceSession(str(tmp_path / "ar.onnx")), load_pt2(tmp_path / "ar.pt2")
    for batch, length in ((3, low), (1, 11), (2, 16)):
        ids, mask = _left_padded(batch, length, pad=2)
        with torch.no_grad():
            want = LogitsOnly(model)(ids, mask)
            torch.testing.assert_close(runner(ids, mask), want, atol=1e-5, rtol=1e-5)
        got = session.run(None, {"inputs": ids.numpy(), "mask": mask.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=rf"{low}\.\.16"):
        runner(*_text(2, low - 1))


def test_a_fixed_length_onnx_file_names_its_length(tmp_path, capsys):
    """A Perceiver AR whose latents leave fewer than two prefix positions keeps the export's window: the printed
    inputs and onnxruntime's own error name the length."""
    model = tiny("perceiver-ar", num_latents=15)
    n = model.config.max_seq_len
    folder = model.save_pretrained(tmp_path / "model")
    main(["export", str(folder), str(tmp_path / "ar.onnx")])
    assert f"inputs int64 [batch, {n}], mask bool [batch, {n}]" in capsys.readouterr().out
    session = ort.InferenceSession(str(tmp_path / "ar.onnx"))
    ids, mask = _text(2, n - 3)
    with pytest.raises(Exception, match=rf"Expected: {n}"):
        session.run(None, {"inputs": ids.numpy(), "mask": mask.numpy()})


def test_the_resampler_onnx_output_is_named_last_hidden_state(tmp_path):
    model = tiny("perceiver-resampler")
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "r.onnx")))
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state"]


def test_the_exporter_does_not_tell_users_to_install_torchvision(tmp_path):
    """torch's ONNX exporter logged "torchvision is not installed. Skipping torchvision::nms" (and roi_align,
    roi_pool, deform_conv2d) on every export: advice a Perceiver user does not need."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    logger.addHandler(handler)
    try:
        export_onnx(tiny("perceiver-resampler"), tmp_path / "r.onnx")
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "torchvision" in r.getMessage()]


@pytest.mark.parametrize("name", ["language-perceiver", "token-classifier", "question-answering"])
def test_the_per_position_text_heads_take_shorter_texts(name, tmp_path):
    """These heads decode one query per input position in one pass (`perceiver.core.decoder.decode` without chunks
    counts no positions in Python), so their exported length is dynamic: a loaded file runs a shorter text, equal
    to eager."""
    model = tiny(name)
    program = export_program(model)
    assert dynamic_length(program)
    runner = load_pt2(export_pt2(model, tmp_path / "m.pt2", check=True, program=program))
    short = _text(2, 5, pad=1)
    with torch.no_grad():
        torch.testing.assert_close(runner(*short), LogitsOnly(model)(*short), atol=1e-5, rtol=1e-5)
