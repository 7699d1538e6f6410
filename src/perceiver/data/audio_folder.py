"""Audio classification from a folder per class (the `ImageFolder` layout, for sound files).

    root/<class_a>/xxx.wav
    root/<class_a>/sub/yyy.flac     (searched recursively)
    root/<class_b>/zzz.ogg

Classes are the sorted sub-folder names of `root` (at least two; hidden folders and `__MACOSX` skipped). Files are
sound files by extension (`AUDIO_EXTENSIONS`: what libsndfile reads, through `soundfile`); others are ignored. Each
file is decoded to float32, mixed down to mono, and resampled to `sample_rate` (`scipy.signal.resample_poly`,
polyphase with an anti-aliasing filter). Validation is `val_root` or a stratified `val_fraction` of `root` (fixed,
independent of `seed`).

Clips are `num_samples` long: a longer file is cropped (training with `augment`: at a random offset drawn from
`(seed, epoch, index)`, with a random gain of up to +-6 dB; otherwise its centre), a shorter one is zero-padded at the
end and its `mask` marks the real samples, which the Perceiver's cross-attention then reads alone (padding never
reaches the output).

Batch: `{"inputs": float32 (B, S, 1), "mask": bool (B, S), "labels": int64 (B,)}`, S = `num_samples`: the raw
waveform the `audio-classifier` preset and the classic `Perceiver(input_axis=1, input_channels=1)` take.

`setup()` checks the data before training starts: `FileNotFoundError` for a missing root, `ValueError` naming the
folder for a class folder without sound files, and naming the file for one that does not decode
(`check_audio="decode"`, the default; "none" skips it).

Attributes available right after construction: `class_names`, `num_classes`, `num_samples`, `sample_rate`.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import BinaryIO, Literal

import numpy as np
import torch

from perceiver.data._common import KeyedDataset, sample_rng
from perceiver.data.folders import ClassFolderDataModule

AudioCheck = Literal["decode", "none"]
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf")

__all__ = ["AUDIO_EXTENSIONS", "AudioFileDataset", "AudioFolderDataModule", "fit_length", "load_audio"]


def _soundfile() -> ModuleType:
    try:
        import soundfile
    except ImportError as e:  # pragma: no cover - the audio extra
        raise ImportError("reading audio files needs soundfile: pip install 'perceiver-torch[audio]'") from e
    return soundfile


def load_audio(path: str | Path | BinaryIO, sample_rate: int, name: str | None = None) -> np.ndarray:
    """Decode a sound file (a path, or an open binary file `name`d in errors) to mono float32 `(S,)` at
    `sample_rate` Hz (channels averaged, resampled polyphase).

    `FileNotFoundError` naming a missing file; `ValueError` naming the file if libsndfile cannot decode it, or if it
    holds no samples or non-finite ones."""
    sf = _soundfile()
    name = name or str(path)
    if not hasattr(path, "read") and not Path(path).exists():  # libsndfile would say "System error."
        raise FileNotFoundError(f"audio file not found: {name}")
    try:
        source = path if hasattr(path, "read") else str(path)
        data, rate = sf.read(source, dtype="float32", always_2d=True)  # (S, channels)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError by format
        reason = str(e).replace(repr(path), name) if hasattr(path, "read") else str(e)  # not "<_io.BytesIO at ..>"
        if "does not exist" in reason and (hasattr(path, "read") or Path(path).is_file()):
            reason = "not a sound file libsndfile recognises"  # its message for an unknown format misleads
        raise ValueError(f"cannot decode audio file {name}: {reason}") from e
    if data.shape[0] == 0:
        raise ValueError(f"audio file {name} has no samples")
    if not np.isfinite(data).all():
        raise ValueError(f"audio file {name} has NaN or infinite samples (expected finite values)")
    wave = data.mean(axis=1)
    if rate != sample_rate:
        from scipy.signal import resample_poly

        g = math.gcd(int(rate), int(sample_rate))
        wave = resample_poly(wave, sample_rate // g, int(rate) // g).astype(np.float32)
    return np.ascontiguousarray(wave, dtype=np.float32)


def fit_length(wave: np.ndarray, num_samples: int, offset: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`wave` `(S,)` cropped (at `offset`, default the centre) or zero-padded at the end to `num_samples`, and the
    mask `(num_samples,)` of its real samples."""
    n = wave.shape[0]
    if n >= num_samples:
        start = (n - num_samples) // 2 if offset is None else offset
        return wave[start : start + num_samples], np.ones(num_samples, dtype=bool)
    out = np.zeros(num_samples, dtype=np.float32)
    out[:n] = wave
    mask = np.zeros(num_samples, dtype=bool)
    mask[:n] = True
    return out, mask


class AudioFileDataset(KeyedDataset):
    """Sound files and labels; items `{"inputs": (S, 1), "mask": (S,), "labels": ()}` (see the module docstring)."""

    def __init__(
        self,
        files: list[Path],
        labels: np.ndarray,
        sample_rate: int,
        num_samples: int,
        augment: bool = False,
        seed: int = 0,
        cache: bool = False,
    ) -> None:
        self.files, self.labels, self.sample_rate, self.num_samples = files, labels, sample_rate, num_samples
        self.augment, self.seed = augment, seed
        self.cache = [self.load(i) for i in range(len(files))] if cache else None

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> np.ndarray:
        """The decoded, resampled waveform `(S,)` of sample `index`."""
        return load_audio(self.files[index], self.sample_rate)

    def get(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        wave = self.cache[index] if self.cache is not None else self.load(index)
        offset, gain = None, 1.0
        if self.augment:
            rng = sample_rng(self.seed, epoch, index)
            offset = int(rng.integers(0, max(wave.shape[0] - self.num_samples, 0) + 1))
            gain = float(10 ** (rng.uniform(-6.0, 6.0) / 20))
        clip, mask = fit_length(wave, self.num_samples, offset)
        return {
            "inputs": torch.from_numpy(clip * np.float32(gain)).unsqueeze(-1),
            "mask": torch.from_numpy(mask),
            "labels": torch.tensor(int(self.labels[index])),
        }


class AudioFolderDataModule(ClassFolderDataModule):
    """Audio classification from folders of sound files, one sub-folder per class (see the module docstring).

    Args:
        root: training folder (`root/<class>/...`).
        sample_rate: Hz every file is resampled to.
        num_samples: clip length in samples (`num_samples / sample_rate` seconds).
        val_root: validation folder with the same layout; default: a stratified `val_fraction` of `root`.
        test_root: test folder with the same layout; `test_dataloader()` raises if None.
        val_fraction: share of `root` held out when `val_root` is None.
        augment: random crops and gains of training clips.
        check_audio: "decode" (default: every file is decoded once in `setup()`) or "none".
        cache_audio: keep every decoded, resampled file in memory (float32) after `setup()`.
        batch_size, num_workers, seed: see `BaseDataModule`.
    """

    noun, kind, extensions = "audio", "sound files", AUDIO_EXTENSIONS

    def __init__(
        self,
        root: str,
        sample_rate: int = 16000,
        num_samples: int = 16000,
        val_root: str | None = None,
        test_root: str | None = None,
        val_fraction: float = 0.1,
        augment: bool = False,
        check_audio: AudioCheck = "decode",
        cache_audio: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int | None = None,
    ) -> None:
        if check_audio not in ("decode", "none"):
            raise ValueError(f"check_audio must be 'decode' or 'none', got {check_audio!r}")
        if sample_rate < 1 or num_samples < 1:
            raise ValueError(f"sample_rate and num_samples must be >= 1, got {sample_rate} and {num_samples}")
        super().__init__(root, val_root, test_root, val_fraction, augment, batch_size, num_workers, seed)
        self.sample_rate, self.num_samples = sample_rate, num_samples
        self.check_audio, self.cache_audio = check_audio, cache_audio
        self.save_hyperparameters()

    def scan_file(self, path: Path) -> None:
        if self.check_audio == "decode":
            load_audio(path, self.sample_rate)

    def dataset(self, files: list[Path], labels: np.ndarray, augment: bool) -> AudioFileDataset:
        return AudioFileDataset(files, labels, self.sample_rate, self.num_samples, augment, self.seed, self.cache_audio)
