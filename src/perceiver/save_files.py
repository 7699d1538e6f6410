"""Writing a model folder safely: the folder checked before anything is written (`check_save_directory`), the
umask new files get their permissions from (`_umask`), and the `.NAME.PID.XXXX.tmp` folders a killed writer left
(`_remove_stale_temp_dirs`), and moving the finished files into place (`install_folder`); used by `save_pretrained`
(`perceiver.hub`) and `perceiver.lora.save_adapter`; weights larger than `max_shard_size` written as transformers
writes them (`write_shards`: `model-00001-of-0000N.safetensors` + `model.safetensors.index.json`) and the weight files
of an earlier save that the new one does not replace removed (`remove_stale_weights`). And the image processor config a checkpoint comes with, kept
on the loaded model and written again with it (`read_preprocessor_config`, `write_preprocessor_config`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "CONFIG_NAME",
    "INDEX_NAME",
    "PREPROCESSOR_NAME",
    "SHARD_NAME",
    "WEIGHTS_NAME",
    "_remove_stale_temp_dirs",
    "_umask",
    "check_save_directory",
    "install_folder",
    "parse_shard_size",
    "read_preprocessor_config",
    "remove_stale_weights",
    "write_preprocessor_config",
    "write_shards",
]

#: a model folder's config and weights (`perceiver.hub.save_pretrained`)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: the index of a sharded checkpoint (transformers' name): `{"metadata": {"total_size": bytes}, "weight_map":
#: {tensor name: shard file}}`
INDEX_NAME = "model.safetensors.index.json"
#: the shard files of a sharded checkpoint (transformers' names), e.g. `model-00001-of-00003.safetensors`
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
#: units of `max_shard_size` (transformers': decimal KB / MB / GB, binary KiB / MiB / GiB)
SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}

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


@contextlib.contextmanager
def staging_folder(target: Path) -> Iterator[Path]:
    """A temporary folder next to `target` to write files into before `install_folder` moves them into `target`:
    `target` is checked as a place to save into (`check_save_directory`) and its parent created first; the folder
    is removed afterwards, also on errors, so a failed save leaves nothing half-written."""
    check_save_directory(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def parse_shard_size(size: int | str) -> int:
    """`max_shard_size` in bytes: a positive int (bytes) or digits and a unit as transformers takes them (`"50KB"`,
    `"5GB"`, `"100MiB"`); ValueError naming what came otherwise."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]I?B)\s*", size.upper()) if isinstance(size, str) else None
    if match is None or int(match[1]) == 0:
        raise ValueError(
            f"max_shard_size: expected a positive number of bytes or digits with a unit (e.g. '5GB', '50KB', "
            f"'100MiB'), got {size!r}"
        )
    return int(match[1]) * SIZE_UNITS[match[2]]


def _stored_once(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` as safetensors can store it: a tensor that several names share (tied weights) under its first name
    only (loading re-ties the others, `perceiver.loading.load_safetensors_checked`), other views of a shared storage
    as copies, every tensor contiguous and detached."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[Any, ...]] = set()
    storages: set[int] = set()
    for key, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        view = (ptr, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if view in seen and tensor.numel():
            continue  # a tied name: the same tensor is stored under an earlier name
        seen.add(view)
        shared = ptr in storages and tensor.numel()
        storages.add(ptr)
        out[key] = tensor.detach().clone() if shared else tensor.detach().contiguous()
    return out


def write_shards(state: dict[str, torch.Tensor], folder: Path, max_shard_size: int) -> tuple[str, ...]:
    """Write the state dict `state` into `folder` as transformers does for `max_shard_size` (bytes): one
    `model.safetensors` when it fits, else shards of at most that size each (a larger tensor alone in its shard),
    `model-00001-of-0000N.safetensors`, and their index `model.safetensors.index.json`. Tied tensors are stored
    once. Returns the names written."""
    from safetensors.torch import save_file

    tensors = _stored_once(state)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        return (WEIGHTS_NAME,)
    names = [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    weight_map: dict[str, str] = {}
    for name, shard in zip(names, shards, strict=True):
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(shard, name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return (*names, INDEX_NAME)


def remove_stale_weights(target: Path, names: Sequence[str]) -> None:
    """Remove the weight files of an earlier save in `target` that the save which wrote `names` did not replace
    (`model.safetensors`, its index, `model-0000K-of-0000N.safetensors` shards), so that a folder never holds two
    sets of weights (a loader takes `model.safetensors` before an index: a stale one would be read instead)."""
    for path in target.iterdir():
        name = path.name
        weights = name in (WEIGHTS_NAME, INDEX_NAME) or SHARD_NAME.fullmatch(name)
        if weights and name not in names and path.is_file():
            path.unlink(missing_ok=True)
