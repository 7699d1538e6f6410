"""Optical flow: exact synthetic ground truth, determinism, .flo round trip and errors, Sintel-layout folders."""

import numpy as np
import pytest
import torch
from PIL import Image

from perceiver.data import SintelFlowDataModule, SyntheticFlowDataModule
from perceiver.data._common import SampleKey
from perceiver.data.flow import FLO_MAGIC, SyntheticFlowDataset, backward_warp, read_flo, read_flo_size, write_flo


@pytest.fixture(scope="module")
def synthetic():
    dm = SyntheticFlowDataModule(image_size=(32, 40), num_train=8, num_val=4, num_test=4, max_flow=3.0, batch_size=4)
    dm.setup()
    return dm


def test_synthetic_batch_format(synthetic):
    assert synthetic.image_shape == (32, 40, 3)
    batch = next(iter(synthetic.train_dataloader()))
    assert batch["frames"].shape == (4, 2, 32, 40, 3) and batch["frames"].dtype == torch.float32
    assert batch["flow"].shape == (4, 32, 40, 2) and batch["flow"].dtype == torch.float32
    assert batch["frames"].min() >= 0 and batch["frames"].max() <= 1
    peak = batch["flow"].norm(dim=-1).flatten(1).max(1).values
    assert (peak <= 3.0 + 1e-4).all() and (peak >= 0.2 * 3.0 - 1e-4).all()


def test_synthetic_ground_truth_is_exact(synthetic):
    """Warping frame 2 by the flow reproduces frame 1 wherever p + flow(p) lands inside frame 2."""
    for ds in (synthetic.train_set, synthetic.val_set):
        for i in range(4):
            item = ds[i]
            f1, f2 = (item["frames"][k].permute(2, 0, 1)[None] for k in (0, 1))
            flow = item["flow"]
            rec = backward_warp(f2, flow[None])[0]
            ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(40.0), indexing="ij")
            tx, ty = xs + flow[..., 0], ys + flow[..., 1]
            inside = (tx >= 0) & (tx <= 39) & (ty >= 0) & (ty <= 31)
            assert inside.float().mean() > 0.7
            assert (rec - f1[0]).abs().amax(0)[inside].max() < 1e-4
            # and the frames really differ (the flow is not trivial)
            assert (f1 - f2).abs().mean() > 1e-3
            # the zero flow does not explain frame 1
            assert (f2 - f1).abs().amax(1)[0][inside].mean() > (rec - f1[0]).abs().amax(0)[inside].mean()


def test_warp_convention_on_a_translation():
    """frame2(p + flow(p)) == frame1(p): a scene moving right by 2 px has flow (+2, 0)."""
    frame1 = torch.rand(1, 3, 8, 12)
    frame2 = torch.zeros_like(frame1)
    frame2[..., 2:] = frame1[..., :-2]  # content moved right by 2 px
    flow = torch.zeros(1, 8, 12, 2)
    flow[..., 0] = 2.0
    rec = backward_warp(frame2, flow)
    assert torch.allclose(rec[..., :-2], frame1[..., :-2], atol=1e-6)


def test_synthetic_determinism_and_held_out_region(synthetic):
    same = SyntheticFlowDataModule(image_size=(32, 40), num_train=8, num_val=4, num_test=4, max_flow=3.0)
    other = SyntheticFlowDataModule(image_size=(32, 40), num_train=8, num_val=4, num_test=4, max_flow=3.0, seed=1)
    same.setup(), other.setup()
    assert torch.equal(same.train_set[2]["frames"], synthetic.train_set[2]["frames"])
    assert torch.equal(synthetic.train_set[SampleKey(4, 2)]["flow"], synthetic.train_set[2]["flow"])
    assert not torch.equal(other.train_set[2]["flow"], synthetic.train_set[2]["flow"])
    assert torch.equal(other.val_set[1]["frames"], synthetic.val_set[1]["frames"])  # eval fixed across seeds
    assert not torch.equal(synthetic.val_set[1]["flow"], synthetic.test_set[1]["flow"])
    w = synthetic.train_set.photos.shape[-1]
    assert synthetic.train_set.x1 <= synthetic.val_set.x0 and synthetic.val_set.x1 == w
    assert synthetic.zero_flow_baseline() == pytest.approx(
        float(np.mean([synthetic.val_set[i]["flow"].norm(dim=-1).mean() for i in range(4)]))
    )


def test_synthetic_bad_size():
    with pytest.raises(ValueError, match="too large"):
        SyntheticFlowDataModule(image_size=400, num_train=1).setup()


def test_synthetic_dataset_needs_an_attempt():
    """max_attempts < 1 drew no crop at all: a sample then crashed on None; now the constructor names it."""
    photos = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        SyntheticFlowDataset(photos, 2, (16, 16), 2.0, 0, 0, (0.0, 1.0), max_attempts=0)
    item = SyntheticFlowDataset(photos, 2, (16, 16), 2.0, 0, 0, (0.0, 1.0), max_attempts=1)[0]
    assert item["flow"].shape == (16, 16, 2)


# ------------------------------------------------------------------------------------------------ .flo


def test_flo_round_trip(tmp_path):
    flow = np.random.default_rng(0).standard_normal((5, 7, 2)).astype(np.float32)
    write_flo(tmp_path / "a.flo", flow)
    raw = (tmp_path / "a.flo").read_bytes()
    assert np.frombuffer(raw[:4], "<f4")[0] == FLO_MAGIC and np.frombuffer(raw[4:12], "<i4").tolist() == [7, 5]
    assert np.array_equal(read_flo(tmp_path / "a.flo"), flow)
    assert read_flo_size(tmp_path / "a.flo") == (5, 7)
    write_flo(tmp_path / "b.flo", torch.from_numpy(flow))
    assert (tmp_path / "b.flo").read_bytes() == raw


@pytest.mark.parametrize(
    "name, payload, match",
    [
        ("magic.flo", np.array([1.0, 0, 0], "<f4").tobytes(), "magic"),
        ("short.flo", np.array([FLO_MAGIC], "<f4").tobytes(), "truncated"),
        (
            "truncated.flo",
            np.array([FLO_MAGIC], "<f4").tobytes() + np.array([4, 4], "<i4").tobytes() + bytes(40),
            "truncated",
        ),
        ("size.flo", np.array([FLO_MAGIC], "<f4").tobytes() + np.array([0, 4], "<i4").tobytes(), "invalid size"),
        (
            "trailing.flo",
            np.array([FLO_MAGIC], "<f4").tobytes() + np.array([1, 1], "<i4").tobytes() + bytes(12),
            "trailing",
        ),
    ],
)
def test_flo_errors_name_the_file(tmp_path, name, payload, match):
    (tmp_path / name).write_bytes(payload)
    for reader in (read_flo, read_flo_size):
        with pytest.raises(ValueError, match=match) as e:
            reader(tmp_path / name)
        assert name in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.flo"):
        read_flo(tmp_path / "missing.flo")


# ------------------------------------------------------------------------------------------------ Sintel


def make_sintel(root, scenes=("alley_1", "bamboo_1", "cave_2"), frames=3, h=12, w=16):
    rng = np.random.default_rng(0)
    for scene in scenes:
        (root / "training" / "clean" / scene).mkdir(parents=True)
        (root / "training" / "flow" / scene).mkdir(parents=True)
        for i in range(1, frames + 1):
            img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
            Image.fromarray(img).save(root / "training" / "clean" / scene / f"frame_{i:04d}.png")
            if i < frames:
                write_flo(root / "training" / "flow" / scene / f"frame_{i:04d}.flo", rng.standard_normal((h, w, 2)))
    return root


def test_sintel_datamodule(tmp_path):
    root = make_sintel(tmp_path / "Sintel")
    dm = SintelFlowDataModule(str(root), batch_size=2, val_scenes=["cave_2"])
    assert dm.image_shape == (12, 16, 3) and dm.train_scenes == ["alley_1", "bamboo_1"]
    dm.setup()
    assert len(dm.train_set) == 4 and len(dm.val_set) == 2 and dm.test_set is dm.val_set
    batch = next(iter(dm.val_dataloader()))
    assert batch["frames"].shape == (2, 2, 12, 16, 3) and batch["flow"].shape == (2, 12, 16, 2)
    p1, p2, flo = dm.val_set.pairs[0]
    assert (p1.name, p2.name, flo.name) == ("frame_0001.png", "frame_0002.png", "frame_0001.flo")
    assert torch.equal(batch["flow"][0], torch.from_numpy(read_flo(flo)))
    expected = np.asarray(Image.open(p2), dtype=np.float32) / 255
    assert torch.allclose(batch["frames"][0, 1], torch.from_numpy(expected))

    crop = SintelFlowDataModule(str(root), batch_size=2, crop_size=(8, 10), flip=True)
    assert crop.image_shape == (8, 10, 3) and len(crop.val_scenes) == 1  # default: a fixed fraction of scenes
    crop.setup()
    b = next(iter(crop.train_dataloader()))
    assert b["frames"].shape == (2, 2, 8, 10, 3) and b["flow"].shape == (2, 8, 10, 2)
    v = crop.val_set[0]
    full = torch.from_numpy(read_flo(crop.val_set.pairs[0][2]))
    assert torch.equal(v["flow"], full[2:10, 3:13])  # centre crop


def test_sintel_flip_negates_dx(tmp_path):
    root = make_sintel(tmp_path / "S", scenes=("a", "b"), frames=2)
    dm = SintelFlowDataModule(str(root), val_scenes=["b"], flip=True)
    dm.setup()
    full = torch.from_numpy(read_flo(dm.train_set.pairs[0][2]))
    seen = set()
    for epoch in range(12):
        f = dm.train_set[SampleKey(epoch, 0)]["flow"]
        if torch.equal(f, full):
            seen.add("same")
        else:
            assert torch.equal(f[..., 0], -full.flip(1)[..., 0]) and torch.equal(f[..., 1], full.flip(1)[..., 1])
            seen.add("flipped")
    assert seen == {"same", "flipped"}


def test_sintel_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SintelFlowDataModule(str(tmp_path / "nowhere"))
    root = make_sintel(tmp_path / "S1")
    (root / "training" / "clean" / "bamboo_1" / "frame_0003.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"bamboo_1.frame_0003\.png"):
        SintelFlowDataModule(str(root)).setup()

    root = make_sintel(tmp_path / "S2")
    bad = root / "training" / "clean" / "alley_1" / "frame_0002.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    with pytest.raises(ValueError, match=r"alley_1.frame_0002\.png"):
        SintelFlowDataModule(str(root)).setup()

    root = make_sintel(tmp_path / "S3")
    flo = root / "training" / "flow" / "cave_2" / "frame_0002.flo"
    flo.write_bytes(b"XXXX" + flo.read_bytes()[4:])  # the valid magic reads "PIEH"
    with pytest.raises(ValueError, match=r"cave_2.frame_0002\.flo"):
        SintelFlowDataModule(str(root)).setup()

    root = make_sintel(tmp_path / "S4")
    write_flo(root / "training" / "flow" / "alley_1" / "frame_0001.flo", np.zeros((5, 5, 2)))
    with pytest.raises(ValueError, match=r"alley_1.frame_0001\.flo.*5x5"):
        SintelFlowDataModule(str(root)).setup()


def test_sintel_unknown_flow_is_masked_in_data_and_left_out_of_the_loss(tmp_path):
    """Middlebury's ground truth marks unknown flow (occlusions, the border) with 1e10: it must neither reach the
    loss nor the metrics (before, one such pixel made the EPE ~1e10 / pixels and drove the gradients)."""
    import lightning as L

    from perceiver.training import FlowTask

    root = make_sintel(tmp_path / "S", scenes=("a", "b"), frames=2, h=8, w=10)
    for scene in ("a", "b"):
        flo = root / "training" / "flow" / scene / "frame_0001.flo"
        flow = read_flo(flo)
        flow[0, :3] = 1e10  # UNKNOWN_FLOW_THRESH = 1e9 in Middlebury's flow-code
        flow[7, 9, 1] = np.nan
        write_flo(flo, flow)
    dm = SintelFlowDataModule(str(root), val_scenes=["b"], batch_size=1, flip=True)
    dm.setup()
    full = read_flo(dm.val_set.pairs[0][2])
    item = dm.val_set[0]
    assert item["valid"].dtype == torch.bool and item["valid"].shape == (8, 10)
    assert not item["valid"][0, :3].any() and not item["valid"][7, 9] and int(item["valid"].sum()) == 76
    assert (item["flow"][~item["valid"]] == 0).all() and torch.isfinite(item["flow"]).all()
    assert torch.equal(item["flow"][item["valid"]], torch.from_numpy(full)[item["valid"].numpy()])
    for epoch in range(4):  # crops and flips keep flow and mask aligned
        tr = dm.train_set[SampleKey(epoch, 0)]
        assert (tr["flow"][~tr["valid"]] == 0).all() and int(tr["valid"].sum()) == 76
        assert tr["valid"][0, :3].all() != tr["valid"][0, -3:].all()  # the unknown run is at one end of row 0

    kw = dict(train_size=(8, 10), num_bands=2, out_channels=8, num_latents=4, latent_dim=16, num_blocks=1)
    task = FlowTask(model="optical-flow-perceiver", model_kwargs=kw | dict(num_self_attends_per_block=1))
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path / "run"),
    )  # fmt: skip
    trainer.fit(task, datamodule=dm)
    metrics = trainer.callback_metrics
    gt = torch.from_numpy(full)[item["valid"].numpy()]
    assert float(metrics["val/epe_zero"]) == pytest.approx(float(gt.norm(dim=-1).mean()), rel=1e-4)
    assert float(metrics["val/epe"]) < 10 and float(metrics["train/loss_epoch"]) < 10


def test_sintel_crop_and_frame_sizes_are_checked_in_setup(tmp_path):
    """A crop larger than some scene's frames, or scenes of different sizes without a crop, used to fail at the
    first batch of training (a crop error, or torch's "stack expects each tensor to be equal size")."""
    root = make_sintel(tmp_path / "S", scenes=("big", "small"), frames=2, h=12, w=16)
    make_sintel(tmp_path / "T", scenes=("small",), frames=2, h=9, w=11)
    for kind in ("clean", "flow"):
        target = root / "training" / kind / "small"
        for p in target.iterdir():
            p.unlink()
        for p in (tmp_path / "T" / "training" / kind / "small").iterdir():
            p.rename(target / p.name)
    with pytest.raises(ValueError, match=r"crop_size \(10, 12\) is larger than the 9x11 frames of .*small"):
        SintelFlowDataModule(str(root), crop_size=(10, 12), val_scenes=["small"]).setup()
    with pytest.raises(ValueError, match=r"different sizes \(12x16 .*9x11 .*set crop_size \(at most 9x11\)"):
        SintelFlowDataModule(str(root), val_scenes=["small"], batch_size=2).setup()
    dm = SintelFlowDataModule(str(root), crop_size=(8, 10), val_scenes=["small"], batch_size=2)
    dm.setup()
    assert next(iter(dm.val_dataloader()))["frames"].shape == (1, 2, 8, 10, 3)
    SintelFlowDataModule(str(root), val_scenes=["small"], batch_size=1).setup()  # one pair per batch: any sizes


def test_sintel_single_scene_needs_explicit_val_scenes(tmp_path):
    """One scene used to give no validation split silently, then "has no val split (see its constructor
    arguments)" when training started."""
    root = make_sintel(tmp_path / "S", scenes=("alley_1",))
    with pytest.raises(ValueError, match=r"one scene \(alley_1\).*val_scenes: \[\]"):
        SintelFlowDataModule(str(root))
    dm = SintelFlowDataModule(str(root), val_scenes=[])
    dm.setup()
    assert len(dm.train_set) == 2 and dm.val_set is None
