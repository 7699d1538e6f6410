"""Writing a model folder safely: the folder checked before anything is written (`check_save_directory`), the
umask new files get their permissions from (`_umask`), and the `.NAME.PID.XXXX.tmp` folders a killed writer left
(`_remove_stale_temp_dirs`), and moving the finished files into place (`install_folder`); used by `save_pretrained`
(`perceiver.hub`) and `perceiver.lora.save_adapter`. And the image processor config a checkpoint comes with, kept
on the loaded model and written again with it (`read_preprocessor_config`, `write_preprocessor_config`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PREPROCESSOR_NAME",
    "_remove_stale_temp_dirs",
    "_umask",
    "check_save_directory",
    "install_folder",
    "read_preprocessor_config",
    "write_preprocessor_config",
]

#: transformers' image processor config (resize, centre crop, normalisation of the images a checkpoint expects)
PREPROCESSOR_NAME = "preprocessor_config.json"


def _umask() -> int:
    """The process umask (from /proc on Linux; elsewhere set and restored, which is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_save_directory(target: Path) -> None:
    """`NotADirectoryError` when `target` (a folder to save into) or one of its parents exists as something else than
    a folder (a file), before anything is written."""
    for path in (target, *target.parents):
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                what = "is a file" if path.is_file() else "exists and is not a directory"
                where = "" if path == target else f" (a parent of {target})"
                raise NotADirectoryError(f"expected a directory to save into at {target}, but {path}{where} {what}")
            return


def _remove_stale_temp_dirs(target: Path) -> None:
    """Remove `.NAME.PID.*.tmp` folders next to `target` whose writing process no longer runs."""
    for path in target.parent.glob(f".{target.name}.*.tmp"):
        parts = path.name[len(target.name) + 2 :].split(".")
        pid = int(parts[0]) if parts and parts[0].isdigit() else None
        if pid is not None and pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # still running: its write is in progress
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        elif pid == os.getpid():
            continue
        shutil.rmtree(path, ignore_errors=True)


def install_folder(tmp: Path, target: Path, names: Sequence[str]) -> None:
    """Move the files `names` of the folder `tmp` (written next to `target`) into `target`, with the permissions of
    new files and folders under the umask.

    A `target` that does not exist yet is `tmp` renamed: it appears with every file or not at all. In an existing
    one each file is replaced whole (`os.replace`), and when a replacement fails those already made are undone, so
    the folder keeps its old files rather than a mix of old and new (only a process killed between two renames can
    leave one)."""
    umask = _umask()
    for name in names:
        os.chmod(tmp / name, 0o666 & ~umask)
    if not target.exists():
        os.chmod(tmp, 0o777 & ~umask)
        try:
            os.rename(tmp, target)
            return
        except OSError:  # created meanwhile by another writer: replace its files one by one
            os.chmod(tmp, 0o700)
    target.mkdir(exist_ok=True)
    done: list[tuple[str, Path | None]] = []
    try:
        for name in names:
            old = None
            if (target / name).is_file():
                old = tmp / f"{name}.old"
                try:
                    os.link(target / name, old)
                except OSError:  # a file system without hard links
                    shutil.copy2(target / name, old)
            os.replace(tmp / name, target / name)
            done.append((name, old))
    except BaseException:
        for name, old in reversed(done):
            if old is None:
                (target / name).unlink(missing_ok=True)
            else:
                os.replace(old, target / name)
        raise


def read_preprocessor_config(model: Any, folder: str | os.PathLike) -> None:
    """Keep the `preprocessor_config.json` of the checkpoint folder `folder` (a transformers folder's, e.g. DeepMind's
    ImageNet crop and normalisation) on the loaded `model` as `model.preprocessor_config` (a dict), so that
    `save_pretrained` writes it again and `perceiver predict` on the saved folder preprocesses images as the
    weights expect. A file that is not a JSON object is left out with a warning: the model loads without it."""
    path = Path(folder) / PREPROCESSOR_NAME
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        data = e
    if not isinstance(data, dict):
        logging.getLogger("perceiver").warning("%s left out: expected a JSON object, got %s", path, data)
        return
    model.preprocessor_config = data


def write_preprocessor_config(model: Any, folder: Path) -> tuple[str, ...]:
    """Write `model.preprocessor_config` (see `read_preprocessor_config`) into `folder`; the names written."""
    data = getattr(model, "preprocessor_config", None)
    if not isinstance(data, dict):
        return ()
    (folder / PREPROCESSOR_NAME).write_text(json.dumps(data, indent=2) + "\n")
    return (PREPROCESSOR_NAME,)
