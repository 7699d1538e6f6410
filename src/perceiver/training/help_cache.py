"""The help cache of the `perceiver` command: the help of a subcommand (`perceiver fit --help`, `--model.help
CLASS`, ...) is rendered by the real parser once and then read from a file.

Cache folder: `$PERCEIVER_CACHE_DIR`, else `$XDG_CACHE_HOME/perceiver` or `~/.cache/perceiver`, under `help/`. An
entry is keyed by the command line, the files it names (path, mtime, size), the installed distributions, perceiver's
source files (mtime, size), Python, the terminal width and the working directory. `PERCEIVER_HELP_CACHE=0` turns it
off. Imports only the standard library: a cached help starts neither torch nor Lightning.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

HELP_CACHE_FORMAT = 1


def is_help_request(argv: list[str]) -> bool:
    """`-h`, `--help` or a `--KEY.help [CLASS]` option: the command prints help and exits."""
    return any(a in ("-h", "--help") or (a.startswith("--") and a.split("=", 1)[0].endswith(".help")) for a in argv)


def help_cache_dir() -> Path | None:
    """Where rendered help is kept (None: `PERCEIVER_HELP_CACHE=0`)."""
    if os.environ.get("PERCEIVER_HELP_CACHE", "1") == "0":
        return None
    root = os.environ.get("PERCEIVER_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "perceiver")
    return Path(root) / "help"


def help_cache_key(argv: list[str]) -> str:
    """A digest of everything the help text of `argv` depends on (see the module docstring)."""
    package = Path(__file__).resolve().parents[1]
    named = []
    for token in argv:
        for part in dict.fromkeys((token, token.partition("=")[2])):
            if part and os.path.isfile(part):
                st = os.stat(part)
                named.append((os.path.abspath(part), st.st_mtime_ns, st.st_size))
    sources = []
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        sources.append((str(path.relative_to(package)), st.st_mtime_ns, st.st_size))
    distributions = sorted(
        entry.name
        for folder in dict.fromkeys(sys.path)
        if folder and os.path.isdir(folder)
        for entry in os.scandir(folder)
        if entry.name.endswith((".dist-info", ".egg-info"))
    )
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(("JSONARGPARSE_", "PL_", "LIGHTNING_")))
    payload = [
        HELP_CACHE_FORMAT,
        sys.version,
        sys.executable,
        Path(sys.argv[0]).name,
        os.getcwd(),
        shutil.get_terminal_size().columns,
        argv,
        named,
        sources,
        distributions,
        env,
    ]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]


def print_help(argv: list[str], run: Callable[[], object]) -> None:
    """Prints the help of `argv`: from the cache, or rendered by `run()` (the real parser) and then cached."""
    folder = help_cache_dir()
    path = folder / f"{help_cache_key(argv)}.txt" if folder is not None else None
    if path is not None and path.is_file():
        sys.stdout.write(path.read_text(encoding="utf-8"))
        sys.stdout.flush()
        raise SystemExit(0)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            run()
    except SystemExit as e:
        sys.stdout.write(buffer.getvalue())
        if path is not None and e.code in (0, None) and buffer.getvalue():
            store(path, buffer.getvalue())
        raise
    sys.stdout.write(buffer.getvalue())


def store(path: Path, text: str, keep: int = 64) -> None:
    """Writes `path` atomically and keeps the `keep` newest entries of its folder (a cache: errors are ignored)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        entries = sorted(path.parent.glob("*.txt"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[keep:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass
