"""Optical flow: synthetic pairs with exact ground truth, Sintel-style folders, and Middlebury `.flo` files.

Flow convention (all of this module): `flow[y, x] = (dx, dy)` in pixels maps a pixel `p = (x, y)` of the first
frame to its position in the second, `frame2(p + flow(p)) ~= frame1(p)` (Sintel / Middlebury convention).

`SyntheticFlowDataModule` -- pairs made from scikit-learn's two bundled photos (`load_sample_images()`, 427x640):
a random crop (random photo, random zoom in [1, 2.5] where it fits, random flips) of size `image_size + 2 * margin`
is resampled to that size (antialiased bilinear) and redrawn while it is flat (`min_texture`); a random smooth flow field is drawn (bicubic upsampling of a
coarse 2..5 x 2..5 Gaussian grid plus a global translation, scaled so that its largest magnitude is
U(0.2, 1) * `max_flow` px); frame 2 is the central `image_size` crop and frame 1 is the bilinear backward warp
`frame1(p) = source(p + margin + flow(p))` (`torch.nn.functional.grid_sample`, `align_corners=True`). So warping
frame 2 by the flow with `grid_sample` reproduces frame 1 exactly wherever `p + flow(p)` stays inside frame 2.
Training crops come from the left 70 % of each photo, validation / test crops from the right 30 %, so evaluation
pixels are never trained on. Sample `i` is a function of `(seed, i)` for training and of a fixed seed for
validation / test; `resample_train=True` draws new training pairs every epoch.

`SintelFlowDataModule` -- MPI Sintel layout `root/training/{clean,final}/<scene>/frame_XXXX.png` and
`root/training/flow/<scene>/frame_XXXX.flo` (flow from frame XXXX to XXXX+1). Split by scene (fixed), random
crops (and optional horizontal flips) for training, centre crops for validation; the test split is the
validation split (Sintel's test set has no public ground truth).

Batch: `{"frames": float32 (B, 2, H, W, 3) in [0, 1], "flow": float32 (B, H, W, 2) in pixels (dx, dy)}`; Sintel-layout
batches add `"valid": bool (B, H, W)`, False where the `.flo` file marks the flow unknown (Middlebury's convention:
a component of magnitude >= 1e9, or NaN / inf; the flow is 0 there), which `FlowTask` leaves out of the loss and
the metrics.
Attributes available right after construction: `image_shape = (H, W, 3)`, `max_flow` (synthetic).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal, TypedDict

import numpy as np
import torch
import torch.nn.functional as F

from perceiver.data._common import (
    BaseDataModule,
    ImageCheck,
    KeyedDataset,
    as_hw,
    check_image,
    load_image,
    require_dir,
    sample_rng,
)

FLO_MAGIC = 202021.25
UNKNOWN_FLOW = 1e9  # Middlebury's UNKNOWN_FLOW_THRESH: a component at least this large marks an unknown flow
EVAL_SEED = 0
SPLIT_SEED = 0
TRAIN_COLUMNS = 0.7  # share of every photo's width used for training crops
_TRAIN, _VAL, _TEST = 0, 1, 2

# ------------------------------------------------------------------------------------------------ .flo files


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """Read a Middlebury `.flo` file into float32 `(H, W, 2)` (dx, dy).

    Raises `FileNotFoundError` for a missing file and `ValueError` naming the file for a bad magic number, a
    non-positive size, a truncated file or trailing bytes. Values are returned as stored: Middlebury's ground truth
    marks unknown flow with components >= 1e9 (`UNKNOWN_FLOW`; see `valid_flow`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".flo file not found: {path}")
    data = path.read_bytes()
    w, h = _flo_size(path, data[:12], len(data))
    return np.frombuffer(data, dtype="<f4", count=h * w * 2, offset=12).reshape(h, w, 2).astype(np.float32)


def valid_flow(flow: torch.Tensor) -> torch.Tensor:
    """`(H, W)` bool of the pixels of `flow` `(H, W, 2)` whose flow is known: finite and both components below
    Middlebury's `UNKNOWN_FLOW` (1e9) in magnitude."""
    return (torch.isfinite(flow) & (flow.abs() < UNKNOWN_FLOW)).all(dim=-1)


def read_flo_size(path: str | os.PathLike) -> tuple[int, int]:
    """`(H, W)` of a `.flo` file, validating magic and file size without reading the data."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".flo file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(12)
    w, h = _flo_size(path, head, path.stat().st_size)
    return h, w


def _flo_size(path: Path, head: bytes, nbytes: int) -> tuple[int, int]:
    if len(head) < 12:
        raise ValueError(f"truncated .flo file {path}: {nbytes} bytes, the header alone has 12")
    magic = float(np.frombuffer(head, dtype="<f4", count=1)[0])
    if magic != FLO_MAGIC:
        raise ValueError(f"bad .flo file {path}: magic number {magic!r}, expected {FLO_MAGIC} (Middlebury format)")
    w, h = (int(v) for v in np.frombuffer(head, dtype="<i4", count=2, offset=4))
    if w <= 0 or h <= 0 or w * h > 1 << 30:
        raise ValueError(f"bad .flo file {path}: invalid size {w}x{h}")
    expected = 12 + 8 * w * h
    if nbytes < expected:
        raise ValueError(f"truncated .flo file {path}: {nbytes} bytes, expected {expected} for {w}x{h}")
    if nbytes > expected:
        raise ValueError(f"bad .flo file {path}: {nbytes - expected} trailing bytes after {w}x{h} flow")
    return w, h


def write_flo(path: str | os.PathLike, flow: np.ndarray | torch.Tensor) -> None:
    """Write `(H, W, 2)` flow (dx, dy) as a Middlebury `.flo` file (little-endian float32)."""
    flow = np.asarray(flow.detach().cpu() if isinstance(flow, torch.Tensor) else flow, dtype="<f4")
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"expected flow of shape (H, W, 2), got {flow.shape}")
    h, w = flow.shape[:2]
    with open(path, "wb") as f:
        f.write(np.array([FLO_MAGIC], dtype="<f4").tobytes())
        f.write(np.array([w, h], dtype="<i4").tobytes())
        f.write(np.ascontiguousarray(flow).tobytes())


# ------------------------------------------------------------------------------------------------ warping


def backward_warp(image: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Sample `image (B, C, H, W)` at `p + flow(p)` for `flow (B, H', W', 2)` in pixels: `(B, C, H', W')`.

    Bilinear, `align_corners=True` (pixel centres at integer coordinates). With `image = frame2` this reconstructs
    `frame1` under the module's flow convention."""
    b, _, h, w = image.shape
    hh, ww = flow.shape[1:3]
    ys, xs = torch.meshgrid(torch.arange(hh, dtype=flow.dtype), torch.arange(ww, dtype=flow.dtype), indexing="ij")
    x = (xs + flow[..., 0]) * (2 / max(w - 1, 1)) - 1
    y = (ys + flow[..., 1]) * (2 / max(h - 1, 1)) - 1
    return F.grid_sample(
        image, torch.stack([x, y], dim=-1), mode="bilinear", padding_mode=padding_mode, align_corners=True
    )


def random_smooth_flow(rng: np.random.Generator, h: int, w: int, max_flow: float) -> torch.Tensor:
    """A smooth random flow `(h, w, 2)` whose largest magnitude is U(0.2, 1) * max_flow pixels."""
    gh, gw = (int(v) for v in rng.integers(2, 6, size=2))
    coarse = torch.from_numpy(rng.standard_normal((1, 2, gh, gw))).float()
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0]
    field = field + torch.from_numpy(rng.uniform(-1, 1, size=(2, 1, 1))).float()
    peak = field.norm(dim=0).max().clamp_min(1e-6)
    return (field * (rng.uniform(0.2, 1.0) * max_flow / peak)).permute(1, 2, 0).contiguous()


def image_texture(image: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels of `(C, H, W)` (x and y averaged)."""
    dx = (image[..., 1:] - image[..., :-1]).abs().mean()
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean()
    return float(dx + dy) / 2


def sample_photos() -> torch.Tensor:
    """scikit-learn's bundled photos as float32 `(2, 3, 427, 640)` in [0, 1]."""
    from sklearn.datasets import load_sample_images

    images = np.stack(load_sample_images().images).astype(np.float32) / 255.0
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


class _SyntheticFlowOptions(TypedDict):
    """The `SyntheticFlowDataset` keywords every split of `SyntheticFlowDataModule` shares."""

    photos: torch.Tensor
    image_size: tuple[int, int]
    max_flow: float
    min_texture: float


class SyntheticFlowDataset(KeyedDataset):
    """Warped-photo pairs (see the module docstring); item `i` is a function of `(seed, stream, epoch?, i)`.

    Args:
        photos: `(P, 3, H0, W0)` source photos in [0, 1].
        columns: `(start, stop)` fractions of the photo width crops are taken from.
    """

    def __init__(
        self,
        photos: torch.Tensor,
        size: int,
        image_size: tuple[int, int],
        max_flow: float,
        seed: int,
        stream: int,
        columns: tuple[float, float],
        resample: bool = False,
        min_texture: float = 0.01,
        max_attempts: int = 50,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 (crops drawn per sample), got {max_attempts}")
        self.min_texture, self.max_attempts = min_texture, max_attempts
        self.photos, self.size, self.image_size, self.max_flow = photos, size, image_size, max_flow
        self.seed, self.stream, self.resample = seed, stream, resample
        self.margin = int(math.ceil(max_flow)) + 1
        w0 = photos.shape[-1]
        self.x0, self.x1 = int(columns[0] * w0), int(columns[1] * w0)
        h, w = image_size
        fit = min(photos.shape[-2] / (h + 2 * self.margin), (self.x1 - self.x0) / (w + 2 * self.margin))
        if fit < 0.5:
            raise ValueError(
                f"image_size {image_size} with max_flow {max_flow} is too large for the "
                f"{photos.shape[-2]}x{self.x1 - self.x0} photo region this split crops from"
            )
        self.max_zoom = min(2.5, fit)
        self.min_zoom = min(1.0, self.max_zoom)

    def __len__(self) -> int:
        return self.size

    def _random_crop(self, rng: np.random.Generator, big_h: int, big_w: int) -> torch.Tensor:
        """A random photo / zoom / position / flip crop resampled to `(1, 3, big_h, big_w)`."""
        zoom = rng.uniform(self.min_zoom, self.max_zoom)
        ch, cw = min(round(zoom * big_h), self.photos.shape[-2]), min(round(zoom * big_w), self.x1 - self.x0)
        top = int(rng.integers(0, self.photos.shape[-2] - ch + 1))
        left = self.x0 + int(rng.integers(0, self.x1 - self.x0 - cw + 1))
        crop = self.photos[int(rng.integers(len(self.photos))), :, top : top + ch, left : left + cw]
        big = F.interpolate(crop[None], size=(big_h, big_w), mode="bilinear", antialias=True, align_corners=False)
        flips = [d for d, flip in ((-1, rng.random() < 0.5), (-2, rng.random() < 0.5)) if flip]
        return (big.flip(flips) if flips else big).clamp(0, 1)

    def get(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        rng = sample_rng(self.seed, self.stream, epoch if self.resample else 0, index)
        h, w = self.image_size
        m = self.margin
        big_h, big_w = h + 2 * m, w + 2 * m
        best, best_texture = None, -1.0
        for _ in range(self.max_attempts):  # skip flat crops (sky, blurred background) whose flow is unobservable
            big = self._random_crop(rng, big_h, big_w)
            texture = image_texture(big[0, :, m : m + h, m : m + w])
            if texture > best_texture:
                best, best_texture = big, texture
            if texture >= self.min_texture:
                break
        assert best is not None  # max_attempts >= 1 crops were drawn
        big = best  # (1, 3, H + 2m, W + 2m)
        flow = random_smooth_flow(rng, h, w, self.max_flow)  # (H, W, 2)
        frame1 = backward_warp(big, flow[None] + m, "border")[0]  # big(p + m + flow(p)), never outside big
        frame2 = big[0, :, m : m + h, m : m + w]
        frames = torch.stack([frame1, frame2]).permute(0, 2, 3, 1).contiguous()  # (2, H, W, 3)
        return {"frames": frames, "flow": flow}


class SyntheticFlowDataModule(BaseDataModule):
    """Optical flow on warped crops of scikit-learn's sample photos, exact ground truth (see the module docstring).

    Args:
        image_size: `H` or `(H, W)` of the frames.
        num_train, num_val, num_test: number of pairs per split.
        max_flow: upper bound of the flow magnitude in pixels.
        resample_train: draw new training pairs every epoch instead of a fixed training set.
        min_texture: crops whose frame 2 has a mean absolute neighbour difference below this are redrawn (up to
            50 times, keeping the most textured): flow is unobservable on flat sky or blurred background.
        batch_size, num_workers, seed: see `BaseDataModule`.
    """

    val_set: SyntheticFlowDataset | None
    test_set: SyntheticFlowDataset | None

    def __init__(
        self,
        image_size: int | tuple[int, int] = 64,
        num_train: int = 4000,
        num_val: int = 256,
        num_test: int = 256,
        max_flow: float = 4.0,
        resample_train: bool = False,
        min_texture: float = 0.01,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if max_flow <= 0 or min(num_train, num_val, num_test) < 1:
            raise ValueError(f"need max_flow > 0 and num_train, num_val, num_test >= 1, got {max_flow}")
        self.image_size = as_hw(image_size)
        self.image_shape = (*self.image_size, 3)
        self.max_flow = float(max_flow)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.resample_train = resample_train
        self.min_texture = min_texture
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        photos = sample_photos()
        common = _SyntheticFlowOptions(
            photos=photos, image_size=self.image_size, max_flow=self.max_flow, min_texture=self.min_texture
        )
        self.train_set = SyntheticFlowDataset(
            size=self.sizes["train"], seed=self.seed, stream=_TRAIN, columns=(0.0, TRAIN_COLUMNS),
            resample=self.resample_train, **common,
        )  # fmt: skip
        held_out = (TRAIN_COLUMNS, 1.0)
        self.val_set = SyntheticFlowDataset(
            size=self.sizes["val"], seed=EVAL_SEED, stream=_VAL, columns=held_out, **common
        )
        self.test_set = SyntheticFlowDataset(
            size=self.sizes["test"], seed=EVAL_SEED, stream=_TEST, columns=held_out, **common
        )

    def zero_flow_baseline(self, split: Literal["val", "test"] = "val") -> float:
        """End-point error of predicting zero flow on `split`: the mean flow magnitude in pixels."""
        self.setup()
        dataset = self.val_set if split == "val" else self.test_set
        assert dataset is not None  # set by setup()
        return float(torch.stack([dataset[i]["flow"].norm(dim=-1).mean() for i in range(len(dataset))]).mean())


# ------------------------------------------------------------------------------------------------ Sintel


class FlowPairDataset(KeyedDataset):
    """Pairs `(image1, image2, flo)` from disk; training items are randomly cropped (and optionally flipped) from
    `(seed, epoch, index)`, evaluation items centre-cropped. Items `{"frames" (2, H, W, 3), "flow" (H, W, 2),
    "valid" (H, W)}`: unknown flow (`valid_flow`) is set to 0 and `valid` False."""

    def __init__(
        self,
        pairs: list[tuple[Path, Path, Path]],
        crop: tuple[int, int] | None,
        seed: int,
        train: bool,
        flip: bool = False,
    ) -> None:
        self.pairs, self.crop, self.seed, self.train, self.flip = pairs, crop, seed, train, flip

    def __len__(self) -> int:
        return len(self.pairs)

    def get(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        p1, p2, pf = self.pairs[index]
        flow = torch.from_numpy(read_flo(pf))
        valid = valid_flow(flow)
        flow = flow.masked_fill(~valid[..., None], 0.0)
        frames = torch.from_numpy(np.stack([load_image(p1), load_image(p2)]))  # (2, H, W, 3)
        if frames.shape[1:3] != flow.shape[:2]:
            raise ValueError(f"{pf}: flow is {tuple(flow.shape[:2])} but {p1} is {tuple(frames.shape[1:3])}")
        rng = sample_rng(self.seed, _TRAIN if self.train else _VAL, epoch if self.train else 0, index)
        if self.crop is not None:
            (h, w), (ch, cw) = flow.shape[:2], self.crop
            if ch > h or cw > w:
                raise ValueError(f"crop_size {self.crop} is larger than the {h}x{w} frames of {p1}")
            top = int(rng.integers(0, h - ch + 1)) if self.train else (h - ch) // 2
            left = int(rng.integers(0, w - cw + 1)) if self.train else (w - cw) // 2
            frames, flow = frames[:, top : top + ch, left : left + cw], flow[top : top + ch, left : left + cw]
            valid = valid[top : top + ch, left : left + cw]
        if self.train and self.flip and rng.random() < 0.5:  # mirror x: dx changes sign
            frames, flow, valid = frames.flip(2), flow.flip(1) * torch.tensor([-1.0, 1.0]), valid.flip(1)
        return {"frames": frames.contiguous(), "flow": flow.contiguous(), "valid": valid.contiguous()}


class SintelFlowDataModule(BaseDataModule):
    """MPI Sintel (or any folder in its layout) for optical flow (see the module docstring).

    Args:
        root: the Sintel directory containing `training/`.
        pass_name: "clean" or "final" renderings.
        crop_size: `H` or `(H, W)` of random training / centre validation crops; None = full frames.
        val_scenes: scenes held out for validation; default: a fixed `val_fraction` of the scenes (at least one, so
            a folder with a single scene needs `val_scenes=[]`: no validation split).
        val_fraction: share of the scenes held out when `val_scenes` is None.
        flip: random horizontal flips of training pairs.
        check_images: "verify" (default: open + integrity check of every frame in `setup()`), "decode" (full
            decode, slower) or "none". `.flo` headers and sizes are always checked.
        batch_size, num_workers, seed: see `BaseDataModule`.
    """

    def __init__(
        self,
        root: str,
        pass_name: Literal["clean", "final"] = "clean",
        crop_size: int | tuple[int, int] | None = None,
        val_scenes: list[str] | None = None,
        val_fraction: float = 0.2,
        flip: bool = False,
        check_images: ImageCheck = "verify",
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.root = require_dir(root, "Sintel root")
        self.image_dir = require_dir(self.root / "training" / pass_name, f"Sintel {pass_name} folder")
        self.flow_dir = require_dir(self.root / "training" / "flow", "Sintel flow folder")
        self.scenes = sorted(p.name for p in self.flow_dir.iterdir() if p.is_dir())
        if not self.scenes:
            raise ValueError(f"no scene folders in {self.flow_dir}")
        if val_scenes is None:
            if not 0.0 < val_fraction < 1.0:
                raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
            if len(self.scenes) == 1:  # frames of one scene are near-duplicates: no honest split within it
                raise ValueError(
                    f"{self.flow_dir} has one scene ({self.scenes[0]}); validation holds out whole scenes, so add "
                    f"scene folders, or pass val_scenes: [] to train without validation"
                )
            order = np.random.default_rng(SPLIT_SEED).permutation(len(self.scenes))
            k = min(max(1, round(val_fraction * len(self.scenes))), len(self.scenes) - 1)
            val_scenes = sorted(self.scenes[i] for i in order[:k])
        unknown = sorted(set(val_scenes) - set(self.scenes))
        if unknown:
            raise ValueError(f"val_scenes {unknown} not found in {self.flow_dir}")
        self.val_scenes = list(val_scenes)
        self.train_scenes = [s for s in self.scenes if s not in set(val_scenes)]
        self.crop_size = as_hw(crop_size, "crop_size") if crop_size is not None else None
        self.flip = flip
        self.check_images = check_images
        self._shape: tuple[int, int] | None = self.crop_size
        self.save_hyperparameters()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(H, W, 3)` of the batches (crop size, or the size of the first frame)."""
        if self._shape is None:
            first = self.pairs(self.scenes[:1])[0]
            self._shape = read_flo_size(first[2])
        return (*self._shape, 3)

    def pairs(self, scenes: list[str]) -> list[tuple[Path, Path, Path]]:
        """`(frame_i.png, frame_{i+1}.png, frame_i.flo)` of `scenes`; raises naming a missing frame or an empty scene."""
        out = []
        for scene in scenes:
            flos = sorted((self.flow_dir / scene).glob("frame_*.flo"))
            if not flos:
                raise ValueError(f"scene folder {self.flow_dir / scene} has no frame_*.flo files")
            for flo in flos:
                number = flo.stem.split("_")[-1]
                nxt = f"{int(number) + 1:0{len(number)}d}"
                p1 = self.image_dir / scene / f"frame_{number}.png"
                p2 = self.image_dir / scene / f"frame_{nxt}.png"
                for p in (p1, p2):
                    if not p.is_file():
                        raise FileNotFoundError(f"frame not found: {p} (needed by {flo})")
                out.append((p1, p2, flo))
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val = self.pairs(self.train_scenes), self.pairs(self.val_scenes)
        from PIL import Image

        checked: set[Path] = set()
        sizes: dict[tuple[int, int], Path] = {}  # frame size -> the first pair of that size
        for p1, p2, flo in train + val:
            h, w = read_flo_size(flo)
            sizes.setdefault((h, w), flo)
            for p in (p1, p2):
                if p in checked:
                    continue
                check_image(p, self.check_images)
                checked.add(p)
            with Image.open(p1) as im:
                if im.size != (w, h):
                    raise ValueError(f"{flo}: flow is {h}x{w} but {p1} is {im.size[1]}x{im.size[0]}")
        self._check_sizes(sizes)
        self.train_set = FlowPairDataset(train, self.crop_size, self.seed, train=True, flip=self.flip)
        self.val_set = FlowPairDataset(val, self.crop_size, EVAL_SEED, train=False) if val else None
        self.test_set = self.val_set

    def _check_sizes(self, sizes: dict[tuple[int, int], Path]) -> None:
        """Before training: `crop_size` fits every pair, and without it the pairs of a batch have one size."""
        if self.crop_size is not None:
            ch, cw = self.crop_size
            for (h, w), flo in sizes.items():
                if ch > h or cw > w:
                    raise ValueError(f"crop_size {self.crop_size} is larger than the {h}x{w} frames of {flo}")
        elif len(sizes) > 1 and self.batch_size > 1:
            (a, fa), (b, fb) = list(sizes.items())[:2]
            least = (min(h for h, _ in sizes), min(w for _, w in sizes))
            raise ValueError(
                f"frames of different sizes ({a[0]}x{a[1]} for {fa}, {b[0]}x{b[1]} for {fb}) cannot be batched: "
                f"set crop_size (at most {least[0]}x{least[1]}) or batch_size 1"
            )
