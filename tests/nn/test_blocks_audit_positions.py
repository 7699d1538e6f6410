"""Position encodings used standalone. `TrainablePositionEncoding(12, C)(-1)` silently returned 11 rows (a Python
slice `[:-1]`) and `interpolate` of a grid that is not the table's failed inside `reshape`; the table had no
`reset_parameters`, so the `torch.nn` idiom (build on the meta device, `to_empty()`, call `reset_parameters()` on
every module that has it) left it uninitialised. `FourierPositionEncoding` took `max_resolution=8`,
`max_resolution=(0,)` or `max_freq=-1` and failed later (or not at all), and `index_dims=7` or `(-1, 5)` failed
inside `linspace`. Each is now an error naming what came, or the method torch users expect."""

from __future__ import annotations

import re

import pytest
import torch

from perceiver.nn import FourierPositionEncoding, TrainablePositionEncoding


def test_trainable_positions_take_0_to_num_positions_rows():
    table = TrainablePositionEncoding(12, 4)
    assert table(12).shape == (12, 4) and table(0).shape == (0, 4)
    for n in (-1, 13):
        with pytest.raises(ValueError, match=re.escape(f"expected 0 to 12 positions, got {n}")):
            table(n)
    with pytest.raises(TypeError, match="expected num_positions as an int or None, got float"):
        table(5.0)


def test_trainable_interpolation_needs_the_tables_grid():
    table = TrainablePositionEncoding(12, 4)
    assert table.interpolate((3, 4), (5, 6)).shape == (30, 4)
    with pytest.raises(ValueError, match=re.escape("product is the table's 12 positions, got (3, 5)")):
        table.interpolate((3, 5), (5, 6))


def test_trainable_positions_reset_parameters_after_a_meta_device_build():
    with torch.device("meta"):
        table = TrainablePositionEncoding(64, 8, init_scale=0.5)
    table = table.to_empty(device="cpu")
    with torch.no_grad():
        table.position_embeddings.fill_(float("nan"))  # what an uninitialised buffer may hold
    torch.manual_seed(0)
    for module in table.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    weights = table.position_embeddings
    assert torch.isfinite(weights).all()
    assert 0.4 < weights.std().item() < 0.6  # the constructor's init_scale


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_resolution": 8}, TypeError, "max_resolution must be a sequence (one per axis) or None, got 8"),
        ({"max_resolution": (0, 8)}, ValueError, "max_resolution[0] must be a positive number, got 0"),
        ({"max_freq": -1.0}, ValueError, "max_freq must be a positive number or None, got -1.0"),
    ],
)
def test_fourier_settings_are_checked_when_built(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        FourierPositionEncoding(4, **kwargs)


def test_fourier_index_dims_are_checked():
    encoding = FourierPositionEncoding(4)
    assert encoding((7,)).shape == (7, 9) and encoding((2, 3, 5)).shape == (2, 3, 5, 27)
    with pytest.raises(TypeError, match=re.escape("non-empty sequence of sizes, e.g. (n,) or (H, W), got 7")):
        encoding(7)
    with pytest.raises(ValueError, match=re.escape("expected index_dims of sizes >= 0, got (-1, 5)")):
        encoding((-1, 5))
    with pytest.raises(TypeError, match=re.escape("expected index_dims of integer sizes, got (3.0, 5)")):
        encoding((3.0, 5))


def test_fourier_non_square_grids_compile_with_dynamic_sizes():
    encoding = FourierPositionEncoding(3, max_resolution=(16, 32))

    def features(x):
        return encoding(x.shape[1:3]).expand(x.shape[0], -1, -1, -1)

    compiled = torch.compile(features, fullgraph=True, dynamic=True)
    for h, w in ((3, 5), (4, 7)):
        x = torch.randn(2, h, w, 1)
        torch.testing.assert_close(compiled(x), features(x))


def test_rotary_angles_wider_than_the_head_are_an_error_naming_both():
    from perceiver.nn.rotary import apply_rotary, rotary_angles, rotary_inv_freq

    angles = rotary_angles(torch.arange(5), rotary_inv_freq(8))  # (5, 8)
    q = torch.randn(2, 3, 5, 16)
    assert apply_rotary(q, angles.cos(), angles.sin()).shape == q.shape
    with pytest.raises(
        ValueError, match=re.escape("<= the head width 4, got cos (5, 8), sin (5, 8) for x (2, 3, 5, 4)")
    ):
        apply_rotary(torch.randn(2, 3, 5, 4), angles.cos(), angles.sin())


def test_linear_positions_name_a_negative_size():
    from perceiver.nn import linear_positions

    assert linear_positions((2, 3)).shape == (2, 3, 2)
    with pytest.raises(ValueError, match=re.escape("expected index_dims of sizes >= 0, got (2, -3)")):
        linear_positions((2, -3))
