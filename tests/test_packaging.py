"""The wheel a user installs: built from this checkout, it carries the package, its version and its type marker."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import perceiver

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_builds_this_project() -> bool:
    """Whether the installed setuptools meets pyproject.toml's build requirement (a venv's bundled one may not)."""
    from packaging.requirements import Requirement

    try:
        import tomllib  # Python 3.11+
    except ImportError:
        return False
    if importlib.util.find_spec("setuptools") is None:
        return False
    (needed,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    return Requirement(needed).specifier.contains(version("setuptools"))


def test_the_wheel_carries_the_package_its_version_and_py_typed(tmp_path):
    # the environment's setuptools when it can build this project (pyproject's build-system), else pip's isolated build
    isolation = ["--no-build-isolation"] if _setuptools_builds_this_project() else []
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
    assert version("perceiver-torch") == perceiver.__version__


BASE_INSTALL_CHECK = """
import importlib.abc, importlib.metadata as md, sys
from packaging.requirements import Requirement

def needed(requirement):  # on this platform and Python, without extras (torch's CUDA builds list many with markers)
    r = Requirement(requirement)
    return r.marker is None or r.marker.evaluate({"extra": ""})

closure, todo = set(), ["perceiver-torch"]  # the base dependencies, and theirs
while todo:
    dist = todo.pop()
    if dist not in closure:
        closure.add(dist)
        todo += [Requirement(r).name.lower().replace("_", "-") for r in md.requires(dist) or [] if needed(r)]
for module in [m for m in sys.modules if m.partition(".")[0] == "packaging"]:
    del sys.modules[module]  # packaging only read the requirements: not allowed unless a base dependency needs it
def top_level_modules(dist):  # from its installed files (Python 3.10's packages_distributions reads top_level.txt only)
    for top in {f.parts[0] for f in md.distribution(dist).files or []}:
        if not top.endswith((".dist-info", ".data", ".pth")) and top not in ("__pycache__", ".."):
            yield top.split(".")[0].lower()  # package folder, module.py, extension.cpython-...so

allowed = {m for dist in closure if dist != "perceiver-torch" for m in top_level_modules(dist)}
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


def test_the_subpackages_are_attributes_after_import_perceiver():
    """`import perceiver; perceiver.models.X` (as the README writes it) raised AttributeError in a fresh interpreter
    unless something had imported the subpackage first; `import perceiver` alone still imports no torch."""
    code = (
        "import sys, perceiver\n"
        "assert 'torch' not in sys.modules\n"
        "print(perceiver.models.PerceiverForSequenceClassification.__name__, perceiver.data.__name__)\n"
        "try:\n    perceiver.no_such_thing\nexcept AttributeError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == [
        "PerceiverForSequenceClassification perceiver.data",
        "module 'perceiver' has no attribute 'no_such_thing'",
    ]
