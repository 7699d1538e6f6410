"""The README and docs/ against the code: every name they cite exists, every snippet parses, every training command
line resolves to a valid configuration, the Quickstart runs.

Documentation rots silently when an API is renamed; these checks make a rename that leaves a stale name in the docs
fail here instead of in a user's first session.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    """The fenced ```python blocks of a Markdown file."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.M | re.S)


def resolve(dotted: str) -> object:
    """The object `dotted` (`perceiver.a.b.C`) names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)  # AttributeError names what is missing
        return obj
    raise ModuleNotFoundError(dotted)


def cited_names(path: Path) -> set[str]:
    """`perceiver.x.y` names cited in backticks in the prose, and those the Python snippets use (attribute chains
    on the `perceiver` module and `from perceiver... import name`)."""
    text = path.read_text()
    names = {m.rstrip(".") for m in re.findall(r"`(perceiver\.[A-Za-z_][\w.]*)", text)}
    for block in python_blocks(path):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "perceiver":
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Attribute):
                chain, inner = [node.attr], node.value
                while isinstance(inner, ast.Attribute):
                    chain.append(inner.attr)
                    inner = inner.value
                if isinstance(inner, ast.Name) and inner.id == "perceiver":
                    names.add(".".join(["perceiver", *reversed(chain)]))
    return names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_perceiver_name_the_docs_cite_exists(path):
    missing = []
    for name in sorted(cited_names(path)):
        try:
            resolve(name)
        except (ImportError, AttributeError) as e:
            missing.append(f"{name} ({type(e).__name__}: {e})")
    assert not missing, f"{path.name} cites names the package does not have: {missing}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_python_snippet_parses(path):
    for i, block in enumerate(python_blocks(path)):
        try:
            ast.parse(block)
        except SyntaxError as e:
            pytest.fail(f"{path.name}, python block {i}: {e}")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_config_file_the_docs_cite_exists(path):
    cited = set(re.findall(r"\b(configs/[\w./-]+\.yaml)", path.read_text()))
    cited = {c for c in cited if not re.search(r"/[A-Z_]+\.yaml$", c)}  # placeholders: configs/NAME.yaml
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, f"{path.name} cites config files that do not exist: {missing}"


def test_the_cited_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    cited = {t for path in DOCS for t in re.findall(r"`make ([\w-]+)", path.read_text())}
    assert cited and cited <= targets, f"make targets cited but not in the Makefile: {sorted(cited - targets)}"


def test_the_quickstart_snippet_runs_as_written(tmp_path, monkeypatch):
    """The README's first snippet (the classic API, full size), verbatim; its shape comments are checked too."""
    block = python_blocks(ROOT / "README.md")[0]
    assert "from perceiver import Perceiver" in block
    monkeypatch.chdir(tmp_path)  # it saves a model folder
    namespace: dict = {}
    with torch.no_grad():
        exec(compile(block, "README.md quickstart", "exec"), namespace)
    model, img = namespace["model"], namespace["img"]
    assert model(img).shape == (1, 1000)
    assert model(img, return_embeddings=True).shape == (1, 256, 512)
    assert (tmp_path / "my-perceiver" / "model.safetensors").is_file()


LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def shell_blocks(path: Path) -> list[str]:
    """The fenced ```bash / ```sh / untagged blocks of a Markdown file (line continuations joined)."""
    blocks, lang, lines = [], None, []
    for line in path.read_text().splitlines():
        if not line.startswith("```"):
            lines.append(line)
        elif lang is None:
            lang, lines = line[3:].strip(), []
        else:
            if lang in ("bash", "sh", "shell", ""):
                blocks.append(re.sub(r"\\\n\s*", " ", "\n".join(lines)))
            lang = None
    return blocks


def training_commands() -> list[list[str]]:
    """The LightningCLI commands of the docs' shell blocks (`perceiver fit --config ...`, also after `srun` or as
    `torchrun ... -m perceiver.training.cli fit ...`), as argv from the subcommand on."""
    found = []
    for path in DOCS:
        for block in shell_blocks(path):
            for line in block.splitlines():
                try:
                    words = shlex.split(line, comments=True)
                except ValueError:  # a diagram, not a command
                    continue
                for i, word in enumerate(words[:-2]):
                    command = word in ("perceiver", "perceiver.training.cli") and words[i + 1] in LIGHTNING_SUBCOMMANDS
                    if command and words[i + 2].startswith("-"):  # not `perceiver predict MODEL_DIR FILE`
                        found.append(words[i + 1 :])
    return found


def test_every_documented_training_command_parses(monkeypatch, capsys):
    """Each `perceiver fit|validate|test|predict --config ...` line of the docs resolves to a valid configuration
    (`--print_config`: config files found, every key and value accepted), so a renamed option cannot leave a
    command in the docs that fails on its first flag."""
    from perceiver.training.cli import main

    monkeypatch.chdir(ROOT)  # the docs' config paths are relative to the checkout
    commands = training_commands()
    assert len(commands) >= 20 and any("--trainer.num_nodes" in c for c in commands)

    def parses(argv: list[str]) -> bool:
        try:
            main([*argv, "--print_config"])
        except SystemExit as e:
            return e.code in (0, None)
        return True

    failed = [" ".join(c) for c in commands if not parses(c)]
    assert not failed, f"documented commands the CLI rejects: {failed}"
    assert not parses(["fit", "--config", "configs/digits.yaml", "--data.batch_sise", "8"])  # the check can fail
    capsys.readouterr()


def test_every_cited_cli_subcommand_exists():
    """`perceiver SUBCOMMAND` in backticks or at the start of a command line names a subcommand the CLI has."""
    from perceiver.training.cli import EXTRA_HELP

    known = set(re.findall(r"^  perceiver ([a-z]+)", EXTRA_HELP, flags=re.M)) | set(
        re.findall(r"^  ([a-z]+) ", EXTRA_HELP, flags=re.M)
    ) - {"perceiver"}
    cited = set()
    for path in DOCS:
        text = path.read_text()
        cited |= set(re.findall(r"`perceiver ([a-z]+)", text)) | set(re.findall(r"^\s*perceiver ([a-z]+)", text, re.M))
    assert {"fit", "predict", "generate", "export"} <= known
    assert cited and cited <= known, f"subcommands cited but unknown to the CLI: {sorted(cited - known)}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file(path):
    links = re.findall(r"\]\(([^)\s]+)\)", path.read_text())
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:|#", link)]
    missing = sorted({link for link in local if link and not (path.parent / link).exists()})
    assert not missing, f"{path.name} links to files that do not exist: {missing}"
    # anchors within the file: GitHub's heading slugs (lower case, punctuation dropped, spaces as hyphens)
    slugs = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
    }
    anchors = {link[1:] for link in links if link.startswith("#")}
    assert anchors <= slugs, f"{path.name} links to headings it does not have: {sorted(anchors - slugs)}"


def test_the_readme_states_the_declared_torch_and_python_versions():
    """README's Install names the torch floor and the Pythons pyproject.toml declares (they were tested together)."""
    from packaging.requirements import Requirement

    try:
        import tomllib  # Python 3.11+
    except ImportError:
        pytest.skip("tomllib is Python 3.11+")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch_spec,) = [str(Requirement(r).specifier) for r in project["dependencies"] if Requirement(r).name == "torch"]
    pythons = [
        c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if c.startswith("Programming Language :: Python ::")
    ]
    readme = (ROOT / "README.md").read_text()
    assert f"`torch{torch_spec}`" in readme, f"README does not state torch{torch_spec}"
    assert project["requires-python"] == f">={pythons[0]}"
    assert f"Python {pythons[0]} to {pythons[-1]}" in readme, pythons
