"""Importing the optional libraries without their start-up noise."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

#: loggers that warn while torchao (pulled in by peft, or by the int8 candidates) is imported: its CUDA-only
#: extensions that a CPU machine cannot load, and its enum registrations that torch 2.13 calls deprecated
NOISY_ON_IMPORT = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_imports(names: tuple[str, ...] = NOISY_ON_IMPORT) -> Iterator[None]:
    """Raise the loggers `names` to ERROR for the duration (their warnings say nothing a user can act on)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
