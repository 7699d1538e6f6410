"""Model folders: config.json validated by type and range with errors naming file and key, safetensors dtype /
shape mismatches and non-finite weights rejected, local-looking paths never sent to the Hub, consistent file
permissions, no temp folders left behind."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny

import perceiver
from perceiver.pretrained import looks_local


@pytest.fixture(scope="module")
def model():
    return tiny("perceiver")


@pytest.fixture
def folder(model, tmp_path) -> Path:
    return model.save_pretrained(tmp_path / "m")


def set_config(folder: Path, text: str) -> None:
    (folder / "config.json").write_text(text)


def edit_config(folder: Path, **changes) -> None:
    data = json.loads((folder / "config.json").read_text())
    set_config(folder, json.dumps(data | changes))


def test_round_trip_is_bit_exact(model, folder):
    loaded = perceiver.from_pretrained(folder)
    x = torch.randn(2, 8, 8, 3)
    assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "expected a JSON object, got an empty file"),
        ("   \n", "expected a JSON object, got an empty file"),
        ("{not json", "expected a JSON object, got invalid JSON"),
        ("null", "expected a JSON object, got NoneType"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('"perceiver"', "expected a JSON object, got str"),
    ],
)
def test_config_that_is_not_an_object_names_the_file(folder, text, message):
    set_config(folder, text)
    with pytest.raises(ValueError, match=message) as e:
        perceiver.from_pretrained(folder)
    assert str(folder / "config.json") in str(e.value)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("weight_tie_layers", "yes", "expected bool"),
        ("max_freq", "10", "expected float"),
        ("max_freq", float("nan"), "expected float"),
        ("num_classes", 1e9, "expected int"),
        ("num_classes", 10**9, "integers at most"),
        ("num_classes", True, "expected int"),
        ("depth", None, "expected int"),
        ("inverted_cross_attn", ["x", "y"], "expected bool | tuple"),
        ("model_type", 3, "expected a string"),
    ],
)
def test_config_values_of_the_wrong_type_or_range_name_file_and_key(folder, key, value, expected):
    edit_config(folder, **{key: value})
    with pytest.raises(ValueError, match=expected) as e:
        perceiver.from_pretrained(folder)
    assert str(folder / "config.json") in str(e.value) and repr(key) in str(e.value)


def test_config_out_of_range_value_names_the_file(folder):
    edit_config(folder, num_latents=0)
    with pytest.raises(ValueError, match="num_latents must be a positive integer") as e:
        perceiver.from_pretrained(folder)
    assert str(folder / "config.json") in str(e.value)


def test_unknown_model_type_and_keys(folder):
    edit_config(folder, unknown_key=1)
    with pytest.raises(ValueError, match="unknown keys .*unknown_key"):
        perceiver.from_pretrained(folder)


def rewrite_weights(folder: Path, fn) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def test_mixed_floating_dtypes_are_an_error_under_auto_and_cast_on_request(model, folder):
    key = "head.fc.weight"
    rewrite_weights(folder, lambda t: t.__setitem__(key, t[key].double()))
    message = r"expected one floating dtype .*torch.float64 \(1 tensors, e.g. 'head.fc"
    with pytest.raises(ValueError, match=message) as e:
        perceiver.from_pretrained(folder)
    assert "model.safetensors" in str(e.value) and "torch.float32" in str(e.value)
    loaded = perceiver.from_pretrained(folder, dtype=torch.float32)  # asked for: every tensor in fp32
    assert all(v.dtype == torch.float32 for v in loaded.state_dict().values())
    x = torch.randn(2, 8, 8, 3)
    assert torch.equal(model(x), loaded(x))  # fp32 -> fp64 -> fp32 is exact


def test_shape_mismatch_missing_and_unexpected_tensors(folder):
    key = "head.fc.bias"
    rewrite_weights(folder, lambda t: t.__setitem__(key, torch.zeros(7)))
    with pytest.raises(ValueError, match=rf"'{key}': expected torch.float32 of shape \(5,\), got .* \(7,\)"):
        perceiver.from_pretrained(folder)
    rewrite_weights(folder, lambda t: t.pop(key))
    with pytest.raises(ValueError, match="missing tensors .*head.fc.bias"):
        perceiver.from_pretrained(folder)
    rewrite_weights(folder, lambda t: t.update({key: torch.zeros(5), "extra": torch.zeros(1)}))
    with pytest.raises(ValueError, match="unexpected tensors .*extra"):
        perceiver.from_pretrained(folder)


def test_non_finite_weights_are_rejected_unless_asked(folder):
    def corrupt(t):
        t["head.fc.weight"][0, 0] = float("nan")

    rewrite_weights(folder, corrupt)
    with pytest.raises(ValueError, match="'head.fc.weight' holds NaN or inf"):
        perceiver.from_pretrained(folder)
    model = perceiver.from_pretrained(folder, check_finite=False)
    assert model.head.fc.weight.isnan().any()


def test_corrupted_weights_file_is_a_clear_error(folder):
    (folder / "model.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="expected a safetensors file"):
        perceiver.from_pretrained(folder)


@pytest.mark.parametrize("name", ["", ".", "./nope", "/no/such/dir", "~/no-such-model-dir", "a/b/c", "runs\\x\\y"])
def test_missing_local_paths_are_file_not_found_naming_the_path(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    if name == ".":
        pytest.raises(FileNotFoundError, perceiver.from_pretrained, name)  # a folder without config.json
        return
    with pytest.raises(FileNotFoundError) as e:
        perceiver.from_pretrained(name)
    assert repr(name) in str(e.value) or name in str(e.value)


def test_partially_existing_path_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_local("runs/model") and not looks_local("deepmind/language-perceiver")
    with pytest.raises(FileNotFoundError, match="runs/model"):
        perceiver.from_pretrained("runs/model")
    with pytest.raises(FileNotFoundError):
        perceiver.from_pretrained(tmp_path / "missing")  # a Path is always local


def test_file_permissions_follow_the_umask(model, tmp_path):
    old = os.umask(0o022)
    try:
        out = model.save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644}


def test_save_leaves_no_temp_folders_and_removes_stale_ones(model, tmp_path):
    stale = tmp_path / ".m.999999999.abcd.tmp"  # left by a killed process (no such pid)
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    model.save_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_push_to_hub_uploads_config_weights_and_a_model_card(tmp_path, monkeypatch):
    """`push_to_hub` goes through huggingface_hub: it creates the repo and uploads the folder `save_pretrained`
    writes plus a model card (the network calls are replaced by recorders here)."""
    import huggingface_hub

    import perceiver

    calls: dict[str, object] = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = (repo_id, kwargs)

    def upload_folder(self, repo_id, folder_path, commit_message, **kwargs):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        calls["upload_folder"] = (repo_id, files, commit_message)
        return "https://huggingface.co/me/tiny/commit/0"

    def no_card(repo_id, filename, **kwargs):  # a new repo: no README.md to keep
        raise huggingface_hub.errors.EntryNotFoundError(f"{repo_id} has no {filename}")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_card)
    model = perceiver.Perceiver(input_channels=1, input_axis=1, depth=1, num_latents=4, latent_dim=8,
                                latent_heads=2, cross_dim_head=4, latent_dim_head=4, num_classes=3)  # fmt: skip
    url = model.push_to_hub("me/tiny", private=True)
    assert url.endswith("/commit/0")
    assert calls["create_repo"] == ("me/tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    repo_id, files, message = calls["upload_folder"]
    assert repo_id == "me/tiny" and set(files) == {"config.json", "model.safetensors", "README.md"}
    card = files["README.md"].decode()
    assert "library_name: perceiver-torch" in card and "perceiver.from_pretrained('me/tiny')" in card
    (tmp_path / "m").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "m" / name).write_bytes(files[name])
    again = perceiver.from_pretrained(tmp_path / "m")
    x = torch.randn(2, 5, 1)
    torch.testing.assert_close(again(x), model.eval()(x))


def test_model_class_from_pretrained_takes_hub_ids_and_transformers_folders(tmp_path, monkeypatch):
    """`PerceiverForMaskedLM.from_pretrained("deepmind/language-perceiver")`, as transformers users write it, read the
    id as a local folder ("config.json is missing in deepmind/language-perceiver"); a transformers checkpoint
    folder was refused the same way. Both load as `perceiver.from_pretrained` does, checked against the class."""
    transformers = pytest.importorskip("transformers")
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from perceiver.models import PerceiverForImageClassification, PerceiverForMaskedLM

    config = transformers.PerceiverConfig(
        num_latents=4, d_latents=16, d_model=16, num_self_attends_per_block=1, vocab_size=262,
        max_position_embeddings=16, num_cross_attention_heads=1, num_self_attention_heads=2,
    )  # fmt: skip
    hf = transformers.PerceiverForMaskedLM(config).eval()
    folder = tmp_path / "hf"
    hf.save_pretrained(folder)
    asked = []

    def snapshot_download(repo_id, **kwargs):
        asked.append((repo_id, kwargs.get("revision")))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    ids = torch.randint(6, 262, (1, 16))
    loads = (
        PerceiverForMaskedLM.from_pretrained(folder),
        PerceiverForMaskedLM.from_pretrained("deepmind/language-perceiver", revision="main"),
    )
    for model in loads:
        assert type(model) is PerceiverForMaskedLM
        with torch.no_grad():
            assert (model(ids).logits - hf(ids).logits).abs().max().item() <= 1e-4
    assert asked[0] == ("deepmind/language-perceiver", "main")
    with pytest.raises(ValueError, match="holds a PerceiverForMaskedLM, expected a PerceiverForImageClassification"):
        PerceiverForImageClassification.from_pretrained(folder)


def test_model_class_from_pretrained_takes_a_subfolder(model, tmp_path):
    model.save_pretrained(tmp_path / "repo" / "classic")
    loaded = type(model).from_pretrained(tmp_path / "repo", subfolder="classic")
    x = torch.randn(2, 8, 8, 3)
    assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("existing", [False, True])
def test_a_save_that_fails_midway_leaves_no_half_folder(model, tmp_path, monkeypatch, disk_full_at, existing):
    """Moving the files into place failed after config.json had moved: a new folder was left with config.json alone,
    an existing one with the new config.json beside the old weights. Now the folder holds the old files or none."""
    target = tmp_path / "m"
    old = tiny("perceiver", num_latents=3).save_pretrained(target) if existing else None
    before = {p.name: p.read_bytes() for p in target.iterdir()} if existing else None
    disk_full_at("model.safetensors")
    if not existing:  # a new folder is the temporary one renamed whole: no file is moved alone
        model.save_pretrained(target)
        monkeypatch.undo()
        assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
        return
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(target)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left either
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert perceiver.from_pretrained(old).config.num_latents == 3


def test_a_new_folder_gets_the_permissions_of_a_new_folder(model, tmp_path):
    old = os.umask(0o027)
    try:
        out = model.save_pretrained(tmp_path / "new")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o640}


def test_removing_the_head_is_logged_as_a_removal(tmp_path, caplog):
    """`num_classes=0` logged "Some weights ... were newly initialised ...: []": nothing was, the head was removed."""
    folder = tiny("vision-perceiver-learned").save_pretrained(tmp_path / "m")
    with caplog.at_level("WARNING", logger="perceiver"):
        model = perceiver.from_pretrained(folder, num_classes=0, ignore_mismatched_sizes=True)
    assert model.num_classes == 0 and model.reinitialized_keys == []
    assert "were removed (num_classes=0: pre-logits features)" in caplog.text
    assert "decoder.final_layer.weight" in caplog.text and "newly initialised" not in caplog.text


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("perceiver-ar-tiny", "predicts tokens of its vocabulary"),
        ("question-answering", "fixed head of 2 outputs"),
        ("perceiver-resampler", "has no class head"),
        ("language-perceiver", r"over its vocabulary .* PerceiverForSequenceClassification.from_pretrained"),
        ("optical-flow-perceiver", "has no class head"),
    ],
)
def test_num_classes_of_a_model_without_a_resizable_head_is_one_clear_error(name, why, tmp_path):
    """The hint said to pass ignore_mismatched_sizes=True, which then raised NotImplementedError: now both calls
    are a ValueError saying why the head cannot change."""
    folder = tiny(name).save_pretrained(tmp_path / "m")
    for options in ({}, {"ignore_mismatched_sizes": True}):
        with pytest.raises(ValueError, match=rf"num_classes=5 cannot be given: .*{why}"):
            perceiver.from_pretrained(folder, num_classes=5, **options)


def test_a_resized_head_drops_the_old_heads_class_names(tmp_path):
    """The class-level loader (as `perceiver.from_pretrained`): the names of 5 classes name nothing of a new head of 3
    (top-k lookups would print plausible, wrong names); the same size keeps them."""
    from perceiver.labels import set_id2label
    from perceiver.models import PerceiverForImageClassification

    model = tiny("vision-perceiver-learned")
    set_id2label(model, [f"c{i}" for i in range(5)])
    folder = model.save_pretrained(tmp_path / "m")
    same = PerceiverForImageClassification.from_pretrained(folder, num_classes=5)
    assert same.id2label == {i: f"c{i}" for i in range(5)}
    resized = PerceiverForImageClassification.from_pretrained(folder, num_classes=3, ignore_mismatched_sizes=True)
    assert resized.num_classes == 3 and resized.id2label is None


def test_a_broken_preprocessor_config_is_left_out_with_a_warning(tmp_path, caplog):
    """The image processor config a folder comes with is kept and saved again; one that is not a JSON object does
    not stop the model from loading, and is not written again."""
    folder = tiny("vision-perceiver-learned").save_pretrained(tmp_path / "m")
    assert not (folder / "preprocessor_config.json").exists()
    (folder / "preprocessor_config.json").write_text('{"do_center_crop": true, "crop_size": 12}')
    model = perceiver.from_pretrained(folder)
    assert model.preprocessor_config == {"do_center_crop": True, "crop_size": 12}
    (folder / "preprocessor_config.json").write_text("{not json")
    with caplog.at_level("WARNING", logger="perceiver"):
        model = perceiver.from_pretrained(folder)
    assert "preprocessor_config.json left out: expected a JSON object" in caplog.text
    assert not (model.save_pretrained(tmp_path / "again") / "preprocessor_config.json").exists()
