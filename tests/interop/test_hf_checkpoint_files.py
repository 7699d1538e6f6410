"""The weight files transformers writes: sharded checkpoints (`model.safetensors.index.json` or
`pytorch_model.bin.index.json` with their shards, as `save_pretrained(max_shard_size=...)` writes large models) load
as the single file does; a broken index names itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import perceiver

transformers = pytest.importorskip("transformers")


def _hf_mlm(path: Path, **save) -> tuple[Path, torch.nn.Module]:
    config = transformers.PerceiverConfig(
        num_latents=6, d_latents=16, d_model=24, num_self_attends_per_block=2, vocab_size=262,
        max_position_embeddings=16, num_cross_attention_heads=1, num_self_attention_heads=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.PerceiverForMaskedLM(config).eval()
    model.save_pretrained(path, **save)
    return path, model


def _to_bin_shards(folder: Path) -> None:
    """The safetensors shards of `folder` rewritten as transformers' older `pytorch_model-*.bin` shards + index."""
    from safetensors.torch import load_file

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    names = {}
    for shard in sorted(set(index["weight_map"].values())):
        names[shard] = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        torch.save(load_file(folder / shard), folder / names[shard])
        (folder / shard).unlink()
    index["weight_map"] = {k: names[v] for k, v in index["weight_map"].items()}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (folder / "model.safetensors.index.json").unlink()


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_checkpoints_load_as_one_file(tmp_path, fmt):
    folder, hf = _hf_mlm(tmp_path / "sharded", max_shard_size="100KB")
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    if fmt == "bin":
        _to_bin_shards(folder)
    ours = perceiver.from_pretrained(folder)
    ids = torch.randint(6, 262, (2, 16))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max().item() <= 1e-4


def test_broken_shard_index_names_the_problem(tmp_path):
    folder, _ = _hf_mlm(tmp_path / "sharded", max_shard_size="100KB")
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    (folder / first).rename(folder / "elsewhere.safetensors")
    with pytest.raises(FileNotFoundError, match=f"names the shard {first}, which is not in"):
        perceiver.from_pretrained(folder)
    (folder / "elsewhere.safetensors").rename(folder / first)
    index_file.write_text(json.dumps(index | {"weight_map": {**index["weight_map"], "extra.weight": first}}))
    with pytest.raises(ValueError, match=r"index.json: tensors \['extra.weight'\] are not in the shards it names"):
        perceiver.from_pretrained(folder)
    index_file.write_text(json.dumps(index | {"weight_map": {"a": "../outside.safetensors"}}))
    with pytest.raises(ValueError, match="expected shard files in its folder, got '../outside.safetensors'"):
        perceiver.from_pretrained(folder)


def test_a_folder_without_weights_lists_what_it_holds(tmp_path):
    folder, _ = _hf_mlm(tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "weights.safetensors")
    with pytest.raises(FileNotFoundError, match=r"or shards with .*found \['config.json', 'weights.safetensors'\]"):
        perceiver.from_pretrained(folder)


def test_a_transformers_config_without_architectures_is_named_as_such(tmp_path):
    """transformers' `model_type` "perceiver" is also our classic Perceiver's: a transformers folder without
    `architectures` was read as one ("unknown keys ['_label_trainable_num_channels', ...] for PerceiverConfig")."""
    folder, _ = _hf_mlm(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    del config["architectures"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"is a transformers config without 'architectures'.*PerceiverForMaskedLM"):
        perceiver.from_pretrained(folder)


def test_a_tensor_of_the_right_size_but_another_shape_is_not_reshaped_into_place():
    """`load_converted` reshaped any tensor of the model's element count: a transposed (6, 4) weight loaded into a
    (4, 6) one scrambled, silently. Only axes of size 1 may differ."""
    from perceiver.interop.transformers import load_converted

    model = torch.nn.Linear(6, 4)
    weight = torch.randn(6, 4)
    keys = {"weight": "w", "bias": "b"}
    with pytest.raises(ValueError, match=r"w: shape \(6, 4\) does not fit weight \(4, 6\)"):
        load_converted(model, {"w": weight, "b": torch.zeros(4)}, keys)
    load_converted(model, {"w": weight.T.unsqueeze(0), "b": torch.ones(1, 4)}, keys)  # size-1 axes: fine
    assert torch.equal(model.weight, weight.T) and torch.equal(model.bias, torch.ones(4))


def test_a_config_leaving_keys_at_transformers_defaults_converts(tmp_path):
    """A config.json without the keys whose value is transformers' default (hand-written or trimmed; transformers
    fills them in) failed with a bare KeyError('num_blocks')."""
    config = transformers.PerceiverConfig(
        num_latents=6, d_latents=16, d_model=24, num_self_attends_per_block=26, vocab_size=262,
        max_position_embeddings=16, attention_probs_dropout_prob=0.1,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.PerceiverForMaskedLM(config).eval()
    folder = tmp_path / "m"
    hf.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    defaults = transformers.PerceiverConfig().to_dict()
    trimmed = {k: v for k, v in saved.items() if k in ("architectures", "model_type") or defaults.get(k) != v}
    assert not {"num_blocks", "num_self_attends_per_block", "num_cross_attention_heads"} & set(trimmed)
    (folder / "config.json").write_text(json.dumps(trimmed))
    assert type(transformers.PerceiverForMaskedLM.from_pretrained(folder)) is transformers.PerceiverForMaskedLM
    ours = perceiver.from_pretrained(folder)
    assert ours.encoder.config.attn_dropout == 0.1 and ours.encoder.config.num_self_attends_per_block == 26
    ids = torch.randint(6, 262, (2, 16))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max().item() <= 1e-4


def test_our_folder_with_a_stray_transformers_key_is_not_called_a_transformers_config(tmp_path):
    from tiny_models import tiny

    folder = tiny("perceiver").save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"transformers_version": "5.0.0"}))
    with pytest.raises(ValueError, match=r"unknown keys for PerceiverConfig: \['transformers_version'\]"):
        perceiver.from_pretrained(folder)


def test_weights_the_config_has_no_place_for_are_named(tmp_path, caplog):
    """A config.json with fewer self-attention layers than its weights loaded silently without the others (logits off
    by ~7 here); transformers warns about such weights, so does this now, naming them."""
    config = transformers.PerceiverConfig(
        num_latents=6, d_latents=16, d_model=24, num_self_attends_per_block=3, vocab_size=262,
        max_position_embeddings=16, num_cross_attention_heads=1, num_self_attention_heads=2,
    )  # fmt: skip
    transformers.PerceiverForMaskedLM(config).save_pretrained(tmp_path / "m")
    with caplog.at_level("WARNING", logger="perceiver"):
        perceiver.from_pretrained(tmp_path / "m")
    assert "not used" not in caplog.text
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps(saved | {"num_self_attends_per_block": 2}))
    with caplog.at_level("WARNING", logger="perceiver"):
        perceiver.from_pretrained(tmp_path / "m")
    assert "Some weights of the checkpoint were not used by PerceiverForMaskedLM" in caplog.text
    assert "perceiver.encoder.self_attends.2.attention.output.dense.bias" in caplog.text
