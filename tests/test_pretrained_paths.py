"""A mistyped local path in `perceiver.from_pretrained` is a FileNotFoundError naming it, never a trip to the Hub
(an HFValidationError, or a network error when offline); `owner/name` ids still go to the Hub."""

from __future__ import annotations

import pytest

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
    assert resolve("deepmind/language-perceiver") == tmp_path and asked == ["deepmind/language-perceiver"]
