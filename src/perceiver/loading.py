"""Reading weights into a model: the dtype and device to load in (`resolve_dtype`, transformers' `dtype` /
`torch_dtype`; `resolve_device`), building a model without its random initialisation (`no_init_weights`), the checked
safetensors load of `from_pretrained` (`load_safetensors_checked`, of one file or of the shards an index names:
`open_weights`, `read_shard_index`; `open_safetensors` / `read_safetensors` for files read whole) and the finite check
of stored weights (`check_finite_tensors`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import init


def is_finite(tensor: torch.Tensor) -> bool:
    """Whether every element of a floating `tensor` is finite: its minimum and maximum are (both propagate NaN),
    one reduction without a boolean copy of the tensor (28x faster than `isfinite(t).all()` on 50M floats)."""
    if tensor.numel() == 0:
        return True
    if tensor.dtype.itemsize == 1:  # float8: no aminmax kernel
        return bool(torch.isfinite(tensor.float()).all())
    low, high = torch.aminmax(tensor)
    return bool(low.isfinite()) and bool(high.isfinite())


def check_finite_tensors(tensors: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """`ValueError` naming `source` and the key of the first floating tensor holding NaN or inf."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not is_finite(tensor):
            raise ValueError(
                f"{source}: tensor {key!r} holds NaN or inf; expected finite weights (a corrupted file?). "
                f"Pass check_finite=False to load it anyway"
            )


#: the `torch.nn.init` functions `no_init_weights` skips (every in-place initialiser torch has)
INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)  # fmt: skip

#: what skipped initialisers write: None leaves the memory as allocated (fast); the tests set NaN so that a tensor a
#: load forgot would show in every output
SKIPPED_INIT_FILL: float | None = None


@contextlib.contextmanager
def no_init_weights() -> Iterator[None]:
    """Build modules without drawing their initial weights (transformers' context of the same name): inside it the
    `torch.nn.init` initialisers (`INIT_FUNCTIONS`) return their tensor untouched, so an `nn.Linear` costs an
    allocation instead of a random draw. Use it only to build a model whose every parameter and persistent buffer is
    loaded next (`from_pretrained` checks that none is missing). Patches `torch.nn.init` for the whole process while
    it runs: not thread-safe."""
    saved = {name: getattr(init, name) for name in INIT_FUNCTIONS if hasattr(init, name)}

    def skip(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if SKIPPED_INIT_FILL is not None:
            with torch.no_grad():
                tensor.fill_(SKIPPED_INIT_FILL)
        return tensor

    try:
        for name in saved:
            setattr(init, name, skip)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


#: dtype names of the safetensors header
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


#: the dtype names command lines offer (`perceiver predict / generate --dtype`); `from_pretrained` takes any floating one
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(dtype: torch.dtype | str | None, torch_dtype: torch.dtype | str | None = None) -> torch.dtype | str:
    """`dtype` (or transformers' older name `torch_dtype`) as a floating `torch.dtype` or "auto" (None means "auto");
    ValueError for anything else."""
    if torch_dtype is not None:
        if dtype is not None and dtype != "auto":
            raise ValueError(f"pass dtype or its alias torch_dtype, not both (got {dtype!r} and {torch_dtype!r})")
        dtype = torch_dtype
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: expected 'auto' or a floating torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
    return dtype


def resolve_device(device: str | torch.device | int, name: str = "device") -> torch.device:
    """`device` as a `torch.device` this process can use: ValueError for a name torch does not know (`"gpu"`),
    RuntimeError naming the check that failed for an accelerator this torch build or machine does not have (`"cuda"`
    on a CPU-only torch, `"cuda:3"` with two GPUs). `name` is the argument's name in the messages; `"cpu:N"` is
    `"cpu"`."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(
            f"invalid {name} {device!r}: expected a torch device such as 'cpu', 'cuda', 'cuda:1' or 'mps' "
            f"({str(e).splitlines()[0]})"
        ) from None
    kind = parsed.type
    if kind == "cpu":
        return torch.device("cpu")  # "cpu:0" is the CPU too (safetensors takes "cpu" only)
    if kind == "meta":
        return parsed
    backend = torch.backends.mps if kind == "mps" else getattr(torch, kind, None)
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and not is_available():
        check = "torch.backends.mps" if kind == "mps" else f"torch.{kind}"
        raise RuntimeError(f"{name} {str(device)!r} is not available ({check}.is_available() is False)")
    count = getattr(getattr(torch, kind, None), "device_count", None)
    if parsed.index is not None and callable(count) and parsed.index >= count():
        raise RuntimeError(
            f"{name} {str(device)!r} is not available (torch.{kind}.device_count() is {count()}, indices from 0)"
        )
    return parsed


def stored_floating_dtype(dtypes: dict[str, torch.dtype], source: str | os.PathLike) -> torch.dtype | None:
    """The one floating dtype of the tensors `dtypes` describes (None without floating tensors); ValueError naming
    `source` when they mix floating dtypes."""
    floating: dict[torch.dtype, list[str]] = {}
    for key, dt in dtypes.items():
        if dt.is_floating_point:
            floating.setdefault(dt, []).append(key)
    if len(floating) > 1:
        found = ", ".join(f"{dt} ({len(keys)} tensors, e.g. {keys[0]!r})" for dt, keys in floating.items())
        raise ValueError(
            f"{source}: expected one floating dtype for dtype='auto', got {found}; pass dtype= (e.g. "
            f"torch.float32) to load every tensor in that dtype"
        )
    return next(iter(floating), None)


def open_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """`safetensors.safe_open(path)` (a context manager) with tensors on `device`; `ValueError` naming `path` for a
    file that is not a readable safetensors file (truncated, empty, another format)."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt", device=str(device))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: expected a safetensors file, could not read it ({e})") from None


def read_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file `path` (as `safetensors.torch.load_file`), on `device`; `ValueError`
    naming `path` for a file that is not a readable safetensors file."""
    from safetensors import SafetensorError

    with open_safetensors(path, device) as f:
        try:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  (safe_open has keys(), no iteration)
        except SafetensorError as e:
            raise ValueError(f"{path}: expected a safetensors file, could not read its tensors ({e})") from None


def read_shard_index(index: str | os.PathLike) -> dict[str, str]:
    """The `weight_map` (tensor name -> shard file) of the sharded checkpoint index `index`
    (`model.safetensors.index.json`); ValueError naming the index for a file that is not such an index or names a
    shard outside its folder."""
    import json

    index = Path(index)
    try:
        data = json.loads(index.read_text())
    except ValueError as e:
        raise ValueError(f"{index}: expected a JSON object with a 'weight_map', got invalid JSON ({e})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(
            f"{index}: key 'weight_map': expected an object of tensor name -> shard file, got {weight_map!r}"
        )
    for shard in weight_map.values():
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise ValueError(f"{index}: expected shard files in its folder, got {shard!r}")
    return weight_map


def open_weights(path: str | os.PathLike, device: str, stack: contextlib.ExitStack) -> dict[str, tuple[Any, Path]]:
    """Each tensor name of the weights `path` (a safetensors file, or the index `*.index.json` of a sharded
    checkpoint) -> (the open `safe_open` handle that holds it, its file); the handles are closed with `stack`.

    For an index: FileNotFoundError naming the index and the shard when a shard it names is not in its folder,
    ValueError naming both when a tensor of the index is not in its shard or a shard holds a tensor the index
    places elsewhere."""
    path = Path(path)
    if not path.name.endswith(".index.json"):
        f = stack.enter_context(open_safetensors(path, device))
        return {key: (f, path) for key in f.keys()}  # noqa: SIM118  (safe_open has keys(), no iteration)
    weight_map = read_shard_index(path)
    handles: dict[str, tuple[Any, Path]] = {}
    for shard in dict.fromkeys(weight_map.values()):
        file = path.parent / shard
        if not file.is_file():
            listed = sum(1 for v in weight_map.values() if v == shard)
            raise FileNotFoundError(
                f"{path} names the shard {shard} (holding {listed} tensors), which is not in {path.parent}; "
                f"expected every shard of the index next to it (an interrupted download or copy?)"
            )
        f = stack.enter_context(open_safetensors(file, device))
        for key in f.keys():  # noqa: SIM118  (safe_open has keys(), no iteration)
            if weight_map.get(key) != shard:
                raise ValueError(f"{file}: holds tensor {key!r}, which {path} places in {weight_map.get(key)!r}")
            handles[key] = (f, file)
    missing = sorted(set(weight_map) - set(handles))
    if missing:
        raise ValueError(
            f"{path}: tensors {missing[:5]} are not in the shards it names (e.g. {weight_map[missing[0]]!r})"
        )
    return handles


def load_safetensors_checked(
    model: nn.Module,
    path: str | os.PathLike,
    device: str = "cpu",
    check_finite: bool = True,
    dtype: torch.dtype | str = "auto",
    mmap: bool = False,
) -> None:
    """Load `path` (a safetensors file, or the index `model.safetensors.index.json` of a sharded checkpoint: its shards
    are read as one file) into `model` strictly: every tensor with the model's shape, no missing or unexpected keys (tied
    tensors stored once are re-tied), finite when `check_finite`; `ValueError` naming file and key.

    The model takes the floating dtype of the file (`dtype="auto"`: a file mixing floating dtypes is an error) or
    `dtype`, to which the stored floating tensors are then cast; integer and boolean tensors must be stored as the
    model holds them. Shapes and dtypes are checked from the file's header before any data is read. The stored tensors
    then become the model's (`load_state_dict(assign=True)`). By default (`mmap=False`) each is copied from the
    memory-mapped file into memory of the process's own (64-byte aligned, as every tensor torch allocates, so the model
    computes bit for bit what the saved one did). With `mmap=True` on the CPU in the stored dtype, as transformers
    and `torch.load(mmap=True)` do, they are copy-on-write views of the file instead: no copy is made, the pages are
    read when first used and shared with the page cache and with other processes that load the same file, and writes
    (training) copy the pages they touch. Two costs: a tensor at a file offset that is not 64-byte aligned can round
    differently in the last bit (vector kernels take unaligned heads in another order: 6e-8 on a tiny classifier), and
    the file must stay as it is while the model lives: `save_pretrained` renames new files into place, which is safe,
    while a tool that rewrites the file in place (truncating it) makes the model's unread pages fail (SIGBUS). On
    another device or in another dtype the tensors are copies either way. On the `meta` device the header is checked
    and nothing else is read: the model has every tensor's shape and dtype, no values."""
    meta = torch.device(device).type == "meta"  # shapes and dtypes only: nothing is read (safetensors has no meta)
    with contextlib.ExitStack() as stack:
        handles = open_weights(path, "cpu" if meta else device, stack)
        header: dict[str, tuple[torch.dtype | str, tuple[int, ...]]] = {}
        for key, (f, _) in handles.items():
            part = f.get_slice(key)
            header[key] = (SAFETENSORS_DTYPES.get(part.get_dtype(), part.get_dtype()), tuple(part.get_shape()))
        own = model.state_dict()
        unexpected = sorted(set(header) - set(own))
        if unexpected:
            raise ValueError(
                f"{path}: unexpected tensors {unexpected[:5]}; expected the keys of {type(model).__name__}"
            )
        known = {k: dt for k, (dt, _) in header.items() if isinstance(dt, torch.dtype)}
        target = stored_floating_dtype(known, path) if dtype == "auto" else dtype
        for key, (stored, shape) in header.items():
            want = own[key]
            floating = isinstance(stored, torch.dtype) and stored.is_floating_point
            if (
                shape != tuple(want.shape)
                or (floating and not want.is_floating_point)
                or (not floating and stored != want.dtype)
            ):
                raise ValueError(
                    f"{handles[key][1]}: tensor {key!r}: expected {want.dtype} of shape {tuple(want.shape)}, "
                    f"got {stored} of shape {shape}"
                )
        # a tensor stored once for several names (tied weights): each other name shares its storage in the model,
        # and is pointed at the stored tensor again after the assignment
        stored_at = {own[k].data_ptr(): k for k in header if own[k].numel()}
        sources = {k: stored_at.get(own[k].data_ptr()) for k in own if k not in header}
        missing = [k for k, source in sources.items() if source is None]
        if missing:
            raise ValueError(f"{path}: missing tensors {missing[:5]}; expected every tensor of {type(model).__name__}")
        tied = {k: source for k, source in sources.items() if source is not None}
        loaded = {}
        for key, (stored, shape) in header.items():
            if meta:  # a floating tensor in the dtype the model takes, the others as the model holds them
                floating = isinstance(stored, torch.dtype) and stored.is_floating_point
                dt = target if floating and isinstance(target, torch.dtype) else own[key].dtype
                loaded[key] = torch.empty(shape, dtype=dt, device=device)
                continue
            tensor = handles[key][0].get_tensor(key)  # on the CPU: a view of the memory-mapped file, read when touched
            if target is not None and tensor.is_floating_point() and tensor.dtype != target:
                tensor = tensor.to(target)
            elif not mmap and tensor.device.type == "cpu":
                tensor = tensor.clone()
            if check_finite:
                check_finite_tensors({key: tensor}, handles[key][1])
            loaded[key] = tensor
    model.load_state_dict(loaded, strict=False, assign=True)
    for key, source in tied.items():
        _retie(model, key, source)
    move: dict[str, Any] = {"device": device}  # non-persistent buffers, computed when the model was built
    if target is not None:
        move["dtype"] = target
    model.to(**move)


def _retie(model: nn.Module, key: str, source: str) -> None:
    """Make the parameter or buffer `key` of `model` the very tensor `source` is (a tie a state-dict assignment
    broke)."""
    owner, _, name = key.rpartition(".")
    module = model.get_submodule(owner)
    src_owner, _, src_name = source.rpartition(".")
    src_module = model.get_submodule(src_owner)
    if name in module._parameters:
        module._parameters[name] = src_module._parameters[src_name]
    else:
        module._buffers[name] = src_module._buffers[src_name]
