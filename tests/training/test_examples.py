"""configs/examples/*.yaml: each trains one step through the `perceiver` CLI on data written here (a tiny image
folder, folders of synthetic sound and video files, tiny JSONL / CSV files, a folder of text files), the model folder predicts (or generates); layout and
class-count mismatches stop before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from trainutil import CONFIGS, TINY_AR_MODEL, TINY_TRAINER

from perceiver.training.cli import main

EXAMPLES = CONFIGS / "examples"
CLASSES = ["cat", "dog"]

#: the small Perceiver IO image classifier of the image examples
IMAGE_IO = [
    "--model.model_kwargs.image_size=[16, 16]",
    "--model.model_kwargs.max_resolution=[16, 16]",
    "--model.model_kwargs.num_bands=4",
    "--model.model_kwargs.num_latents=8",
    "--model.model_kwargs.latent_dim=32",
    "--model.model_kwargs.num_self_attends_per_block=1",
    "--model.model_kwargs.latent_heads=2",
    "--data.image_size=16",
]

#: the small raw-audio classifier of the audio examples
AUDIO = [
    "--model.model_kwargs.num_samples=2000",
    "--model.model_kwargs.samples_per_patch=20",
    "--model.model_kwargs.num_bands=4",
    "--model.model_kwargs.num_latents=8",
    "--model.model_kwargs.latent_dim=32",
    "--model.model_kwargs.num_self_attends_per_block=1",
    "--model.model_kwargs.latent_heads=2",
    "--data.sample_rate=4000",
    "--data.num_samples=2000",
]

#: small models for the examples (the configs' sizes are for real data)
TINY = {
    "imagefolder-classic": [
        "--model.model_kwargs.depth=1",
        "--model.model_kwargs.num_latents=8",
        "--model.model_kwargs.latent_dim=32",
        "--model.model_kwargs.latent_heads=2",
        "--model.model_kwargs.cross_dim_head=16",
        "--model.model_kwargs.latent_dim_head=16",
        "--model.model_kwargs.self_per_cross_attn=1",
        "--model.model_kwargs.num_freq_bands=4",
        "--model.model_kwargs.max_freq=8.0",
        "--data.image_size=16",
    ],
    "hf-images": IMAGE_IO,  # the same model over a datasets dataset
    "imagefolder-perceiver-io": IMAGE_IO,
    "audiofolder": AUDIO,
    "hf-audio": AUDIO,  # the same model over a datasets dataset
    "videofolder": [
        "--model.model_kwargs.num_frames=4",
        "--model.model_kwargs.image_size=[16, 16]",
        "--model.model_kwargs.max_resolution=[4, 16, 16]",
        "--model.model_kwargs.num_bands=4",
        "--model.model_kwargs.num_latents=8",
        "--model.model_kwargs.latent_dim=32",
        "--model.model_kwargs.num_self_attends_per_block=1",
        "--model.model_kwargs.latent_heads=2",
        "--data.num_frames=4",
        "--data.image_size=16",
    ],
    "text-jsonl": [],
    "text-csv": [],
}
TINY_TEXT = [
    "--model.model_kwargs.max_seq_len=64",
    "--model.model_kwargs.d_model=16",
    "--model.model_kwargs.num_latents=4",
    "--model.model_kwargs.latent_dim=32",
    "--model.model_kwargs.num_self_attends_per_block=1",
    "--model.model_kwargs.latent_heads=2",
    "--model.model_kwargs.cross_qk_channels=16",
    "--model.model_kwargs.cross_v_channels=32",
    "--model.model_kwargs.latent_qk_channels=16",
    "--model.model_kwargs.latent_v_channels=32",
    "--data.max_seq_len=64",
]
TINY["text-jsonl"] = TINY["text-csv"] = TINY_TEXT
TINY["text-files-ar"] = TINY_AR_MODEL
TINY["text-files-mlm"] = [
    "--model.model_kwargs.max_seq_len=32",
    "--model.model_kwargs.d_model=16",
    "--model.model_kwargs.num_latents=4",
    "--model.model_kwargs.latent_dim=32",
    "--model.model_kwargs.num_self_attends_per_block=1",
    "--model.model_kwargs.latent_heads=2",
    "--model.model_kwargs.cross_heads=2",
    "--model.model_kwargs.cross_qk_channels=16",
    "--model.model_kwargs.cross_v_channels=32",
    "--model.model_kwargs.latent_qk_channels=16",
    "--model.model_kwargs.latent_v_channels=32",
    "--model.model_kwargs.decoder_heads=2",
    "--model.model_kwargs.decoder_qk_channels=16",
    "--data.max_seq_len=32",
]
LANGUAGE_MODELS = ("text-files-ar", "text-files-mlm")
CLASSIFIERS = [c for c in sorted(TINY) if c not in LANGUAGE_MODELS]


def write_image_folder(root: Path, classes: list[str] = CLASSES, per_class: int = 8, size: int = 20) -> Path:
    """`root/<class>/<i>.png`: RGB images, a colour per class plus noise (size x size, resized by the datamodule)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3)) + np.eye(3, dtype=np.int64)[c % 3] * 190
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def write_sound_folder(root: Path, classes: list[str] = CLASSES, per_class: int = 4) -> Path:
    """`root/<class>/<i>.wav`: 0.3-0.8 s synthetic tones, a pitch per class plus noise (8 kHz, resampled to 4 kHz)."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            t = np.arange(int((0.3 + 0.15 * i) * 8000)) / 8000
            wave = 0.5 * np.sin(2 * np.pi * (300 + 600 * c) * t) + 0.05 * rng.standard_normal(t.shape)
            sf.write(folder / f"{i}.wav", wave.astype(np.float32), 8000)
    return root


def write_video_folder(root: Path, classes: list[str] = CLASSES, per_class: int = 4) -> Path:
    """`root/<class>/<i>.mp4`: 5-9 frames of a square moving right, a colour per class (synthetic, mpeg4)."""
    import av

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            with av.open(str(root / name / f"{i}.mp4"), "w") as out:
                stream = out.add_stream("mpeg4", rate=10)
                stream.height = stream.width = 32
                for t in range(5 + i):
                    image = np.full((32, 32, 3), 128, dtype=np.uint8)
                    image[8:20, 2 * t : 2 * t + 12] = np.eye(3, dtype=np.uint8)[c % 3] * 255
                    out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
                out.mux(stream.encode())
    return root


TEXTS = {"pos": ["great film", "loved it", "wonderful", "so good"], "neg": ["awful", "boring", "bad film", "meh"]}


def text_rows() -> list[tuple[str, str]]:
    return [(f"{t} {i}", label) for i in range(2) for label, ts in TEXTS.items() for t in ts]


def write_jsonl(path: Path) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in text_rows()))
    return path


def write_csv(path: Path) -> Path:
    path.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in text_rows()))
    return path


def data_args(config: str, data_dir: Path) -> list[str]:
    """`--data.*` pointing the example at freshly written data in `data_dir`."""
    if config.startswith("imagefolder"):
        root = write_image_folder(data_dir / "images")
        return [f"--data.root={root}", "--data.val_fraction=0.25", "--data.num_workers=0", "--data.batch_size=4"]
    if config == "hf-images":  # the same images as a `datasets` DatasetDict written by save_to_disk
        import datasets

        root = write_image_folder(data_dir / "images")
        files = sorted(root.glob("*/*.png"))
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
        rows = {"image": [str(f) for f in files], "label": [CLASSES.index(f.parent.name) for f in files]}
        saved = data_dir / "hf"
        datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(str(saved))
        return [f"--data.path={saved}", "--data.val_fraction=0.25", "--data.num_workers=0", "--data.batch_size=4"]
    if config == "videofolder":
        root = write_video_folder(data_dir / "videos")
        return [f"--data.root={root}", "--data.val_fraction=0.25", "--data.num_workers=0", "--data.batch_size=4"]
    if config == "audiofolder":
        root = write_sound_folder(data_dir / "audio")
        return [f"--data.root={root}", "--data.val_fraction=0.25", "--data.num_workers=0", "--data.batch_size=4"]
    if config == "hf-audio":  # the same sound files as a `datasets` DatasetDict (Audio and ClassLabel columns)
        import datasets

        files = sorted(write_sound_folder(data_dir / "audio").glob("*/*.wav"))
        table = datasets.Dataset.from_dict(
            {"audio": [{"bytes": f.read_bytes(), "path": f.name} for f in files],
             "label": [CLASSES.index(f.parent.name) for f in files]}
        )  # fmt: skip
        table = table.cast_column("audio", datasets.Audio()).cast_column("label", datasets.ClassLabel(names=CLASSES))
        saved = data_dir / "hf"
        datasets.DatasetDict({"train": table}).save_to_disk(str(saved))
        return [f"--data.path={saved}", "--data.val_fraction=0.25", "--data.num_workers=0", "--data.batch_size=4"]
    if config in LANGUAGE_MODELS:
        corpus = data_dir / "corpus"
        corpus.mkdir(parents=True)
        for i, (text, label) in enumerate(text_rows()):
            (corpus / f"{i:02d}.txt").write_text(f"{text} is {label}. " * 20)
        return [f"--data.train={corpus / '*.txt'}", "--data.batch_size=4"]
    file = write_jsonl(data_dir / "train.jsonl") if config == "text-jsonl" else write_csv(data_dir / "train.csv")
    return [f"--data.train_file={file}", "--data.val_fraction=0.25", "--data.batch_size=4"]


def example_args(config: str, run_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(EXAMPLES / f"{config}.yaml"),
        f"--trainer.default_root_dir={run_dir}",
        "--precision=32-true",
        "--threads=1",
        *TINY_TRAINER,
        "--trainer.limit_train_batches=1",
        *TINY[config],
        *data_args(config, data_dir),
        *extra,
    ]


def test_every_example_config_is_tested():
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == sorted(TINY)


@pytest.mark.parametrize("config", CLASSIFIERS)
def test_example_config_fits_and_predicts(config, tmp_path, capsys):
    """One training step from the shipped example; the head takes the data's class count (the configs name none),
    task.json records it, the checkpoint reloads with it, and `perceiver predict` labels files with class names."""
    run = tmp_path / "run"
    main(["fit", *example_args(config, run, tmp_path)])
    info = json.loads((run / "model" / "task.json").read_text())
    names = CLASSES if config.startswith(("imagefolder", "hf-", "audio", "video")) else sorted(TEXTS)
    assert info["num_classes"] == 2 and info["class_names"] == names

    import perceiver
    from perceiver.training import ClassificationTask
    from perceiver.training.tasks import num_classes_of

    assert num_classes_of(perceiver.from_pretrained(run / "model")) == 2
    task = ClassificationTask.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert num_classes_of(task.model) == 2  # the checkpoint's hyperparameters carry the data's count

    capsys.readouterr()
    if config.startswith(("imagefolder", "hf-images")):
        files = [tmp_path / "images" / "cat" / "0.png", tmp_path / "images" / "dog" / "0.png"]
    elif config == "videofolder":
        files = [tmp_path / "videos" / "cat" / "0.mp4", tmp_path / "videos" / "dog" / "3.mp4"]
        assert info["video_shape"] == [4, 16, 16, 3]
    elif config in ("audiofolder", "hf-audio"):
        files = [tmp_path / "audio" / "cat" / "0.wav", tmp_path / "audio" / "dog" / "3.wav"]  # padded and cropped
        assert info["sample_rate"] == 4000 and info["num_samples"] == 2000
    else:
        files = [tmp_path / "a.txt", tmp_path / "b.txt"]
        files[0].write_text("great film")
        files[1].write_text("boring")
    main(["predict", str(run / "model"), *map(str, files), "--json", "--top-k", "2"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 2
    for row in rows:
        assert sorted(t["label"] for t in row["top"]) == names
        assert abs(sum(t["prob"] for t in row["top"]) - 1) < 1e-4


def test_text_files_ar_example_fits_and_generates(tmp_path, capsys):
    """Perceiver AR on a folder of text files: bits per byte beside the unigram baseline, a model that generates."""
    import csv

    run = tmp_path / "run"
    main(["fit", *example_args("text-files-ar", run, tmp_path)])
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    val = [r for r in rows if r.get("val/bpb")]
    assert val and 0 < float(val[-1]["val/bpb_unigram"]) < 8.1
    capsys.readouterr()
    main(["generate", str(run / "model"), "--prompt", "great film", "--max-new-tokens", "5", "--greedy"])
    assert capsys.readouterr().out.startswith("great film")


def test_text_files_mlm_example_fits_and_continues_pretraining(tmp_path):
    """Masked LM on a folder of text files: accuracy beside the most-frequent-byte baseline; the saved model folder
    is then trained further through `--model.pretrained` (as DeepMind's language perceiver would be)."""
    import csv

    import perceiver

    run = tmp_path / "run"
    main(["fit", *example_args("text-files-mlm", run, tmp_path)])
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert any(r.get("val/acc") for r in rows) and any(r.get("val/acc_baseline") for r in rows)
    first = perceiver.from_pretrained(run / "model")
    again = tmp_path / "again"
    args = example_args("text-files-mlm", again, tmp_path / "more")
    main(["fit", *args, f"--model.pretrained={run / 'model'}", "--model.model_kwargs=null"])
    second = perceiver.from_pretrained(again / "model")
    assert type(second) is type(first) and second.config == first.config  # the folder's model, trained further
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def assert_nothing_trained(run: Path) -> None:
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").iterdir())
    assert not (run / "model").exists()


def test_channels_first_model_on_channels_last_folder(tmp_path):
    """vision-perceiver-fourier takes (B, 3, H, W), ImageFolderDataModule gives (B, H, W, 3): the run just works
    (the issue's `expected pixel_values of shape (B, 3, 32, 32) (channels first), got (16, 32, 32, 3)`)."""
    import perceiver

    model = perceiver.create_model("vision-perceiver-fourier", num_latents=4, latent_dim=16, num_blocks=1)
    with pytest.raises(ValueError, match="channels first"):
        model(torch.rand(2, 16, 16, 3))  # what the datamodule gives, fed as is
    run = tmp_path / "run"
    main(["fit", *example_args("imagefolder-perceiver-io", run, tmp_path)])
    assert (run / "model" / "model.safetensors").is_file()


def test_layout_mismatch_is_a_clear_error_before_training(tmp_path):
    """Greyscale images (1 channel) for a 3-channel model: stopped before the first step, naming both and the fix."""
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        main(["fit", *example_args("imagefolder-perceiver-io", run, tmp_path, "--data.grayscale=true")])
    message = str(err.value)
    assert "(H, W, C) = (16, 16, 1)" in message and "takes 3 channels" in message
    assert "--model.model_kwargs.in_channels 1" in message
    assert_nothing_trained(run)


def test_learned_positions_of_another_size_are_a_clear_error(tmp_path):
    run = tmp_path / "run"
    args = example_args("imagefolder-perceiver-io", run, tmp_path, "--model.model=vision-perceiver-learned")
    args += ["--model.model_kwargs.out_channels=8", "--model.model_kwargs.project_pos_dim=8"]
    args += ["--model.model_kwargs.trainable_pos_channels=8", "--model.model_kwargs.image_size=[24, 24]"]
    with pytest.raises(SystemExit, match=r"16x16 images but the learned positions .* are for 24x24"):
        main(["fit", *args])
    assert_nothing_trained(run)


@pytest.mark.parametrize("config", ["imagefolder-classic", "text-jsonl"])
def test_class_count_mismatch_is_a_clear_error_before_training(config, tmp_path):
    """An explicit `num_classes` (or transformers' `num_labels`) that is not the data's: both numbers and the fix."""
    run = tmp_path / "run"
    key = "num_classes" if config == "imagefolder-classic" else "num_labels"
    with pytest.raises(SystemExit) as err:
        main(["fit", *example_args(config, run, tmp_path, f"--model.model_kwargs.{key}=3")])
    message = str(err.value)
    assert f"configured for 3 classes (model_kwargs.{key}=3)" in message
    assert "has 2 classes" in message and f"--model.model_kwargs.{key} 2" in message
    assert_nothing_trained(run)


def test_text_longer_than_the_model_positions_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SystemExit, match="up to 128 tokens .* positions for 64"):
        main(["fit", *example_args("text-csv", run, tmp_path, "--data.max_seq_len=128")])
    assert_nothing_trained(run)


def test_audio_clip_length_mismatch_stops_before_training(tmp_path):
    run = tmp_path / "run"
    args = example_args("audiofolder", run, tmp_path, "--data.num_samples=1000")
    with pytest.raises(SystemExit, match=r"clips of 1000 samples but .* takes 2000 \(num_samples=2000\)"):
        main(["fit", *args])
    assert_nothing_trained(run)
    args = example_args("audiofolder", tmp_path / "run2", tmp_path / "d2", "--data.num_samples=1990")
    args += ["--model.model_kwargs.num_samples=null"]
    with pytest.raises(SystemExit, match=r"1990 samples, not a multiple of the 20 samples per token"):
        main(["fit", *args])


def learning_curve(config: str, root: Path, tmp_path: Path, epochs: int, *extra: str) -> list[float]:
    """Validation accuracy after each epoch of the example `config` trained on the folder `root` (a quarter held out,
    4 batches of 4 per epoch, lr 0.003 without warm-up)."""
    import csv

    run = tmp_path / "run"
    args = example_args(config, run, tmp_path / "unused", f"--trainer.max_epochs={epochs}", *extra)
    args += [f"--data.root={root}", "--data.val_fraction=0.25", "--trainer.limit_train_batches=4"]
    args += ["--trainer.limit_val_batches=2", "--model.lr=0.003", "--model.warmup_steps=0"]
    main(["fit", *args])
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    accuracy = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert accuracy, "no validation accuracy logged"
    return accuracy


def test_audio_example_learns_synthetic_tones(tmp_path):
    """The audio pipeline end to end (decode, resample, crop / pad with masks, the raw-waveform model): two synthetic
    tones of different pitch are told apart after a few epochs."""
    tones = write_sound_folder(tmp_path / "tones", per_class=12)
    accuracy = learning_curve("audiofolder", tones, tmp_path, 12, "--data.augment=true")
    assert accuracy[0] < 1.0 and accuracy[-1] == 1.0, accuracy  # 6 held-out clips, learned


def test_video_frame_mismatch_stops_before_training(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"clips of 6 frames but .* takes 4 \(num_frames=4\)"):
        main(["fit", *example_args("videofolder", run, tmp_path, "--data.num_frames=6")])
    assert_nothing_trained(run)
    with pytest.raises(SystemExit, match=r"gives 24x24 frames but .* takes 16x16"):
        main(["fit", *example_args("videofolder", tmp_path / "r2", tmp_path / "d2", "--data.image_size=24")])


def test_video_example_learns_the_direction_of_motion(tmp_path):
    """The video pipeline end to end (decode, segment sampling in frame order, layouts, space-time patches): a bar
    moving left or right (synthetic; it wraps around the frame from a random start, so that every frame shows it at a
    uniformly random place whatever the class: only the order of frames tells them apart)."""
    import av

    rng = np.random.default_rng(0)
    for name, step in (("left", -2), ("right", 2)):
        (tmp_path / "moves" / name).mkdir(parents=True)
        for i in range(12):
            start = int(rng.integers(0, 32))
            with av.open(str(tmp_path / "moves" / name / f"{i}.mp4"), "w") as out:
                stream = out.add_stream("mpeg4", rate=10)
                stream.height = stream.width = 32
                for t in range(8):
                    image = np.full((32, 32, 3), 128, dtype=np.uint8)
                    image[:, :8] = 255
                    image = np.roll(image, start + step * t, axis=1)
                    out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
                out.mux(stream.encode())
    accuracy = learning_curve("videofolder", tmp_path / "moves", tmp_path, 15, "--data.augment=false")
    assert accuracy[0] < 1.0 and accuracy[-1] == 1.0, accuracy  # 6 held-out videos, learned


def test_predict_names_a_file_it_cannot_decode(tmp_path):
    run = tmp_path / "run"
    main(["fit", *example_args("audiofolder", run, tmp_path)])
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(SystemExit, match=r"error: cannot decode audio file .*broken\.wav"):
        main(["predict", str(run / "model"), str(broken)])


def test_text_example_trains_on_a_datasets_dataset(tmp_path):
    """`--data.train_file null --data.dataset DIR`: the text classification example on a `datasets` dataset."""
    import datasets

    rows = text_rows()
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    table = datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]}, features=features)
    datasets.DatasetDict({"train": table, "test": table}).save_to_disk(str(tmp_path / "hf"))
    run = tmp_path / "run"
    args = [a for a in example_args("text-jsonl", run, tmp_path) if not a.startswith("--data.train_file")]
    main(["fit", *args, "--data.train_file=null", f"--data.dataset={tmp_path / 'hf'}", "--data.test_split=test"])
    info = json.loads((run / "model" / "task.json").read_text())
    assert info["num_classes"] == 2 and info["class_names"] == ["neg", "pos"]


def test_lightning_predict_rows_name_their_files(tmp_path):
    """`perceiver predict --config ...` over a folder's test split: each predictions.jsonl row names the file it is
    for (before: only a running index, so a user rebuilt the datamodule's sorted file order to read the file)."""
    run = tmp_path / "run"
    main(["fit", *example_args("imagefolder-classic", run, tmp_path)])
    test_root = write_image_folder(tmp_path / "test", per_class=3)
    args = example_args(
        "imagefolder-classic", run, tmp_path / "again", f"--data.test_root={test_root}", "--ckpt_path=last"
    )
    main(["predict", *args, "--trainer.limit_predict_batches=null"])
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    files = sorted(str(p) for p in test_root.glob("*/*.png"))
    assert sorted(row["file"] for row in rows) == files
    for row in rows:  # the true label is that of the file's class folder
        assert row["label"] == CLASSES.index(Path(row["file"]).parent.name), row
