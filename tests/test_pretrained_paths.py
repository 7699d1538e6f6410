"""A mistyped local path in `perceiver.from_pretrained` is a FileNotFoundError naming it, never a trip to the Hub
(an HFValidationError, or a network error when offline); `owner/name` ids still go to the Hub."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from tiny_models import tiny

import perceiver
from perceiver.pretrained import resolve


@pytest.fixture
def no_hub(monkeypatch):
    """Fails the test if anything asks the Hugging Face Hub."""
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def snapshot_download(repo_id, **kwargs):
        raise AssertionError(f"{repo_id!r} was sent to the Hugging Face Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


@pytest.mark.parametrize("name", ["./runs/typo", "runs/typo/model", "typo_dir", "typo dir", "my-perceivr"])
def test_mistyped_local_path_is_file_not_found(name, tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "my-perceiver").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        perceiver.from_pretrained(name)
    assert repr(name) in str(e.value) and "no such folder" in str(e.value)


def test_bare_name_says_what_a_hub_id_looks_like(tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"a Hub id is 'owner/name'"):
        resolve("typo_dir")


def test_existing_bare_folder_is_local(tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-perceiver").mkdir()
    assert resolve("my-perceiver") == tmp_path.joinpath("my-perceiver").relative_to(tmp_path)


def test_owner_name_goes_to_the_hub(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    asked = []

    def snapshot_download(repo_id, **kwargs):
        asked.append(repo_id)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)
    assert resolve("deepmind/language-perceiver") == tmp_path
    assert set(asked) == {"deepmind/language-perceiver"}  # twice: no safetensors there, then pytorch_model.bin


def _hub_cache(cache: Path, repo_id: str, folder: Path, commit: str, ref: str | None = "main") -> None:
    """`folder` as the snapshot `commit` of `repo_id` in a huggingface_hub cache at `cache` (its real layout), with
    the branch or tag `ref` pointing at it."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    if ref is not None:
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)


def test_hub_ids_resolve_offline_from_a_cache_at_a_revision(tmp_path, monkeypatch):
    """`cache_dir`, `local_files_only` and `revision` reach huggingface_hub: a Hub id loads from its cache without a
    network, at the branch, tag or commit asked for."""
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cache = tmp_path / "cache"
    main, tagged = tiny("perceiver", num_classes=5), tiny("perceiver", num_classes=7)
    _hub_cache(cache, "me/tiny", main.save_pretrained(tmp_path / "main"), "a" * 40)
    _hub_cache(cache, "me/tiny", tagged.save_pretrained(tmp_path / "v1"), "b" * 40, ref="v1")
    options = dict(cache_dir=cache, local_files_only=True)
    assert perceiver.from_pretrained("me/tiny", **options).num_classes == 5
    assert perceiver.from_pretrained("me/tiny", revision="v1", **options).num_classes == 7
    assert perceiver.from_pretrained("me/tiny", revision="b" * 40, **options).num_classes == 7
    with pytest.raises(OSError, match="could not fetch 'me/tiny'"):
        perceiver.from_pretrained("me/tiny", revision="v2", **options)


def test_token_and_force_download_go_to_the_hub(tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    folder = tiny("perceiver").save_pretrained(tmp_path / "m")
    asked = []

    def snapshot_download(repo_id, **kwargs):
        asked.append(kwargs)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    perceiver.from_pretrained("me/private", token="hf_x", force_download=True, revision="v3")
    assert asked[0]["token"] == "hf_x" and asked[0]["force_download"] and asked[0]["revision"] == "v3"


def test_home_relative_folders_save_and_load_alike(tmp_path, monkeypatch):
    """`~/x` names the same folder for saving and loading (save_pretrained made a folder literally named "~" in the
    working directory, which perceiver.from_pretrained("~/x") then did not find)."""
    from perceiver import lora
    from perceiver.export import export_onnx

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    model = tiny("vision-perceiver-learned")
    assert model.save_pretrained("~/model") == tmp_path / "home" / "model"
    assert type(perceiver.from_pretrained("~/model")) is type(model)
    assert type(type(model).from_pretrained("~/model")) is type(model)
    adapter = lora.save_adapter(lora.add_lora(model, r=2), "~/adapter", base_model="~/model")
    assert adapter == tmp_path / "home" / "adapter" and lora.has_lora(perceiver.from_pretrained("~/adapter"))
    lora.load_adapter(tiny("vision-perceiver-learned"), "~/adapter")
    assert export_onnx(tiny("perceiver"), "~/m.onnx", inputs=torch.randn(2, 8, 8, 3)).is_file()
    assert not (tmp_path / "~").exists()


def test_subfolder_of_a_local_folder_and_of_a_hub_repo(tmp_path, monkeypatch):
    """transformers' `subfolder`: the model in a folder of the folder or repo (it was silently ignored, so the error
    was about config.json missing from the outer folder)."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    repo = tmp_path / "repo"
    tiny("perceiver", num_classes=7).save_pretrained(repo / "classifier")
    assert perceiver.from_pretrained(repo, subfolder="classifier").num_classes == 7
    with pytest.raises(FileNotFoundError, match=r"subfolder 'typo' of .*repo, no such folder"):
        perceiver.from_pretrained(repo, subfolder="typo")
    with pytest.raises(ValueError, match="subfolder: expected a relative path inside the model folder"):
        perceiver.from_pretrained(repo / "classifier", subfolder="../classifier")
    asked = []

    def snapshot_download(repo_id, allow_patterns, **kwargs):
        asked.append(allow_patterns)
        return str(repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert perceiver.from_pretrained("me/repo", subfolder="classifier").num_classes == 7
    assert asked and all(p.startswith("classifier/") for p in asked[0])


def test_hub_download_fetches_bin_weights_only_without_safetensors(tmp_path, monkeypatch):
    """A repo with both formats downloads the safetensors weights alone (both were fetched: twice the bytes); one
    with `pytorch_model.bin` only gets it in a second request."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    import fnmatch

    def fake_repo(files):
        folder = tmp_path / f"snap{len(list(tmp_path.iterdir()))}"
        asked: list[list[str]] = []

        def snapshot_download(repo_id, allow_patterns, **kwargs):
            asked.append(allow_patterns)
            folder.mkdir(exist_ok=True)
            for name in files:
                if any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                    (folder / name).write_text("x")
            return str(folder)

        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        return folder, asked

    folder, asked = fake_repo(["config.json", "model.safetensors", "pytorch_model.bin"])
    assert resolve("me/both") == folder
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"] and len(asked) == 1
    folder, asked = fake_repo(["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json"])
    assert resolve("me/bin") == folder and len(asked) == 2
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model.bin.index.json",
    ]


def test_a_file_says_which_folder_to_pass(tmp_path):
    folder = tiny("perceiver").save_pretrained(tmp_path / "m")
    for name in ("model.safetensors", "config.json"):
        with pytest.raises(ValueError, match=f"got the file .*{name}; pass the folder that holds it: {folder}$"):
            perceiver.from_pretrained(folder / name)
    ckpt = tmp_path / "runs" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(
        ValueError,
        match=r"a Lightning checkpoint .* its run wrote .*interop.krasserm_checkpoint.from_krasserm_checkpoint",
    ):
        perceiver.from_pretrained(ckpt)


def test_a_folder_without_config_names_what_it_holds(tmp_path):
    """A run folder (`RUN_DIR` instead of `RUN_DIR/model`): the error lists its files and the model folder inside."""
    run = tmp_path / "run"
    tiny("perceiver").save_pretrained(run / "model")
    (run / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match=r"expected config.json in .*run, found \['checkpoints', 'model'\]; "):
        perceiver.from_pretrained(run)
    with pytest.raises(FileNotFoundError, match=re.escape(str(run / "model"))):
        perceiver.from_pretrained(run)


def test_an_adapter_repo_revision_is_not_the_base_models(tmp_path, monkeypatch):
    """`revision` names a commit of the adapter's repo: the base model it names is fetched at its own default."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from perceiver import lora

    base = tiny("vision-perceiver-learned").save_pretrained(tmp_path / "base")
    adapter = lora.save_adapter(
        lora.add_lora(perceiver.from_pretrained(base), r=2), tmp_path / "ad", base_model="me/base"
    )
    with pytest.raises(ValueError, match=f"pass the folder that holds it: {adapter}$"):
        perceiver.from_pretrained(adapter / "adapter_model.safetensors")
    asked = {}

    def snapshot_download(repo_id, **kwargs):
        asked[repo_id] = kwargs.get("revision")
        return str(adapter if repo_id == "me/adapter" else base)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert lora.has_lora(perceiver.from_pretrained("me/adapter", revision="v2", token="hf_x"))
    assert asked == {"me/adapter": "v2", "me/base": None}


def test_transformers_keywords_that_change_nothing_here_are_accepted(tmp_path):
    """`trust_remote_code=True` / `low_cpu_mem_usage=True`, copied from transformers code, were taken for config fields
    ("unknown keys ['trust_remote_code'] for PerceiverConfig"): no code is run from a folder, no random init drawn."""
    model = tiny("perceiver")
    folder = model.save_pretrained(tmp_path / "m")
    x = torch.randn(2, 8, 8, 3)
    for load in (perceiver.from_pretrained, type(model).from_pretrained):
        loaded = load(folder, trust_remote_code=True, low_cpu_mem_usage=True)
        assert torch.equal(model.eval()(x), loaded(x))
    with pytest.raises(ValueError, match=r"unknown keys \['use_safetensors'\]"):
        perceiver.from_pretrained(folder, use_safetensors=False)  # one that would: not silently dropped
