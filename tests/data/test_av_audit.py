"""Audit of sound and video files as users hand them over: errors that name what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from perceiver.data.video_folder import load_video_clip, load_video_frames

pytest.importorskip("av")


@pytest.mark.parametrize("load", [load_video_frames, load_video_clip])
def test_missing_video_file_is_file_not_found(tmp_path: Path, load) -> None:
    """A missing video was a ValueError "cannot decode video file ...: [Errno 2] ..." (FFmpeg's error), unlike a
    missing sound file or `load_video_audio`'s missing file: now `FileNotFoundError` naming it."""
    path = tmp_path / "nope.mp4"
    args = (path, (16, 16)) if load is load_video_frames else (path, (16, 16), 4)
    with pytest.raises(FileNotFoundError, match="video file not found: .*nope.mp4"):
        load(*args)


def test_undecodable_row_without_path_is_named_by_its_split_row(tmp_path: Path) -> None:
    """A `datasets` row holding undecodable sound bytes without a path was named "row i" by its index in the
    training share left after holding out validation rows (another row of the user's split): now by its split
    and row there."""
    datasets = pytest.importorskip("datasets")
    sf = pytest.importorskip("soundfile")
    import io

    import numpy as np

    from perceiver.data import HFAudioDataModule

    def wav(seed: int) -> bytes:
        buffer = io.BytesIO()
        sf.write(buffer, np.random.default_rng(seed).uniform(-0.5, 0.5, 400), 8000, format="WAV")
        return buffer.getvalue()

    bad = 5
    rows = {
        "sound": [{"bytes": b"not a sound" if i == bad else wav(i), "path": None} for i in range(12)],
        "label": [i % 2 for i in range(12)],
    }
    features = datasets.Features(
        sound={"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
        label=datasets.ClassLabel(names=["a", "b"]),
    )
    datasets.DatasetDict(train=datasets.Dataset.from_dict(rows, features=features)).save_to_disk(tmp_path / "ds")
    dm = HFAudioDataModule(
        str(tmp_path / "ds"), sample_rate=8000, num_samples=400, val_fraction=0.25, audio_column="sound"
    )
    dm.setup()
    errors = []
    for dataset in (dm.train_set, dm.val_set):
        for i in range(len(dataset)):
            try:
                dataset.get(i, 0)
            except ValueError as e:
                errors.append(str(e))
    assert len(errors) == 1
    assert f"split 'train' row {bad}:" in errors[0], errors[0]
