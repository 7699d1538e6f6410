"""The wheel a user installs: built from this checkout, it carries the package, its version and its type marker."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import perceiver

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_the_package_its_version_and_py_typed(tmp_path):
    # the environment's setuptools when it has one (Python <= 3.11 venvs do), else pip's isolated build
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(tmp_path), str(ROOT)]
    subprocess.run(cmd, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("perceiver_torch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert wheel.name.startswith(f"perceiver_torch-{perceiver.__version__}-")
    assert "perceiver/py.typed" in names  # PEP 561: mypy / pyright read the package's annotations
    assert "perceiver/nn/attention.py" in names and "perceiver/training/cli.py" in names
    top = {n.split("/")[0] for n in names}
    assert top == {"perceiver", f"perceiver_torch-{perceiver.__version__}.dist-info"}, top  # no tests, benchmarks
    metadata = zipfile.ZipFile(wheel).read(f"perceiver_torch-{perceiver.__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {perceiver.__version__}\n" in metadata


def test_installed_version_is_the_package_version():
    from importlib.metadata import version

    assert version("perceiver-torch") == perceiver.__version__
