"""ImageProcessor against transformers' PerceiverImageProcessor on real photos and random images of odd sizes.

Tolerance: ``backend="pil"`` performs the same operations as transformers' Pillow backend (same crop box, the same
Pillow bicubic kernel on the same uint8 pixels, rescale in float64 then float32, normalize in float32), so the output
is bit-identical (measured max abs diff 0.0). The tests allow ATOL = 1e-6 only for float reassociation in a future
numpy; one uint8 step after normalization is 1/255/0.229 ~ 0.017, so any change of crop, filter or rounding fails.
``backend="torch"`` equals transformers' torchvision backend bit for bit (checked when torchvision is installed) and is
within 2 uint8 steps (2/255/0.224 ~ 0.035, measured 0.034 when upscaling, 0.0175 when downscaling) of the Pillow one.
"""

import ast
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from perceiver import image_processing
from perceiver.image_processing import ImageProcessor

transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

ATOL = 1e-6
TORCH_VS_PIL_ATOL = 2 / 255 / 0.224 + 1e-4

ODD_SIZES = [(37, 51), (301, 97), (97, 301), (255, 257), (224, 224), (256, 256), (1000, 3), (3, 1000), (2, 2)]


def _reference(**kwargs):
    """transformers' Pillow-backend Perceiver processor (transformers >= 5 names it ...Pil; 4.x has only that one)."""
    cls = getattr(transformers, "PerceiverImageProcessorPil", None) or transformers.PerceiverImageProcessor
    return cls(**kwargs)


def _ref_pixels(processor, images):
    out = processor(images, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
    return out


@pytest.fixture(scope="module")
def hf():
    return _reference()


@pytest.fixture(scope="module")
def photos():
    """The photos of scikit-learn's ``load_sample_images()`` (china.jpg, flower.jpg: (427, 640, 3) uint8), read the
    way it reads them but without importing scikit-learn (seconds of import time)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-learn (sample photos) not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"
    paths = sorted(folder.glob("*.jpg"))
    assert [p.name for p in paths] == ["china.jpg", "flower.jpg"]
    images = []
    for path in paths:
        with Image.open(path) as im:
            images.append(np.asarray(im))
    return images


def _random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_sample_photos(hf, photos):
    proc = ImageProcessor()
    ours = proc(photos)
    assert ours.shape == (2, 3, 224, 224) and ours.dtype == torch.float32 and ours.is_contiguous()
    torch.testing.assert_close(ours, _ref_pixels(hf, photos), rtol=0, atol=ATOL)
    pil = [Image.fromarray(p) for p in photos]
    torch.testing.assert_close(proc(pil), ours, rtol=0, atol=0)
    torch.testing.assert_close(proc(photos[0]), ours[:1], rtol=0, atol=0)
    # the photos are real content: values span the normalized ImageNet range
    assert ours.min() < -1.5 and ours.max() > 1.5


@pytest.mark.parametrize("hw", ODD_SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_random_images_of_odd_sizes(hf, hw):
    img = _random_image(*hw, seed=hw[0] * 7 + hw[1])
    ours = ImageProcessor()(img)
    assert ours.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours, _ref_pixels(hf, img), rtol=0, atol=ATOL)


def test_center_crop_box():
    # 224/256 of the short side, centered with floor offsets: for (300, 200) -> 175 x 175 at (62, 12)
    img = _random_image(300, 200)
    crop = ImageProcessor().center_crop(img)
    assert crop.shape == (175, 175, 3)
    np.testing.assert_array_equal(crop, img[62:237, 12:187])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"do_center_crop": False},
        {"do_normalize": False},
        {"do_rescale": False},
        {"resample": "bilinear"},
        {"size": (200, 180), "crop_size": (240, 256)},
    ],
)
def test_options_match(kwargs):
    hf_kwargs = dict(kwargs)
    if "resample" in kwargs:
        hf_kwargs["resample"] = Image.Resampling.BILINEAR
    if "size" in kwargs:
        hf_kwargs["size"] = dict(zip(("height", "width"), kwargs["size"]))
        hf_kwargs["crop_size"] = dict(zip(("height", "width"), kwargs["crop_size"]))
    imgs = [_random_image(97, 301, seed=1), _random_image(333, 250, seed=2)]
    ref = _ref_pixels(_reference(**hf_kwargs), imgs)
    torch.testing.assert_close(ImageProcessor(**kwargs)(imgs), ref, rtol=0, atol=ATOL)


def _drops_alpha() -> bool:
    """Whether this transformers' `convert_to_rgb` drops alpha (5.20 did) instead of compositing onto white."""
    from transformers.image_transforms import convert_to_rgb

    return convert_to_rgb(Image.new("LA", (1, 1), (0, 0))).getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK"])
def test_non_rgb_pil_modes_match_convert_rgb(mode):
    if mode in ("LA", "RGBA") and _drops_alpha():
        pytest.skip(
            f"transformers {transformers.__version__} drops the alpha channel; ours composites onto white, as later releases do"
        )
    rgba = np.concatenate([_random_image(120, 90), _random_image(120, 90, seed=3)[..., :1]], axis=-1)
    img = Image.fromarray(rgba, mode="RGBA").convert(mode)
    ref = _ref_pixels(_reference(do_convert_rgb=True), img)
    torch.testing.assert_close(ImageProcessor()(img), ref, rtol=0, atol=ATOL)


def test_input_forms_agree():
    imgs = [_random_image(120, 90, seed=i) for i in range(3)]
    proc = ImageProcessor()
    expected = proc(imgs)
    assert expected.shape == (3, 3, 224, 224)
    torch.testing.assert_close(proc(np.stack(imgs)), expected, rtol=0, atol=0)  # (B, H, W, 3) batch array
    torch.testing.assert_close(proc(tuple(Image.fromarray(i) for i in imgs)), expected, rtol=0, atol=0)
    chw = [np.ascontiguousarray(i.transpose(2, 0, 1)) for i in imgs]
    torch.testing.assert_close(proc(chw, input_data_format="channels_first"), expected, rtol=0, atol=0)
    torch.testing.assert_close(proc([i.astype(np.int64) for i in imgs]), expected, rtol=0, atol=0)
    # each image is processed on its own: batch row == single image
    torch.testing.assert_close(proc(imgs[1]), expected[1:2], rtol=0, atol=0)


def test_torch_backend_close_to_pil(hf, photos):
    imgs = [*photos, _random_image(37, 51)]
    ours = ImageProcessor(backend="torch")
    for img in imgs:
        out = ours(img)
        assert out.shape == (1, 3, 224, 224) and out.dtype == torch.float32
        ref = _ref_pixels(hf, img)
        diff = (out - ref).abs()
        assert diff.max() <= TORCH_VS_PIL_ATOL
        assert (diff > ATOL).float().mean() < 0.01  # rounding differs at < 1 % of the values


def test_torch_backend_matches_torchvision_backend(photos):
    pytest.importorskip("torchvision")
    ref_proc = transformers.PerceiverImageProcessor()
    if getattr(ref_proc, "backend", None) != "torchvision":
        pytest.skip("transformers' PerceiverImageProcessor is not the torchvision backend here")
    imgs = [*photos, _random_image(37, 51), _random_image(301, 97)]
    ours = ImageProcessor(backend="torch")
    for img in imgs:
        torch.testing.assert_close(ours(img), _ref_pixels(ref_proc, img), rtol=0, atol=ATOL)


def test_errors():
    proc = ImageProcessor()
    img = _random_image(40, 50)
    bad_calls = {
        "2-D array": lambda: proc(img[..., 0]),
        "one channel": lambda: proc(img[..., :1]),
        "four channels": lambda: proc(np.concatenate([img, img[..., :1]], axis=-1)),
        "channels first without flag": lambda: proc(np.ascontiguousarray(img.transpose(2, 0, 1))),
        "5-D array": lambda: proc(img[None, None]),
        "float array": lambda: proc(img.astype(np.float32) / 255),
        "bool array": lambda: proc(img > 127),
        "values above 255": lambda: proc(img.astype(np.int32) + 300),
        "negative values": lambda: proc(img.astype(np.int32) - 300),
        "1x1 image: empty crop": lambda: proc(_random_image(1, 1)),
        "empty image": lambda: proc(np.zeros((0, 10, 3), np.uint8)),
        "empty list": lambda: proc([]),
        "torch tensor": lambda: proc(torch.zeros(3, 224, 224, dtype=torch.uint8)),
        "path string": lambda: proc("cat.jpg"),
        "bad layout name": lambda: proc(img, input_data_format="NHWC"),
        "sizes differ without crop/resize": lambda: ImageProcessor(do_center_crop=False, do_resize=False)(
            [img, _random_image(41, 50)]
        ),
        "bad size": lambda: ImageProcessor(size=0),
        "bad crop_size": lambda: ImageProcessor(crop_size=(256, 256, 3)),
        "bad resample": lambda: ImageProcessor(resample="cubic"),
        "lanczos on torch backend": lambda: ImageProcessor(resample="lanczos", backend="torch"),
        "bad backend": lambda: ImageProcessor(backend="cv2"),
        "bad mean": lambda: ImageProcessor(image_mean=(0.5,)),
        "zero std": lambda: ImageProcessor(image_std=(0.2, 0.0, 0.2)),
    }
    for name, call in bad_calls.items():
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"no ValueError for {name}")
    with pytest.raises(ValueError, match=r"expected an RGB image array of shape \(H, W, 3\).*got shape \(40, 50, 4\)"):
        proc(np.concatenate([img, img[..., :1]], axis=-1))
    with pytest.raises(ValueError, match="channels-first"):
        proc(np.ascontiguousarray(img.transpose(2, 0, 1)))


def test_pillow_and_numpy_are_imported_lazily():
    # `import perceiver` must work without the vision extra: no module-level PIL / numpy import
    tree = ast.parse(Path(image_processing.__file__).read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top_level if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top_level if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in ("PIL", "numpy")], names


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_grey_images_are_scaled_not_clipped(mode):
    """A 16-bit grey PNG (Pillow: mode I;16, or I) is the photo in 8 bits scaled by 257, as training reads it;
    Pillow's convert("RGB") clipped it at 255, a white image. (transformers refuses such an image.)"""
    grey = _random_image(120, 90)[..., 0]
    wide = grey.astype(np.uint16 if mode == "I;16" else np.int32) * 257  # 255 -> 65535
    image = Image.fromarray(wide)
    assert image.mode == mode
    proc = ImageProcessor()
    torch.testing.assert_close(proc(image), proc(Image.fromarray(grey)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="floating-point PIL image"):
        proc(Image.fromarray(grey.astype(np.float32)))  # mode F: [0, 1] or [0, 255]? not guessed
    with pytest.raises(ValueError, match=r"scale 16-bit images with \(x / 257\)"):
        proc(np.repeat(wide[..., None], 3, axis=-1).astype(np.uint16))


def test_from_dict_reads_a_transformers_preprocessor_config(tmp_path):
    """`ImageProcessor.from_dict(preprocessor_config.json)` processes as transformers' processor saved there does."""
    options = {"size": {"height": 200, "width": 180}, "crop_size": {"height": 240, "width": 256}}
    options |= {"resample": Image.Resampling.BILINEAR, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.3, 0.25]}
    for saved in (_reference(), _reference(**options), _reference(do_center_crop=False, do_normalize=False)):
        saved.save_pretrained(tmp_path)
        config = json.loads((tmp_path / "preprocessor_config.json").read_text())
        imgs = [_random_image(97, 301, seed=1), _random_image(333, 250, seed=2)]
        ours = ImageProcessor.from_dict(config)
        torch.testing.assert_close(ours(imgs), _ref_pixels(saved, imgs), rtol=0, atol=ATOL)
    legacy = {"size": 224, "crop_size": 256, "resample": 3, "feature_extractor_type": "PerceiverFeatureExtractor"}
    assert repr(ImageProcessor.from_dict(legacy)) == repr(ImageProcessor())
    with pytest.raises(ValueError, match="filter codes"):
        ImageProcessor.from_dict({"resample": 9})


def test_torch_tensor_inputs_equal_numpy_and_transformers(hf):
    """transformers' processor takes torch tensors; ours takes them as arrays, with the same layout rules."""
    imgs = [_random_image(40, 60, seed=3), _random_image(70, 50, seed=4)]
    proc = ImageProcessor()
    expected = proc(imgs)
    hwc = [torch.from_numpy(i) for i in imgs]
    torch.testing.assert_close(proc(hwc), expected, rtol=0, atol=0)
    torch.testing.assert_close(proc(hwc[0]), expected[:1], rtol=0, atol=0)
    chw = [t.permute(2, 0, 1) for t in hwc]  # torchvision's read_image layout (a non-contiguous view here)
    torch.testing.assert_close(proc(chw, input_data_format="channels_first"), expected, rtol=0, atol=0)
    batch = torch.stack([torch.from_numpy(imgs[0])] * 2)  # (B, H, W, 3)
    torch.testing.assert_close(proc(batch), expected[:1].expand(2, -1, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(proc(hwc[0].to(torch.int64)), expected[:1], rtol=0, atol=0)
    torch.testing.assert_close(
        proc(chw[1], input_data_format="channels_first"), _ref_pixels(hf, imgs[1]), atol=ATOL, rtol=0
    )
    with pytest.raises(ValueError, match=r"dtype torch.float32"):
        proc(hwc[0].float() / 255)
    with pytest.raises(ValueError, match="channels-first"):
        proc(chw[0])


def test_return_tensors_pt_gives_transformers_batch_for_the_model():
    from perceiver.models.vision import PerceiverForImageClassification, vision_perceiver_fourier

    img = _random_image(40, 60, seed=5)
    proc = ImageProcessor(size=16, crop_size=16)
    inputs = proc(img, return_tensors="pt")
    assert isinstance(inputs, dict) and set(inputs) == {"pixel_values"}
    torch.testing.assert_close(inputs["pixel_values"], proc(img), rtol=0, atol=0)
    model = vision_perceiver_fourier(
        num_latents=4,
        latent_dim=16,
        num_blocks=1,
        num_self_attends_per_block=1,
        num_classes=3,
        max_resolution=(16, 16),
        num_bands=4,
    ).eval()
    assert isinstance(model, PerceiverForImageClassification)
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, 3)
    with pytest.raises(ValueError, match="return_tensors must be 'pt' or None.*'np'"):
        proc(img, return_tensors="np")


def test_size_dict_of_other_keys_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"'height' and 'width'.*shortest_edge"):
        ImageProcessor(size={"shortest_edge": 32})
    with pytest.raises(ValueError, match=r"crop_size.*'height' and 'width'"):
        ImageProcessor.from_dict({"crop_size": {"height": 32}})
    assert ImageProcessor.from_dict({"size": {"height": 20, "width": 30}}).size == (20, 30)
