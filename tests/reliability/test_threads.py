"""Thread-safe inference: one classic model called from 4 threads with mixed shapes (and masks) gives every call the
output of a single-threaded call. The model holds no caches (positions, masks) that concurrent calls could share;
this test guards that."""

from __future__ import annotations

import threading

import pytest
import torch
from tiny_models import tiny

SHAPES = [(1, 8, 8), (2, 6, 10), (3, 5, 5), (1, 12, 4), (2, 8, 8)]


def run_threads(threads: int, calls: int) -> None:
    torch.manual_seed(0)
    model = tiny("perceiver")
    cases = []
    for i, (b, h, w) in enumerate(SHAPES):
        x = torch.randn(b, h, w, 3)
        mask = None if i % 2 else torch.rand(b, h, w) > 0.3
        if mask is not None:
            mask[..., 0, 0] = True
        with torch.no_grad():
            cases.append((x, mask, model(x, mask)))
    errors: list[str] = []
    start = threading.Barrier(threads)

    def work(tid: int) -> None:
        start.wait()
        for k in range(calls):
            x, mask, want = cases[(tid + k) % len(cases)]
            with torch.no_grad():
                got = model(x, mask)
            if not torch.equal(got, want):
                errors.append(f"thread {tid} call {k}: shape {tuple(x.shape)} differs by {(got - want).abs().max()}")

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors[:5]


def test_concurrent_inference_matches_single_threaded():
    run_threads(threads=4, calls=25)


@pytest.mark.slow
def test_concurrent_inference_matches_single_threaded_long():
    run_threads(threads=4, calls=200)
