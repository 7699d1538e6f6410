"""Shared test setup: every test starts from the same random state, so failures reproduce."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # `tiny_models`, shared by the compile / export / property tests


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
