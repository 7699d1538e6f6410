"""`push_to_hub` of our models (`perceiver.hub.PretrainedMixin.push_to_hub`): the folder `save_pretrained` writes and
a model card, uploaded with huggingface_hub in one commit, as transformers' `push_to_hub` does it.

The repo is the one `create_repo` answers (a bare name `"my-model"` is the user's `"me/my-model"`); a model card the
repo has already (`README.md`) is kept, with the tags asked for added, and a new one is written only for a repo
without one (or given as `model_card=`); weight files of an earlier push that this one does not replace
(`model.safetensors` after a sharded push, or shards after a single file) are deleted in the same commit, since a
loader that finds both takes `model.safetensors`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

#: the Hub's task (`pipeline_tag` of the model card, which the Hub filters and searches by) of each model type
PIPELINE_TAGS = {
    "perceiver-image-classifier": "image-classification",
    "perceiver-audio-classifier": "audio-classification",
    "perceiver-video-classifier": "video-classification",
    "perceiver-text-classifier": "text-classification",
    "perceiver-token-classifier": "token-classification",
    "perceiver-question-answering": "question-answering",
    "perceiver-masked-lm": "fill-mask",
    "perceiver-ar": "text-generation",
    "lucidrains-perceiver-lm": "text-generation",
}

#: the remote files an upload replaces (with the files it adds): every weight file `save_pretrained` writes
WEIGHT_PATTERNS = ["model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json"]


def _new_card(model: Any, repo_id: str, tags: list[str]) -> str:
    """A model card for a repo without one: library, task, tags, the class, size and how to load it."""
    from huggingface_hub import ModelCardData

    tags = ["perceiver", model.model_type, *(t for t in tags if t not in ("perceiver", model.model_type))]
    data = ModelCardData(library_name="perceiver-torch", tags=tags, pipeline_tag=PIPELINE_TAGS.get(model.model_type))
    n = sum(p.numel() for p in model.parameters())
    body = (
        f"# {repo_id}\n\nA `{type(model).__name__}` ({model.model_type}, {n:,} parameters) saved by "
        f"perceiver-torch.\n\n```python\nimport perceiver\n\n"
        f"model = perceiver.from_pretrained({repo_id!r})\n```\n"
    )
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def _existing_card(repo_id: str, token: str | None, revision: str | None) -> str | None:
    """The text of the repo's model card, or None when it has no README.md."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RevisionNotFoundError

    try:
        path = hf_hub_download(repo_id, "README.md", revision=revision, token=token)
    except LocalEntryNotFoundError:  # the Hub not reached (an EntryNotFoundError too): not "no card"
        raise
    except (EntryNotFoundError, RevisionNotFoundError):  # no card yet (or a branch this push creates)
        return None
    return Path(path).read_text(encoding="utf-8")


def _with_tags(card: str, tags: list[str]) -> str:
    """The model card text `card` with `tags` added to its metadata (the text as it is when it has them all)."""
    from huggingface_hub import ModelCard

    parsed = ModelCard(card, ignore_metadata_errors=True)
    have = list(getattr(parsed.data, "tags", None) or [])
    if all(t in have for t in tags):
        return card
    parsed.data.tags = have + [t for t in tags if t not in have]  # type: ignore[attr-defined]  # ModelCardData has tags
    return str(parsed)


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    tags: list[str] | None = None,
    model_card: str | None = None,
    max_shard_size: int | str = "50GB",
) -> str:
    """Upload `model` (see the module docstring and `PretrainedMixin.push_to_hub`); returns the commit URL (or the
    pull request's with `create_pr=True`)."""
    try:
        from huggingface_hub import HfApi
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("push_to_hub needs huggingface_hub: pip install 'perceiver-torch[hub]'") from e
    if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) for t in tags)):
        raise ValueError(f"tags: expected a list of strings, got {tags!r}")

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    repo_id = getattr(url, "repo_id", None) or repo_id  # "name" alone: the repo in the user's namespace
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    card = model_card if model_card is not None else _existing_card(repo_id, token, revision)
    if card is None:
        card = _new_card(model, repo_id, list(tags or []))
    elif tags:
        card = _with_tags(card, list(tags))
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save_pretrained(Path(tmp) / "model", max_shard_size=max_shard_size)
        (folder / "README.md").write_text(card, encoding="utf-8")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or "Upload perceiver-torch model",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
            delete_patterns=WEIGHT_PATTERNS,
        )
    return str(getattr(info, "pr_url", None) or info) if create_pr else str(info)
