"""AudioFolderDataModule on generated sound files (synthetic tones, written with soundfile): decoding, mono mixdown,
resampling, crops and padding masks, splits, augmentation, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from perceiver.data import AudioFolderDataModule
from perceiver.data._common import SampleKey
from perceiver.data.audio_folder import fit_length, load_audio

sf = pytest.importorskip("soundfile")

TONES = {"low": 220.0, "mid": 660.0, "high": 1980.0}  # Hz: one synthetic tone per class


def tone(freq: float, seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A sine at `freq` with a little noise, `(S,)` or `(S, channels)` (synthetic)."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    wave = 0.5 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.shape)
    return wave.astype(np.float32) if channels == 1 else np.stack([wave] * channels, axis=1).astype(np.float32)


def write_audio_folder(root: Path, per_class: int = 6, rate: int = 16000) -> Path:
    """`root/<class>/<i>.<wav|flac|ogg>`: per class a tone; files of 0.5-1.5 s, some stereo, some at 22.05 kHz."""
    for c, (name, freq) in enumerate(TONES.items()):
        folder = root / name
        (folder / "nested").mkdir(parents=True)
        for i in range(per_class):
            seconds = (0.5, 1.0, 1.5)[i % 3]
            file_rate = 22050 if i % 2 else rate
            ext = (".wav", ".flac", ".ogg")[i % 3]
            sub = "nested/" if i == 4 else ""
            sf.write(folder / f"{sub}{name}{i}{ext}", tone(freq, seconds, file_rate, 1 + i % 2, c * 10 + i), file_rate)
        (folder / "notes.txt").write_text("not a sound")
    return root


def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def test_load_audio_mixes_to_mono_and_resamples_keeping_the_pitch(tmp_path):
    stereo = tone(660.0, 1.0, 22050, channels=2)
    stereo[:, 1] *= 0.5  # the channels differ: the mixdown is their mean
    sf.write(tmp_path / "a.wav", stereo, 22050)
    wave = load_audio(tmp_path / "a.wav", 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1 and abs(len(wave) - 16000) <= 1
    assert abs(peak_hz(wave, 16000) - 660.0) < 2.0
    assert abs(np.abs(wave).max() - 0.75 * 0.5) < 0.05  # mean of amplitudes 0.5 and 0.25
    same = load_audio(tmp_path / "a.wav", 22050)
    np.testing.assert_allclose(same, stereo.mean(axis=1), atol=1e-4)  # 16-bit WAV, no resampling


def test_fit_length_crops_the_centre_or_pads_with_a_mask():
    wave = np.arange(10, dtype=np.float32)
    clip, mask = fit_length(wave, 4)
    assert clip.tolist() == [3, 4, 5, 6] and mask.all()
    clip, mask = fit_length(wave, 4, offset=6)
    assert clip.tolist() == [6, 7, 8, 9]
    clip, mask = fit_length(wave, 13)
    assert clip.tolist() == [*range(10), 0, 0, 0] and mask.tolist() == [True] * 10 + [False] * 3


def test_batches_shapes_masks_labels_and_split(tmp_path):
    root = write_audio_folder(tmp_path / "train")
    dm = AudioFolderDataModule(str(root), sample_rate=8000, num_samples=8000, val_fraction=0.34, batch_size=4)
    assert dm.class_names == sorted(TONES) and dm.num_classes == 3
    assert (dm.num_samples, dm.sample_rate) == (8000, 8000)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 18 and len(dm.val_set) == 6  # 2 per class, nested included
    assert not set(dm.train_set.files) & set(dm.val_set.files)
    assert all(f.suffix != ".txt" for f in dm.train_set.files)
    batch = next(iter(dm.val_dataloader()))
    assert batch["inputs"].shape == (4, 8000, 1) and batch["inputs"].dtype == torch.float32
    assert batch["mask"].shape == (4, 8000) and batch["mask"].dtype == torch.bool
    assert batch["labels"].dtype == torch.int64
    for i, f in enumerate(dm.val_set.files[:4]):  # a 0.5 s file: 4000 real samples, then padding
        item = dm.val_set[i]
        real = int(item["mask"].sum())
        assert real == min(8000, len(load_audio(f, 8000)))
        assert (item["inputs"][real:] == 0).all()
        name = dm.class_names[int(item["labels"])]
        assert abs(peak_hz(item["inputs"][:real, 0].numpy(), 8000) - TONES[name]) < 5.0


def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    root = write_audio_folder(tmp_path / "train")
    dm = AudioFolderDataModule(str(root), 8000, 4000, augment=True, cache_audio=True, batch_size=2)
    dm.setup()
    long_index = next(i for i, f in enumerate(dm.train_set.files) if len(load_audio(f, 8000)) > 8000)
    a = dm.train_set[SampleKey(0, long_index)]["inputs"]
    assert torch.equal(a, dm.train_set[SampleKey(0, long_index)]["inputs"])
    assert not torch.equal(a, dm.train_set[SampleKey(1, long_index)]["inputs"])
    again = AudioFolderDataModule(str(root), 8000, 4000, augment=True, batch_size=2)
    again.setup()
    assert torch.equal(a, again.train_set[SampleKey(0, long_index)]["inputs"])  # cached or not, same clip
    plain = AudioFolderDataModule(str(root), 8000, 4000, batch_size=2)
    plain.setup()
    assert torch.equal(plain.val_set[0]["inputs"], plain.val_set[SampleKey(3, 0)]["inputs"])  # evaluation is fixed


def test_val_and_test_roots(tmp_path):
    root = write_audio_folder(tmp_path / "train", per_class=3)
    val = write_audio_folder(tmp_path / "val", per_class=2)
    dm = AudioFolderDataModule(str(root), 8000, 2000, val_root=str(val), test_root=str(val), batch_size=2)
    dm.setup()
    assert len(dm.train_set) == 9 and len(dm.val_set) == len(dm.test_set) == 6


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio folder not found"):
        AudioFolderDataModule(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no class folders in .*empty \(expected .*<class>/<sound files>\)"):
        AudioFolderDataModule(str(tmp_path / "empty"))
    root = write_audio_folder(tmp_path / "train", per_class=3)
    with pytest.raises(ValueError, match="check_audio must be 'decode' or 'none', got 'verify'"):
        AudioFolderDataModule(str(root), check_audio="verify")
    with pytest.raises(ValueError, match="sample_rate and num_samples must be >= 1, got 16000 and 0"):
        AudioFolderDataModule(str(root), num_samples=0)
    (root / "silent").mkdir()
    dm = AudioFolderDataModule(str(root), batch_size=2)
    with pytest.raises(ValueError, match=r"class folder .*silent has no sound files \(extensions: .wav"):
        dm.setup()
    (root / "silent" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    dm = AudioFolderDataModule(str(root), batch_size=2)
    with pytest.raises(ValueError, match=r"cannot decode audio file .*broken\.wav"):
        dm.setup()
    unchecked = AudioFolderDataModule(str(root), check_audio="none", batch_size=2)
    unchecked.setup()  # the broken file is found only when it is read
    broken = root / "silent" / "broken.wav"
    dataset = next(d for d in (unchecked.train_set, unchecked.val_set) if broken in d.files)
    with pytest.raises(ValueError, match=r"cannot decode audio file .*broken\.wav"):
        dataset[dataset.files.index(broken)]


def test_stored_bytes_that_do_not_decode_are_named_not_shown_as_an_object_repr():
    """`load_audio` on bytes (a `datasets` row) names them as the caller does, not libsndfile's "<_io.BytesIO ...>"."""
    import io

    with pytest.raises(ValueError, match=r"cannot decode audio file train row 3: ") as e:
        load_audio(io.BytesIO(b"not a sound file" * 8), 16000, name="train row 3")
    assert "BytesIO" not in str(e.value) and "0x" not in str(e.value)
