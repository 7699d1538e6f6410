"""The training configs shipped inside the package (`perceiver/configs/`), found by name from any directory.

A source checkout has them at `configs/` (a link to `src/perceiver/configs/`); a user who installed the wheel has
no such folder, so `perceiver fit --config configs/digits.yaml` (the README's command) or `--config digits.yaml`
falls back to the shipped file when no file of that name exists where the command runs. A file that exists is
always the one used.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["SHIPPED_CONFIGS", "resolve_config_args", "shipped_config", "shipped_configs"]

SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FLAGS = ("--config", "-c")


def shipped_configs() -> list[str]:
    """Names of the shipped configs relative to `perceiver/configs/` (`digits.yaml`, `examples/hf-images.yaml`)."""
    return sorted(p.relative_to(SHIPPED_CONFIGS).as_posix() for p in SHIPPED_CONFIGS.rglob("*.yaml"))


def _shipped(name: str) -> Path | None:
    """The shipped config called `name` (`digits`, `digits.yaml`, `configs/digits.yaml`, `examples/x.yaml`)."""
    name = name.replace("\\", "/").removeprefix("./").removeprefix("configs/")
    if not name.endswith((".yaml", ".yml")):
        name += ".yaml"
    path = SHIPPED_CONFIGS / name
    return path if path.is_file() and SHIPPED_CONFIGS in path.resolve().parents else None


def shipped_config(name: str) -> Path:
    """The shipped config called `name` (`digits`, `digits.yaml`, `configs/digits.yaml`, `examples/x.yaml`).

    Raises:
        FileNotFoundError: no shipped config of that name; the message lists them.
    """
    path = _shipped(name)
    if path is None:
        raise FileNotFoundError(f"no shipped config {name!r}; shipped: {', '.join(shipped_configs())}")
    return path


def resolve_config_args(argv: list[str]) -> list[str]:
    """`argv` with each `--config X` / `-c X` / `--config=X` whose X is not a file but names a shipped config
    replaced by that config's path (said on stderr). Anything else is left for the parser to judge."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg in CONFIG_FLAGS and i + 1 < len(out):
            index, value, prefix = i + 1, out[i + 1], ""
        elif arg.startswith("--config="):
            index, value, prefix = i, arg.removeprefix("--config="), "--config="
        else:
            continue
        if Path(value).exists() or value.lstrip().startswith(("{", "---")):  # a file, or a config given inline
            continue
        path = _shipped(value)
        if path is not None:
            print(f"perceiver: {value} is not a file here; using the shipped config {path}", file=sys.stderr)
            out[index] = prefix + str(path)
    return out
