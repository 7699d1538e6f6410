"""An inference user's journey, as with transformers / timm: load a folder, classify real photos with the names the
checkpoint gives, run `perceiver predict` on files. Each test failed before the fix it guards:

- `perceiver predict` on a transformers image classifier folder preprocessed photos the training way (bilinear
  resize to the model's size, [0, 1], no crop, no ImageNet normalization) instead of as its `preprocessor_config.json`
  says (what transformers' pipeline does and DeepMind's weights expect): other top classes;
- `perceiver predict` on a text classifier without task.json cut texts at 2048 bytes instead of the model's
  `max_seq_len`: a longer text was an error telling to pass a tokenizer option the command does not have;
- `perceiver predict` took only files: a text to classify had to be written to a file first (`--text`);
- `from_pretrained(num_classes=K, ignore_mismatched_sizes=True)` kept the old head's class names in `model.id2label`
  (plausible, wrong names for the new classes); transformers' `id2label=` keyword was an "unknown key" error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import perceiver
from perceiver.training.predict import predict_main

transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

TINY_HF = dict(
    num_latents=8,
    d_latents=32,
    d_model=16,
    num_blocks=1,
    num_self_attends_per_block=1,
    num_self_attention_heads=2,
    num_cross_attention_heads=1,
)
NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray", "stingray"]


def _sharpened(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with its output layer scaled up, so that its class probabilities are far from uniform."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "final_layer" in name:
                p.mul_(300)
    return model.eval()


def _photos(folder: Path) -> list[Path]:
    """scikit-learn's two sample photos, as a JPEG and a PNG of another size and aspect."""
    datasets = pytest.importorskip("sklearn.datasets")
    folder.mkdir(parents=True, exist_ok=True)
    china, flower = folder / "china.jpg", folder / "flower.png"
    Image.fromarray(datasets.load_sample_image("china.jpg")).save(china)
    Image.fromarray(datasets.load_sample_image("flower.jpg")).resize((100, 300)).save(flower)
    return [china, flower]


def _predicted(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict]:
    predict_main([*argv, "--json", "--top-k", "3"])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_predict_preprocesses_a_transformers_image_classifier_as_its_pipeline(tmp_path, capsys):
    config = transformers.PerceiverConfig(
        **TINY_HF, image_size=224, num_labels=len(NAMES), id2label=dict(enumerate(NAMES))
    )
    hf = _sharpened(transformers.PerceiverForImageClassificationLearned(config))
    folder = tmp_path / "hf"
    hf.save_pretrained(folder)
    processor_cls = getattr(transformers, "PerceiverImageProcessorPil", None) or transformers.PerceiverImageProcessor
    processor = processor_cls()
    processor.save_pretrained(folder)
    photos = _photos(tmp_path / "photos")

    rows = _predicted(capsys, str(folder), *map(str, photos))
    for path, row in zip(photos, rows, strict=True):
        with Image.open(path) as image:
            pixels = processor(image.convert("RGB"), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            probs = hf(pixel_values=pixels).logits.softmax(-1)[0]
        top = probs.topk(3)
        assert [t["label"] for t in row["top"]] == [NAMES[i] for i in top.indices.tolist()]
        np.testing.assert_allclose([t["prob"] for t in row["top"]], top.values.tolist(), atol=1e-5)

    # converted and saved as our own folder (as `create_model(..., pretrained=True).save_pretrained(dir)`), the
    # checkpoint keeps its preprocessor_config.json, through a second load and save too: the same predictions
    ours = perceiver.from_pretrained(folder).save_pretrained(tmp_path / "ours")
    again = perceiver.from_pretrained(ours).save_pretrained(tmp_path / "again")
    expected = json.loads((folder / "preprocessor_config.json").read_text())
    assert json.loads((again / "preprocessor_config.json").read_text()) == expected
    assert _predicted(capsys, str(again), *map(str, photos)) == rows


def test_predict_cuts_texts_at_the_models_max_seq_len(tmp_path, capsys):
    config = transformers.PerceiverConfig(
        **TINY_HF,
        max_position_embeddings=40,
        vocab_size=262,
        v_channels=32,
        num_labels=3,
        id2label={0: "neg", 1: "neu", 2: "pos"},
    )
    hf = _sharpened(transformers.PerceiverForSequenceClassification(config))
    hf.save_pretrained(tmp_path / "hf")
    text = "Great movie, I loved every minute of it! ünïcödé 🙂 " * 3  # > 40 bytes
    (tmp_path / "review.txt").write_text(text, encoding="utf-8")

    (row,) = _predicted(capsys, str(tmp_path / "hf"), str(tmp_path / "review.txt"))
    enc = transformers.PerceiverTokenizer()([text], truncation=True, max_length=40, return_tensors="pt")
    with torch.no_grad():
        top = hf(**enc).logits.softmax(-1)[0].topk(3)
    assert [t["label"] for t in row["top"]] == [["neg", "neu", "pos"][i] for i in top.indices.tolist()]
    np.testing.assert_allclose([t["prob"] for t in row["top"]], top.values.tolist(), atol=1e-5)
    (typed,) = _predicted(capsys, str(tmp_path / "hf"), "--text", text)  # the text itself, as a pipeline takes it
    assert typed == {"text": text, "top": row["top"]}


def test_predict_text_needs_a_text_classifier_and_something_to_predict(tmp_path, capsys):
    tiny = dict(num_latents=4, latent_dim=16, num_blocks=1, num_self_attends_per_block=1, latent_heads=2, num_bands=4)
    folder = perceiver.create_model("vision-perceiver-fourier", **tiny).save_pretrained(tmp_path / "vision")
    with pytest.raises(SystemExit, match="--text is for text classifiers; .* holds an image classifier"):
        predict_main([str(folder), "--text", "a cat"])
    with pytest.raises(SystemExit):
        predict_main([str(folder)])
    assert "expected files to predict (or --text TEXT for a text classifier), got none" in capsys.readouterr().err


@pytest.fixture
def named_folders(tmp_path) -> dict[str, Path]:
    """A transformers image classifier with ImageNet-like names, and the same model saved as our folder."""
    config = transformers.PerceiverConfig(
        **TINY_HF, image_size=32, num_labels=len(NAMES), id2label=dict(enumerate(NAMES))
    )
    transformers.PerceiverForImageClassificationLearned(config).save_pretrained(tmp_path / "hf")
    perceiver.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "ours")
    return {"transformers": tmp_path / "hf", "ours": tmp_path / "ours"}


@pytest.mark.parametrize("kind", ["transformers", "ours"])
def test_a_new_head_of_another_size_has_no_old_names(named_folders, kind):
    assert perceiver.from_pretrained(named_folders[kind]).id2label == dict(enumerate(NAMES))
    model = perceiver.from_pretrained(named_folders[kind], num_classes=3, ignore_mismatched_sizes=True)
    assert model.num_classes == 3 and model.id2label is None  # not "tench", "goldfish", "great white shark"
    same = perceiver.from_pretrained(named_folders[kind], num_classes=len(NAMES))  # the same size: the names stay
    assert same.id2label == dict(enumerate(NAMES))


@pytest.mark.parametrize("kind", ["transformers", "ours"])
def test_id2label_names_the_classes_as_in_transformers(named_folders, kind):
    """transformers' idiom `from_pretrained(ckpt, id2label=..., label2id=..., ignore_mismatched_sizes=True)` (its
    num_labels follows id2label)."""
    labels = {0: "cat", 1: "dog"}
    model = perceiver.from_pretrained(
        named_folders[kind], id2label=labels, label2id={"cat": 0, "dog": 1}, ignore_mismatched_sizes=True
    )
    assert model.num_classes == 2 and model.id2label == labels
    renamed = perceiver.from_pretrained(named_folders[kind], id2label={str(i): n.upper() for i, n in enumerate(NAMES)})
    assert renamed.id2label == {i: n.upper() for i, n in enumerate(NAMES)}  # same head, new names
    with pytest.raises(ValueError, match="ignore_mismatched_sizes"):
        perceiver.from_pretrained(named_folders[kind], id2label=labels)
    with pytest.raises(ValueError, match=r"id2label: expected class ids 0, 1"):
        perceiver.from_pretrained(named_folders[kind], id2label={0: "cat", 2: "dog"}, ignore_mismatched_sizes=True)
    with pytest.raises(ValueError, match=r"one name for each of the model's 7 classes"):
        perceiver.from_pretrained(named_folders[kind], num_labels=len(NAMES), id2label=labels)


def test_the_readme_photo_snippet_runs(tmp_path, monkeypatch):
    """The README Quickstart's photo snippet, verbatim but for a local folder in place of the Hub id."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"^```python\n(.*?)^```", readme, flags=re.M | re.S) if "ImageProcessor()" in b]
    model = perceiver.create_model(
        "vision-perceiver-fourier", num_latents=4, latent_dim=16, num_blocks=1, num_self_attends_per_block=1,
        latent_heads=2, num_bands=4, num_classes=1000,
    )  # fmt: skip
    model.id2label = {i: f"synset {i}" for i in range(1000)}
    model.save_pretrained(tmp_path / "vision")
    monkeypatch.chdir(tmp_path)
    china, flower = _photos(tmp_path)
    china.rename(tmp_path / "cat.jpg")
    flower.rename(tmp_path / "dog.png")
    namespace: dict = {}
    exec(compile(block.replace('"deepmind/vision-perceiver-learned"', '"./vision"'), "README.md", "exec"), namespace)
    assert namespace["pixel_values"].shape == (2, 3, 224, 224) and namespace["probs"].shape == (2, 1000)
    assert all(len(row) == 5 and row[0].startswith("synset") for row in namespace["top5"])


def test_predict_errors_name_the_way_out(tmp_path, capsys):
    """A masked LM is not a classifier: the error names `fill_mask`; a broken preprocessor_config.json is named."""
    perceiver.create_model("language-perceiver", num_latents=4, latent_dim=16, num_blocks=1, max_seq_len=16,
                           d_model=16, latent_heads=2, cross_heads=1).save_pretrained(tmp_path / "mlm")  # fmt: skip
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(SystemExit, match=r"fill_mask\(text\)"):
        predict_main([str(tmp_path / "mlm"), str(tmp_path / "a.txt")])
    config = transformers.PerceiverConfig(**TINY_HF, image_size=32, num_labels=3)
    transformers.PerceiverForImageClassificationLearned(config).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text('{"size": {"shortest_edge": 224}}')
    photo = _photos(tmp_path / "photos")[0]
    with pytest.raises(SystemExit, match=r"preprocessor_config.json: size as a dict must have .*'height'"):
        predict_main([str(tmp_path / "hf"), str(photo)])
    predict_main([str(tmp_path / "hf"), str(photo), "--image-size", "32", "32"])  # the training way: runs
    assert capsys.readouterr().out.startswith(str(photo))


def test_predict_runs_a_folder_of_files_a_batch_at_a_time(tmp_path, capsys):
    """`perceiver predict MODEL photos/*` on many files: bounded batches (one forward of all files needed memory in
    proportion to their number), each file's result as on its own."""
    model = perceiver.create_model(
        "vision-perceiver-fourier", num_latents=4, latent_dim=16, num_blocks=1, num_self_attends_per_block=1,
        latent_heads=2, num_bands=2, image_size=8, num_classes=3,
    )  # fmt: skip
    model.save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    files = []
    for i in range(40):
        files.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (8 + i % 3, 8, 3), dtype=np.uint8)).save(files[-1])
    batches: list[int] = []
    real_forward = type(model).forward

    def counting_forward(self, pixel_values, *args, **kwargs):
        batches.append(pixel_values.shape[0])
        return real_forward(self, pixel_values, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(model), "forward", counting_forward)
        rows = _predicted(capsys, str(tmp_path / "model"), *map(str, files))
    assert [r["file"] for r in rows] == list(map(str, files)) and sum(batches) == 40
    assert max(batches) <= 16, batches
    (alone,) = _predicted(capsys, str(tmp_path / "model"), str(files[37]))
    np.testing.assert_allclose([t["prob"] for t in alone["top"]], [t["prob"] for t in rows[37]["top"]], atol=1e-6)


def test_predict_classifies_off_meshes(tmp_path, capsys):
    """A point-cloud classifier trained on ModelNet meshes: `perceiver predict RUN_DIR/model chair.off` (before: "perceiver
    predict runs image, text, audio and video classifiers ... holds a point-cloud classifier")."""
    from perceiver.data.points_off import load_off_points

    torch.manual_seed(0)
    model = perceiver.create_model(
        "point-cloud-classifier", num_bands=4, num_latents=4, latent_dim=16, num_blocks=1, num_self_attends_per_block=1,
        latent_heads=2, num_classes=2,
    ).eval()  # fmt: skip
    folder = model.save_pretrained(tmp_path / "model")
    (folder / "task.json").write_text(json.dumps({"num_points": 32, "class_names": ["cone", "cube"]}))
    mesh = "OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n"
    (tmp_path / "a.off").write_text(mesh)
    (tmp_path / "b.off").write_text("OFF\n5 0 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n1 1 1\n")  # 5 vertices, no faces
    rows = _predicted(capsys, str(folder), str(tmp_path / "a.off"), str(tmp_path / "b.off"))
    with torch.no_grad():
        for f, row in zip(("a.off", "b.off"), rows):
            cloud = torch.from_numpy(load_off_points(tmp_path / f, 32, 0)).float()[None]
            probs = model(cloud, torch.ones(cloud.shape[:2], dtype=torch.bool)).logits.softmax(-1)[0]
            assert row["top"][0]["label"] == ["cone", "cube"][int(probs.argmax())]
            assert abs(row["top"][0]["prob"] - float(probs.max())) < 1e-5
