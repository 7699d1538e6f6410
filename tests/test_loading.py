"""Loading in a dtype and without a random initialisation: `from_pretrained(dtype="auto" | torch.dtype)` (ours and
transformers folders), `no_init_weights`, every preset's buffers after a load, the fast finite check, `mmap=True`
views of the file (copy-on-write: training never writes the file) against the default private copies."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import TINY, inputs, logits, tiny
from torch import nn

import perceiver
from perceiver import loading


@pytest.mark.parametrize("name", ["perceiver", "perceiver-ar-tiny"])
def test_a_model_saved_in_bf16_loads_in_bf16(name, tmp_path):
    model = tiny(name).to(torch.bfloat16).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = perceiver.from_pretrained(tmp_path / "m")
    assert {v.dtype for v in loaded.state_dict().values() if v.is_floating_point()} == {torch.bfloat16}
    x = tuple(t.bfloat16() if t.is_floating_point() else t for t in inputs(name))
    with torch.no_grad():
        assert torch.equal(logits(model(*x)), logits(loaded(*x)))
    as_fp32 = perceiver.from_pretrained(tmp_path / "m", dtype=torch.float32)
    for key, value in model.state_dict().items():
        assert as_fp32.state_dict()[key].dtype == torch.float32
        assert torch.equal(as_fp32.state_dict()[key], value.float())


def test_dtype_names_and_transformers_older_name(tmp_path):
    model = tiny("perceiver")
    model.save_pretrained(tmp_path / "m")
    for kwargs in ({"dtype": "bfloat16"}, {"dtype": "torch.bfloat16"}, {"torch_dtype": torch.bfloat16}):
        loaded = perceiver.from_pretrained(tmp_path / "m", **kwargs)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value.bfloat16()), kwargs


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dtype": torch.int64}, "dtype: expected 'auto' or a floating torch.dtype .*got torch.int64"),
        ({"dtype": "float33"}, "dtype: expected 'auto' or a floating torch.dtype .*got 'float33'"),
        ({"dtype": torch.float16, "torch_dtype": torch.bfloat16}, "pass dtype or its alias torch_dtype, not both"),
    ],
)
def test_bad_dtype_is_a_clear_error(kwargs, message, tmp_path):
    tiny("perceiver").save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=message):
        perceiver.from_pretrained(tmp_path / "m", **kwargs)


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_preset_loads_every_tensor_and_buffer(name, tmp_path):
    """Built without its random draws (NaN in the tests), a loaded model equals the saved one in every parameter and
    buffer, the non-persistent ones (computed, not loaded) included, and in its outputs."""
    model = tiny(name).eval()
    loaded = perceiver.from_pretrained(model.save_pretrained(tmp_path / "m"))
    ours, theirs = dict(model.named_parameters()), dict(loaded.named_parameters())
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    buffers, loaded_buffers = dict(model.named_buffers()), dict(loaded.named_buffers())
    assert buffers.keys() == loaded_buffers.keys()
    for key in buffers:
        assert torch.equal(buffers[key], loaded_buffers[key]), key
    x = inputs(name)
    with torch.no_grad():
        a, b = logits(model(*x)), logits(loaded(*x))
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_no_init_weights_skips_the_draws_and_restores_torch_init(monkeypatch):
    monkeypatch.setattr(loading, "SKIPPED_INIT_FILL", None)
    state = torch.get_rng_state()
    with loading.no_init_weights():
        nn.Linear(64, 64), nn.LayerNorm(64), nn.Embedding(10, 64)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn
    monkeypatch.setattr(loading, "SKIPPED_INIT_FILL", float("nan"))
    with pytest.raises(RuntimeError, match="boom"), loading.no_init_weights():
        assert torch.isnan(nn.Linear(4, 4).weight).all()
        raise RuntimeError("boom")
    layer = nn.Linear(4, 4)  # torch.nn.init is back, after an exception too
    assert torch.isfinite(layer.weight).all() and layer.weight.std() > 0
    assert not torch.equal(torch.get_rng_state(), state)


def test_non_finite_weights_are_found_in_every_dtype_and_position(tmp_path):
    model = tiny("perceiver").bfloat16()
    folder = model.save_pretrained(tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["head.fc.weight"].view(-1)[-1] = float("inf")
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="'head.fc.weight' holds NaN or inf"):
        perceiver.from_pretrained(folder)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for n in (1, 15, 1000):
            for position in {0, n // 2, n - 1}:
                for bad in (float("nan"), float("inf"), -float("inf")):
                    x = torch.randn(n).to(dtype)
                    assert loading.is_finite(x)
                    x[position] = bad
                    assert not loading.is_finite(x), (dtype, n, position, bad)
    assert loading.is_finite(torch.empty(0))


def test_transformers_folder_in_its_saved_dtype(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.PerceiverConfig(
        num_latents=6, d_latents=16, d_model=24, num_self_attends_per_block=2, vocab_size=262,
        max_position_embeddings=16, num_cross_attention_heads=1, num_self_attention_heads=2,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.PerceiverForMaskedLM(config).to(torch.bfloat16)
    hf.save_pretrained(tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    auto = perceiver.from_pretrained(tmp_path / "hf")
    fp32 = perceiver.from_pretrained(tmp_path / "hf", dtype="float32")
    assert {v.dtype for v in auto.state_dict().values() if v.is_floating_point()} == {torch.bfloat16}
    assert {v.dtype for v in fp32.state_dict().values() if v.is_floating_point()} == {torch.float32}
    for key, value in fp32.state_dict().items():
        assert torch.equal(auto.state_dict()[key], value.bfloat16()), key
    ids = torch.randint(6, 262, (2, 16))
    with torch.no_grad():
        want = hf(inputs=ids).logits.float()
        got = fp32(ids).logits
    assert (want - got).abs().max() < 0.1  # bf16 weights, fp32 arithmetic in ours: same function, bf16 rounding


def _mapped_ranges(path) -> list[tuple[int, int]]:
    """Address ranges of this process that map the file `path` (/proc/self/maps)."""
    ranges, target = [], os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == target:
                low, high = (int(x, 16) for x in parts[0].split("-"))
                ranges.append((low, high))
    return ranges


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")
def test_mmap_loads_views_of_the_file_that_training_never_writes_back(tmp_path):
    model = tiny("language-perceiver").eval()
    folder = model.save_pretrained(tmp_path / "m")
    weights = folder / "model.safetensors"
    before = hashlib.sha256(weights.read_bytes()).hexdigest()
    mapped = perceiver.from_pretrained(folder, mmap=True)
    copied = perceiver.from_pretrained(folder)  # mmap=False by default: private copies
    ranges = _mapped_ranges(weights)

    def in_file(t: torch.Tensor) -> bool:
        return any(low <= t.data_ptr() < high for low, high in ranges)

    assert ranges and all(in_file(p) for p in mapped.parameters())
    assert not any(in_file(p) for p in copied.parameters())
    # the tie of the byte embedding and the output layer survives the assignment of the stored tensors
    assert mapped.input_adapter.token_embedding.weight is mapped.output_adapter.embedding.weight
    for loaded in (mapped, copied):
        loaded.train()
        ids = torch.randint(6, 262, (2, 10))
        loss = loaded(ids, labels=ids).loss
        loss.backward()
        assert all(p.grad is not None for p in loaded.parameters())
        with torch.no_grad():
            for p in loaded.parameters():
                p.sub_(0.1 * p.grad)  # a training step writes the weights in place
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == before  # copy-on-write: the file is untouched
    assert torch.equal(
        perceiver.from_pretrained(folder).output_adapter.embedding.weight, model.output_adapter.embedding.weight
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_meta_device_checks_the_file_and_reads_no_values(tmp_path, dtype):
    """`device="meta"` (a model with shapes and dtypes only) was refused as "expected a safetensors file": the file
    is fine, safetensors has no meta device."""
    model = tiny("language-perceiver").to(dtype)
    folder = model.save_pretrained(tmp_path / "m")
    loaded = perceiver.from_pretrained(folder, device="meta")
    state = loaded.state_dict()
    assert {v.device.type for v in state.values()} == {"meta"}
    assert {k: (v.shape, v.dtype) for k, v in state.items()} == {
        k: (v.shape, v.dtype) for k, v in model.state_dict().items()
    }
    save_file({k: v for k, v in load_file(folder / "model.safetensors").items() if "latents" not in k}, folder / "x")
    os.replace(folder / "x", folder / "model.safetensors")
    with pytest.raises(ValueError, match="missing tensors .*latents"):
        perceiver.from_pretrained(folder, device="meta")


def test_device_map_naming_one_device(tmp_path):
    """transformers' `device_map` (it was taken for a config field: "unknown keys ['device_map']")."""
    folder = tiny("perceiver").save_pretrained(tmp_path / "m")
    for device_map in ("cpu", "auto", {"": "cpu"}, {"encoder": "cpu", "head": torch.device("cpu")}):
        loaded = perceiver.from_pretrained(folder, device_map=device_map)
        assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    with pytest.raises(ValueError, match="device_map: expected one device .*got {'encoder': 'cpu', 'head': 'meta'}"):
        perceiver.from_pretrained(folder, device_map={"encoder": "cpu", "head": "meta"})
    with pytest.raises(ValueError, match="pass device or device_map, not both"):
        perceiver.from_pretrained(folder, device="cpu", device_map="cpu")
    with pytest.raises(ValueError, match="invalid device 'gpu'"):
        perceiver.from_pretrained(folder, device_map="gpu")


def test_a_meta_model_is_not_saved(tmp_path):
    folder = tiny("perceiver").save_pretrained(tmp_path / "m")
    meta = perceiver.from_pretrained(folder, device="meta")
    with pytest.raises(ValueError, match=r"cannot save a Perceiver whose tensors \[.*\] are on the meta device"):
        meta.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
