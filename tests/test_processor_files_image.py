"""ImageProcessor.save_pretrained / from_pretrained against transformers' PerceiverImageProcessor, and crop_pct."""

import json

import numpy as np
import pytest
import torch

from perceiver.image_processing import ImageProcessor

transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL")

ATOL = 1e-6  # as tests/test_image_processing.py
OPTIONS = {"size": (96, 80), "crop_size": 120, "resample": "bilinear", "image_mean": 0.5, "image_std": (0.2, 0.3, 0.4)}


def _reference_class():
    return getattr(transformers, "PerceiverImageProcessorPil", None) or transformers.PerceiverImageProcessor


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (150, 131, 3), dtype=np.uint8), rng.integers(0, 256, (131, 150, 3), dtype=np.uint8)]


def _ref_pixels(processor, images):
    return torch.stack(
        [processor(im, return_tensors="pt", input_data_format="channels_last")["pixel_values"][0] for im in images]
    )


def test_saved_config_is_read_by_transformers(tmp_path):
    ours = ImageProcessor(**OPTIONS)
    files = ours.save_pretrained(tmp_path / "proc")
    assert [p.rsplit("/", 1)[-1] for p in files] == ["preprocessor_config.json"]
    ref = _reference_class().from_pretrained(tmp_path / "proc")
    assert type(transformers.AutoImageProcessor.from_pretrained(tmp_path / "proc")).__name__.startswith(
        "PerceiverImageProcessor"
    )
    images = _images()
    torch.testing.assert_close(ours(images), _ref_pixels(ref, images), rtol=0, atol=ATOL)


def test_reads_a_config_saved_by_transformers(tmp_path):
    ref = _reference_class()(size={"height": 64, "width": 72}, crop_size={"height": 100, "width": 90}, resample=2)
    ref.save_pretrained(tmp_path)
    ours = ImageProcessor.from_pretrained(tmp_path)
    assert (ours.size, ours.crop_size, ours.resample) == ((64, 72), (100, 90), "bilinear")
    images = _images()
    torch.testing.assert_close(ours(images), _ref_pixels(ref, images), rtol=0, atol=ATOL)
    assert ImageProcessor.from_pretrained(tmp_path, backend="torch").backend == "torch"  # kwargs win


def test_round_trip_beside_a_model_keeps_its_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    ImageProcessor(**OPTIONS).save_pretrained(tmp_path)
    loaded = ImageProcessor.from_pretrained(str(tmp_path))
    assert loaded.to_dict() == ImageProcessor(**OPTIONS).to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "preprocessor_config.json"]


def test_model_folder_of_a_converted_checkpoint(tmp_path):
    """The preprocessor_config.json of DeepMind's vision checkpoints on the Hub (the feature extractor era keys)."""
    config = {
        "crop_size": 256,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "PerceiverFeatureExtractor",
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "resample": 3,
        "size": 224,
    }
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    assert ImageProcessor.from_pretrained(tmp_path).to_dict() == ImageProcessor().to_dict()


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        ImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageProcessor.from_pretrained(tmp_path / "missing")
    (tmp_path / "preprocessor_config.json").write_text("[224]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        ImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"size": -1}')
    with pytest.raises(ValueError, match="preprocessor_config.json: size must be a positive int"):
        ImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(NotADirectoryError):
        ImageProcessor().save_pretrained(tmp_path / "preprocessor_config.json" / "sub")


def test_crop_pct_as_timm():
    assert ImageProcessor(crop_pct=0.875).crop_size == (256, 256)  # 224 / 0.875
    assert ImageProcessor(crop_pct=0.9).crop_size == (248, 248)  # timm: floor(224 / 0.9)
    assert ImageProcessor(size=(96, 80), crop_pct=0.5).crop_size == (192, 160)
    img = _images()[0]
    torch.testing.assert_close(ImageProcessor(crop_pct=0.875)(img), ImageProcessor()(img), rtol=0, atol=0)
    with pytest.raises(ValueError, match="crop_size or crop_pct, not both"):
        ImageProcessor(crop_size=256, crop_pct=0.875)
    for bad in (0, 1.5, "0.9", True):
        with pytest.raises(ValueError, match="crop_pct must be a number in"):
            ImageProcessor(crop_pct=bad)


def test_crop_pct_overrides_a_saved_crop_size(tmp_path):
    ImageProcessor().save_pretrained(tmp_path)
    assert ImageProcessor.from_pretrained(tmp_path, crop_pct=0.5).crop_size == (448, 448)
