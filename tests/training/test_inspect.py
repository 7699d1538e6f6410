"""`perceiver plot`, `perceiver attention`, `perceiver predict MODEL_DIR ...` and the PNG helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from trainutil import assert_png

import perceiver
from perceiver.training.cli import main
from perceiver.training.plots import plot_attention_maps, plot_training_curves, save_flow_comparison


def digit_pngs(directory: Path, n: int = 3) -> tuple[list[Path], list[int]]:
    """The first `n` sklearn digits as 8x8 greyscale PNGs (ink bright, as in the data)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    paths = []
    for i in range(n):
        path = directory / f"digit{i}.png"
        Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8), mode="L").save(path)
        paths.append(path)
    return paths, [int(t) for t in d.target[:n]]


def test_plot_command(digits_run):
    main(["plot", str(digits_run)])
    assert_png(digits_run / "training_curves.png")


def test_plot_command_missing_run(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main(["plot", str(tmp_path / "nope")])


def test_plot_command_names_a_broken_metrics_file(tmp_path):
    (tmp_path / "metrics.csv").write_bytes(b"epoch,step\n\xff\xfe,1\n")
    with pytest.raises(SystemExit, match=r"error: .*metrics.csv: expected a CSV file \(UTF-8 text\)"):
        main(["plot", str(tmp_path)])
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n0,abc,1.0\n")
    with pytest.raises(SystemExit, match=r"error: .*metrics.csv: line 2: expected a number as step, got 'abc'"):
        main(["plot", str(tmp_path)])


def test_plot_training_curves_from_csv(tmp_path):
    rows = ["epoch,step,train/loss_step,val/loss,val/epe,val/epe_zero,lr-AdamW"]
    rows += [f"0,{s},{2 - s / 50},,,,{1e-3}" for s in range(40)]
    rows += ["0,39,,1.5,2.0,4.0,", "1,79,,1.2,1.5,4.0,"]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    out = plot_training_curves(tmp_path)
    assert_png(out)


def test_attention_command(digits_run, tmp_path):
    pngs, _ = digit_pngs(tmp_path)
    out = tmp_path / "att.png"
    main(["attention", str(digits_run / "model"), *map(str, pngs), "-o", str(out), "--latents", "0", "3"])
    assert_png(out)
    n = json.loads((digits_run / "model" / "config.json").read_text())["num_latents"]
    with pytest.raises(SystemExit, match=rf"error: the model has {n} latents \(0\.\.{n - 1}\), got --latents 0 {n}"):
        main(["attention", str(digits_run / "model"), str(pngs[0]), "-o", str(out), "--latents", "0", str(n)])


def test_plot_attention_maps_shapes(tmp_path):
    att = torch.softmax(torch.randn(2, 2, 8, 64), -1)
    assert_png(plot_attention_maps(torch.rand(2, 8, 8, 1), att, tmp_path / "a.png", latents=[1, 2]))
    with pytest.raises(ValueError, match="grid"):
        plot_attention_maps(torch.rand(2, 7, 7, 1), att, tmp_path / "b.png")


def test_predict_images(digits_run, tmp_path, capsys):
    pngs, _ = digit_pngs(tmp_path)
    main(["predict", str(digits_run / "model"), *map(str, pngs), "--top-k", "3", "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [Path(r["file"]).name for r in lines] == [p.name for p in pngs]
    for r in lines:
        assert len(r["top"]) == 3 and r["top"][0]["label"] in [str(i) for i in range(10)]
        assert abs(sum(t["prob"] for t in r["top"])) <= 1.0 + 1e-5


def test_predict_names_missing_and_corrupt_files(digits_run, tmp_path):
    with pytest.raises(SystemExit, match="nothere.png"):
        main(["predict", str(digits_run / "model"), str(tmp_path / "nothere.png")])
    with pytest.raises(SystemExit, match=r"error: expected files to predict, got the folder .*\(list its files"):
        main(["predict", str(digits_run / "model"), str(tmp_path)])  # exists: not "file not found"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="error: image cannot be decoded: .*broken.png"):
        main(["predict", str(digits_run / "model"), str(bad)])


def test_predict_and_attention_on_a_run_directory_point_to_its_model_folder(digits_run, tmp_path):
    pngs, _ = digit_pngs(tmp_path, 1)
    for command in ("predict", "attention"):  # a folder without config.json: an error, not a traceback
        with pytest.raises(SystemExit, match=r"error: expected config.json in .*; a run directory keeps its model in"):
            main([command, str(digits_run), str(pngs[0])])


def test_predict_text_classifier(tmp_path, capsys):
    model = perceiver.create_model(
        "text-classifier", num_labels=3, max_seq_len=64, d_model=32, num_latents=8, latent_dim=32,
        num_self_attends_per_block=1, cross_qk_channels=16, cross_v_channels=32, latent_qk_channels=16,
        latent_v_channels=32,
    )  # fmt: skip
    model_dir = model.save_pretrained(tmp_path / "model")
    info = {"task": "classification", "class_names": ["neg", "neutral", "pos"], "max_seq_len": 64}
    (model_dir / "task.json").write_text(json.dumps(info))
    texts = [tmp_path / "a.txt", tmp_path / "b.txt"]
    texts[0].write_text("a fine day")
    texts[1].write_text("x" * 500)  # longer than max_seq_len: truncated
    main(["predict", str(model_dir), *map(str, texts), "--top-k", "2"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(any(n in line for n in info["class_names"]) for line in out)
    # a text classifier reads any file as text, whatever its suffix (not as an image without an image size)
    for name in ("review", "notes.log"):
        (tmp_path / name).write_text("a fine day")
    main(["predict", str(model_dir), str(texts[0]), str(tmp_path / "review"), str(tmp_path / "notes.log"), "--json"])
    tops = [json.loads(line)["top"] for line in capsys.readouterr().out.splitlines()]
    assert tops[0] == tops[1] == tops[2]
    # a byte order mark is not text (as in training); a file that is not UTF-8 is an error naming it
    texts[1].write_bytes("a fine day".encode("utf-8-sig"))
    main(["predict", str(model_dir), *map(str, texts), "--json"])
    tops = [json.loads(line)["top"] for line in capsys.readouterr().out.splitlines()]
    assert tops[0] == tops[1]
    texts[1].write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(SystemExit, match=r"error: .*b\.txt: expected UTF-8 text"):
        main(["predict", str(model_dir), *map(str, texts)])


def test_predict_flow_pair(tmp_path, capsys):
    model = perceiver.create_model(
        "optical-flow-perceiver", train_size=(16, 16), out_channels=16, num_bands=4, num_latents=8, latent_dim=32,
        num_self_attends_per_block=1, output_init_zeros=False,
    )  # fmt: skip
    model_dir = model.save_pretrained(tmp_path / "model")
    (model_dir / "task.json").write_text(json.dumps({"task": "optical-flow", "image_shape": [16, 16, 3]}))
    rng = np.random.default_rng(0)
    frames = []
    for i in range(2):
        frames.append(tmp_path / f"f{i}.png")
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(frames[-1])
    out = tmp_path / "flow.png"
    main(["predict", str(model_dir), *map(str, frames), "-o", str(out)])
    assert_png(out)
    assert "flow (20, 24)" in capsys.readouterr().out  # the frames' own size, not the training crop's (16, 16)
    with pytest.raises(SystemExit, match="pairs"):
        main(["predict", str(model_dir), str(frames[0])])


def test_predicted_flow_has_the_frames_size_and_pixels():
    """Before, `perceiver predict` resized the frames to task.json's training crop: a 16 x 16 flow for 20 x 24 frames,
    its vectors in the resized image's pixels. Now: one pass at the training size, tiles above it, and below it the
    frames upsampled and the flow resized back with its vectors scaled."""
    from perceiver.adapters.flow import frames_to_patches, normalize_frames
    from perceiver.training.predict import predict_flow

    torch.manual_seed(0)
    model = perceiver.create_model(
        "optical-flow-perceiver", train_size=(16, 16), out_channels=16, num_bands=4, num_latents=8, latent_dim=32,
        num_self_attends_per_block=1, output_init_zeros=False,
    ).eval()  # fmt: skip
    rng = np.random.default_rng(0)
    a, b = (rng.random((16, 16, 3), dtype=np.float32) for _ in range(2))
    one_pass = model(frames_to_patches(normalize_frames(torch.from_numpy(np.stack([a, b]))[None]))).logits[0]
    torch.testing.assert_close(predict_flow(model, a, b), one_pass)
    assert predict_flow(model, *(rng.random((20, 24, 3), dtype=np.float32) for _ in range(2))).shape == (20, 24, 2)
    small = predict_flow(model, a[:8, :12], b[:8, :12])
    assert small.shape == (8, 12, 2) and torch.isfinite(small).all()


def test_flow_comparison_png(tmp_path):
    flow = torch.randn(2, 12, 12, 2)
    out = save_flow_comparison(torch.rand(2, 12, 12, 3), flow, flow * 0.5, tmp_path / "flow.png")
    assert_png(out)


def test_predict_and_generate_load_a_bf16_model_in_the_dtype_asked_for(digits_run, tmp_path, capsys, monkeypatch):
    """A model saved in bf16 runs in bf16 (`--dtype auto`, the default) or in the dtype `--dtype` names."""
    model = perceiver.from_pretrained(digits_run / "model").to(torch.bfloat16)
    folder = model.save_pretrained(tmp_path / "bf16")
    (folder / "task.json").write_text((digits_run / "model" / "task.json").read_text())
    loaded = []
    real = perceiver.from_pretrained

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        loaded.append(next(out.parameters()).dtype)
        return out

    monkeypatch.setattr(perceiver, "from_pretrained", spy)
    pngs, _ = digit_pngs(tmp_path)
    tops = {}
    for dtype in ("auto", "float32"):
        main(["predict", str(folder), *map(str, pngs), "--json", "--dtype", dtype])
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        tops[dtype] = [r["top"][0] for r in lines]
    assert loaded == [torch.bfloat16, torch.float32]
    for a, b in zip(tops["auto"], tops["float32"], strict=True):
        assert a["label"] == b["label"] and abs(a["prob"] - b["prob"]) < 0.05  # bf16 arithmetic, same weights

    ar = perceiver.create_model("perceiver-ar-tiny", max_seq_len=32, num_latents=8).to(torch.bfloat16)
    ar_dir = str(ar.save_pretrained(tmp_path / "ar"))
    main(["generate", ar_dir, "--prompt", "abc", "--max-new-tokens", "4", "--greedy"])
    expected = perceiver.ByteTokenizer().decode(
        ar.eval().generate(torch.tensor([[103, 104, 105]]), 4, do_sample=False)[0].tolist(), skip_special_tokens=True
    )
    assert capsys.readouterr().out == expected + "\n" and loaded[-1] == torch.bfloat16
    main(["generate", ar_dir, "--prompt", "abc", "--max-new-tokens", "4", "--greedy", "--dtype", "float32"])
    assert loaded[-1] == torch.float32
