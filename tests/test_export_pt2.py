"""PyTorch's own deployment archive: `export_pt2` / `perceiver export MODEL OUT.pt2` write the torch.export program
or (`aoti=True`, `--aoti`) an AOTInductor package; `load_pt2` runs either at any batch size with eager's outputs."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny

from perceiver.export import LogitsOnly, example_inputs, export_pt2, load_pt2
from perceiver.training.cli import main

SHAPES = {"perceiver": (8, 8, 3)}


def assert_runs_like_eager(model, path, shape=None):
    runner = load_pt2(path)
    for batch in (1, 3):
        x = example_inputs(model, batch, shape)
        with torch.no_grad():
            torch.testing.assert_close(runner(*x), LogitsOnly(model)(*x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["perceiver", "language-perceiver"])
def test_program_archive_takes_any_batch(name, tmp_path):
    model = tiny(name)
    path = export_pt2(model, tmp_path / "model.pt2", example_inputs(model, 2, SHAPES.get(name)), check=True)
    assert path.is_file() and not list(tmp_path.glob(".*"))
    assert_runs_like_eager(model, path, SHAPES.get(name))
    assert isinstance(torch.export.load(path), torch.export.ExportedProgram)  # plain torch.export reads it too


@pytest.mark.parametrize(
    "name", ["language-perceiver", pytest.param("vision-perceiver-learned", marks=pytest.mark.slow)]
)
def test_aoti_package_is_compiled_and_matches_eager(name, tmp_path):
    import zipfile

    model = tiny(name)
    path = export_pt2(model, tmp_path / "model.pt2", aoti=True, check=True)
    names = zipfile.ZipFile(path).namelist()
    assert any(n.endswith(".so") for n in names)  # a compiled shared library inside, not a graph to compile
    assert not list(tmp_path.glob(".*"))
    assert_runs_like_eager(model, path)


def test_export_command(tmp_path, capsys):
    torch.manual_seed(0)
    model = tiny("perceiver")
    folder = model.save_pretrained(tmp_path / "model")
    shape = ["--shape", "8", "8", "3"]
    main(["export", str(folder), str(tmp_path / "out.pt2"), *shape, "--check"])
    out = capsys.readouterr().out
    assert "torch.export program" in out and "matches PyTorch within 0.0001 at batch sizes 1 and 3" in out
    assert_runs_like_eager(model, tmp_path / "out.pt2", (8, 8, 3))
    main(["export", str(folder), str(tmp_path / "aoti.pt2"), *shape, "--aoti"])
    assert "AOTInductor package" in capsys.readouterr().out
    assert_runs_like_eager(model, tmp_path / "aoti.pt2", (8, 8, 3))
    with pytest.raises(SystemExit, match=r"error: the \.pt2 file's output differs from PyTorch by .* at batch 1"):
        main(["export", str(folder), str(tmp_path / "bad.pt2"), *shape, "--check", "--atol", "-1"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["out.pt"], "expected OUT ending in .onnx or .pt2"),
        (["out.onnx", "--aoti"], "--aoti writes an AOTInductor package: expected OUT ending in .pt2"),
        (["out.pt2", "--quantize", "int8"], "--quantize int8 applies to ONNX files"),
    ],
)
def test_export_command_refuses_mismatched_options(extra, message, tmp_path, capsys):
    folder = tiny("perceiver").save_pretrained(tmp_path / "model")
    with pytest.raises(SystemExit):
        main(["export", str(folder), str(tmp_path / extra[0]), *extra[1:]])
    assert message in capsys.readouterr().err
    assert not (tmp_path / extra[0]).exists()


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match=r"expected a path ending in \.pt2, got '.*model\.onnx'"):
        export_pt2(tiny("perceiver"), tmp_path / "model.onnx")
    (tmp_path / "text.pt2").write_text("not an archive")
    with pytest.raises(ValueError, match=r"expected a \.pt2 archive \(a zip file\) at .*text\.pt2"):
        load_pt2(tmp_path / "text.pt2")


def test_bf16_model_is_checked_in_its_precision(tmp_path):
    """The exported graph of a bf16 model rounds differently from eager (its attention is decomposed): it differed by
    ~3e-3, so `check=True` with the fp32 `atol` (1e-4) refused every bf16 model. The limit now adds 8 bf16 rounding
    steps of the largest output, and says so when it is exceeded."""
    model = tiny("perceiver").bfloat16()
    x = (torch.randn(2, 8, 8, 3, dtype=torch.bfloat16),)
    path = export_pt2(model, tmp_path / "bf16.pt2", x, check=True)
    with torch.no_grad():
        expected = LogitsOnly(model)(*x).float()
        got = load_pt2(path)(*x).float()
    assert (got - expected).abs().max() <= 8 * 2**-7 * expected.abs().max() + 1e-4
    with pytest.raises(RuntimeError, match=r"differs from PyTorch by .* x the largest output .*, for bfloat16 outputs"):
        export_pt2(model, tmp_path / "bad.pt2", x, check=True, atol=-1.0)


def test_a_failed_export_leaves_no_folders_and_a_file_in_the_way_is_named(tmp_path):
    """The folders made for the file stayed after a failed export; a file where a folder of the path should be gave
    `FileExistsError` (a traceback from `perceiver export`), after the export's work."""
    model = tiny("perceiver")
    with pytest.raises(ValueError, match=r"expected input of shape \(B, d1, d2, 3\)"):
        export_pt2(model, tmp_path / "new" / "dir" / "m.pt2", (torch.randn(2, 8, 8, 4),))
    assert not list(tmp_path.iterdir())
    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(ValueError, match=r"expected a folder to write the file into, got the file '.*notes\.txt'"):
        export_pt2(model, tmp_path / "notes.txt" / "sub" / "m.pt2", (torch.randn(2, 8, 8, 3),))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
