"""Point-cloud classification: generated shapes (synthetic) and ModelNet-style `.off` meshes.

`SyntheticPointCloudDataModule` -- SYNTHETIC data, generated on the fly, no files. Eight shape classes
(`SHAPES`: sphere, cube, cylinder, cone, torus, pyramid, ellipsoid, helix), points sampled on the surface (the
helix is a thin tube), then a uniformly random rotation, a random isotropic scale in [min_scale, max_scale],
Gaussian jitter of std `noise` and a random number of points in [min_points, max_points]. Sample `i` has label
`i % num_classes` (balanced) and is a pure function of `(seed, i)` for training and of a fixed seed for
validation / test (so evaluation sets do not depend on `seed`); `resample_train=True` draws new training clouds
every epoch.

`ModelNetDataModule` -- meshes in the ModelNet40 layout `root/<class>/{train,test}/*.off` (read by
`perceiver.data.points_off.read_off`: comments, any line endings, polygons, COFF / NOFF columns, ModelNet's
"OFF490 518 0" header); every cloud is `num_points` points sampled uniformly on the surface (area-weighted
triangles), centred and scaled into the unit sphere. A vertex-only `.off` file (no faces: a point cloud) gives
`num_points` of its vertices, or all of them if it has fewer (the batch mask marks them). Training clouds are
resampled every epoch (optionally augmented: rotation about the up axis z, scale, jitter), validation (a
stratified `val_fraction` of `train`, fixed) and test clouds are fixed.

Batch (padded to the largest cloud of the batch):
`{"inputs": float32 (B, P, 3), "mask": bool (B, P) True = real point, "labels": int64 (B,)}`.

Attributes available right after construction: `num_classes`, `class_names`, `max_points` (P of the largest
possible batch), `point_dim = 3`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from perceiver.data._common import BaseDataModule, KeyedDataset, require_dir, sample_rng, stratified_split
from perceiver.data.points_off import (
    check_mesh,
    check_off_header,
    load_off_points,
    normalize_unit_sphere,
    read_off,
    sample_surface,
    write_off,
)

__all__ = [
    "SHAPES",
    "MeshDataset",
    "ModelNetDataModule",
    "SyntheticPointCloudDataModule",
    "SyntheticShapesDataset",
    "collate_points",
    "normalize_unit_sphere",
    "random_rotation",
    "read_off",
    "sample_surface",
    "write_off",
]

EVAL_SEED = 0
SPLIT_SEED = 0
_TRAIN, _VAL, _TEST = 0, 1, 2

# ----------------------------------------------------------------------------------------------- shape generators


def _sphere(rng: np.random.Generator, n: int) -> np.ndarray:
    p = rng.standard_normal((n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def _ellipsoid(rng: np.random.Generator, n: int) -> np.ndarray:
    return _sphere(rng, n) * np.array([1.0, 0.65, 0.4])


def _cube(rng: np.random.Generator, n: int, a: float = 0.6) -> np.ndarray:
    p = rng.uniform(-a, a, size=(n, 3))
    axis = rng.integers(0, 3, size=n)
    p[np.arange(n), axis] = rng.choice([-a, a], size=n)
    return p


def _cylinder(rng: np.random.Generator, n: int, r: float = 0.5, h: float = 0.8) -> np.ndarray:
    side, cap = 2 * np.pi * r * 2 * h, np.pi * r * r
    on_side = rng.random(n) < side / (side + 2 * cap)
    theta = rng.uniform(0, 2 * np.pi, n)
    rad = np.where(on_side, r, r * np.sqrt(rng.random(n)))
    z = np.where(on_side, rng.uniform(-h, h, n), rng.choice([-h, h], size=n))
    return np.stack([rad * np.cos(theta), rad * np.sin(theta), z], axis=1)


def _cone(rng: np.random.Generator, n: int, r: float = 0.7, h: float = 1.4) -> np.ndarray:
    lateral, base = np.pi * r * np.hypot(r, h), np.pi * r * r
    on_side = rng.random(n) < lateral / (lateral + base)
    theta = rng.uniform(0, 2 * np.pi, n)
    s = np.sqrt(rng.random(n))  # uniform area: radius fraction ~ sqrt(U)
    rad = r * s
    z = np.where(on_side, h * (1 - s), 0.0) - h / 3
    return np.stack([rad * np.cos(theta), rad * np.sin(theta), z], axis=1)


def _torus(rng: np.random.Generator, n: int, big: float = 0.75, small: float = 0.25) -> np.ndarray:
    out = np.zeros((0, 3))
    while len(out) < n:  # rejection on the tube angle for a uniform surface density
        u, v = rng.uniform(0, 2 * np.pi, (2, 2 * n))
        keep = rng.random(2 * n) < (big + small * np.cos(v)) / (big + small)
        u, v = u[keep], v[keep]
        ring = big + small * np.cos(v)
        out = np.concatenate([out, np.stack([ring * np.cos(u), ring * np.sin(u), small * np.sin(v)], axis=1)])
    return out[:n]


_PYRAMID_V = np.array([[-0.6, -0.6, -0.45], [0.6, -0.6, -0.45], [0.6, 0.6, -0.45], [-0.6, 0.6, -0.45], [0, 0, 0.75]])
_PYRAMID_F = np.array([[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4], [0, 2, 1], [0, 3, 2]])


def _pyramid(rng: np.random.Generator, n: int) -> np.ndarray:
    return sample_surface(_PYRAMID_V, _PYRAMID_F, n, rng)


def _helix(rng: np.random.Generator, n: int, r: float = 0.6, turns: float = 3.0, tube: float = 0.07) -> np.ndarray:
    t = rng.uniform(0, 2 * np.pi * turns, n)
    centre = np.stack([r * np.cos(t), r * np.sin(t), t / (2 * np.pi * turns) * 1.8 - 0.9], axis=1)
    return centre + tube * _sphere(rng, n)


SHAPES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "sphere": _sphere,
    "cube": _cube,
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
    "pyramid": _pyramid,
    "ellipsoid": _ellipsoid,
    "helix": _helix,
}


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix `(3, 3)` (QR of a Gaussian matrix, signs fixed, det +1)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


class SyntheticShapesDataset(KeyedDataset):
    """Generated clouds: item `i` is `{"inputs": (P_i, 3), "labels": i % len(shapes)}`, a function of
    `(seed, stream, epoch if resample else 0, i)`."""

    def __init__(
        self,
        size: int,
        shapes: list[str],
        seed: int,
        stream: int,
        min_points: int,
        max_points: int,
        noise: float,
        min_scale: float,
        max_scale: float,
        resample: bool = False,
    ) -> None:
        self.size, self.shapes, self.seed, self.stream = size, shapes, seed, stream
        self.min_points, self.max_points, self.noise = min_points, max_points, noise
        self.min_scale, self.max_scale, self.resample = min_scale, max_scale, resample

    def __len__(self) -> int:
        return self.size

    def get(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        rng = sample_rng(self.seed, self.stream, epoch if self.resample else 0, index)
        label = index % len(self.shapes)
        n = int(rng.integers(self.min_points, self.max_points + 1))
        points = SHAPES[self.shapes[label]](rng, n)
        points = points @ random_rotation(rng).T * rng.uniform(self.min_scale, self.max_scale)
        points = points + self.noise * rng.standard_normal(points.shape)
        return {"inputs": torch.from_numpy(points.astype(np.float32)), "labels": torch.tensor(label)}


def collate_points(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad clouds `(P_i, 3)` to `inputs (B, P, 3)` (zeros) with `mask (B, P)` True = real; `labels (B,)`."""
    length = max(len(e["inputs"]) for e in examples)
    inputs = torch.zeros(len(examples), length, 3)
    mask = torch.zeros(len(examples), length, dtype=torch.bool)
    for i, e in enumerate(examples):
        inputs[i, : len(e["inputs"])] = e["inputs"]
        mask[i, : len(e["inputs"])] = True
    return {"inputs": inputs, "mask": mask, "labels": torch.stack([e["labels"] for e in examples])}


class SyntheticPointCloudDataModule(BaseDataModule):
    """SYNTHETIC point-cloud classification on generated shapes (see the module docstring).

    Args:
        num_train, num_val, num_test: number of clouds per split.
        min_points, max_points: range of the number of points per cloud (inclusive).
        noise: std of the Gaussian jitter added to every point.
        min_scale, max_scale: range of the random isotropic scale.
        shapes: subset / order of `SHAPES` to use (default: all eight); labels index this list.
        resample_train: draw new training clouds every epoch instead of a fixed training set.
        batch_size, num_workers, seed: see `BaseDataModule`.
    """

    point_dim = 3

    def __init__(
        self,
        num_train: int = 4000,
        num_val: int = 800,
        num_test: int = 800,
        min_points: int = 256,
        max_points: int = 1024,
        noise: float = 0.01,
        min_scale: float = 0.6,
        max_scale: float = 1.0,
        shapes: list[str] | None = None,
        resample_train: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        shapes = list(SHAPES) if shapes is None else list(shapes)
        unknown = [s for s in shapes if s not in SHAPES]
        if unknown or len(set(shapes)) != len(shapes) or len(shapes) < 2:
            raise ValueError(f"shapes must be >= 2 distinct names from {list(SHAPES)}, got {shapes}")
        if not 1 <= min_points <= max_points:
            raise ValueError(f"need 1 <= min_points <= max_points, got {min_points}, {max_points}")
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        if noise < 0 or min(num_train, num_val, num_test) < 1:
            raise ValueError("noise must be >= 0 and num_train, num_val, num_test >= 1")
        self.class_names = shapes
        self.num_classes = len(shapes)
        self.max_points = max_points
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self._gen: dict[str, Any] = dict(  # keywords of SyntheticShapesDataset
            min_points=min_points, max_points=max_points, noise=noise, min_scale=min_scale, max_scale=max_scale
        )
        self.resample_train = resample_train
        self.collate_fn = collate_points
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        s = self.sizes
        self.train_set = SyntheticShapesDataset(
            s["train"], self.class_names, self.seed, _TRAIN, resample=self.resample_train, **self._gen
        )
        self.val_set = SyntheticShapesDataset(s["val"], self.class_names, EVAL_SEED, _VAL, **self._gen)
        self.test_set = SyntheticShapesDataset(s["test"], self.class_names, EVAL_SEED, _TEST, **self._gen)


# ------------------------------------------------------------------------------------------------ OFF meshes


class MeshDataset(KeyedDataset):
    """`.off` files and labels; item `i` is `num_points` surface samples (`mesh_points`: vertices of a vertex-only
    file) drawn from `(seed, stream, epoch, i)` (epoch ignored unless `resample`), normalised to the unit sphere,
    optionally augmented."""

    def __init__(
        self,
        files: list[Path],
        labels: np.ndarray,
        num_points: int,
        seed: int,
        stream: int,
        resample: bool = False,
        augment: bool = False,
    ) -> None:
        self.files, self.labels, self.num_points = files, labels, num_points
        self.seed, self.stream, self.resample, self.augment = seed, stream, resample, augment

    def __len__(self) -> int:
        return len(self.files)

    def get(self, index: int, epoch: int) -> dict[str, torch.Tensor]:
        rng = sample_rng(self.seed, self.stream, epoch if self.resample else 0, index)
        points = load_off_points(self.files[index], self.num_points, rng)
        if self.augment:
            a = rng.uniform(0, 2 * np.pi)
            rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
            points = (points @ rot.T) * rng.uniform(0.8, 1.25) + 0.01 * rng.standard_normal(points.shape)
        return {"inputs": torch.from_numpy(points.astype(np.float32)), "labels": torch.tensor(int(self.labels[index]))}


class ModelNetDataModule(BaseDataModule):
    """Meshes in the ModelNet40 layout `root/<class>/{train,test}/*.off` (see the module docstring).

    Args:
        root: dataset directory (e.g. the unpacked `ModelNet40`).
        num_points: points sampled per mesh.
        classes: class folders to use (default: every sub-folder of `root`, sorted).
        val_fraction: stratified share of the `train` meshes held out for validation (fixed).
        augment: random rotation about z, scale in [0.8, 1.25] and jitter for training clouds.
        check_files: "parse" (default) reads every mesh once in `setup()` so a corrupt or degenerate (zero-area)
            file fails before training (costs about one epoch of data loading, as training clouds are re-sampled
            from the meshes every epoch), "header" checks only the first line (after comments), "none" skips
            checks (a corrupt file then fails when loaded, still naming the file).
        batch_size, num_workers, seed: see `BaseDataModule`.

    Raises (`FileNotFoundError` / `ValueError` naming the folder or file): a missing `root` (constructor), a class
    folder without `train/*.off` files, a corrupt `.off` file (`setup()`).
    """

    point_dim = 3

    def __init__(
        self,
        root: str,
        num_points: int = 1024,
        classes: list[str] | None = None,
        val_fraction: float = 0.1,
        augment: bool = False,
        check_files: Literal["parse", "header", "none"] = "parse",
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.root = require_dir(root, "ModelNet root")
        if classes is None:
            classes = sorted(
                p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))
            )
        if not classes:
            raise ValueError(f"no class folders in {self.root} (expected root/<class>/train/*.off)")
        if num_points < 1 or not 0.0 < val_fraction < 1.0 or check_files not in ("parse", "header", "none"):
            raise ValueError(
                f"need num_points >= 1, 0 < val_fraction < 1 and check_files in parse/header/none, got "
                f"{num_points}, {val_fraction}, {check_files!r}"
            )
        self.class_names = list(classes)
        self.num_classes = len(classes)
        self.num_points = num_points
        self.max_points = num_points
        self.val_fraction = val_fraction
        self.augment = augment
        self.check_files = check_files
        self.collate_fn = collate_points
        self.save_hyperparameters()

    def list_files(self, split: Literal["train", "test"]) -> tuple[list[Path], np.ndarray]:
        """Sorted `.off` files (any case: `.OFF` too; hidden ones such as macOS's `._x.off` skipped) of `split` and
        their labels; raises if a class has no training meshes."""
        files: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(self.class_names):
            folder = self.root / name / split
            found = sorted(p for p in folder.iterdir() if _is_mesh_file(p)) if folder.is_dir() else []
            if split == "train" and not found:
                raise ValueError(f"class folder {folder} has no .off files")
            files += found
            labels += [label] * len(found)
        return files, np.asarray(labels, dtype=np.int64)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        files, labels = self.list_files("train")
        test_files, test_labels = self.list_files("test")
        for f in files + test_files:
            if self.check_files == "parse":
                check_mesh(f)
            elif self.check_files == "header":
                check_off_header(f)
        keep, held = stratified_split(labels, self.val_fraction, SPLIT_SEED)
        n = self.num_points
        self.train_set = MeshDataset([files[i] for i in keep], labels[keep], n, self.seed, _TRAIN, True, self.augment)
        self.val_set = MeshDataset([files[i] for i in held], labels[held], n, EVAL_SEED, _VAL)
        if test_files:
            self.test_set = MeshDataset(test_files, test_labels, n, EVAL_SEED, _TEST)

    def _require(self, dataset: Any, split: str) -> Any:
        try:
            return super()._require(dataset, split)
        except ValueError:
            if split != "test":
                raise
            raise ValueError(
                f"ModelNetDataModule has no test split: no class folder of {self.root} has test/*.off files "
                f"(the layout is root/<class>/{{train,test}}/*.off)"
            ) from None


def _is_mesh_file(path: Path) -> bool:
    """An `.off` file (any case) that is not hidden (macOS writes `._name.off` resource forks beside the meshes)."""
    return path.suffix.lower() == ".off" and not path.name.startswith(".") and path.is_file()
