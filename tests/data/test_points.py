"""Point clouds: synthetic shapes (shapes, masks, determinism, labels) and ModelNet-style OFF meshes."""

import numpy as np
import pytest
import torch

from perceiver.data import ModelNetDataModule, SyntheticPointCloudDataModule
from perceiver.data._common import SampleKey
from perceiver.data.points import SHAPES, normalize_unit_sphere, read_off, sample_surface, write_off

CUBE_V = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
CUBE_F = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                   [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])  # fmt: skip
TETRA_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
TETRA_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


# ------------------------------------------------------------------------------------------------ synthetic


def test_synthetic_batches_shapes_masks_labels():
    dm = SyntheticPointCloudDataModule(
        num_train=32, num_val=16, num_test=16, min_points=20, max_points=60, batch_size=16
    )
    assert dm.num_classes == 8 == len(dm.class_names) and set(dm.class_names) == set(SHAPES)
    assert {"sphere", "cube", "cylinder", "cone", "torus"} <= set(dm.class_names)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    x, mask, y = batch["inputs"], batch["mask"], batch["labels"]
    assert x.dtype == torch.float32 and mask.dtype == torch.bool and y.dtype == torch.long
    assert x.shape[:2] == mask.shape and x.shape[0] == 16 and x.shape[2] == 3 and 20 <= x.shape[1] <= 60
    counts = mask.sum(1)
    assert counts.min() >= 20 and counts.max() == x.shape[1] and len(set(counts.tolist())) > 1  # variable count
    assert (x[~mask] == 0).all() and (mask[:, :-1].int() >= mask[:, 1:].int()).all()  # right padding
    assert y.min() >= 0 and y.max() < 8
    labels = torch.cat([b["labels"] for b in dm.val_dataloader()])
    assert torch.bincount(labels, minlength=8).tolist() == [2] * 8  # balanced


def test_synthetic_deterministic_per_index_and_eval_independent_of_seed():
    kw = dict(num_train=8, num_val=8, num_test=8, min_points=10, max_points=40)
    a, b, c = (SyntheticPointCloudDataModule(seed=s, **kw) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.train_set[3]["inputs"], b.train_set[3]["inputs"])
    assert torch.equal(a.train_set[SampleKey(5, 3)]["inputs"], a.train_set[3]["inputs"])  # fixed across epochs
    assert not torch.equal(a.train_set[3]["inputs"][:5], c.train_set[3]["inputs"][:5])  # seed changes training data
    assert torch.equal(a.val_set[2]["inputs"], c.val_set[2]["inputs"])  # not evaluation data
    assert not torch.equal(a.val_set[2]["inputs"][:5], a.test_set[2]["inputs"][:5])
    r = SyntheticPointCloudDataModule(resample_train=True, **kw)
    r.setup()
    assert not torch.equal(r.train_set[SampleKey(1, 3)]["inputs"][:5], r.train_set[SampleKey(0, 3)]["inputs"][:5])


def test_synthetic_shapes_geometry():
    rng = np.random.default_rng(0)
    sphere = SHAPES["sphere"](rng, 500)
    assert np.allclose(np.linalg.norm(sphere, axis=1), 1.0)
    cube = SHAPES["cube"](rng, 500)
    assert np.allclose(np.abs(cube).max(axis=1), 0.6)  # every point on a face
    for name, fn in SHAPES.items():
        p = fn(rng, 300)
        assert p.shape == (300, 3) and np.isfinite(p).all(), name
        assert 0.3 < np.linalg.norm(p, axis=1).max() < 1.3, name


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="shapes"):
        SyntheticPointCloudDataModule(shapes=["sphere", "blob"])
    with pytest.raises(ValueError, match="min_points"):
        SyntheticPointCloudDataModule(min_points=100, max_points=10)


# ------------------------------------------------------------------------------------------------ OFF files


def test_off_round_trip_and_modelnet_quirk(tmp_path):
    for quirk in (False, True):
        p = tmp_path / f"cube{quirk}.off"
        write_off(p, CUBE_V, CUBE_F, modelnet_quirk=quirk)
        assert p.read_text().startswith("OFF8 12 0\n" if quirk else "OFF\n8 12 0\n")
        v, f = read_off(p)
        assert v.dtype == np.float32 and f.dtype == np.int64
        assert np.allclose(v, CUBE_V) and (f == CUBE_F).all()


def test_off_comments_quads_and_colours(tmp_path):
    p = tmp_path / "quad.off"
    p.write_text("# a comment\nOFF\n\n4 1 0  # counts\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3 255 0 0\n")
    v, f = read_off(p)
    assert v.shape == (4, 3) and f.tolist() == [[0, 1, 2], [0, 2, 3]]
    pts = sample_surface(v, f, 2000, np.random.default_rng(0))
    assert np.allclose(pts[:, 2], 0) and pts[:, :2].min() >= 0 and pts[:, :2].max() <= 1
    assert abs(pts[:, 0].mean() - 0.5) < 0.03  # uniform over the unit square


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("header.off", "PLY\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", "first line"),
        ("counts.off", "OFF\nthree 1 0\n", "vertex_count"),
        ("truncated.off", "OFF\n3 1 0\n0 0 0\n1 0 0\n", "truncated"),
        ("index.off", "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n", "out of range"),
        ("garbage.off", "OFF\n3 1 0\n0 0 0\n1 zero 0\n0 1 0\n3 0 1 2\n", "corrupt"),
        ("empty.off", "", "first line"),
    ],
)
def test_off_corrupt_files_name_the_file(tmp_path, name, text, match):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        read_off(p)
    assert name in str(e.value)


def test_off_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.off"):
        read_off(tmp_path / "nothing.off")


def test_sampling_is_area_weighted_and_normalised():
    # two triangles, one 9x the area of the other
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 3, 0]], dtype=float)
    f = np.array([[0, 1, 2], [3, 4, 5]])
    pts = sample_surface(v, f, 5000, np.random.default_rng(0))
    assert abs((pts[:, 0] >= 10).mean() - 0.9) < 0.02
    unit = normalize_unit_sphere(pts)
    assert np.allclose(unit.mean(0), 0, atol=1e-9) and np.isclose(np.linalg.norm(unit, axis=1).max(), 1.0)


# ------------------------------------------------------------------------------------------------ ModelNet


def make_modelnet(root, per_class=6):
    for name, (v, f) in {"cube": (CUBE_V, CUBE_F), "tetra": (TETRA_V, TETRA_F)}.items():
        for split, n in (("train", per_class), ("test", 2)):
            d = root / name / split
            d.mkdir(parents=True)
            for i in range(n):
                write_off(d / f"{name}_{i:04d}.off", v * (1 + i), f, modelnet_quirk=i % 2 == 0)
    return root


def test_modelnet_datamodule(tmp_path):
    root = make_modelnet(tmp_path / "ModelNet")
    dm = ModelNetDataModule(str(root), num_points=64, batch_size=4)
    assert dm.class_names == ["cube", "tetra"] and dm.num_classes == 2 and dm.max_points == 64
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (10, 2, 4)
    assert not set(dm.train_set.files) & set(dm.val_set.files)
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (4, 64, 3) and batch["mask"].all() and batch["labels"].dtype == torch.long
    norms = batch["inputs"].norm(dim=-1)
    assert torch.allclose(norms.max(1).values, torch.ones(4), atol=1e-5)
    t = dm.test_set
    assert torch.equal(t[1]["inputs"], t[1]["inputs"])  # fixed test clouds
    tr = dm.train_set
    assert not torch.equal(tr[SampleKey(0, 1)]["inputs"], tr[SampleKey(1, 1)]["inputs"])  # resampled per epoch
    assert sorted(torch.cat([b["labels"] for b in dm.test_dataloader()]).tolist()) == [0, 0, 1, 1]


def test_modelnet_errors_name_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ModelNetDataModule(str(tmp_path / "missing"))
    root = make_modelnet(tmp_path / "mn")
    (root / "chair" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"chair.train has no \.off files"):
        ModelNetDataModule(str(root)).setup()
    (root / "chair" / "train" / "chair_0001.off").write_text("OFF\n8 12 0\n0 0 0\n")
    with pytest.raises(ValueError, match="chair_0001.off"):
        ModelNetDataModule(str(root)).setup()
    (root / "chair" / "train" / "chair_0001.off").write_text("OFX\n8 12 0\n0 0 0\n")
    with pytest.raises(ValueError, match="chair_0001.off"):
        ModelNetDataModule(str(root), check_files="header").setup()


def test_off_byte_order_mark_non_ascii_comments_and_any_line_endings(tmp_path):
    body = "OFF\n4 1 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n"
    cases = {
        "bom.off": "\ufeff# exported by MeshLab\n" + body,  # Windows tools write a UTF-8 byte order mark
        "utf8.off": "# © 2024 Müller\n" + body.replace("0 1 0\n4", "0 1 0  # Ecke\n4"),
        "latin1.off": ("# créé\n" + body).encode("latin-1"),
        "crlf.off": body.replace("\n", "\r\n"),
        "cr.off": body.replace("\n", "\r"),  # classic Mac OS
    }
    for name, text in cases.items():
        p = tmp_path / name
        p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        v, f = read_off(p)
        assert v.shape == (4, 3) and f.tolist() == [[0, 1, 2], [0, 2, 3]], name
        assert np.allclose(v[2], [1, 1, 0]), name


def test_off_binary_is_named(tmp_path):
    p = tmp_path / "bin.off"
    p.write_bytes(b"OFF BINARY\n\x00\x00\x00\x03\x00\x00\x00\x01")
    with pytest.raises(ValueError, match=r"bin\.off.*binary"):
        read_off(p)


def test_modelnet_header_check_skips_comments_and_takes_upper_case_suffix(tmp_path):
    root = make_modelnet(tmp_path / "mn", per_class=3)
    for p in (root / "cube" / "train").iterdir():
        p.write_text("# cube from Blender\n\n" + p.read_text())
    (root / "tetra" / "train" / "tetra_0000.off").rename(root / "tetra" / "train" / "TETRA_0000.OFF")
    (root / "__MACOSX" / "cube").mkdir(parents=True)  # what macOS zips add: not a class
    (root / "cube" / "train" / "._cube_0000.off").write_bytes(b"\x00\x05\x16\x07 resource fork")  # nor a mesh
    dm = ModelNetDataModule(str(root), num_points=16, check_files="header", val_fraction=0.3)
    assert dm.class_names == ["cube", "tetra"]
    dm.setup()
    files = dm.train_set.files + dm.val_set.files
    assert len(files) == 6 and any(p.name == "TETRA_0000.OFF" for p in files)


def test_modelnet_vertex_only_files_are_point_clouds(tmp_path):
    root = make_modelnet(tmp_path / "mn", per_class=3)
    rng = np.random.default_rng(0)
    for i, n in enumerate((10, 100, 10)):  # "OFF\nN 0 0": a scanned / exported point cloud without faces
        write_off(root / "cube" / "train" / f"cloud_{i}.off", rng.uniform(-3, 5, (n, 3)), np.zeros((0, 3), int))
    dm = ModelNetDataModule(str(root), num_points=64, batch_size=16, val_fraction=0.3)
    dm.setup()
    clouds = [dm.train_set[i]["inputs"] for i, p in enumerate(dm.train_set.files) if p.name.startswith("cloud")]
    clouds += [dm.val_set[i]["inputs"] for i, p in enumerate(dm.val_set.files) if p.name.startswith("cloud")]
    assert sorted(len(c) for c in clouds) == [10, 10, 64]  # all vertices, or num_points distinct ones
    for c in clouds:
        assert torch.isclose(c.norm(dim=-1).max(), torch.tensor(1.0)) and len(torch.unique(c, dim=0)) == len(c)
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape[1] == 64 and batch["mask"].sum(1).tolist().count(10) >= 1


def test_modelnet_degenerate_mesh_fails_in_setup(tmp_path):
    root = make_modelnet(tmp_path / "mn", per_class=3)
    line = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=float)  # collinear: every face has zero area
    write_off(root / "cube" / "train" / "flat_0001.off", line, np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match=r"flat_0001\.off.*no area"):
        ModelNetDataModule(str(root), num_points=8).setup()


def test_modelnet_without_test_folders_says_where_test_meshes_go(tmp_path):
    root = make_modelnet(tmp_path / "mn", per_class=3)
    for name in ("cube", "tetra"):
        for p in (root / name / "test").iterdir():
            p.unlink()
    dm = ModelNetDataModule(str(root), num_points=8)
    with pytest.raises(ValueError, match=r"no test split: no class folder of .*mn has test/\*\.off files"):
        dm.test_dataloader()


def test_load_off_points_is_the_datamodules_cloud(tmp_path):
    """One OFF -> cloud path for the datamodule and for predicting on a single file."""
    from perceiver.data._common import sample_rng
    from perceiver.data.points_off import load_off_points

    root = make_modelnet(tmp_path / "mn", per_class=3)
    dm = ModelNetDataModule(str(root), num_points=32)
    dm.setup()
    path = dm.test_set.files[1]
    expected = dm.test_set[1]["inputs"]
    got = load_off_points(path, 32, sample_rng(dm.test_set.seed, dm.test_set.stream, 0, 1))
    assert got.shape == (32, 3) and torch.equal(torch.from_numpy(got.astype(np.float32)), expected)
    assert np.array_equal(load_off_points(path, 32, 7), load_off_points(path, 32, 7))  # a seed: fixed cloud
    (tmp_path / "flat.off").write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n2 0 0\n3 0 1 2\n")
    with pytest.raises(ValueError, match=r"flat\.off.*positive area"):
        load_off_points(tmp_path / "flat.off", 8)
