"""`load_video_audio`: the sound track of a video file, for the multimodal autoencoder's `audio` input beside the
video's first frames (`VideoFolderDataModule` and `load_video_frames` read only the pictures)."""

from __future__ import annotations

import numpy as np
import pytest

from perceiver.data.video_folder import load_video_audio, load_video_frames

av = pytest.importorskip("av")

RATE, SECONDS, HZ = 16000, 1.0, 440.0


def write_video(path, with_audio: bool = True, codec: str = "pcm_s16le") -> np.ndarray:
    """8 frames at 8 fps (1 s) and, with `with_audio`, a stereo track: left a 440 Hz sine, right silent."""
    n = int(RATE * SECONDS)
    left = (0.5 * np.sin(2 * np.pi * HZ * np.arange(n) / RATE)).astype(np.float32)
    with av.open(str(path), "w") as c:
        video = c.add_stream("mpeg4", rate=8)
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        audio = c.add_stream(codec, rate=RATE, layout="stereo") if with_audio else None
        for i in range(8):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 30 * i, np.uint8), format="rgb24")
            c.mux(video.encode(frame))
        if audio is not None:
            stereo = np.stack([left, np.zeros_like(left)])
            pcm = (stereo * 32767).round().astype(np.int16).T.reshape(1, -1)  # packed s16, interleaved
            for start in range(0, n, 1024):
                chunk = np.ascontiguousarray(pcm[:, 2 * start : 2 * min(start + 1024, n)])
                frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
                frame.sample_rate, frame.pts = RATE, start
                c.mux(audio.encode(frame))
            c.mux(audio.encode(None))
        c.mux(video.encode(None))
    return left


def test_sound_track_is_mono_averaged_resampled_and_cut_or_padded(tmp_path):
    path = tmp_path / "clip.mkv"
    left = write_video(path)
    wave = load_video_audio(path, RATE)
    assert wave.dtype == np.float32 and wave.shape == left.shape
    np.testing.assert_allclose(wave, left / 2, atol=1e-3)  # (left + right) / 2, as load_audio mixes sound files
    half = load_video_audio(path, RATE // 2)  # resampled by FFmpeg: same pitch at the new rate
    assert abs(half.shape[0] - left.shape[0] // 2) <= 32
    spectrum = np.abs(np.fft.rfft(half[1000:7000]))
    assert np.argmax(spectrum) * (RATE // 2) / 6000 == pytest.approx(HZ, abs=2)
    first = load_video_audio(path, RATE, num_samples=4000)
    np.testing.assert_array_equal(first, wave[:4000])
    padded = load_video_audio(path, RATE, num_samples=20000)
    np.testing.assert_array_equal(padded[: wave.shape[0]], wave)
    assert padded.shape == (20000,) and not padded[wave.shape[0] :].any()
    assert load_video_frames(path, (24, 32)).shape == (8, 24, 32, 3)  # the pictures of the same file


def test_errors_name_the_file(tmp_path):
    silent = tmp_path / "silent.mkv"
    write_video(silent, with_audio=False)
    with pytest.raises(ValueError, match=f"{silent.name} has no sound track"):
        load_video_audio(silent, RATE)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        load_video_audio(tmp_path / "missing.mp4", RATE)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match="junk.mp4"):
        load_video_audio(junk, RATE)
    for bad in (dict(sample_rate=0), dict(sample_rate=16000.0), dict(sample_rate=RATE, num_samples=0)):
        with pytest.raises(ValueError, match="sample_rate|num_samples"):
            load_video_audio(silent, **bad)
