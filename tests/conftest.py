"""Shared test setup: every test starts from the same random state, so failures reproduce."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # `tiny_models`, shared by the compile / export / property tests


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test`), each worker process takes its share of the cores for torch's threads."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    # a model built for loading skips its random initialisation (`perceiver.loading.no_init_weights`); in the tests the
    # skipped tensors are NaN, so one a load forgot shows in the outputs every parity test compares
    import perceiver.loading

    perceiver.loading.SKIPPED_INIT_FILL = float("nan")
    if workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // int(workers)))


@pytest.fixture(autouse=True)
def _seed(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    # a datamodule's default seed is the run's global one: no test's seed_everything reaches the next test's data
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)


@pytest.fixture
def disk_full_at(monkeypatch: pytest.MonkeyPatch):
    """`disk_full_at(name)`: moving a file named `name` into place (`perceiver.save_files`' `os.replace` /
    `os.rename`) fails with "No space left on device"; other moves happen. `monkeypatch.undo()` ends it."""
    import perceiver.save_files

    real_replace = os.replace

    def fail_at(name: str) -> None:
        def replace(src, dst):
            if Path(dst).name == name:
                raise OSError(28, "No space left on device")
            real_replace(src, dst)

        monkeypatch.setattr(perceiver.save_files.os, "replace", replace)
        monkeypatch.setattr(perceiver.save_files.os, "rename", replace)

    return fail_at
