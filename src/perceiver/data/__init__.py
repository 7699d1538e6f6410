"""Datasets that work offline and loaders for local standard formats, as Lightning datamodules.

Every datamodule is a `lightning.pytorch.LightningDataModule` whose constructor takes plain typed values
(LightningCLI builds them from YAML), always including `batch_size`, `num_workers=0` and `seed=0`; the
attributes a model config needs are available right after construction (for `link_arguments(...,
apply_on="instantiate")`). Batches are dicts:

| datamodule | batch | attributes |
| --- | --- | --- |
| `DigitsDataModule` (sklearn digits) | `inputs` f32 (B, 8, 8, 1) in [0, 1], `labels` i64 (B,) | `num_classes`, `image_shape`, `class_names` |
| `ImageFolderDataModule(root, image_size)` | `inputs` f32 (B, H, W, C) in [0, 1], `labels` i64 (B,) | `num_classes`, `image_shape`, `class_names` |
| `HFImageDataModule(path, image_size)` (a Hugging Face `datasets` dataset: Hub id, `save_to_disk` folder, parquet) | `inputs` f32 (B, H, W, C) in [0, 1], `labels` i64 (B,) | `num_classes`, `image_shape`, `class_names` |
| `HFAudioDataModule(path, sample_rate, num_samples)` (a `datasets` dataset with an `Audio` column) | as `AudioFolderDataModule` | `num_classes`, `class_names`, `num_samples`, `sample_rate` |
| `AudioFolderDataModule(root, sample_rate, num_samples)` | `inputs` f32 (B, S, 1) waveform, `mask` bool (B, S) True = sample (short files are padded), `labels` i64 (B,) | `num_classes`, `class_names`, `num_samples`, `sample_rate` |
| `VideoFolderDataModule(root, num_frames, image_size)` | `inputs` f32 (B, T, H, W, 3) in [0, 1], `labels` i64 (B,) | `num_classes`, `class_names`, `video_shape` (`perceiver.data.video_folder.load_video_frames` / `load_video_audio`: one file's frames and sound track, e.g. for `multimodal-perceiver`) |
| `TextClassificationDataModule(train_file, ...)` or `(dataset=...)` (a `datasets` dataset) | `input_ids` i64 (B, L), `attention_mask` bool (B, L), `labels` i64 (B,) | `num_classes`, `class_names`, `vocab_size`, `max_seq_len`, `pad_token_id` |
| `PydocMLMDataModule` (pydoc topics), `TextFilesMLMDataModule(train, val, test)` (your text files) | `input_ids` i64 (B, L) masked, `attention_mask` bool (B, L), `labels` i64 (B, L), -100 = not predicted | `vocab_size`, `max_seq_len`, `mask_token_id`, `pad_token_id`, `train_topics`, `val_topics` (pydoc), `most_frequent_byte_baseline()` |
| `PydocARDataModule` (pydoc topics), `TextFilesARDataModule(train, val, test)` (your text files) | `input_ids` i64 (B, L) byte windows, `labels` i64 (B, L) (= input_ids; evaluation: -100 except the scored bytes) | `vocab_size`, `pad_token_id`, `unigram_bpb(split)` |
| `SyntheticPointCloudDataModule`, `ModelNetDataModule(root)` | `inputs` f32 (B, P, 3), `mask` bool (B, P) True = point, `labels` i64 (B,) | `num_classes`, `class_names`, `max_points`, `point_dim` |
| `SyntheticFlowDataModule`, `SintelFlowDataModule(root)` | `frames` f32 (B, 2, H, W, 3) in [0, 1], `flow` f32 (B, H, W, 2) px (dx, dy), `frame2(p + flow(p)) ~= frame1(p)`; Sintel: `valid` bool (B, H, W), False where the `.flo` marks the flow unknown | `image_shape` |

Masks are boolean, True = valid. Text is UTF-8 bytes + 6 with PAD 0, BOS 1, EOS 2, MASK 3, CLS 4, SEP 5 (the ids of
transformers' `PerceiverTokenizer`), sequences `[CLS] bytes [SEP]`.

Determinism (see `perceiver.data._common`): splits and evaluation data are fixed; `seed` drives training order,
augmentation and MLM masks, all functions of `(seed, epoch, index)`, so results do not depend on the number of
workers, a run resumed at an epoch boundary sees the same data, and R processes with batch b see the same global
batches as one process with batch R * b. Bad data (missing / corrupt files, empty class folders, undecodable
images, missing fields) raises `FileNotFoundError` / `ValueError` naming the file, folder or field, in the
constructor or in `setup()`, before training starts; the `datasets` modules (`HFImageDataModule`,
`HFAudioDataModule`) check splits, columns and labels there, but name an image or sound that does not decode (by its
path or row) when it is read.
"""

from perceiver.data.audio_folder import AudioFolderDataModule
from perceiver.data.digits import DigitsDataModule
from perceiver.data.flow import SintelFlowDataModule, SyntheticFlowDataModule, read_flo, write_flo
from perceiver.data.folders import ImageFolderDataModule
from perceiver.data.hf_datasets import HFAudioDataModule, HFImageDataModule
from perceiver.data.points import ModelNetDataModule, SyntheticPointCloudDataModule, read_off, write_off
from perceiver.data.pydoc import PydocMLMDataModule
from perceiver.data.segment_pydoc import SegmentPydocDataModule
from perceiver.data.text import TextClassificationDataModule
from perceiver.data.text_files import TextFilesARDataModule, TextFilesMLMDataModule
from perceiver.data.video_folder import VideoFolderDataModule

__all__ = [
    "AudioFolderDataModule",
    "DigitsDataModule",
    "HFAudioDataModule",
    "HFImageDataModule",
    "ImageFolderDataModule",
    "ModelNetDataModule",
    "PydocMLMDataModule",
    "SegmentPydocDataModule",
    "SintelFlowDataModule",
    "SyntheticFlowDataModule",
    "SyntheticPointCloudDataModule",
    "TextClassificationDataModule",
    "TextFilesARDataModule",
    "TextFilesMLMDataModule",
    "VideoFolderDataModule",
    "read_flo",
    "read_off",
    "write_flo",
    "write_off",
]
