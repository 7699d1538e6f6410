"""The Python snippets of README.md and docs/training.md, run as a user copies them, and the options the docs give
the extra commands (`perceiver plot|attention|predict MODEL_DIR|generate|export`).

Only what cannot work offline or in seconds is substituted: a Hub id is a tiny checkpoint saved under the same name in
the working folder (`perceiver.from_pretrained("deepmind/x")` reads a local folder whose first component exists, as
docs/cli.md says), a full-size preset built for an export is its tiny size (`tiny_models.TINY`), a dataset is a tiny
image folder, and the names a snippet leaves to the reader (`pixel_values`, a peer's `state_dict`, `media`) are given
before the statement that uses them. Statements that need something this suite cannot have (krasserm's PyPI wheel)
are listed with the reason and the test that covers them; every listed statement must still be in the docs, and every
python block of the four user docs must be claimed by a test here or in test_docs.py, so nothing is skipped silently.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import TINY

import perceiver

ROOT = Path(__file__).resolve().parents[1]
README, TRAINING, CLI = ROOT / "README.md", ROOT / "docs" / "training.md", ROOT / "docs" / "cli.md"
USER_DOCS = [README, TRAINING, CLI, ROOT / "docs" / "reliability.md"]

# a marker (text found in exactly one python block) -> the test that runs that block
RUNNERS = {
    "from perceiver import Perceiver": "test_docs.py::test_the_quickstart_snippet_runs_as_written",
    'perceiver.from_pretrained("deepmind/language-perceiver")': "test_registry_and_masked_lm_snippet",
    "processor = perceiver.ImageProcessor()": "test_image_processor_snippet",
    "model.reinitialized_keys": "test_model_contract_snippet",
    "from perceiver.export import": "test_deploy_snippet",
    'perceiver.create_model("perceiver-ar-tiny")': "test_ar_resampler_token_heads_snippet",
    "ClassificationTask(pretrained=": "test_fine_tuning_snippet",
}


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.M | re.S)


def block(path: Path, marker: str) -> str:
    found = [b for b in python_blocks(path) if marker in b]
    assert len(found) == 1, f"{path.name}: expected one python block containing {marker!r}, found {len(found)}"
    return found[0]


def run(
    source: str,
    name: str,
    namespace: dict[str, Any],
    before: dict[str, Callable[[dict[str, Any]], None]] | None = None,
    not_run: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Execute `source` statement by statement in `namespace`; `before[text]` runs before the statement containing
    `text` (to give it a name the docs leave to the reader), a statement containing a key of `not_run` is not run.
    Every key must match a statement, so a doc edit that drops one fails here instead of passing by default."""
    before, not_run = before or {}, not_run or {}
    used: set[str] = set()
    for statement in ast.parse(source).body:
        text = ast.get_source_segment(source, statement) or ""
        for key, give in before.items():
            if key in text:
                give(namespace)
                used.add(key)
        skipped = [key for key in not_run if key in text]
        used.update(skipped)
        if not skipped:
            code = compile(ast.Module([statement], type_ignores=[]), f"{name}, line {statement.lineno}", "exec")
            exec(code, namespace)
    missing = (set(before) | set(not_run)) - used
    assert not missing, f"{name}: no statement contains {sorted(missing)} (the docs changed: update this test)"
    return namespace


def save_tiny(folder: str | Path, name: str, **overrides: Any) -> torch.nn.Module:
    model = perceiver.create_model(name, **(TINY[name][0] | overrides))
    model.save_pretrained(folder)
    return model


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A scratch working folder; any Hub download is an error (the snippets must read the local stand-ins)."""
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a snippet tried the network: {args} {kwargs}")

    for fn in ("hf_hub_download", "snapshot_download"):
        monkeypatch.setattr(huggingface_hub, fn, no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_python_block_of_the_user_docs_is_run():
    """Each python block of README.md, docs/training.md, docs/cli.md and docs/reliability.md is claimed by exactly
    one runner (a new block needs a test)."""
    for path in USER_DOCS:
        for i, source in enumerate(python_blocks(path)):
            claims = [marker for marker in RUNNERS if marker in source]
            assert len(claims) == 1, f"{path.name}, python block {i}: claimed by {claims}, expected one runner"
    test_docs = (ROOT / "tests" / "test_docs.py").read_text()
    for runner in RUNNERS.values():
        module, _, name = runner.rpartition("::")
        assert (f"def {name}(" in test_docs) if module else callable(globals().get(name)), f"no test {runner}"


def test_registry_and_masked_lm_snippet(offline):
    save_tiny("deepmind/language-perceiver", "language-perceiver", max_seq_len=2048)
    ns = run(block(README, 'perceiver.from_pretrained("deepmind/language-perceiver")'), "README registry", {})
    assert "vision-perceiver-learned" in perceiver.list_models()
    assert set(perceiver.list_models(pretrained=True)) == set(perceiver.models.registry.list_pretrained())
    out, config = ns["out"], ns["model"].config.encoder
    assert out.logits.shape == (1, 2048, 262)
    assert out.last_hidden_state.shape == (1, config.num_latents, config.latent_dim)
    full = perceiver.models.text.PerceiverMaskedLMConfig().encoder  # the published size the comment gives
    assert (full.num_latents, full.latent_dim) == (256, 1280)


def test_image_processor_snippet(offline):
    import numpy as np

    Image = pytest.importorskip("PIL.Image")

    labels = {i: f"class {i}" for i in range(1000)}
    small = {"adapter.trainable_pos_channels": 8, "adapter.out_channels": 8, "adapter.project_pos_dim": 8}
    save_tiny("tmp", "vision-perceiver-learned", image_size=224, num_labels=1000, **small)
    perceiver.from_pretrained("tmp", id2label=labels).save_pretrained("deepmind/vision-perceiver-learned")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save("cat.jpg")
    Image.fromarray(rng.integers(0, 256, (200, 150, 4), dtype=np.uint8), "RGBA").save("dog.png")
    ns = run(block(README, "processor = perceiver.ImageProcessor()"), "README image processor", {})
    assert ns["pixel_values"].shape == (2, 3, 224, 224) and ns["pixel_values"].dtype == torch.float32
    assert ns["probs"].shape == (2, 1000)
    assert all(len(row) == 5 and set(row) <= set(labels.values()) for row in ns["top5"])
    batch = ns["processor"]([Image.open("cat.jpg")], return_tensors="pt")  # the prose: model(**batch)
    assert ns["model"](**batch).logits.shape == (1, 1000)


def test_model_contract_snippet(offline, monkeypatch):
    import huggingface_hub

    save_tiny("deepmind/vision-perceiver-fourier", "vision-perceiver-fourier", num_labels=1000)
    save_tiny("local/copy", "vision-perceiver-fourier", num_labels=1000)
    uploaded: dict[str, set[str]] = {}

    def upload_folder(self: Any, repo_id: str, folder_path: Any, **kwargs: Any) -> str:
        uploaded[repo_id] = {p.name for p in Path(folder_path).iterdir()}
        return f"https://huggingface.co/{repo_id}/commit/0"

    def no_card(repo_id: str, filename: str, **kwargs: Any) -> None:
        raise huggingface_hub.errors.EntryNotFoundError(f"{repo_id} has no {filename}")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_card)
    given = {"perceiver": perceiver, "pixel_values": torch.randn(2, 3, 16, 16), "labels": torch.tensor([1, 3])}
    ns = run(block(README, "model.reinitialized_keys"), "README model contract", dict(given))

    model, out, x = ns["model"], ns["out"], given["pixel_values"]
    assert ns["features"].__class__.__name__ == "Features"
    assert out.hidden_states is not None and out.latent_attentions is not None
    n, d = model.config.encoder.num_latents, model.config.encoder.latent_dim
    layers = model.config.encoder.num_blocks * model.config.encoder.num_self_attends_per_block
    assert len(out.hidden_states) == 1 + layers and all(h.shape == (2, n, d) for h in out.hidden_states)
    assert [a.shape[-2:] for a in out.latent_attentions] == [(n, n)] * layers
    assert len(out.attentions) == layers and len(out.cross_attentions) == 2  # encoder's cross-attend + decoder's
    assert ns["final"].shape == (2, n, d) and len(ns["steps"]) == 2
    assert uploaded == {"me/my-perceiver": {"config.json", "model.safetensors", "README.md"}}
    assert {p.name for p in Path("dir").iterdir()} == {"config.json", "model.safetensors"}
    assert next(model.parameters()).dtype == torch.float32 and model(x).logits.shape == (2, 10)  # mmap=True, fp32

    # what the comments say: the re-initialised head of a 5-class load, the bf16 load, the shards of a small limit
    reloaded = perceiver.from_pretrained(
        "deepmind/vision-perceiver-fourier", num_classes=5, ignore_mismatched_sizes=True
    )
    assert reloaded.reinitialized_keys == ["decoder.final_layer.bias", "decoder.final_layer.weight"]
    assert next(perceiver.from_pretrained("dir", dtype="bfloat16").parameters()).dtype == torch.bfloat16
    model.save_pretrained("sharded", max_shard_size="20KB")
    assert (Path("sharded") / "model.safetensors.index.json").is_file()
    torch.testing.assert_close(perceiver.from_pretrained("sharded")(x).logits, model(x).logits)


def _deploy(monkeypatch: pytest.MonkeyPatch, fast: bool) -> dict[str, Any]:
    """The Deploy block on the tiny `vision-perceiver-learned`; `fast`: the AOTInductor build and `optimize`'s
    compiled candidates (a minute of compiling even at the tiny size) are left out, the calls themselves are run."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    import perceiver.export

    create = perceiver.create_model
    monkeypatch.setattr(perceiver, "create_model", lambda name, **kw: create(name, **(TINY[name][0] | kw)))
    calls: dict[str, dict[str, Any]] = {}
    if fast:
        export_pt2, optimize = perceiver.export.export_pt2, perceiver.optimize

        def pt2(model: Any, path: Any, **kwargs: Any) -> Any:
            calls["export_pt2"] = kwargs
            return export_pt2(model, path, **(kwargs | {"aoti": False}))

        def eager_only(model: Any, inputs: Any, **kwargs: Any) -> Any:
            calls["optimize"] = kwargs
            return optimize(model, inputs, **kwargs, candidates=["eager", "onednn-linear"], repeats=1, warmup=1)

        monkeypatch.setattr(perceiver.export, "export_pt2", pt2)
        monkeypatch.setattr(perceiver, "optimize", eager_only)
    with contextlib.redirect_stdout(io.StringIO()):
        ns = run(block(README, "from perceiver.export import"), "README deploy", {})
    assert [t.shape for t in ns["x"]] == [(2, 3, 16, 16)]  # (2, 3, 224, 224) at the published size
    assert Path("vision.onnx").is_file() and Path("vision.pt2").is_file()
    assert ns["logits"].shape == (2, 5) and "chose" in str(ns["fast"].report)
    if fast:
        assert calls == {"export_pt2": {"aoti": True, "check": True}, "optimize": {}}
    else:
        from perceiver.export import load_pt2  # the comment: load_pt2(path)(*x) runs it

        torch.testing.assert_close(load_pt2("vision.pt2")(*ns["x"]), ns["model"](*ns["x"]).logits, atol=1e-4, rtol=0)
    return ns


def test_deploy_snippet(offline, monkeypatch):
    _deploy(monkeypatch, fast=True)


@pytest.mark.slow
def test_deploy_snippet_unchanged(offline, monkeypatch):
    """The same block with AOTInductor and every `optimize` candidate (80-170 s on 2 cores)."""
    _deploy(monkeypatch, fast=False)


def test_ar_resampler_token_heads_snippet(offline):
    FlamingoResampler = pytest.importorskip("flamingo_pytorch").PerceiverResampler
    PeerAR = pytest.importorskip("perceiver_ar_pytorch").PerceiverAR

    save_tiny("my-mlm-folder", "language-perceiver")
    save_tiny("deepmind/language-perceiver", "language-perceiver")
    ar_kwargs = dict(num_tokens=262, dim=32, depth=1, max_seq_len=64, cross_attn_seq_len=48, heads=2, dim_head=32)
    peer_ar = PeerAR(**ar_kwargs).eval()
    flamingo = FlamingoResampler(dim=1024, depth=6).eval()  # the sizes the line passes, flamingo's other defaults
    open_flamingo = {f"perceiver.{k}": v for k, v in flamingo.state_dict().items() if k != "media_pos_emb"}
    torch.save({**open_flamingo, "lang_encoder.weight": torch.zeros(1)}, "checkpoint.pt")  # a whole OpenFlamingo dict
    media, mask = torch.randn(2, 3, 5, 1024), torch.ones(2, 3, 5, dtype=torch.bool)
    before = {
        "from_perceiver_ar_pytorch": lambda ns: ns.update(
            state_dict=peer_ar.state_dict(), its_constructor_kwargs=ar_kwargs
        ),
        "from_flamingo_pytorch": lambda ns: ns.update(state_dict=flamingo.state_dict()),
        "resampler(media, media_mask)": lambda ns: ns.update(media=media, media_mask=mask),
    }
    why = "needs krasserm perceiver-io's PyPI wheel: tests/interop/test_krasserm_ar.py"
    not_run = {"PerceiverAR.from_krasserm(": why, '"krasserm/perceiver-ar-clm-base"': why}
    with torch.no_grad():
        ns = run(block(README, 'perceiver.create_model("perceiver-ar-tiny")'), "README AR", {}, before, not_run)
    config = perceiver.create_model("perceiver-ar-tiny").config
    assert (config.max_seq_len, config.num_latents, config.vocab_size) == (512, 128, 262)
    assert ns["out"].shape == (1, ns["prompt"].shape[1] + 64)
    ids = torch.randint(0, 262, (1, 64))
    with torch.no_grad():
        torch.testing.assert_close(ns["ar"].eval()(ids).logits, peer_ar(ids), atol=1e-5, rtol=0)
    assert ns["latents"].shape == (2, 3, 64, 1024)
    assert type(ns["tagger"]).__name__ == "PerceiverForTokenClassification" and set(ns["report"]) >= {"new"}
    assert ns["classifier"].num_classes == 2


def test_fine_tuning_snippet(offline):
    """docs/training.md's Python fine-tuning: a local stand-in for DeepMind's checkpoint, two classes of images."""
    import numpy as np

    pytest.importorskip("lightning")
    Image = pytest.importorskip("PIL.Image")

    save_tiny("deepmind/vision-perceiver-fourier", "vision-perceiver-fourier", num_labels=1000)
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (offline / "path/to/train" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(f"path/to/train/{name}/{i}.png")
    source = block(TRAINING, "ClassificationTask(pretrained=")
    ns: dict[str, Any] = {}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run(source, "training.md fine-tuning", ns)
    assert ns["dm"].num_classes == 2 and ns["task"].model.num_classes == 2  # the head got the data's classes
    assert ns["task"].model.get_classifier().out_features == 2


def test_the_nested_config_sentence_builds_a_model():
    """README's `ImageClassifierConfig(adapter=ImageAdapterConfig(...), ...)` with the classes from the modules the
    paragraph names (a user could not import the bare names from `perceiver`)."""
    paragraph = re.search(r"^Configs nest: .*?(?=\n\n)", README.read_text(), flags=re.M | re.S)
    assert paragraph, "README has no 'Configs nest:' paragraph"
    text = " ".join(paragraph.group(0).split())
    expression = re.search(r"`(ImageClassifierConfig\(.*?\))`", text).group(1).replace("(...)", "()")
    cited = re.findall(r"`(perceiver\.[\w.]+)", text)
    names: dict[str, Any] = {}
    for dotted in cited:
        module, _, attr = dotted.rpartition(".")
        names[attr] = getattr(__import__(module, fromlist=[attr]), attr)
    config = eval(expression, names)  # NameError: a class the paragraph does not say where to import from
    model = names["PerceiverForImageClassification"](config)
    assert model.num_classes == 1000 and model.config.adapter.image_size == (224, 224)


def _cli_stderr(argv: list[str]) -> str:
    """What `perceiver ARGV` prints on stderr, whitespace collapsed."""
    from perceiver.training.cli import main

    err, threads = io.StringIO(), torch.get_num_threads()
    try:
        quiet = contextlib.redirect_stdout(io.StringIO())
        with contextlib.redirect_stderr(err), quiet, pytest.raises(SystemExit) as exit_info:
            main(argv)
    finally:
        torch.set_num_threads(threads)  # the CLI sets the run's threads
    code = exit_info.value.code  # `SystemExit("error: ...")`: Python prints it on stderr as the process ends
    return " ".join(f"{err.getvalue()}\n{code if isinstance(code, str) else ''}".split())


def test_the_error_examples_of_the_docs_are_what_the_cli_prints(monkeypatch, tmp_path):
    """docs/cli.md's unknown-key example and docs/training.md's unknown model keyword: the lines the docs show are
    the ones the command prints (the docs are the expectation: read from them)."""
    pytest.importorskip("lightning")
    monkeypatch.chdir(ROOT)
    example = re.search(r"^```\n(error: unrecognized arguments: (--[\w.]+=\d+)\n.*?)^```", CLI.read_text(), re.M | re.S)
    assert example, "docs/cli.md has no unknown-key example"
    printed = _cli_stderr(["fit", "--config", "configs/digits.yaml", example.group(2), "--print_config"])
    for line in example.group(1).strip().splitlines():
        assert line in printed, f"docs/cli.md shows {line!r}; the CLI printed: {printed[-300:]}"
    text = " ".join(TRAINING.read_text().split())
    shown = re.search(r"`(error: could not build the model .*?unknown keys \['(\w+)'\].*?): \[\.\.\.\]`", text)
    assert shown, "docs/training.md has no unknown-model-keyword example"
    root = str(tmp_path / "run")
    argv = ["fit", "--config", "configs/digits.yaml", f"--model.model_kwargs.{shown.group(2)}", "3"]
    printed = _cli_stderr([*argv, "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", root])
    assert shown.group(1) in printed, f"docs/training.md shows {shown.group(1)!r}; the CLI printed: {printed[-300:]}"


# --- the options the docs give the extra commands -----------------------------------------------------------------

EXTRA_COMMANDS = ("plot", "attention", "predict", "generate", "export")


def _help_flags(command: str) -> set[str]:
    from perceiver.training.cli import main

    argv = [command, "MODEL_DIR", "--help"] if command == "predict" else [command, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None), f"perceiver {' '.join(argv)} failed"
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", out.getvalue()))


def documented_invocations() -> list[tuple[str, str, list[str]]]:
    """(doc, command line, options) of each `perceiver plot|attention|predict MODEL_DIR|generate|export ...` line
    in the user docs' shell blocks and backticks (a `#` comment ends a shell line)."""
    found = []
    for path in USER_DOCS:
        text = path.read_text()
        lines = re.findall(r"`(perceiver [a-z]+ [^`]*)`", text)
        for line in re.sub(r"\\\n\s*", " ", text).splitlines():
            if re.match(r"\s*perceiver [a-z]+ ", line):
                lines.append(line.split(" #")[0])
        for line in lines:
            words = line.split()
            if len(words) < 3 or words[1] not in EXTRA_COMMANDS or (words[1] == "predict" and words[2][0] == "-"):
                continue  # Lightning's subcommands: test_docs.py parses them
            options = [w.split("=")[0].strip("[]") for w in words[2:] if re.match(r"\[?--?[A-Za-z]", w)]
            found.append((path.name, line.strip(), options))
    return found


def test_every_option_the_docs_give_the_extra_commands_exists():
    """`perceiver export ... --quantize int8`, `perceiver predict MODEL_DIR ... --top-k 3`, ...: each option is in
    the command's `--help` (for predict, the model-folder form's: `perceiver predict MODEL_DIR -h`)."""
    invocations = documented_invocations()
    assert {command.split()[1] for _, command, _ in invocations} == set(EXTRA_COMMANDS)
    known = {command: _help_flags(command) for command in EXTRA_COMMANDS}
    unknown = [
        f"{doc}: {command!r}: {option}"
        for doc, command, options in invocations
        for option in options
        if option not in known[command.split()[1]]
    ]
    assert not unknown, f"options the docs give but the commands do not have: {unknown}"
    assert "--top-k" in known["predict"] and "--not-an-option" not in known["predict"]  # the check can fail


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
