"""A loaded .pt2 program given inputs of a size other than it takes: a clear ValueError naming the shapes it takes
(a fixed size, or the range of a dynamic one), not a bare guard."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY, tiny

import perceiver
from perceiver.export import LogitsOnly, export_pt2, load_pt2


def test_load_pt2_other_length_names_the_shapes(tmp_path) -> None:
    overrides, _ = TINY["text-classifier"]
    model = perceiver.create_model("text-classifier", **overrides).eval()  # max_seq_len 16
    path = export_pt2(model, tmp_path / "text.pt2", (torch.randint(6, 262, (2, 10)),))
    runner = load_pt2(path)
    for shape in ((3, 10), (3, 12)):  # any batch, and any length up to max_seq_len (the text classifier's is dynamic)
        x = torch.randint(6, 262, shape)
        torch.testing.assert_close(runner(x), model(x).logits, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"takes inputs of shape \(batch, 1\.\.16\).*got \(3, 20\)"):
        runner(torch.randint(6, 262, (3, 20)))


def test_a_fixed_length_is_named_as_the_exports(tmp_path) -> None:
    model = tiny("perceiver-ar", num_latents=15)  # latents that leave < 2 prefix positions: the export's length
    length = model.config.max_seq_len
    ids = torch.randint(0, model.config.vocab_size, (2, length))
    path = export_pt2(model, tmp_path / "ar.pt2", (ids, torch.ones_like(ids, dtype=torch.bool)))
    runner = load_pt2(path)
    with torch.no_grad():
        torch.testing.assert_close(
            runner(ids[:1], torch.ones_like(ids[:1], dtype=torch.bool)), LogitsOnly(model)(ids[:1])
        )
    short = ids[:, : length - 2]
    with pytest.raises(ValueError, match=rf"takes inputs of shape \(batch, {length}\), \(batch, {length}\).*got \(2, "):
        runner(short, torch.ones_like(short, dtype=torch.bool))
