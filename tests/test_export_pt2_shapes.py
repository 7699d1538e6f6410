"""A loaded .pt2 program given inputs of a length other than the export's: a clear ValueError, not a bare guard."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY

import perceiver
from perceiver.export import export_pt2, load_pt2


def test_load_pt2_other_length_names_the_shapes(tmp_path) -> None:
    overrides, _ = TINY["text-classifier"]
    model = perceiver.create_model("text-classifier", **overrides).eval()
    path = export_pt2(model, tmp_path / "text.pt2", (torch.randint(6, 262, (2, 10)),))
    runner = load_pt2(path)
    x = torch.randint(6, 262, (3, 10))
    torch.testing.assert_close(runner(x), model(x).logits, atol=1e-5, rtol=0)  # any batch still runs
    with pytest.raises(ValueError, match=r"takes inputs of shape \(batch, 10\).*got \(3, 12\)"):
        runner(torch.randint(6, 262, (3, 12)))
