"""The multimodal autoencoder exports (its forward takes a dict and returns a dict: `example_inputs` raised "no example
inputs for PerceiverForMultimodalAutoencoding"): by default its classification, `(video, audio)` -> label logits as
`classify` computes them; `MultimodalReconstruction(model)` the whole autoencoding, every output checked."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny

from perceiver.export import LogitsOnly, example_inputs, export_onnx, export_program, export_pt2, onnx_max_abs_diff
from perceiver.export_multimodal import MultimodalReconstruction
from perceiver.training.cli import main


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny("multimodal-perceiver")


def needs_onnx():
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")


def onnx_names(path):
    import onnx

    graph = onnx.load(str(path)).graph
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input]
    return [i.name for i in graph.input], [o.name for o in graph.output], dims


def test_example_inputs_are_the_video_and_audio_it_classifies(model):
    t, c, h, w = model.config.video_shape
    video, audio = example_inputs(model, 3)
    assert video.shape == (3, t, c, h, w) and audio.shape == (3, model.config.audio.num_samples, 1)
    torch.testing.assert_close(LogitsOnly(model)(video, audio), model.classify(video, audio))
    video, audio, label = example_inputs(MultimodalReconstruction(model), 2)
    assert label.shape == (2, model.config.num_classes) and (label.sum(-1) == 1).all()  # one-hot
    assert example_inputs(model, 1, (t, c, 2 * h, w))[0].shape == (1, t, c, 2 * h, w)  # `shape`: the video's


def test_torch_export_of_the_classifier_takes_any_batch(model):
    program = export_program(model)
    for batch in (1, 3):
        x = example_inputs(model, batch)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(*x), model.classify(*x), atol=1e-5, rtol=1e-5)
    assert "forward" not in vars(model.input_adapter)  # the export's adapter forward is gone after it


def test_bad_inputs_name_what_was_expected(model, tmp_path):
    needs_onnx()
    video, audio = example_inputs(model, 2)
    with pytest.raises(ValueError, match=r"expected video of shape \(B, 2, 3, 16, 16\), got \(2, 2, 3, 8, 8\)"):
        export_program(model, (torch.randn(2, 2, 3, 8, 8), audio))
    with pytest.raises(ValueError, match=r"expected audio of shape \(B, 64\) or \(B, 64, 1\), got \(2, 32, 1\)"):
        export_onnx(model, tmp_path / "new" / "m.onnx", (video, torch.randn(2, 32, 1)))
    with pytest.raises(ValueError, match=r"expected 2 input tensors \(video, audio\), got 1"):
        export_program(model, (video,))
    assert not list(tmp_path.iterdir())
    random = tiny("multimodal-perceiver")
    random.config.inputs.eval_masking = "random"
    with pytest.raises(ValueError, match="expected eval_masking 'deterministic' or 'none' .* got 'random'"):
        export_program(random)


def test_onnx_classifier_matches_eager_at_two_batch_sizes(model, tmp_path):
    needs_onnx()
    path = export_onnx(model, tmp_path / "kinetics.onnx", check=True)
    inputs, outputs, dims = onnx_names(path)
    assert inputs == ["video", "audio"] and outputs == ["logits"]
    assert dims == [["batch", *model.config.video_shape], ["batch", model.config.audio.num_samples, 1]]
    for batch in (1, 3):
        assert onnx_max_abs_diff(model, path, example_inputs(model, batch)) <= 1e-4


@pytest.mark.slow
def test_the_whole_autoencoding_exports_with_every_output_checked(model, tmp_path, monkeypatch):
    needs_onnx()
    import perceiver.export_onnxruntime as ort_side

    auto = MultimodalReconstruction(model)
    program = export_program(auto)
    for batch in (1, 3):
        x = example_inputs(auto, batch)
        with torch.no_grad():
            expected = model.reconstruct({"image": x[0], "audio": x[1], "label": x[2]})
            for got, key in zip(program.module()(*x), ("image", "audio", "label"), strict=True):
                torch.testing.assert_close(got, expected[key], atol=1e-5, rtol=1e-5)
    path = export_onnx(auto, tmp_path / "autoencoder.onnx", check=True)
    inputs, outputs, _ = onnx_names(path)
    assert inputs == ["video", "audio", "label"]
    assert outputs == ["video_reconstruction", "audio_reconstruction", "label_logits"]
    for batch in (1, 3):
        assert onnx_max_abs_diff(auto, path, example_inputs(auto, batch)) <= 1e-4
    plain = ort_side.run_onnx_outputs  # the check fails on a wrong second output: every output is compared

    def audio_off(*args, **kwargs):
        video, audio, label = plain(*args, **kwargs)
        return video, audio + 1e-2, label

    monkeypatch.setattr(ort_side, "run_onnx_outputs", audio_off)
    with pytest.raises(RuntimeError, match="onnxruntime output differs from PyTorch by 0.01 at batch 1"):
        export_onnx(auto, tmp_path / "bad.onnx", check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["autoencoder.onnx"]


def test_pt2_archive_of_the_classifier(model, tmp_path):
    path = export_pt2(model, tmp_path / "kinetics.pt2", check=True)
    assert path.is_file() and not list(tmp_path.glob(".*"))


@pytest.mark.slow
def test_aoti_packages_of_the_classifier_and_the_autoencoding(model, tmp_path):
    from perceiver.export import load_pt2

    export_pt2(model, tmp_path / "kinetics.pt2", aoti=True, check=True)
    auto = MultimodalReconstruction(model)
    path = export_pt2(auto, tmp_path / "autoencoder.pt2", aoti=True, check=True)
    x = example_inputs(auto, 3)
    with torch.no_grad():
        for got, expected in zip(load_pt2(path)(*x), auto(*x), strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_export_command_on_a_model_folder(model, tmp_path, capsys):
    needs_onnx()
    folder = model.save_pretrained(tmp_path / "model")
    main(["export", str(folder), str(tmp_path / "kinetics.onnx"), "--check"])
    out = capsys.readouterr().out
    assert "per sample (2, 3, 16, 16) float32, (64, 1) float32 -> logits" in out
    assert "onnxruntime matches PyTorch within 0.0001 at batch sizes 1 and 3" in out
    assert onnx_names(tmp_path / "kinetics.onnx")[:2] == (["video", "audio"], ["logits"])
