"""User mistakes at the `perceiver` command and the export / optimize API give a clear error naming what was expected
and what came (`error: ...` and a non-zero exit from the command), never a traceback or a silently wrong result:
missing model folders and checkpoints, files of another kind than the model takes, models a command does not run,
sizes < 1, a tensor given where a tuple of inputs is expected, and exporter errors that wrap the model's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny

import perceiver
from perceiver.export import example_inputs, export_onnx, export_program, export_pt2, load_pt2
from perceiver.training.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def save(name: str, folder: Path) -> str:
    """A tiny `name` model saved as a model folder (no task.json), its path as a string."""
    torch.manual_seed(0)
    return str(tiny(name).save_pretrained(folder / name))


def png(folder: Path, name: str = "img.png", size: tuple[int, int] = (16, 12)) -> str:
    path = folder / name
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def text_file(folder: Path) -> str:
    path = folder / "t.txt"
    path.write_text("hello world")
    return str(path)


# -- 1. perceiver export: a missing folder, Perceiver AR, a model without example inputs ---------------------------


def test_export_command_missing_model_folder(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: expected a model folder .*nope.* no such folder"):
        main(["export", str(tmp_path / "nope"), str(tmp_path / "out.onnx")])
    assert not (tmp_path / "out.onnx").exists()


def test_export_command_writes_perceiver_ar(tmp_path, capsys):
    """The AR forward (a full window of ids and its mask -> next-token logits of the last N positions) exports."""
    model = tiny("perceiver-ar")
    ids, mask = example_inputs(model, 3)
    assert ids.shape == mask.shape == (3, model.config.max_seq_len) and mask.dtype == torch.bool
    assert int(ids.max()) < model.config.vocab_size
    folder = save("perceiver-ar", tmp_path)
    main(["export", folder, str(tmp_path / "ar.onnx"), "--check"])
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out and (tmp_path / "ar.onnx").is_file()


def test_export_command_multimodal_wrong_video_shape_names_the_model_error(tmp_path):
    folder = save("multimodal-perceiver", tmp_path)  # its --shape is the video's (T, C, H, W)
    with pytest.raises(SystemExit, match=r"^error: expected video of shape \(B, .*\), got \(2, 2, 3, 8, 8\)"):
        main(["export", folder, str(tmp_path / "m.onnx"), "--shape", "2", "3", "8", "8"])
    assert not list(tmp_path.glob("*.onnx"))


def test_export_command_wrong_shape_names_the_model_error(tmp_path):
    folder = save("vision-perceiver-learned", tmp_path)
    match = r"^error: expected pixel_values of shape \(B, 3, 16, 16\).*got \(2, 16, 16, 3\)"
    with pytest.raises(SystemExit, match=match):
        main(["export", folder, str(tmp_path / "v.onnx"), "--shape", "16", "16", "3"])
    with pytest.raises(SystemExit, match=match):
        main(["export", folder, str(tmp_path / "v.pt2"), "--shape", "16", "16", "3"])
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.pt2"))


# -- 2. --ckpt_path FILE that does not exist ---------------------------------------------------------------------


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_missing_checkpoint_file_is_an_error(subcommand, tmp_path):
    ckpt = tmp_path / "nope.ckpt"
    args = ["--config", str(CONFIGS / "digits.yaml"), f"--trainer.default_root_dir={tmp_path / 'run'}"]
    args += ["--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"]
    args += ["--trainer.limit_test_batches=1", "--trainer.enable_progress_bar=false", "--model.model_kwargs.depth=1"]
    with pytest.raises(SystemExit, match=rf"^error: checkpoint {ckpt} not found \(--ckpt_path {ckpt}\)"):
        main([subcommand, *args, f"--ckpt_path={ckpt}"])


# -- 3. perceiver predict / attention: files the model does not take, models they do not run -----------------------


@pytest.mark.parametrize(
    ("name", "what"),
    [("language-perceiver", "a masked language model"), ("perceiver-ar", "a causal language model")],
)
def test_predict_refuses_language_models(name, what, tmp_path):
    folder = save(name, tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["predict", folder, text_file(tmp_path)])
    message = str(e.value)
    assert (
        message.startswith("error: perceiver predict runs image, text, audio and video classifiers") and what in message
    )
    assert ("perceiver generate" in message) == (name == "perceiver-ar")


@pytest.mark.parametrize(
    ("name", "file", "match"),
    [
        ("vision-perceiver-learned", text_file, r"an image classifier \(.*\) takes image files, got .*t\.txt"),
        ("text-classifier", png, r"a text classifier \(.*\) takes text files, got .*img\.png \(an image file\)"),
        ("optical-flow-perceiver", text_file, r"an optical-flow model \(.*\) takes image files, got .*t\.txt"),
    ],
)
def test_predict_names_the_kind_of_files_a_model_takes(name, file, match, tmp_path):
    folder = save(name, tmp_path)
    with pytest.raises(SystemExit, match="^error: " + match):
        main(["predict", folder, file(tmp_path)])


def test_predict_flow_without_task_json(tmp_path, capsys):
    """The model's class tells the task: one image is not a pair, two are."""
    folder = save("optical-flow-perceiver", tmp_path)
    frame = png(tmp_path)
    with pytest.raises(SystemExit, match=r"^error: an optical-flow model takes image pairs .*got 1 file"):
        main(["predict", folder, frame])
    main(["predict", folder, frame, frame, "-o", str(tmp_path / "flow.png")])
    assert "flow (12, 16)" in capsys.readouterr().out and (tmp_path / "flow.png").is_file()


def test_predict_image_classifier_without_task_json_uses_its_image_size(tmp_path, capsys):
    folder = save("vision-perceiver-learned", tmp_path)
    main(["predict", folder, png(tmp_path, size=(20, 20)), "--top-k", "2"])
    out = capsys.readouterr().out.strip()
    assert out.startswith(str(tmp_path / "img.png")) and out.count("(") == 2


@pytest.mark.parametrize(("name", "what"), [("text-classifier", "a text classifier"), ("perceiver-ar", "causal")])
def test_attention_refuses_models_that_do_not_take_images(name, what, tmp_path):
    folder = save(name, tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["attention", folder, png(tmp_path), "-o", str(tmp_path / "a.png")])
    assert str(e.value).startswith("error: perceiver attention draws the cross-attention of image classifiers")
    assert what in str(e.value) and not (tmp_path / "a.png").exists()


# -- 4. sizes < 1 --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "option", "bad"),
    [
        ("predict", ["--top-k", "0"], "0"),
        ("predict", ["--image-size", "0", "16"], "0"),
        ("attention", ["--image-size", "16", "-2"], "-2"),
    ],
)
def test_sizes_below_one_are_refused(command, option, bad, tmp_path, capsys):
    folder = save("vision-perceiver-learned", tmp_path)
    with pytest.raises(SystemExit) as e:
        main([command, folder, png(tmp_path), *option])
    assert e.value.code == 2
    assert f"argument {option[0]}: expected an integer >= 1, got {bad}" in capsys.readouterr().err


# -- 5. exporter errors that wrap the model's own -----------------------------------------------------------------


def test_export_onnx_raises_the_model_error_not_the_exporters(tmp_path):
    model = tiny("vision-perceiver-learned")
    match = r"expected pixel_values of shape \(B, 3, 16, 16\).*got \(2, 16, 16, 3\)"
    with pytest.raises(ValueError, match=match):
        export_onnx(model, tmp_path / "m.onnx", inputs=(torch.randn(2, 16, 16, 3),))
    with pytest.raises(ValueError, match=match):  # the concrete batch, not torch.export's symbol for it
        export_program(model, (torch.randn(2, 16, 16, 3),))
    assert not list(tmp_path.iterdir())


# -- 6. one tensor where a tuple of inputs is expected -----------------------------------------------------------


def test_one_tensor_is_one_input(tmp_path):
    model = tiny("vision-perceiver-learned").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model(x).logits
    assert torch.allclose(export_program(model, x).module()(x), want, atol=1e-5)
    export_onnx(model, tmp_path / "m.onnx", inputs=x)
    from perceiver.export import onnx_max_abs_diff

    assert onnx_max_abs_diff(model, tmp_path / "m.onnx", (x,)) < 1e-4
    fast = perceiver.optimize(model, x, candidates=["eager"], warmup=1, repeats=1, verbose=False)
    assert torch.equal(fast(x).logits, want)
    with pytest.raises(TypeError, match=r"expected inputs as a tuple of tensors, got list at position 0"):
        export_program(model, ([x],))
    with pytest.raises(TypeError, match=r"expected example_inputs as a tuple .*got dict; pass keywords"):
        perceiver.optimize(model, {"pixel_values": x}, candidates=["eager"], verbose=False)


# -- 7. candidates as one string --------------------------------------------------------------------------------


def test_optimize_takes_one_candidate_as_a_string():
    model = tiny("perceiver").eval()
    x = torch.randn(1, 8, 8, 3)
    fast = perceiver.optimize(model, (x,), candidates="eager", warmup=1, repeats=1, verbose=False)
    assert set(fast.report.seconds) == {"eager"} and not fast.report.skipped
    with pytest.raises(ValueError, match=r"unknown inference candidates \['fast'\]"):
        perceiver.optimize(model, (x,), candidates="fast")


# -- 8. load_pt2 of a missing file or a folder -------------------------------------------------------------------


def test_load_pt2_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected a \.pt2 archive at .*missing\.pt2.*no such file"):
        load_pt2(tmp_path / "missing.pt2")
    with pytest.raises(ValueError, match=r"expected a \.pt2 archive \(a zip file\) at .*, got a folder"):
        load_pt2(tmp_path)


# -- 9. a failed check leaves no file -----------------------------------------------------------------------------


def test_failed_check_leaves_no_file(tmp_path):
    """The file is checked before it is moved into place: a file that failed its check is never at `path` (a
    build tool would take it for a good one), and the error says so."""
    model = tiny("perceiver")
    x = (torch.randn(2, 8, 8, 3),)
    with pytest.raises(RuntimeError, match=r"differs from PyTorch .*m\.onnx was not written"):
        export_onnx(model, tmp_path / "m.onnx", x, check=True, atol=-1.0)
    with pytest.raises(RuntimeError, match=r"differs from PyTorch .*m\.pt2 was not written"):
        export_pt2(model, tmp_path / "m.pt2", x, check=True, atol=-1.0)
    with pytest.raises(ValueError, match=r"expected check_batch_sizes as batch sizes >= 1, got \(0,\)"):
        export_onnx(model, tmp_path / "m.onnx", x, check=True, check_batch_sizes=(0,))
    assert not list(tmp_path.iterdir())
    assert export_onnx(model, tmp_path / "m.onnx", x, check=True).is_file()


def test_predict_with_a_missing_model_folder_names_it(tmp_path, capsys):
    """`perceiver predict typo-dir photo.jpg` went to Lightning's predict (usage dump, "unrecognized arguments")."""
    image = png(tmp_path)
    with pytest.raises(SystemExit, match=r"expected a model folder .*'typo-dir'.*no such folder"):
        main(["predict", "typo-dir", image])
