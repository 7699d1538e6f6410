"""VideoFolderDataModule on generated videos (synthetic moving squares, encoded with PyAV): decoding, resizing,
segment sampling, splits, augmentation, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from perceiver.data import VideoFolderDataModule
from perceiver.data._common import SampleKey
from perceiver.data.video_folder import clip_indices, load_video_frames

av = pytest.importorskip("av")

COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}  # one per class (synthetic)


def write_video(path: Path, colour: tuple[int, int, int], frames: int = 12, size: tuple[int, int] = (48, 64)) -> Path:
    """A square of `colour` moving right on grey, frame `i`'s left edge at 4 * i pixels; mpeg4 / mjpeg by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = {".avi": "mjpeg", ".mp4": "mpeg4", ".mkv": "mpeg4"}[path.suffix]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.height, stream.width = size
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for i in range(frames):
            image = np.full((*size, 3), 128, dtype=np.uint8)
            image[8:24, 4 * i : 4 * i + 16] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_video_folder(root: Path, per_class: int = 4) -> Path:
    for name, colour in COLOURS.items():
        for i in range(per_class):
            sub = "nested/" if i == 3 else ""
            write_video(root / name / f"{sub}{i}{('.mp4', '.avi', '.mkv')[i % 3]}", colour, frames=6 + 3 * i)
        (root / name / "notes.txt").write_text("not a video")
    return root


def test_load_video_frames_decodes_every_frame_resized(tmp_path):
    path = write_video(tmp_path / "a.mp4", COLOURS["red"], frames=12)
    frames = load_video_frames(path, (24, 32))  # half size
    assert frames.shape == (12, 24, 32, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(load_video_frames(path, (24, 32), max_frames=2), frames[:2])
    # the red square moves right: its centre column grows frame by frame
    red = (frames[..., 0].astype(int) - frames[..., 1]) > 80
    centres = [np.nonzero(f.any(0))[0].mean() for f in red]
    assert all(b > a for a, b in zip(centres, centres[1:]))


def test_clip_indices_spread_over_the_video():
    assert clip_indices(16, 4).tolist() == [2, 6, 10, 14]  # segment middles
    assert clip_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]  # fewer frames than segments: repeated
    rng = np.random.default_rng(0)
    jittered = clip_indices(16, 4, rng)
    assert all(4 * i <= j < 4 * (i + 1) for i, j in enumerate(jittered))


def test_batches_shapes_labels_and_split(tmp_path):
    root = write_video_folder(tmp_path / "train")
    dm = VideoFolderDataModule(str(root), num_frames=4, image_size=(24, 32), val_fraction=0.25, batch_size=3)
    assert dm.class_names == sorted(COLOURS) and dm.num_classes == 3 and dm.video_shape == (4, 24, 32, 3)
    dm.setup()
    assert len(dm.train_set) == 9 and len(dm.val_set) == 3  # one per class held out, nested included
    assert not set(dm.train_set.files) & set(dm.val_set.files)
    assert all(f.suffix != ".txt" for f in dm.train_set.files)
    batch = next(iter(dm.val_dataloader()))
    assert batch["inputs"].shape == (3, 4, 24, 32, 3) and batch["inputs"].dtype == torch.float32
    assert batch["inputs"].min() >= 0.0 and batch["inputs"].max() <= 1.0
    for clip, label in zip(batch["inputs"], batch["labels"]):  # the class colour is the clip's brightest channel
        colour = COLOURS[dm.class_names[int(label)]]
        strongest = (clip - 0.5).clamp(min=0).sum((0, 1, 2)).argmax()
        assert colour[int(strongest)] == 255


def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    root = write_video_folder(tmp_path / "train", per_class=3)
    dm = VideoFolderDataModule(str(root), 4, 16, augment=True, cache_videos=True, batch_size=2)
    dm.setup()
    clips = [dm.train_set[SampleKey(e, 0)]["inputs"] for e in range(6)]
    assert torch.equal(clips[0], dm.train_set[SampleKey(0, 0)]["inputs"])
    assert any(not torch.equal(clips[0], c) for c in clips[1:])
    again = VideoFolderDataModule(str(root), 4, 16, augment=True, batch_size=2)
    again.setup()
    assert torch.equal(clips[0], again.train_set[SampleKey(0, 0)]["inputs"])  # cached or not, the same clip
    plain = VideoFolderDataModule(str(root), 4, 16, batch_size=2)
    plain.setup()
    assert torch.equal(plain.val_set[0]["inputs"], plain.val_set[SampleKey(5, 0)]["inputs"])  # evaluation is fixed


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="video folder not found"):
        VideoFolderDataModule(str(tmp_path / "missing"))
    root = write_video_folder(tmp_path / "train", per_class=3)
    with pytest.raises(ValueError, match="check_videos must be 'decode', 'open' or 'none', got 'verify'"):
        VideoFolderDataModule(str(root), check_videos="verify")
    with pytest.raises(ValueError, match="num_frames must be >= 1, got 0"):
        VideoFolderDataModule(str(root), num_frames=0)
    (root / "empty").mkdir()
    dm = VideoFolderDataModule(str(root))
    with pytest.raises(ValueError, match=r"class folder .*empty has no videos \(extensions: .mp4"):
        dm.setup()
    (root / "empty" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a movie")
    for check in ("decode", "open"):
        with pytest.raises(ValueError, match=r"cannot decode video file .*broken\.mp4"):
            VideoFolderDataModule(str(root), check_videos=check).setup()
    (root / "empty" / "broken.mp4").unlink()
    sf = pytest.importorskip("soundfile")
    sf.write(root / "empty" / "sound.mkv", np.zeros(800, dtype=np.float32), 8000, format="WAV")  # audio only
    with pytest.raises(ValueError, match=r"video file .*sound\.mkv has no video stream"):
        VideoFolderDataModule(str(root)).setup()


@pytest.mark.parametrize("rotation, red_at", [(90, "left"), (-90, "right"), (180, "bottom")])
def test_phone_videos_are_turned_upright_by_their_display_rotation(tmp_path, rotation, red_at):
    """Phones store a portrait video as landscape frames plus a display rotation, which players and `ffmpeg` apply;
    the frames used to reach the model sideways (and differently from the same scene filmed in landscape)."""
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("PyAV without display-matrix support")
    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.height, stream.width, stream.pix_fmt = 32, 64, "yuv420p"
        stream.set_display_rotation(rotation)  # counterclockwise degrees, as FFmpeg's display matrix
        for _ in range(2):
            image = np.full((32, 64, 3), 128, dtype=np.uint8)
            image[:8] = (255, 0, 0)  # the stored frame's top rows are red
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    frames = load_video_frames(path, (64, 32) if abs(rotation) == 90 else (32, 64))
    red = (frames[0, ..., 0].astype(int) - frames[0, ..., 1]) > 100  # (H, W)
    h, w = red.shape
    region = {"left": red[:, : w // 4], "right": red[:, -(w // 4) :], "bottom": red[-(h // 4) :]}[red_at]
    assert region.mean() > 0.8 and red.mean() < 0.3


def test_clips_convert_only_their_frames_and_equal_the_full_decode(tmp_path, monkeypatch):
    """Training clips used to convert and resize every frame of a video (for 8 of them); the clip is the same."""
    import perceiver.data.video_folder as vf

    paths = [
        write_video(tmp_path / "a.mp4", COLOURS["red"], frames=14),  # mp4 / avi state their frame count
        write_video(tmp_path / "b.avi", COLOURS["blue"], frames=5),
        write_video(tmp_path / "c.mkv", COLOURS["green"], frames=9),  # Matroska does not: every frame converted
    ]
    converted = []
    upright = vf._upright
    monkeypatch.setattr(vf, "_upright", lambda image, rotation: converted.append(1) or upright(image, rotation))
    for path in paths:
        full = load_video_frames(path, (24, 32))
        for seed in (None, 0, 1):
            for num_frames in (1, 4, 8):
                rngs = [np.random.default_rng(seed) if seed is not None else None for _ in range(2)]
                converted.clear()
                clip = vf.load_video_clip(path, (24, 32), num_frames, rngs[0])
                assert np.array_equal(clip, full[clip_indices(len(full), num_frames, rngs[1])])
                if path.suffix != ".mkv":
                    assert len(converted) <= num_frames
                if seed is not None:
                    assert rngs[0].random() == rngs[1].random()  # the same draws as clip_indices
    # a container that states a wrong frame count: decoded again for the right frames
    monkeypatch.setattr(vf, "stated_frame_count", lambda stream: 40)
    full = load_video_frames(paths[0], (24, 32))
    assert np.array_equal(vf.load_video_clip(paths[0], (24, 32), 6), full[clip_indices(14, 6)])
