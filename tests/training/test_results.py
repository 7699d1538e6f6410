"""`python -m perceiver.training.results`: fit + test of a shipped config in fresh processes, row of the table."""

from __future__ import annotations

import re

import pytest
from trainutil import TINY, TINY_TRAINER

from perceiver.training.results import last_value, main


def test_results_runner_prints_metric_baseline_and_time(tmp_path, capsys):
    main(["flow-synthetic", "--runs-dir", str(tmp_path), "--extra", *TINY_TRAINER, *TINY["flow-synthetic"]])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `flow-synthetic`")]
    assert rows, "no table row printed"
    cells = [c.strip() for c in rows[-1].strip("|").split("|")]
    epe, zero = float(cells[2]), float(cells[3])
    assert epe > 0 and zero > 0
    assert re.fullmatch(r"\d+\.\d min", cells[4])
    assert "perceiver fit --config configs/flow-synthetic.yaml" in cells[5]
    metrics = tmp_path / "flow-synthetic" / "metrics.csv"
    assert last_value(metrics, "test/epe") == pytest.approx(epe, abs=1e-4)
    assert (tmp_path / "flow-synthetic" / "checkpoints" / "best.ckpt").is_file()


def test_results_runner_rejects_unknown_config():
    with pytest.raises(SystemExit, match="unknown config 'nope'"):
        main(["nope"])
