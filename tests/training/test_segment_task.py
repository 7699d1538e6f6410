"""The shipped word-segmentation config trains on a tiny budget through the `perceiver` CLI and logs F1."""

from __future__ import annotations

import csv
import json

import torch
from trainutil import CONFIGS, TINY_TRAINER

import perceiver
from perceiver.models.token_heads import PerceiverForTokenClassification
from perceiver.training.cli import main
from perceiver.training.segment_task import BinaryF1

TINY_SEGMENT = [
    "--model.model_kwargs.max_seq_len=32",
    "--model.model_kwargs.d_model=32",
    "--model.model_kwargs.num_latents=8",
    "--model.model_kwargs.latent_dim=32",
    "--model.model_kwargs.num_self_attends_per_block=1",
    "--model.model_kwargs.cross_qk_channels=16",
    "--model.model_kwargs.cross_v_channels=32",
    "--model.model_kwargs.latent_qk_channels=16",
    "--model.model_kwargs.latent_v_channels=32",
    "--model.model_kwargs.decoder_qk_channels=16",
    "--model.model_kwargs.decoder_self_attends=1",
    "--data.max_seq_len=32",
    "--data.batch_size=4",
]


def test_segment_config_fits_and_logs_f1(tmp_path):
    main(["fit", "--config", str(CONFIGS / "segment-pydoc.yaml"), f"--trainer.default_root_dir={tmp_path}",
          *TINY_TRAINER, *TINY_SEGMENT])  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    f1 = [float(r["val/f1"]) for r in rows if r.get("val/f1")]
    baseline = [float(r["val/f1_baseline"]) for r in rows if r.get("val/f1_baseline")]
    assert f1 and 0.0 <= f1[-1] <= 1.0
    assert baseline and 0.1 < baseline[-1] < 0.5
    model = perceiver.from_pretrained(tmp_path / "model")
    assert isinstance(model, PerceiverForTokenClassification) and model.config.decoder_query_inputs
    assert json.loads((tmp_path / "model" / "task.json").read_text())["task"] == "token-classification"


def test_binary_f1_sums_over_updates():
    metric = BinaryF1()
    metric.update(torch.tensor([1, 1, 0]), torch.tensor([1, 0, 1]))  # tp 1, fp 1, fn 1
    metric.update(torch.tensor([1, 0]), torch.tensor([1, -100]))  # tp 1
    assert abs(metric.compute().item() - 2 * 2 / (2 * 2 + 1 + 1)) < 1e-6
