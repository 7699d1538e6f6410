"""Video classification from a folder per class (the `ImageFolder` layout, for video files).

    root/<class_a>/xxx.mp4
    root/<class_a>/sub/yyy.avi      (searched recursively)
    root/<class_b>/zzz.webm

Classes are the sorted sub-folder names of `root` (at least two; hidden folders and `__MACOSX` skipped). Files are
videos by extension (`VIDEO_EXTENSIONS`), decoded with FFmpeg through PyAV (`av`); a clip's frames are converted to
RGB, turned upright by the stream's display rotation (phones store portrait videos as landscape frames plus a
rotation, which players and the `ffmpeg` command apply; images are likewise upright by their EXIF orientation) and
resized to `image_size` (bilinear, aspect ratio not preserved) as they are decoded, so a long video never sits in
memory at full resolution (and where the container states its frame count, only the clip's frames are
converted). Validation is `val_root` or a stratified `val_fraction` of `root` (fixed, independent of `seed`).

A clip is `num_frames` frames spread over the whole video (segment sampling, as TSN): the video is cut into
`num_frames` equal segments and each gives one frame, its middle one in evaluation, a random one in training with
`augment` (drawn from `(seed, epoch, index)`, which also flips the whole clip horizontally half the time). A video
with fewer frames than `num_frames` repeats frames.

Batch: `{"inputs": float32 (B, T, H, W, C) channels-last in [0, 1], "labels": int64 (B,)}`, T = `num_frames`; the
training task hands the `video-classifier` preset its channels-first `(B, T, C, H, W)` (`perceiver.training.layouts`).

`setup()` checks the data before training starts: `FileNotFoundError` for a missing root, `ValueError` naming the
folder for a class folder without videos, and naming the file for one that does not decode or has no video stream
(`check_videos="decode"`, the default, decodes every file once; "open" only opens each and decodes its first frame,
much faster for a large folder of long videos, but a file broken further in stops training when it is read; "none"
skips the check).

Attributes available right after construction: `class_names`, `num_classes`, `video_shape = (T, H, W, C)`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from perceiver.checks import check_int
from perceiver.data._common import KeyedDataset, as_hw, sample_rng
from perceiver.data.folders import ClassFolderDataModule

VideoCheck = Literal["decode", "open", "none"]
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")

__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoFileDataset",
    "VideoFolderDataModule",
    "clip_indices",
    "load_video_audio",
    "load_video_clip",
    "load_video_frames",
    "segment_frames",
]


def load_video_frames(path: str | Path, size: tuple[int, int], max_frames: int | None = None) -> np.ndarray:
    """Every frame of a video (the first `max_frames`, if given) as uint8 RGB `(N, H, W, 3)`, each turned upright
    by its display rotation (as players show it) and resized to `size` `(H, W)` as it is decoded.

    `FileNotFoundError` for a missing file; `ValueError` naming the file if FFmpeg cannot decode it or it has no
    video frames."""
    frames, total = _decode(path, size, None, max_frames)
    return np.stack([frames[i] for i in range(total)])


def load_video_clip(
    path: str | Path, size: tuple[int, int], num_frames: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """The clip `load_video_frames(path, size)[clip_indices(N, num_frames, rng)]`, uint8 `(num_frames, H, W, 3)`,
    without converting and resizing every frame: when the container states its frame count (mp4, mov, avi, ...)
    only the chosen frames are; if the count proves wrong, the video is decoded again for the right ones. Draws
    from `rng` exactly as `clip_indices` does. Errors as `load_video_frames`."""
    u = rng.random(num_frames) if rng is not None else None

    def chosen(stated: int) -> set[int] | None:  # None: every frame (no stated count)
        return set(segment_frames(stated, num_frames, u).tolist()) if stated > 0 else None

    frames, total = _decode(path, size, chosen)
    indices = segment_frames(total, num_frames, u)
    if not all(int(i) in frames for i in indices):  # the stated count was not the decoded one
        frames, _ = _decode(path, size, lambda stated: set(indices.tolist()))
    return np.stack([frames[int(i)] for i in indices])


def load_video_audio(path: str | Path, sample_rate: int, num_samples: int | None = None) -> np.ndarray:
    """The sound track of a video file as mono float32 `(S,)` at `sample_rate` Hz (FFmpeg resamples; channels are
    averaged, as `perceiver.data.audio_folder.load_audio` does for sound files), from its start.

    `num_samples`: the first `num_samples` samples, zero-padded at the end when the track is shorter (None: all).
    The frames that go with them are the video's first ones (`load_video_frames(path, size, max_frames=T)`): e.g.
    `multimodal-perceiver` takes 16 frames at 25 fps with the 30,720 samples at 48 kHz of the same 0.64 s.

    `FileNotFoundError` for a missing file; `ValueError` naming the file if FFmpeg cannot decode it or it has no
    sound track or no samples."""
    sample_rate = check_int(sample_rate, "sample_rate (Hz)")
    num_samples = check_int(num_samples, "num_samples", optional=True)
    av = _pyav_for(path)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(f"video file {path} has no sound track (audio stream)")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", rate=sample_rate)  # planar float, the track's channels
            for frame in itertools.chain(container.decode(stream), [None]):  # None flushes the resampler
                for resampled in resampler.resample(frame):
                    planes = resampled.to_ndarray().reshape(-1, resampled.samples)  # (channels, samples)
                    chunk = planes.mean(axis=0, dtype=np.float32)
                    chunks.append(chunk)
                    total += chunk.shape[0]
                if num_samples is not None and total >= num_samples:
                    break
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot decode the sound track of video file {path}: {e}") from e
    if not total:
        raise ValueError(f"video file {path} has a sound track without samples")
    wave = np.concatenate(chunks).astype(np.float32, copy=False)
    if num_samples is None:
        return np.ascontiguousarray(wave)
    clip = np.zeros(num_samples, dtype=np.float32)
    clip[: min(num_samples, wave.shape[0])] = wave[:num_samples]
    return clip


def _pyav_for(path: str | Path) -> Any:
    """The `av` module (PyAV) to read the video file `path`: ImportError naming the extra without PyAV,
    FileNotFoundError for a missing file (FFmpeg's own message is an errno, not "not found")."""
    try:
        import av
    except ImportError as e:  # pragma: no cover - the video extra
        raise ImportError("reading video files needs PyAV: pip install 'perceiver-torch[video]'") from e
    if not Path(path).exists():
        raise FileNotFoundError(f"video file not found: {path}")
    return av


def stated_frame_count(stream: Any) -> int:
    """The number of frames a video stream's container states (0: unknown, e.g. Matroska / WebM)."""
    return int(stream.frames or 0)


def _decode(
    path: str | Path,
    size: tuple[int, int],
    choose: Callable[[int], set[int] | None] | None = None,
    max_frames: int | None = None,
) -> tuple[dict[int, np.ndarray], int]:
    """`({index: uint8 (H, W, 3)}, number of frames decoded)`: every frame decoded, the ones `choose(stated frame
    count)` names (None: all) turned upright and resized to `size`."""
    from PIL import Image

    av = _pyav_for(path)
    frames: dict[int, np.ndarray] = {}
    total = 0
    try:
        with av.open(str(path)) as container:
            has_video = bool(container.streams.video)
            if has_video:
                stream = container.streams.video[0]
                wanted = choose(stated_frame_count(stream)) if choose is not None else None
                for frame in container.decode(stream):
                    if wanted is None or total in wanted:
                        image = _upright(frame.to_image(), getattr(frame, "rotation", 0))  # RGB; PyAV >= 13
                        if image.size != (size[1], size[0]):
                            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                        frames[total] = np.asarray(image, dtype=np.uint8)
                    total += 1
                    if max_frames is not None and total >= max_frames:
                        break
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot decode video file {path}: {e}") from e
    if not has_video:
        raise ValueError(f"video file {path} has no video stream")
    if not total:
        raise ValueError(f"video file {path} has no frames")
    return frames, total


def _upright(image: Any, rotation: float) -> Any:
    """A PIL image rotated counterclockwise by `rotation` degrees (PyAV's `VideoFrame.rotation`: the display
    matrix's angle, what FFmpeg's autorotation applies)."""
    from PIL import Image

    quarter = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    angle = round(rotation) % 360
    if angle == 0:
        return image
    return image.transpose(quarter[angle]) if angle in quarter else image.rotate(angle, expand=True)


def clip_indices(total: int, num_frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """`num_frames` frame indices over a video of `total` frames: one per equal segment, its middle (`rng` None) or
    a random frame of it; repeated where there are fewer frames than segments."""
    return segment_frames(total, num_frames, rng.random(num_frames) if rng is not None else None)


def segment_frames(total: int, num_frames: int, offsets: np.ndarray | None = None) -> np.ndarray:
    """`clip_indices` with the random draws given: `offsets` `(num_frames,)` in [0, 1) place each frame within its
    segment (None: the middle)."""
    edges = np.linspace(0, total, num_frames + 1)
    if offsets is None:
        points = (edges[:-1] + edges[1:]) / 2
    else:
        points = edges[:-1] + offsets * (edges[1:] - edges[:-1])
    return np.minimum(points.astype(np.int64), total - 1)


class VideoFileDataset(KeyedDataset):
    """Video files and labels; items `{"inputs": (T, H, W, C), "labels": ()}` (see the module docstring)."""

    def __init__(
        self,
        files: list[Path],
        labels: np.ndarray,
        num_frames: int,
        size: tuple[int, int],
        augment: bool = False,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        self.files, self.labels, self.num_frames, self.size = files, labels, num_frames, size
        self.augment, self.seed = augment, seed
        self.cache = [load_video_frames(f, size) for f in files] if cache else None

    def __len__(self) -> int:
        return len(self.files)

    def get(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        rng = sample_rng(self.seed, epoch, index) if self.augment else None
        if self.cache is not None:
            frames = self.cache[index]
            clip = frames[clip_indices(len(frames), self.num_frames, rng)]
        else:  # converts and resizes only the clip's frames (of all the frames it decodes)
            clip = load_video_clip(self.files[index], self.size, self.num_frames, rng)
        if rng is not None and rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        inputs = torch.from_numpy(np.ascontiguousarray(clip)).float().div_(255.0)
        return {"inputs": inputs, "labels": torch.tensor(int(self.labels[index]))}


class VideoFolderDataModule(ClassFolderDataModule):
    """Video classification from folders of video files, one sub-folder per class (see the module docstring).

    Args:
        root: training folder (`root/<class>/...`).
        num_frames: frames per clip `T`.
        image_size: `H` or `(H, W)` frames are resized to.
        val_root: validation folder with the same layout; default: a stratified `val_fraction` of `root`.
        test_root: test folder with the same layout; `test_dataloader()` raises if None.
        val_fraction: share of `root` held out when `val_root` is None.
        augment: random frames within their segments and horizontal flips of training clips.
        check_videos: "decode" (default: every file is decoded once in `setup()`), "open" (each opened and its first
            frame decoded) or "none".
        cache_videos: keep every decoded, resized video in memory (uint8) after `setup()`.
        batch_size, num_workers, seed: see `BaseDataModule`.
    """

    noun, kind, extensions = "video", "videos", VIDEO_EXTENSIONS

    def __init__(
        self,
        root: str,
        num_frames: int = 8,
        image_size: int | tuple[int, int] = 64,
        val_root: str | None = None,
        test_root: str | None = None,
        val_fraction: float = 0.1,
        augment: bool = False,
        check_videos: VideoCheck = "decode",
        cache_videos: bool = False,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int | None = None,
    ) -> None:
        if check_videos not in ("decode", "open", "none"):
            raise ValueError(f"check_videos must be 'decode', 'open' or 'none', got {check_videos!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        super().__init__(root, val_root, test_root, val_fraction, augment, batch_size, num_workers, seed)
        self.num_frames, self.image_size = num_frames, as_hw(image_size)
        self.video_shape = (num_frames, *self.image_size, 3)
        self.check_videos, self.cache_videos = check_videos, cache_videos
        self.save_hyperparameters()

    def scan_file(self, path: Path) -> None:
        if self.check_videos != "none":
            if self.check_videos == "decode":  # every frame decoded, the first one converted (memory: one frame)
                _decode(path, self.image_size, lambda stated: {0})
            else:
                _decode(path, self.image_size, None, max_frames=1)

    def dataset(self, files: list[Path], labels: np.ndarray, augment: bool) -> VideoFileDataset:
        return VideoFileDataset(files, labels, self.num_frames, self.image_size, augment, self.seed, self.cache_videos)
