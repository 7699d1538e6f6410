"""The configs shipped inside the package: found by name from any directory (an installed wheel has no `configs/`),
never in place of a file that exists; and the command's error when the training extra is not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from perceiver.training.cli import main
from perceiver.training.config_files import SHIPPED_CONFIGS, resolve_config_args, shipped_config, shipped_configs

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_configs_are_the_checkouts_configs():
    names = shipped_configs()
    assert {"digits.yaml", "ar-pydoc.yaml", "examples/hf-images.yaml"} <= set(names)
    assert names == sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert shipped_config("configs/digits.yaml") == shipped_config("digits") == SHIPPED_CONFIGS / "digits.yaml"
    with pytest.raises(FileNotFoundError, match=r"no shipped config 'digit'.*digits\.yaml"):
        shipped_config("digit")
    with pytest.raises(FileNotFoundError, match="no shipped config"):
        shipped_config("../hub.py")  # names stay inside the configs folder


@pytest.mark.parametrize(
    ("argv", "index", "prefix"),
    [
        (["fit", "--config", "configs/digits.yaml"], 2, ""),
        (["fit", "-c", "digits.yaml", "--trainer.max_epochs=1"], 2, ""),
        (["test", "--config=digits"], 1, "--config="),
        (["fit", "--config", "configs/examples/hf-images.yaml"], 2, ""),
    ],
)
def test_a_config_that_is_not_a_file_here_is_the_shipped_one(argv, index, prefix, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = resolve_config_args(argv)
    name = argv[index].removeprefix(prefix).removeprefix("configs/")
    expected = SHIPPED_CONFIGS / (name if name.endswith(".yaml") else f"{name}.yaml")
    assert out[index] == prefix + str(expected) and expected.is_file()
    assert [a for i, a in enumerate(out) if i != index] == [a for i, a in enumerate(argv) if i != index]
    assert "using the shipped config" in capsys.readouterr().err


def test_a_file_that_exists_wins_and_unknown_names_reach_the_parser(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "digits.yaml").write_text("trainer: {}\n")  # the user's own file of a shipped name
    for argv in (
        ["fit", "--config", "configs/digits.yaml"],
        ["fit", "--config", "mine.yaml"],  # no such file, no such shipped config: the parser's error
        ["fit", "--config", "{trainer: {max_epochs: 1}}"],  # inline YAML
        ["fit", "--trainer.max_epochs", "digits.yaml"],  # not a config flag
    ):
        assert resolve_config_args(argv) == argv
    assert capsys.readouterr().err == ""


def test_the_command_runs_a_shipped_config_from_another_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here, as after `pip install perceiver-torch[train]`
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", "configs/digits.yaml", "--trainer.max_epochs=2", "--print_config"])
    assert done.value.code in (0, None)
    out = capsys.readouterr()
    config = yaml.safe_load(out.out)
    assert config["trainer"]["max_epochs"] == 2
    assert config["data"]["class_path"] == yaml.safe_load(shipped_config("digits").read_text())["data"]["class_path"]
    assert "using the shipped config" in out.err


MISSING_LIGHTNING = """
import sys
for name in [m for m in sys.modules if m == "lightning" or m.startswith("lightning.")] + ["lightning"]:
    sys.modules[name] = None  # as if the train extra were not installed
from perceiver.training.cli import main
main(["fit", "--config", "digits.yaml"])
"""


def test_without_the_training_extra_the_command_says_what_to_install():
    done = subprocess.run([sys.executable, "-c", MISSING_LIGHTNING], capture_output=True, text=True)
    assert done.returncode == 1
    assert "`perceiver fit` needs lightning" in done.stderr
    assert "pip install 'perceiver-torch[train]'" in done.stderr
    assert "Traceback" not in done.stderr
