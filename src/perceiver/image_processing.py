"""ImageNet preprocessing of the Perceiver IO image classifiers, equal to transformers' `PerceiverImageProcessor`.

Steps, per image, on ``uint8`` pixels (as transformers does them, in this order):

1. center crop to ``int(size / crop_size * min(H, W))`` on each side (224/256 of the short side by default, a square
   crop for a square ``size``), top-left corner at ``((H - h) // 2, (W - w) // 2)``;
2. resize to ``size`` (224 x 224) with Pillow's bicubic filter (``uint8`` in, ``uint8`` out);
3. rescale by 1/255 (in float64, then cast to float32) and normalize with the ImageNet mean / std in float32;
4. stack channels-first: ``(B, 3, 224, 224)`` float32.

transformers 5 has two backends behind ``PerceiverImageProcessor``: a Pillow one (``PerceiverImageProcessorPil``,
used when torchvision is not installed) and a torchvision one (used when it is). They differ in the resize: torch's
antialiased bicubic kernel on ``uint8`` rounds differently from Pillow's at a few pixels (measured: <= 1 ``uint8`` step,
i.e. 0.0175 after normalization, at < 1 % of the pixels when downscaling photos; 2 steps, 0.034, when upscaling a small
image). ``backend="pil"`` (default) reproduces the Pillow backend operation for operation and is bit-identical to it;
``backend="torch"`` reproduces the torchvision backend (``F.interpolate(uint8, "bicubic", antialias=True)``, then the
fused rescale-normalize ``(x - 255 mean) / (255 std)``) and is bit-identical to that, without needing torchvision.

Pillow and numpy (the ``vision`` extra) are imported lazily, so ``import perceiver`` works without them.
"""

from __future__ import annotations

import math
import numbers
import os
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, overload

import torch

from perceiver.save_files import (
    PREPROCESSOR_NAME,
    install_folder,
    read_preprocessor_config,
    staging_folder,
    write_preprocessor_config,
)

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

IMAGENET_DEFAULT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_RESAMPLE_NAMES = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
#: Pillow's `Image.Resampling` codes, as transformers writes `resample` into preprocessor_config.json
_PIL_RESAMPLE_CODES = ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming")
#: the on / off switches of `ImageProcessor` (transformers' names)
_SWITCHES = ("do_center_crop", "do_resize", "do_rescale", "do_normalize")

_Layout: TypeAlias = Literal["channels_last", "channels_first"]
#: what `ImageProcessor` takes: one image (PIL, array or tensor) or a sequence of them
_Images: TypeAlias = "Image.Image | np.ndarray | torch.Tensor | Sequence[Image.Image | np.ndarray | torch.Tensor]"


def _vision() -> tuple[Any, Any]:
    try:
        import numpy
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ImageProcessor needs Pillow and numpy: pip install 'perceiver-torch[vision]'") from e
    return numpy, Image


def _per_channel(name: str, value: Any) -> tuple[float, float, float]:
    """A mean / std as one float per RGB channel: a number (the same for every channel) or 3 numbers (a sequence or
    an array)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value,) * 3
    values: tuple[float, ...] | None = None
    if not isinstance(value, (str, bytes)):
        try:
            values = tuple(float(v) for v in value if not isinstance(v, (str, bytes, bool)))
        except (TypeError, ValueError):
            values = None
    if values is None or len(values) != 3 or len(value) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(
            f"{name} must be a number or 3 numbers (one per RGB channel), got {value!r} ({type(value).__name__})"
        )
    return values


def _pair(name: str, value: int | tuple[int, int] | dict[str, int]) -> tuple[int, int]:
    pair: object = value
    if isinstance(value, dict):  # transformers' {"height": ..., "width": ...}
        if set(value) != {"height", "width"}:
            raise ValueError(
                f"{name} as a dict must have exactly the keys 'height' and 'width' (PerceiverImageProcessor's), "
                f"got {value!r}"
            )
        pair = (value["height"], value["width"])
    if isinstance(pair, int) and not isinstance(pair, bool):
        pair = (pair, pair)
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)
    ):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of positive ints, got {pair!r}")
    return int(pair[0]), int(pair[1])


class ImageProcessor:
    """Center crop, bicubic resize, rescale and normalize images for the Perceiver IO image classifiers.

    The defaults are those of transformers' ``PerceiverImageProcessor`` (and of DeepMind's ImageNet evaluation).

    Args:
        size: output ``(height, width)`` (or one int for a square), 224.
        crop_size: the center crop keeps ``size / crop_size`` of the short side (224/256 by default).
        crop_pct: timm's name for the same: the share of the short side the center crop keeps (0.875 = 224/256);
            sets ``crop_size = floor(size / crop_pct)`` as timm computes its scale size. Not with ``crop_size``.
        resample: filter of the resize: ``"bicubic"`` (default), ``"bilinear"``, and with the Pillow backend also
            ``"lanczos"``, ``"box"``, ``"hamming"``, ``"nearest"``.
        do_center_crop, do_resize, do_rescale, do_normalize: switch single steps off.
        rescale_factor: multiplies the ``uint8`` values, 1/255.
        image_mean, image_std: per-channel normalization, ImageNet's.
        backend: ``"pil"`` (default) equals transformers' Pillow backend bit for bit, ``"torch"`` equals its
            torchvision backend bit for bit (see the module docstring for how far apart the two are).

    Example::

        proc = ImageProcessor()
        pixel_values = proc([Image.open("cat.jpg"), np_image_hwc_uint8])  # (2, 3, 224, 224) float32
        proc.save_pretrained("my-model")  # preprocessor_config.json, read by transformers' AutoImageProcessor
        proc = ImageProcessor.from_pretrained("my-model")
    """

    def __init__(
        self,
        size: int | tuple[int, int] = 224,
        crop_size: int | tuple[int, int] | None = None,
        resample: Literal["nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"] = "bicubic",
        do_center_crop: bool = True,
        do_resize: bool = True,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        backend: Literal["pil", "torch"] = "pil",
        crop_pct: float | None = None,
    ) -> None:
        self.size = _pair("size", size)
        if crop_pct is not None:
            if crop_size is not None:
                raise ValueError(f"pass crop_size or crop_pct, not both; got {crop_size=!r}, {crop_pct=!r}")
            ok = isinstance(crop_pct, numbers.Real) and not isinstance(crop_pct, bool) and 0 < crop_pct <= 1
            if not ok:
                raise ValueError(f"crop_pct must be a number in (0, 1] (0.875 = 224/256), got {crop_pct!r}")
            crop_size = (math.floor(self.size[0] / crop_pct), math.floor(self.size[1] / crop_pct))
        self.crop_size = _pair("crop_size", 256 if crop_size is None else crop_size)
        if backend not in ("pil", "torch"):
            raise ValueError(f"backend must be 'pil' or 'torch', got {backend!r}")
        allowed = _RESAMPLE_NAMES if backend == "pil" else ("bilinear", "bicubic")
        if resample not in allowed:
            raise ValueError(f"resample must be one of {allowed} with backend={backend!r}, got {resample!r}")
        self.backend = backend
        self.resample = resample
        self.do_center_crop = do_center_crop
        self.do_resize = do_resize
        self.do_rescale = do_rescale
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = do_normalize
        self.image_mean = _per_channel("image_mean", image_mean)
        self.image_std = _per_channel("image_std", image_std)
        if any(s == 0 for s in self.image_std):
            raise ValueError(f"image_std must not contain 0, got {image_std!r}")

    @classmethod
    def from_dict(cls, config: dict[str, Any], **kwargs: Any) -> ImageProcessor:
        """The processor a transformers ``preprocessor_config.json`` describes (``PerceiverImageProcessor``'s keys:
        ``size`` / ``crop_size`` as an int or ``{"height", "width"}``, ``resample`` as Pillow's code (3 = bicubic)
        or a name, the ``do_*`` switches, ``rescale_factor``, ``image_mean``, ``image_std``); missing keys take
        transformers' defaults (ours), other keys (``image_processor_type``, ...) are ignored. ``kwargs`` override.

        Raises:
            ValueError: a value of the wrong form, or a ``resample`` code Pillow does not have.
        """
        if not isinstance(config, dict):
            raise ValueError(f"expected a preprocessor config (a dict), got {type(config).__name__}")
        names = (*_SWITCHES, "size", "crop_size", "resample", "rescale_factor", "image_mean", "image_std")
        options = {key: config[key] for key in names if config.get(key) is not None}
        resample = options.get("resample")
        if isinstance(resample, int) and not isinstance(resample, bool):
            if not 0 <= resample < len(_PIL_RESAMPLE_CODES):
                raise ValueError(f"resample: expected one of Pillow's filter codes 0-5, got {resample}")
            options["resample"] = _PIL_RESAMPLE_CODES[resample]
        elif isinstance(resample, str):
            options["resample"] = resample.lower()
        if kwargs.get("crop_pct") is not None:  # overrides the config's crop_size
            options.pop("crop_size", None)
        return cls(**(options | kwargs))

    def to_dict(self) -> dict[str, Any]:
        """This processor as transformers' ``PerceiverImageProcessor`` config (``preprocessor_config.json``):
        ``size`` / ``crop_size`` as ``{"height", "width"}``, ``resample`` as Pillow's code; ``backend`` is not
        part of it (transformers picks its own)."""
        config: dict[str, Any] = {"image_processor_type": "PerceiverImageProcessor"}
        config |= {name: getattr(self, name) for name in _SWITCHES}
        config |= {
            "size": {"height": self.size[0], "width": self.size[1]},
            "crop_size": {"height": self.crop_size[0], "width": self.crop_size[1]},
            "resample": _PIL_RESAMPLE_CODES.index(self.resample),
            "rescale_factor": self.rescale_factor,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }
        return config

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write ``preprocessor_config.json`` (:meth:`to_dict`) into ``save_directory`` (created if needed; other
        files, e.g. a model's, are kept), as transformers' image processor does: ``AutoImageProcessor`` /
        ``PerceiverImageProcessor.from_pretrained`` and :meth:`from_pretrained` read it. Returns the paths written.

        Raises:
            NotADirectoryError: ``save_directory`` or one of its parents is a file.
        """
        target = Path(save_directory)
        with staging_folder(target) as tmp:
            holder = types.SimpleNamespace(preprocessor_config=self.to_dict())
            install_folder(tmp, target, write_preprocessor_config(holder, tmp))
        return (str(target / PREPROCESSOR_NAME),)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> ImageProcessor:
        """The processor of a local folder's ``preprocessor_config.json``: one :meth:`save_pretrained` or
        transformers wrote, or the model folder of a converted transformers checkpoint (see :meth:`from_dict`;
        ``kwargs`` override, e.g. ``backend="torch"``).

        Raises:
            FileNotFoundError: the folder does not exist or has no ``preprocessor_config.json``.
            ValueError: the file is not a JSON object, or a value of the wrong form.
        """
        folder = Path(pretrained_model_name_or_path)
        config_file = folder / PREPROCESSOR_NAME
        if not folder.is_dir():
            what = "is not a directory" if folder.exists() else "does not exist"
            raise FileNotFoundError(f"expected a local folder with {PREPROCESSOR_NAME}, but {folder} {what}")
        if not config_file.is_file():
            found = sorted(p.name for p in folder.iterdir())[:10]
            raise FileNotFoundError(
                f"expected an image processor config in {folder}: no {PREPROCESSOR_NAME} there (found {found}); "
                "save one with processor.save_pretrained(folder)"
            )
        holder = types.SimpleNamespace()
        read_preprocessor_config(holder, folder)
        config = getattr(holder, "preprocessor_config", None)
        if config is None:
            raise ValueError(f"{config_file}: expected a JSON object")
        try:
            return cls.from_dict(config, **kwargs)
        except ValueError as e:
            raise ValueError(f"{config_file}: {e}") from None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, crop_size={self.crop_size}, resample={self.resample!r}, "
            f"mean={self.image_mean}, std={self.image_std}, backend={self.backend!r})"
        )

    @overload
    def __call__(
        self, images: _Images, input_data_format: _Layout = "channels_last", return_tensors: None = None
    ) -> torch.Tensor: ...

    @overload
    def __call__(
        self, images: _Images, input_data_format: _Layout = "channels_last", *, return_tensors: Literal["pt"]
    ) -> dict[str, torch.Tensor]: ...

    def __call__(
        self,
        images: _Images,
        input_data_format: Literal["channels_last", "channels_first"] = "channels_last",
        return_tensors: Literal["pt"] | None = None,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Preprocess one image or a batch into ``pixel_values``.

        Args:
            images: a PIL image, a ``uint8`` array ``(H, W, 3)`` (or ``(B, H, W, 3)`` for a batch), or a list of
                them; torch tensors are taken as arrays (same layout rules and dtypes, so a torchvision
                ``read_image`` tensor ``(3, H, W)`` needs ``input_data_format="channels_first"``). PIL images in another mode than RGB are converted to RGB (transparency composited onto white,
                as transformers' ``do_convert_rgb=True``); 16-bit grey images (``I;16``, and 32-bit ``I`` ones read
                as 16-bit) are scaled to 8 bits (``round(v / 257)``, as training reads them), not clipped at 255;
                float ones (mode ``F``) are refused. Integer arrays of another dtype with values in ``[0, 255]`` are
                accepted; float arrays are not (their scale is ambiguous).
            input_data_format: layout of array inputs, ``"channels_last"`` ``(H, W, 3)`` or ``"channels_first"``
                ``(3, H, W)``.
            return_tensors: ``None`` returns the tensor; ``"pt"`` returns ``{"pixel_values": tensor}`` as
                transformers' processor does, so ``model(**processor(images, return_tensors="pt"))`` works.

        Returns:
            ``(B, 3, size_h, size_w)`` float32 tensor (``B = 1`` for a single image), or ``{"pixel_values": it}``.

        Raises:
            ValueError: an empty batch, an array that is not 3-D with 3 channels, a float or out-of-range array, an
                image too small to crop, images of different sizes when cropping / resizing is off, or a
                ``return_tensors`` other than ``"pt"`` / ``None``.
        """
        if return_tensors not in (None, "pt"):
            raise ValueError(
                f"return_tensors must be 'pt' or None (this processor makes torch tensors), got {return_tensors!r}"
            )
        if input_data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                f"input_data_format must be 'channels_last' or 'channels_first', got {input_data_format!r}"
            )
        batch = self._as_list(images, input_data_format)
        tensors = [self.preprocess_one(im, input_data_format) for im in batch]
        shapes = sorted({tuple(t.shape) for t in tensors})
        if len(shapes) > 1:
            raise ValueError(f"images of different sizes cannot be stacked, got (C, H, W) shapes {shapes}")
        pixel_values = torch.stack(tensors)
        return pixel_values if return_tensors is None else {"pixel_values": pixel_values}

    preprocess = __call__

    def preprocess_one(
        self,
        image: Image.Image | np.ndarray | torch.Tensor,
        input_data_format: Literal["channels_last", "channels_first"] = "channels_last",
    ) -> torch.Tensor:
        """One image -> ``(3, size_h, size_w)`` tensor (float32, or uint8 if every value step is off)."""
        np, _ = _vision()
        x = self.to_uint8_rgb(image, input_data_format)
        if self.do_center_crop:
            x = self.center_crop(x)
        if self.backend == "torch":
            return self._finish_torch(x)
        if self.do_resize:
            x = self.resize(x)
        if self.do_rescale:
            # as transformers: upcast to float64 first, multiply, cast the result to float32
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            if not np.issubdtype(x.dtype, np.floating):
                x = x.astype(np.float32)
            mean = np.array(self.image_mean, dtype=x.dtype)
            std = np.array(self.image_std, dtype=x.dtype)
            x = (x - mean) / std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def _finish_torch(self, image: np.ndarray) -> torch.Tensor:
        """Resize, rescale and normalize as transformers' torchvision backend does it, in plain torch."""
        np, _ = _vision()
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
        if self.do_resize:
            x = torch.nn.functional.interpolate(x[None], size=self.size, mode=self.resample, antialias=True)[0]
        mean, std = torch.tensor(self.image_mean), torch.tensor(self.image_std)
        if self.do_normalize:
            if self.do_rescale:  # fused: (x - mean / factor) / (std / factor)
                mean, std = mean * (1.0 / self.rescale_factor), std * (1.0 / self.rescale_factor)
            return (x.float() - mean[:, None, None]) / std[:, None, None]
        if self.do_rescale:
            return x * self.rescale_factor
        return x

    def center_crop(self, image: np.ndarray) -> np.ndarray:
        """Crop ``(H, W, 3)`` to ``int(size / crop_size * min(H, W))`` per side around the center."""
        height, width = image.shape[:2]
        min_dim = min(height, width)
        # the exact expression of transformers (float ratio, then int), so the crop is the same pixel for pixel
        crop_h = int((self.size[0] / self.crop_size[0]) * min_dim)
        crop_w = int((self.size[1] / self.crop_size[1]) * min_dim)
        if crop_h < 1 or crop_w < 1:
            raise ValueError(
                f"image of size (H, W) = ({height}, {width}) is too small: the center crop "
                f"({self.size[0]}/{self.crop_size[0]} x {self.size[1]}/{self.crop_size[1]} of the short side) is empty"
            )
        if crop_h > height or crop_w > width:
            raise ValueError(
                f"center crop ({crop_h}, {crop_w}) is larger than the image ({height}, {width}); "
                f"size {self.size} must not exceed crop_size {self.crop_size} on the short side"
            )
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        return image[top : top + crop_h, left : left + crop_w]

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Resize a ``uint8`` ``(H, W, 3)`` array to ``size`` with Pillow (``uint8`` in and out)."""
        np, Image = _vision()
        filt = getattr(Image.Resampling, self.resample.upper())
        pil = Image.fromarray(np.ascontiguousarray(image))
        return np.asarray(pil.resize((self.size[1], self.size[0]), resample=filt))

    @staticmethod
    def to_uint8_rgb(
        image: Image.Image | np.ndarray | torch.Tensor,
        input_data_format: Literal["channels_last", "channels_first"] = "channels_last",
    ) -> np.ndarray:
        """Validate one image and return it as a ``uint8`` ``(H, W, 3)`` array (a tensor is read as an array)."""
        np, Image = _vision()
        if isinstance(image, torch.Tensor):
            image = _tensor_to_numpy(image)
        if isinstance(image, Image.Image):
            if image.mode == "F":  # Pillow's convert("RGB") would clip it at 255
                raise ValueError(
                    "expected an image of integer pixels, got a floating-point PIL image (mode 'F'), whose scale is "
                    "ambiguous; convert it to 8 bits, e.g. Image.fromarray((np.asarray(im) * 255).round().astype("
                    "np.uint8)) for values in [0, 1]"
                )
            if image.mode.startswith("I"):  # 16-bit (I;16...) or 32-bit integer grey, read as 16-bit as training does
                grey = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
                image = Image.fromarray(np.rint(grey / 257).astype(np.uint8))  # mode L; 65535 -> 255
                assert isinstance(image, Image.Image)
            if image.mode != "RGB":
                has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
                if has_alpha:
                    rgba = image.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    image = Image.alpha_composite(white, rgba).convert("RGB")
                else:
                    image = image.convert("RGB")
            x = np.asarray(image)
        elif isinstance(image, np.ndarray):
            x = image
            if x.ndim != 3:
                raise ValueError(
                    f"expected an image array of shape {_layout(input_data_format)}, got shape {tuple(x.shape)}"
                )
            if input_data_format == "channels_first":
                x = x.transpose(1, 2, 0)
            if x.shape[-1] != 3:
                hint = ""
                if input_data_format == "channels_last" and x.shape[0] == 3:
                    hint = "; it looks channels-first: pass input_data_format='channels_first'"
                raise ValueError(
                    f"expected an RGB image array of shape {_layout(input_data_format)} with 3 channels, "
                    f"got shape {tuple(image.shape)}{hint}"
                )
            if x.dtype != np.uint8:
                if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.integer):
                    raise ValueError(
                        f"expected uint8 pixel values in [0, 255], got dtype {x.dtype}; convert float images in [0, 1] "
                        "with (x * 255).round().astype(np.uint8)"
                    )
                if x.size and (x.min() < 0 or x.max() > 255):
                    hint = "; scale 16-bit images with (x / 257).round().astype(np.uint8)" if x.max() < 65536 else ""
                    raise ValueError(
                        f"expected pixel values in [0, 255], got [{x.min()}, {x.max()}] (dtype {x.dtype}){hint}"
                    )
                x = x.astype(np.uint8)
        else:
            raise ValueError(f"expected a PIL image, a numpy array or a torch tensor, got {type(image).__name__}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"expected a non-empty image, got (H, W) = {tuple(x.shape[:2])}")
        return x

    @staticmethod
    def _as_list(images: Any, input_data_format: str) -> list[Any]:
        np, Image = _vision()
        if isinstance(images, Image.Image):
            return [images]
        if isinstance(images, (np.ndarray, torch.Tensor)):
            if images.ndim == 4:
                return list(images)
            return [images]
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("expected at least one image, got an empty list")
            return list(images)
        raise ValueError(
            f"expected a PIL image, a numpy array or torch tensor {_layout(input_data_format)} or a list of them, "
            f"got {type(images).__name__}"
        )


def _layout(input_data_format: str) -> str:
    return "(H, W, 3)" if input_data_format == "channels_last" else "(3, H, W)"


def _tensor_to_numpy(image: torch.Tensor) -> np.ndarray:
    """A tensor image as a numpy array; floating-point tensors are refused as float arrays are (ambiguous scale)."""
    if image.is_floating_point() or image.is_complex():
        raise ValueError(
            f"expected uint8 pixel values in [0, 255], got a tensor of dtype {image.dtype}; convert float images in "
            "[0, 1] with (x * 255).round().to(torch.uint8)"
        )
    return image.detach().cpu().numpy()
