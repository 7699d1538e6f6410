"""The digits demo (`make demo`) on a tiny budget: the same code path, a few batches."""

from __future__ import annotations

import re

from trainutil import assert_png

import perceiver
from perceiver.training.demo import main


def test_demo_code_path(tmp_path, capsys):
    out = tmp_path / "demo"
    main(["--fast", "--out", str(out)])
    printed = capsys.readouterr().out
    match = re.search(r"^digits test accuracy: (\d\.\d{4})$", printed, re.MULTILINE)
    assert match and 0.0 <= float(match.group(1)) <= 1.0
    assert_png(out / "training_curves.png")
    assert_png(out / "attention.png")
    model = perceiver.from_pretrained(out / "model")
    assert model.config.num_classes == 10 and model.config.input_channels == 1
    main(["--fast", "--out", str(out)])  # runs again into the same directory (replaced)
