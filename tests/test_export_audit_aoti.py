"""Deployment audit: an AOTInductor package does not check its inputs' shapes (unless `AOTI_RUNTIME_CHECK_INPUTS=1`
is set when it runs): a text longer than the model's `max_seq_len` ran past the position table and returned numbers
without an error. `export_pt2(aoti=True)` now stores the shapes it takes in the package and `load_pt2` checks them."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny

from perceiver.export import LogitsOnly, export_pt2, load_pt2
from perceiver.training.cli import main


@pytest.mark.slow
def test_load_pt2_checks_the_shapes_an_aoti_package_takes(tmp_path, capsys):
    model = tiny("text-classifier")  # max_seq_len 16, its length dynamic
    folder = model.save_pretrained(tmp_path / "model")
    main(["export", str(folder), str(tmp_path / "t.pt2"), "--aoti", "--check"])
    out = capsys.readouterr().out
    assert "it takes inputs of shape (batch, 1..16), (batch, 1..16)" in out and "AOTI_RUNTIME_CHECK_INPUTS=1" in out
    runner = load_pt2(tmp_path / "t.pt2")
    assert runner.get_metadata()["perceiver_inputs"]  # the package's own metadata stays reachable
    for batch, length in ((1, 5), (3, 16)):
        ids = torch.randint(6, 262, (batch, length))
        mask = torch.ones_like(ids, dtype=torch.bool)
        with torch.no_grad():
            torch.testing.assert_close(runner(ids, mask), LogitsOnly(model)(ids, mask), atol=1e-5, rtol=1e-5)
    long = torch.randint(6, 262, (2, 20))
    with pytest.raises(
        ValueError, match=r"takes inputs of shape \(batch, 1\.\.16\), \(batch, 1\.\.16\).*got \(2, 20\)"
    ):
        runner(long, torch.ones_like(long, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"got \(2, 16\)$|got \(2, 16\);"):
        runner(torch.randint(6, 262, (2, 16)))  # the mask left out


def test_a_fixed_size_package_refuses_another_image_size(tmp_path):
    model = tiny("perceiver")
    path = export_pt2(model, tmp_path / "p.pt2", (torch.randn(2, 8, 8, 3),), aoti=True)
    runner = load_pt2(path)
    x = torch.randn(3, 8, 8, 3)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), LogitsOnly(model)(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"takes inputs of shape \(batch, 8, 8, 3\).*got \(3, 12, 12, 3\)"):
        runner(torch.randn(3, 12, 12, 3))
