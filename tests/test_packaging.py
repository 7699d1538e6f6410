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
    shipped = {
        f"perceiver/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in (ROOT / "configs").rglob("*.yaml")
    }
    assert "perceiver/configs/digits.yaml" in shipped and shipped <= set(names), shipped - set(
        names
    )  # the CLI's configs
    top = {n.split("/")[0] for n in names}
    assert top == {"perceiver", f"perceiver_torch-{perceiver.__version__}.dist-info"}, top  # no tests, benchmarks
    metadata = zipfile.ZipFile(wheel).read(f"perceiver_torch-{perceiver.__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {perceiver.__version__}\n" in metadata


def test_installed_version_is_the_package_version():
    from importlib.metadata import version

    assert version("perceiver-torch") == perceiver.__version__


BASE_INSTALL_CHECK = """
import importlib.abc, importlib.metadata as md, re, sys

def name(requirement):
    return re.split(r"[ ;<>=!~(\\[]", requirement)[0].lower().replace("_", "-")

closure, todo = set(), ["perceiver-torch"]  # the base dependencies, and theirs, without extras
while todo:
    dist = todo.pop()
    if dist not in closure:
        closure.add(dist)
        todo += [name(r) for r in md.requires(dist) or [] if "extra ==" not in r]
modules = md.packages_distributions()
allowed = {m.lower() for m, dists in modules.items() if {d.lower().replace("_", "-") for d in dists} & closure}
allowed |= {"perceiver"} | set(sys.stdlib_module_names) | set(sys.modules)
blocked = set()

class OnlyBaseDependencies(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        root = name.partition(".")[0]
        if root.lower() not in allowed:
            blocked.add(root)
            raise ModuleNotFoundError(f"not a base dependency: {root}", name=root)
        return None

sys.meta_path.insert(0, OnlyBaseDependencies())
import torch, perceiver
model = perceiver.Perceiver(input_channels=3, input_axis=2, num_latents=4, latent_dim=8, depth=1, num_classes=5)
model.save_pretrained(sys.argv[1])
loaded = perceiver.from_pretrained(sys.argv[1])
x = torch.randn(2, 6, 6, 3)
assert torch.equal(model.eval()(x), loaded.eval()(x))
for call in (lambda: perceiver.from_pretrained("owner/name"), lambda: model.push_to_hub("owner/name")):
    try:
        call()
        raise AssertionError("the Hub was reached without huggingface_hub")
    except ImportError as e:  # the extra that brings it is named
        assert "pip install 'perceiver-torch[hub]'" in str(e), e
print("blocked:", sorted(blocked))
"""


def test_the_base_install_saves_and_loads_a_model(tmp_path):
    """`pip install perceiver-torch` alone (torch, safetensors and what they declare) must build, save and load a
    model: safetensors' torch writer imports numpy, which torch no longer installs, so numpy is a base dependency;
    the Hub functions name the extra they need.
    Every import outside the declared base dependencies (and the standard library) fails in this process."""
    script = tmp_path / "check.py"
    script.write_text(BASE_INSTALL_CHECK)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "model")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
