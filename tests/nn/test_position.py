"""Fourier position encodings (both conventions) against hand-computed values; caching; trainable encodings."""

import math

import pytest
import torch

from perceiver.nn import (
    FourierPositionEncoding,
    TrainablePositionEncoding,
    axial_fourier_features,
    fourier_channels,
    fourier_features,
    linear_positions,
)

R = math.sqrt(2) / 2

# ----------------------------------------------------------------------------- DeepMind / HF: [pos | sin | cos]

# 1-D, 3 positions (-1, 0, 1), 2 bands linspace(1, 3 / 2, 2) = (1, 1.5):
# columns [p, sin(pi p), sin(1.5 pi p), cos(pi p), cos(1.5 pi p)]
DM_1D_3 = [
    [-1.0, 0.0, 1.0, -1.0, 0.0],
    [0.0, 0.0, 0.0, 1.0, 1.0],
    [1.0, 0.0, -1.0, -1.0, 0.0],
]
# 1-D, 5 positions (-1, -0.5, 0, 0.5, 1), 2 bands linspace(1, 5 / 2, 2) = (1, 2.5):
# columns [p, sin(pi p), sin(2.5 pi p), cos(pi p), cos(2.5 pi p)]
DM_1D_5 = [
    [-1.0, 0.0, -1.0, -1.0, 0.0],
    [-0.5, -1.0, R, 0.0, -R],
    [0.0, 0.0, 0.0, 1.0, 1.0],
    [0.5, 1.0, -R, 0.0, -R],
    [1.0, 0.0, 1.0, -1.0, 0.0],
]
# 2-D grid (2, 3), max_resolution (3, 5): bands axis 0 = (1, 1.5), axis 1 = (1, 2.5); bands are axis-major:
# [p0, p1 | sin(pi p0), sin(1.5 pi p0), sin(pi p1), sin(2.5 pi p1) | cos(...) in the same order]
DM_2D = [
    [[-1.0, -1.0, 0.0, 1.0, 0.0, -1.0, -1.0, 0.0, -1.0, 0.0],
     [-1.0, 0.0, 0.0, 1.0, 0.0, 0.0, -1.0, 0.0, 1.0, 1.0],
     [-1.0, 1.0, 0.0, 1.0, 0.0, 1.0, -1.0, 0.0, -1.0, 0.0]],
    [[1.0, -1.0, 0.0, -1.0, 0.0, -1.0, -1.0, 0.0, -1.0, 0.0],
     [1.0, 0.0, 0.0, -1.0, 0.0, 0.0, -1.0, 0.0, 1.0, 1.0],
     [1.0, 1.0, 0.0, -1.0, 0.0, 1.0, -1.0, 0.0, -1.0, 0.0]],
]  # fmt: skip


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected), atol=1e-6, rtol=0)


def test_linear_positions_grid():
    close(linear_positions([3]), [[-1.0], [0.0], [1.0]])
    close(linear_positions([2, 3]), [[[-1.0, -1.0], [-1.0, 0.0], [-1.0, 1.0]], [[1.0, -1.0], [1.0, 0.0], [1.0, 1.0]]])


@pytest.mark.parametrize(("n", "expected"), [(3, DM_1D_3), (5, DM_1D_5)])
def test_deepmind_fourier_1d_hand_computed(n, expected):
    close(fourier_features(linear_positions([n]), num_bands=2, max_resolution=[n]), expected)
    # The module uses the grid shape as max_resolution by default.
    close(FourierPositionEncoding(num_bands=2)((n,)), expected)


def test_deepmind_fourier_2d_hand_computed():
    close(fourier_features(linear_positions([2, 3]), num_bands=2, max_resolution=[3, 5]), DM_2D)
    close(FourierPositionEncoding(num_bands=2, max_resolution=(3, 5))((2, 3)), DM_2D)


def test_deepmind_fourier_switches():
    expected = torch.tensor(DM_2D)
    pos = linear_positions([2, 3])
    sine_only = fourier_features(pos, 2, [3, 5], sine_only=True)
    torch.testing.assert_close(sine_only, expected[..., :6], atol=1e-6, rtol=0)
    no_pos = fourier_features(pos, 2, [3, 5], concat_pos=False)
    torch.testing.assert_close(no_pos, expected[..., 2:], atol=1e-6, rtol=0)
    bare = FourierPositionEncoding(2, max_resolution=(3, 5), concat_pos=False, sine_only=True)((2, 3))
    torch.testing.assert_close(bare, expected[..., 2:6], atol=1e-6, rtol=0)


def test_deepmind_fourier_needs_one_resolution_per_axis():
    with pytest.raises(ValueError, match=r"\(3,\)"):
        fourier_features(linear_positions([2, 3]), 2, [3])


def test_deepmind_fourier_matches_hf_transformers():
    hf = pytest.importorskip("transformers.models.perceiver.modeling_perceiver")
    pos = hf.build_linear_positions((4, 6))  # (4, 6, 2)
    for concat_pos in (True, False):
        for sine_only in (True, False):
            expected = hf.generate_fourier_features(pos.reshape(1, -1, 2), 5, (7, 9), concat_pos, sine_only)
            ours = FourierPositionEncoding(5, (7, 9), concat_pos, sine_only)((4, 6))
            torch.testing.assert_close(ours.reshape(24, -1), expected.reshape(24, -1), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- perceiver-pytorch: [sin | cos | x]

# 1-D, 3 positions, max_freq 3 -> bands linspace(1, 1.5, 2): [sin(pi p), sin(1.5 pi p), cos(pi p), cos(1.5 pi p), p]
PP_1D_3 = [
    [0.0, 1.0, -1.0, 0.0, -1.0],
    [0.0, 0.0, 1.0, 1.0, 0.0],
    [0.0, -1.0, -1.0, 0.0, 1.0],
]
# 1-D, 5 positions, max_freq 5 -> bands (1, 2.5)
PP_1D_5 = [
    [0.0, -1.0, -1.0, 0.0, -1.0],
    [-1.0, R, 0.0, -R, -0.5],
    [0.0, 0.0, 1.0, 1.0, 0.0],
    [1.0, -R, 0.0, -R, 0.5],
    [0.0, 1.0, -1.0, 0.0, 1.0],
]
# 2-D grid (2, 3), max_freq 3: per position [block(p0) | block(p1)], block as in PP_1D_3, axis 0 in {-1, 1}.
PP_2D = [[PP_1D_3[i] + PP_1D_3[j] for j in range(3)] for i in (0, 2)]


@pytest.mark.parametrize(("n", "max_freq", "expected"), [(3, 3.0, PP_1D_3), (5, 5.0, PP_1D_5)])
def test_axial_fourier_1d_hand_computed(n, max_freq, expected):
    close(axial_fourier_features(linear_positions([n]), num_bands=2, max_freq=max_freq), expected)
    close(FourierPositionEncoding(num_bands=2, max_freq=max_freq)((n,)), expected)


def test_axial_fourier_2d_hand_computed():
    assert PP_2D[1][0] == [0.0, -1.0, -1.0, 0.0, 1.0, 0.0, 1.0, -1.0, 0.0, -1.0]  # (p0, p1) = (1, -1) spelled out
    close(axial_fourier_features(linear_positions([2, 3]), num_bands=2, max_freq=3.0), PP_2D)
    close(FourierPositionEncoding(num_bands=2, max_freq=3.0)((2, 3)), PP_2D)


def test_axial_fourier_matches_perceiver_pytorch():
    pp = pytest.importorskip("perceiver_pytorch.perceiver_pytorch")
    pos = linear_positions([3, 4, 5])
    expected = pp.fourier_encode(pos, 10.0, 6).flatten(-2)  # how perceiver-pytorch builds its input channels
    torch.testing.assert_close(axial_fourier_features(pos, 6, 10.0), expected, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- channel counts


@pytest.mark.parametrize("axes", [1, 2, 3])
@pytest.mark.parametrize("bands", [1, 4])
@pytest.mark.parametrize(("concat_pos", "sine_only"), [(True, False), (False, False), (True, True), (False, True)])
def test_channel_counts(axes, bands, concat_pos, sine_only):
    dims = (3, 2, 4)[:axes]
    expected = axes * ((1 if concat_pos else 0) + bands * (1 if sine_only else 2))
    assert fourier_channels(axes, bands, concat_pos, sine_only) == expected
    enc = FourierPositionEncoding(bands, concat_pos=concat_pos, sine_only=sine_only)
    assert enc.num_channels(axes) == expected
    assert enc(dims).shape == (*dims, expected)
    axial = FourierPositionEncoding(bands, max_freq=7.0)
    assert axial.num_channels(axes) == axes * (2 * bands + 1)
    assert axial(dims).shape == (*dims, axes * (2 * bands + 1))


# ----------------------------------------------------------------------------- per-call features


def test_features_follow_the_shape_asked_for():
    enc = FourierPositionEncoding(num_bands=3, max_freq=8.0)
    first = enc((4, 5))
    torch.testing.assert_close(enc([4, 5]), first, atol=0, rtol=0)  # any sequence type
    other = enc((4, 6))
    assert other.shape == (4, 6, 14)
    torch.testing.assert_close(other, enc.build((4, 6)), atol=0, rtol=0)
    torch.testing.assert_close(enc((4, 5)), first, atol=0, rtol=0)


def test_features_built_in_fp32_then_cast_and_not_saved():
    enc = FourierPositionEncoding(num_bands=3, max_freq=8.0)
    fp32 = enc((4, 5))
    bf16 = enc((4, 5), dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16, fp32.bfloat16(), atol=0, rtol=0)  # built in fp32, then cast
    assert enc.state_dict() == {}  # non-persistent: never written to a checkpoint


def test_concurrent_calls_with_different_shapes_agree_with_serial_ones():
    """No per-shape state: threads asking for different grids at the same time get their own features."""
    from concurrent.futures import ThreadPoolExecutor

    enc = FourierPositionEncoding(num_bands=3, max_freq=8.0)
    shapes = [(4, 5), (6, 3), (2, 9), (7, 7)] * 25
    expected = {s: enc.build(s) for s in set(shapes)}
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(enc, shapes))
    for shape, got in zip(shapes, results):
        torch.testing.assert_close(got, expected[shape], atol=0, rtol=0)


def test_cache_follows_module_dtype_and_survives_weight_averaging():
    """EMA / SWA (`AveragedModel`, Lightning's WeightAveraging) copy buffers between a deep copy made before any
    forward and the live model: the cache must not be a buffer whose shape changes."""
    from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

    import perceiver

    model = perceiver.Perceiver(input_channels=1, input_axis=2, num_freq_bands=2, max_freq=4.0, depth=1,
                                num_latents=4, latent_dim=8, latent_heads=2, latent_dim_head=4, cross_dim_head=4,
                                num_classes=3)  # fmt: skip
    ema = AveragedModel(model, avg_fn=get_ema_avg_fn(0.9), use_buffers=True)
    model(torch.rand(2, 8, 8, 1)).sum().backward()  # builds the cache for 8x8
    ema.update_parameters(model)
    ema.update_parameters(model)
    assert ema(torch.rand(2, 8, 8, 1)).shape == (2, 3)
    enc = FourierPositionEncoding(num_bands=3, max_freq=8.0).to(torch.bfloat16)
    assert enc((4, 5)).dtype == torch.bfloat16


# ----------------------------------------------------------------------------- trainable


def test_trainable_encoding_forward():
    enc = TrainablePositionEncoding(10, 6)
    assert enc.num_positions == 10
    assert enc() is enc.position_embeddings
    torch.testing.assert_close(enc(4), enc.position_embeddings[:4], atol=0, rtol=0)
    with pytest.raises(ValueError, match="10.*11"):
        enc(11)
    with pytest.raises(ValueError):
        TrainablePositionEncoding(0, 6)


def test_trainable_interpolation_identity_for_same_grid():
    enc = TrainablePositionEncoding(12, 5)
    assert enc.interpolate((3, 4), (3, 4)) is enc.position_embeddings


def test_trainable_interpolation_to_new_grid():
    enc = TrainablePositionEncoding(6, 4)
    with torch.no_grad():  # a table that varies along grid axis 0 only: rows of the (2, 3) grid
        enc.position_embeddings.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])[:, None].expand(6, 4))
    out = enc.interpolate((2, 3), (4, 5))
    assert out.shape == (20, 4)
    grid = out.reshape(4, 5, 4)
    torch.testing.assert_close(grid, grid[:, :1].expand_as(grid), atol=1e-6, rtol=0)  # still constant along axis 1
    assert grid[0, 0, 0] < 0.5 < grid[-1, 0, 0]  # and rising along axis 0
    with pytest.raises(ValueError, match="2-D"):
        enc.interpolate((6,), (12,))
