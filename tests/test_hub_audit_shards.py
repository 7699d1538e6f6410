"""`save_pretrained(dir, max_shard_size=...)` as transformers users write it: sharded safetensors with their index
json, loaded back by every `from_pretrained`, re-saves that leave no stale weight files, and clear errors for a
missing or truncated shard, a folder without weights and `safe_serialization=False`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import flat, inputs, tiny

import perceiver


@pytest.fixture(scope="module")
def model():
    return tiny("vision-perceiver-learned")


def weight_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "config.json")


def test_max_shard_size_writes_shards_and_an_index_that_load_back(model, tmp_path):
    """`save_pretrained(dir, max_shard_size="50KB")` was a TypeError (unexpected keyword)."""
    folder = model.save_pretrained(tmp_path / "m", max_shard_size="50KB")
    files = weight_files(folder)
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) > 1 and "model.safetensors" not in files and "model.safetensors.index.json" in files
    assert all(f == f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i, f in enumerate(shards, 1))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict()) and set(index["weight_map"].values()) == set(shards)
    sizes = [_tensor_bytes(folder / s) for s in shards]  # at most 50 kB each, or one larger tensor alone
    assert all(size <= 50_000 or count == 1 for size, count in sizes)
    x = inputs("vision-perceiver-learned")
    for loaded in (perceiver.from_pretrained(folder), type(model).from_pretrained(folder, mmap=True)):
        assert torch.equal(flat(loaded(*x))[0], flat(model(*x))[0])


def _tensor_bytes(path: Path) -> tuple[int, int]:
    """The bytes of the tensors in a safetensors file and their number."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        tensors = [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118
    return sum(t.numel() * t.element_size() for t in tensors), len(tensors)


def test_a_model_that_fits_is_one_file_and_sizes_take_transformers_units(model, tmp_path):
    assert weight_files(model.save_pretrained(tmp_path / "a", max_shard_size="1GB")) == ["model.safetensors"]
    assert weight_files(model.save_pretrained(tmp_path / "b", max_shard_size=10**9)) == ["model.safetensors"]
    assert len(weight_files(model.save_pretrained(tmp_path / "c", max_shard_size="100KiB"))) > 2
    for bad in ("5 gigs", "0KB", 0, -1, "GB", 1.5):
        with pytest.raises(ValueError, match=r"max_shard_size: expected a positive number of bytes"):
            model.save_pretrained(tmp_path / "d", max_shard_size=bad)
    assert not (tmp_path / "d").exists()


def test_saving_again_into_the_folder_leaves_no_stale_weight_files(model, tmp_path):
    """A single-file save over a sharded one left the old shards and index beside the new model.safetensors (and a
    sharded save over a single file left model.safetensors, which loaders read before an index: the old weights)."""
    folder = tmp_path / "m"
    model.save_pretrained(folder, max_shard_size="50KB")
    (folder / "notes.txt").write_text("mine")  # files that are not weights are left alone
    model.save_pretrained(folder)
    assert weight_files(folder) == ["model.safetensors", "notes.txt"]
    other = tiny("vision-perceiver-learned")
    other.save_pretrained(folder, max_shard_size="50KB")
    assert "model.safetensors" not in weight_files(folder)
    x = inputs("vision-perceiver-learned")
    assert torch.equal(flat(perceiver.from_pretrained(folder)(*x))[0], flat(other(*x))[0])
    fewer = weight_files(tiny("vision-perceiver-learned").save_pretrained(folder, max_shard_size="200KB"))
    n = len([f for f in fewer if f.startswith("model-")])
    assert all(f.endswith(f"-of-{n:05d}.safetensors") for f in fewer if f.startswith("model-"))


def test_tied_weights_in_bf16_keep_their_tie_and_dtype_through_shards(tmp_path):
    model = tiny("perceiver-ar", tie_embeddings=True).to(torch.bfloat16)
    folder = model.save_pretrained(tmp_path / "ar", max_shard_size="5KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert ("to_logits.weight" in index) != ("token_emb.weight" in index)  # stored once
    loaded = perceiver.from_pretrained(folder)
    assert loaded.to_logits.weight is loaded.token_emb.weight
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in loaded.state_dict().items())


def test_a_missing_or_truncated_shard_is_an_error_naming_it(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "m", max_shard_size="50KB")
    second = next(folder.glob("model-00002-of-*.safetensors"))
    data = second.read_bytes()
    second.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{second.name}: expected a safetensors file, could not read it"):
        perceiver.from_pretrained(folder)
    second.unlink()
    with pytest.raises(FileNotFoundError, match=rf"model.safetensors.index.json names the shard {second.name}"):
        type(model).from_pretrained(folder)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../x.safetensors"}}')
    with pytest.raises(ValueError, match=r"index.json: expected shard files in its folder, got '../x.safetensors'"):
        perceiver.from_pretrained(folder)


def test_an_index_that_does_not_match_its_shards_is_an_error(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "m", max_shard_size="50KB")
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"]["not.a.tensor"] = index["weight_map"][key]
    index_file.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"tensors \['not.a.tensor'\] are not in the shards it names"):
        perceiver.from_pretrained(folder)


def test_a_folder_without_weights_says_what_it_expected_and_found(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    torch.save({}, folder / "pytorch_model.bin")
    message = r"expected model.safetensors \(or the shards of model.safetensors.index.json\) next to config.json"
    with pytest.raises(FileNotFoundError, match=message) as e:
        perceiver.from_pretrained(folder)
    assert "pytorch_model.bin is not read (safetensors only" in str(e.value)


def test_safe_serialization_true_is_accepted_and_false_is_a_clear_error(model, tmp_path):
    """transformers 4 scripts pass `safe_serialization=`: it was a TypeError either way."""
    assert weight_files(model.save_pretrained(tmp_path / "a", safe_serialization=True)) == ["model.safetensors"]
    with pytest.raises(ValueError, match=r"safe_serialization=False: perceiver-torch writes safetensors only"):
        model.save_pretrained(tmp_path / "b", safe_serialization=False)
    assert not (tmp_path / "b").exists()
