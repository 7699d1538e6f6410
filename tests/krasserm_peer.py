"""krasserm's perceiver-io (PyPI), the peer whose checkpoints `perceiver.interop.krasserm*` load.

Its top-level package is also named `perceiver`, and its wheel declares Python < 3.11 and 2022-era pins, so it cannot
share our environment: `install` puts the real wheel (with fairscale, which its modules import) into a folder of its
own with `pip install --no-deps --ignore-requires-python --target`, and `run` executes a script there in a subprocess
whose `perceiver` is krasserm's (the script gets the folder as `sys.argv[1]` and an output file as `sys.argv[2]`,
which `run` loads with `torch.load(weights_only=True)`). Everything else (torch, einops) comes from our environment.
The tests and `benchmarks/bench_ar.py` use it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

VERSION = "0.11.0"
PACKAGES = [f"perceiver-io=={VERSION}", "fairscale==0.4.13"]

PREAMBLE = """
import os, sys, torch
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
import perceiver
assert perceiver.__file__.startswith(sys.argv[1]), perceiver.__file__  # krasserm's, not ours
"""


def install(target: Path) -> str | None:
    """Install the peer into `target`; returns None, or pip's error output if it could not."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-requires-python", "--target"]
    result = subprocess.run([*pip, str(target), *PACKAGES], capture_output=True, text=True)
    return None if result.returncode == 0 else result.stderr[-500:]


def run(target: Path, script: str, name: str = "reference.pt", threads: int = 1) -> Any:
    """Run `PREAMBLE + script` with the peer importable as `perceiver` on `threads` torch threads; returns what the
    script saved."""
    out = target / name
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(
        [sys.executable, "-c", PREAMBLE + script, str(target), str(out)], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"the krasserm perceiver-io script failed:\n{result.stderr[-3000:]}")
    return torch.load(out, weights_only=True)
