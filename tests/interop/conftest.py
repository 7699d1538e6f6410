"""Fixtures of the interop tests: the krasserm perceiver-io peer, installed once per test process."""

from __future__ import annotations

from pathlib import Path

import pytest
from krasserm_peer import install


@pytest.fixture(scope="session")
def krasserm_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding krasserm's perceiver-io wheel (see `tests/krasserm_peer.py`); skips if pip cannot get it."""
    target = tmp_path_factory.mktemp("krasserm-perceiver-io")
    error = install(target)
    if error is not None:
        pytest.skip(f"cannot install krasserm's perceiver-io: {error}")
    return target
