"""`push_to_hub` as transformers users call it, with huggingface_hub's network calls replaced by recorders: the repo
`create_repo` answers (a bare name is the user's namespace), an existing model card kept, transformers' keywords
(`revision`, `create_pr`, `commit_description`, `tags`, `max_shard_size`), and weight files of an earlier push
deleted in the same commit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import tiny

import perceiver

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import RepoUrl  # noqa: E402
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError  # noqa: E402


class FakeHub:
    """Records what `push_to_hub` asks of the Hub; `user` is the account a bare repo name belongs to, `readme` the
    repo's README.md (None: the repo has none)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, readme: str | None = None) -> None:
        self.user, self.readme, self.tmp = "me", readme, tmp_path
        self.calls: dict[str, object] = {}
        self.files: dict[str, bytes] = {}
        hub = self

        def create_repo(self, repo_id, **kwargs):
            hub.calls["create_repo"] = (repo_id, kwargs)
            name = repo_id if "/" in repo_id else f"{hub.user}/{repo_id}"
            return RepoUrl(f"https://huggingface.co/{name}")

        def create_branch(self, repo_id, branch, **kwargs):
            hub.calls["create_branch"] = (repo_id, branch)

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            hub.files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            hub.calls["upload_folder"] = (repo_id, kwargs)
            return f"https://huggingface.co/{repo_id}/commit/1"

        def hf_hub_download(repo_id, filename, **kwargs):
            hub.calls["hf_hub_download"] = (repo_id, filename, kwargs)
            if hub.readme is None:
                raise EntryNotFoundError(f"{repo_id} has no {filename}")
            path = hub.tmp / "downloaded-README.md"
            path.write_text(hub.readme)
            return str(path)

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)


@pytest.fixture(scope="module")
def model():
    return tiny("vision-perceiver-learned")


def test_a_bare_repo_name_is_pushed_to_the_users_namespace(model, monkeypatch, tmp_path):
    """`model.push_to_hub("tiny")` uploaded to the repo id "tiny" (not the "me/tiny" `create_repo` made) and wrote
    `perceiver.from_pretrained('tiny')` into the card, which loads a local folder "tiny"."""
    hub = FakeHub(monkeypatch, tmp_path)
    url = model.push_to_hub("tiny", private=True, commit_message="first")
    assert url == "https://huggingface.co/me/tiny/commit/1"
    assert hub.calls["create_repo"] == ("tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    repo_id, kwargs = hub.calls["upload_folder"]
    assert repo_id == "me/tiny" and kwargs["commit_message"] == "first"
    card = hub.files["README.md"].decode()
    assert "perceiver.from_pretrained('me/tiny')" in card and "# me/tiny" in card
    assert "library_name: perceiver-torch" in card and "- perceiver-image-classifier" in card
    assert "pipeline_tag: image-classification" in card  # the Hub's task filter


def test_an_existing_model_card_is_kept_with_the_tags_added(model, monkeypatch, tmp_path):
    """Every push replaced the repo's README.md (a hand-written model card) by a generated one."""
    readme = "---\nlicense: mit\ntags:\n- mine\n---\n\n# My model\n\nTrained on my data.\n"
    hub = FakeHub(monkeypatch, tmp_path, readme=readme)
    model.push_to_hub("me/tiny", tags=["vision", "mine"])
    card = hub.files["README.md"].decode()
    assert "# My model\n\nTrained on my data." in card and "license: mit" in card
    assert "- mine\n- vision" in card and card.count("- mine") == 1
    assert hub.calls["hf_hub_download"][:2] == ("me/tiny", "README.md")
    hub.readme = None
    model.push_to_hub("me/tiny", tags=["vision"])
    assert "- vision" in hub.files["README.md"].decode()
    model.push_to_hub("me/tiny", model_card="# given\n")
    assert hub.files["README.md"] == b"# given\n"


def test_an_unreachable_hub_is_not_taken_for_a_repo_without_a_card(model, monkeypatch, tmp_path):
    hub = FakeHub(monkeypatch, tmp_path)

    def offline(repo_id, filename, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(LocalEntryNotFoundError):
        model.push_to_hub("me/tiny")
    assert "upload_folder" not in hub.calls


def test_transformers_keywords_of_push_to_hub(model, monkeypatch, tmp_path):
    """`revision=`, `create_pr=`, `commit_description=`, `max_shard_size=` were TypeErrors."""
    hub = FakeHub(monkeypatch, tmp_path)
    model.push_to_hub("me/tiny", revision="dev", commit_description="why", create_pr=True, max_shard_size="50KB")
    assert hub.calls["create_branch"] == ("me/tiny", "dev")
    assert hub.calls["hf_hub_download"][2]["revision"] == "dev"
    _, kwargs = hub.calls["upload_folder"]
    assert kwargs["revision"] == "dev" and kwargs["create_pr"] is True and kwargs["commit_description"] == "why"
    assert kwargs["commit_message"] == "Upload perceiver-torch model"
    assert "model.safetensors.index.json" in hub.files and "model.safetensors" not in hub.files
    with pytest.raises(ValueError, match="tags: expected a list of strings, got 'vision'"):
        model.push_to_hub("me/tiny", tags="vision")


def test_weights_of_an_earlier_push_are_deleted_and_the_pushed_files_load(model, monkeypatch, tmp_path):
    """A single-file push after a sharded one (or the reverse) left the old weight files in the repo; loaders read
    model.safetensors before an index, so the stale one would be loaded. The commit now deletes remote weight files
    it does not replace (huggingface_hub's `delete_patterns` keeps the ones it uploads)."""
    import fnmatch

    hub = FakeHub(monkeypatch, tmp_path)
    model.push_to_hub("me/tiny", max_shard_size="50KB")
    patterns = hub.calls["upload_folder"][1]["delete_patterns"]
    stale = ["model.safetensors", "model-00001-of-00003.safetensors", "model.safetensors.index.json"]
    kept = ["README.md", "config.json", "preprocessor_config.json", ".gitattributes", "notes/model.txt"]
    assert all(any(fnmatch.fnmatch(name, p) for p in patterns) for name in stale)
    assert not any(fnmatch.fnmatch(name, p) for name in kept for p in patterns)
    folder = tmp_path / "pulled"
    folder.mkdir()
    for name, data in hub.files.items():
        (folder / name).write_bytes(data)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(perceiver.from_pretrained(folder)(x).logits, model(x).logits, rtol=0, atol=0)
