"""Manners of the `perceiver` command: failed starts do not block reruns, `--ckpt_path last` without a checkpoint is
an error (`last_if_any` starts fresh), keys are matched exactly, help is fast and exact, Lightning's tips are quiet,
predict leaves the datamodule alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from trainutil import CONFIGS, ROOT, tiny_args

from perceiver.training import cli, help_cache
from perceiver.training.cli import main

#: runs the console script's entry point with argv[1:], then prints which heavy modules it imported (last line)
PROBE = """
import json, sys
sys.argv[0] = "perceiver"
from perceiver.training.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
heavy = ("torch", "lightning", "lightning.pytorch", "jsonargparse")
print(json.dumps({"code": code, "imported": [m for m in heavy if m in sys.modules]}))
"""


def run_probe(*argv: str, cache: Path | None, cwd: Path = ROOT) -> tuple[str, dict]:
    """`perceiver ARGV` in a fresh interpreter: (what it printed, {"code", "imported"})."""
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("PERCEIVER_CACHE_DIR", None)
    if cache is None:
        env["PERCEIVER_HELP_CACHE"] = "0"
    else:
        env["PERCEIVER_HELP_CACHE"] = "1"
        env["PERCEIVER_CACHE_DIR"] = str(cache)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text, _, last = out.stdout.rstrip("\n").rpartition("\n")
    return text, json.loads(last)


# -- 1. a failed start leaves nothing that blocks a rerun -----------------------------------------------------------


class CrashAtFirstStep(Callback):
    """Raises when the first training batch starts (the loggers and the saved config are already written)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        raise RuntimeError("crash at the first step")


@pytest.mark.parametrize(
    ("broken", "error"),
    [
        (["--model.model_kwargs.input_channels=3"], "input_channels"),  # model and datamodule disagree, at setup
        ([f"--trainer.callbacks+={Path(__file__).stem}.CrashAtFirstStep"], "crash at the first step"),
    ],
    ids=["setup", "first-step"],
)
def test_failed_start_leaves_nothing_that_blocks_a_rerun(broken, error, tmp_path):
    run = tmp_path / "run"
    with pytest.raises((SystemExit, RuntimeError), match=error):
        main(["fit", *tiny_args("digits", run, *broken)])
    assert not run.exists() or not any(run.iterdir()), sorted(p.name for p in run.iterdir())
    main(["fit", *tiny_args("digits", run)])  # the corrected command, same directory, no --overwrite
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "model" / "model.safetensors").is_file()


def test_leftovers_of_a_killed_start_do_not_block_but_a_run_does(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    (run / "tb" / "events.out.tfevents.1.host.1.0").write_bytes(b"\0" * 64)
    (run / "config.yaml").write_text("trainer: {}\n")
    (run / "hparams.yaml").write_text("{}\n")
    (run / "metrics.csv").write_text("lr-AdamW/pg1,lr-AdamW/pg2,step\n0.002,0.002,0\n")  # before the first step
    main(["fit", *tiny_args("digits", run)])
    assert "clearing what a failed start left" in capsys.readouterr().err
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1  # the stale event file is gone
    with pytest.raises(SystemExit, match="already holds a run"):  # now it holds a run: refused as before
        main(["fit", *tiny_args("digits", run)])


def test_no_step_budget_is_an_error_naming_the_budgets(tmp_path):
    """`max_epochs=-1` without `max_steps` (a `max_time` run): the cosine schedule has no length (Lightning's
    estimated steps are infinite; was an OverflowError from int(inf)). An error naming the keys, and nothing left."""
    run = tmp_path / "run"
    budget = ["--trainer.max_epochs=-1", "--trainer.max_time=00:00:00:05"]
    with pytest.raises(
        SystemExit, match=r"needs a step budget: expected trainer.max_steps or trainer.max_epochs, got "
    ):
        main(["fit", *tiny_args("digits", run, *budget)])
    assert not run.exists() or not any(run.iterdir())
    main(["fit", *tiny_args("digits", run, *budget, "--trainer.max_steps=3")])  # max_steps gives the length
    assert (run / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("flags", "files"),
    [
        (["--trainer.logger=false"], {"checkpoints", "config.yaml", "model"}),  # no LearningRateMonitor then
        (["--trainer.enable_checkpointing=false"], {"config.yaml", "hparams.yaml", "metrics.csv", "model", "tb"}),
        (["--trainer.barebones=true", "--trainer.log_every_n_steps=null"], {"config.yaml", "model"}),
    ],
    ids=["no-logger", "no-checkpointing", "barebones"],
)
def test_trainer_switches_that_turn_off_logging_or_checkpoints_are_respected(flags, files, tmp_path):
    """Lightning refused our default callbacks (MisconfigurationException: a LearningRateMonitor without a logger,
    a ModelCheckpoint with enable_checkpointing=False); the run still saves its model folder."""
    main(["fit", *tiny_args("digits", tmp_path, *flags)])
    assert {p.name for p in tmp_path.iterdir()} == files
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_the_parser_pickles_by_name_for_ddp_spawn():
    """`strategy: ddp_spawn` pickles the trainer, whose config callback holds the parser: its class, defined on first
    use inside a function, failed ("Can't pickle local object"); it is importable from the module by name."""
    import pickle

    parser = cli.PerceiverCLI.parser_class
    assert pickle.loads(pickle.dumps(parser)) is parser is cli.PerceiverArgumentParser


# -- 2. --ckpt_path last / last_if_any -----------------------------------------------------------------------------


def test_ckpt_path_last_without_a_checkpoint_is_an_error(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        main(["fit", *tiny_args("digits", run), "--ckpt_path=last"])
    message = str(err.value)
    assert f"run directory {run}" in message and f"{run / 'checkpoints'}/last*.ckpt" in message
    assert "last_if_any" in message
    assert not (run / "metrics.csv").exists() and not (run / "checkpoints").exists()  # nothing trained


def test_ckpt_path_last_if_any_starts_fresh_then_resumes(tmp_path):
    run = tmp_path / "run"
    main(["fit", *tiny_args("digits", run), "--ckpt_path=last_if_any"])  # no checkpoint yet: a fresh run
    first = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    main(["fit", *tiny_args("digits", run, "--trainer.max_epochs=2"), "--ckpt_path=last_if_any"])  # resumes
    second = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (first["epoch"], second["epoch"]) == (0, 1)
    assert second["global_step"] == first["global_step"] + 2


def test_ckpt_path_last_if_any_is_for_fit_only(tmp_path):
    with pytest.raises(SystemExit, match="last_if_any is for fit"):
        main(["validate", *tiny_args("digits", tmp_path), "--ckpt_path=last_if_any"])


@pytest.mark.parametrize("ckpt_path", ["last", "last_if_any"])
def test_overwrite_and_resume_together_are_an_error(ckpt_path, tmp_path):
    # either would be ignored: resuming kept the old run despite --overwrite true
    with pytest.raises(SystemExit, match=rf"--overwrite true starts .* --ckpt_path {ckpt_path} resumes it"):
        main(["fit", *tiny_args("digits", tmp_path / "run"), "--overwrite=true", f"--ckpt_path={ckpt_path}"])
    assert not (tmp_path / "run").exists()


def test_ckpt_path_help_documents_last_if_any(capsys):
    with pytest.raises(SystemExit):
        cli._run_cli(["fit", "--help"], from_sys=False)  # the real parser, no cache
    assert "'last_if_any' (fit only)" in " ".join(capsys.readouterr().out.split())


# -- 3. keys are matched exactly -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("--trainer.max_epoch=3", "--trainer.max_epochs"),  # a nested abbreviation (argparse's allow_abbrev)
        ("--overwrit=true", "--overwrite"),  # a top-level abbreviation
        ("--trainer.max_epocs=3", "--trainer.max_epochs"),  # a misspelling
    ],
)
def test_abbreviated_and_misspelled_keys_are_rejected(key, hint, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["fit", *tiny_args("digits", tmp_path), key, "--print_config"])
    assert err.value.code not in (0, None)
    printed = capsys.readouterr().err
    assert f"unrecognized arguments: {key}" in printed and f"did you mean {hint}" in printed
    assert not (tmp_path / "metrics.csv").exists()


def test_abbreviated_key_of_the_main_parser_is_rejected(capsys):
    with pytest.raises(SystemExit) as err:
        main(["--print_conf", "fit", "--config", str(CONFIGS / "digits.yaml")])
    assert err.value.code not in (0, None)
    printed = capsys.readouterr().err
    assert "unrecognized arguments: --print_conf" in printed and "did you mean --print_config" in printed


# -- 4. fast, exact help -------------------------------------------------------------------------------------------


def test_top_level_help_imports_neither_torch_nor_lightning(tmp_path):
    text, probe = run_probe("--help", cache=tmp_path)
    assert probe["code"] == 0 and "perceiver fit|validate|test|predict" in text and "last_if_any" in text
    if probe["imported"]:
        eager = subprocess.run(
            [sys.executable, "-c", "import sys, perceiver.training; print('lightning' in sys.modules)"],
            capture_output=True,
            text=True,
        )
        if eager.stdout.strip() == "True":
            pytest.xfail("perceiver/training/__init__.py imports the task modules (Lightning) eagerly")
    assert probe["imported"] == [], f"`perceiver --help` imported {probe['imported']}"


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_names_the_package_torch_lightning_and_python_without_importing_them(flag):
    from importlib.metadata import version

    import perceiver

    text, probe = run_probe(flag, cache=None)
    assert probe == {"code": 0, "imported": []}
    expected = f"perceiver-torch {perceiver.__version__} (torch {version('torch')}, lightning {version('lightning')}, "
    assert text.strip().startswith(expected) and text.strip().endswith(f"Python {sys.version.split()[0]})")


def test_import_perceiver_is_lazy():
    code = "import sys, perceiver; print(sorted(m for m in ('torch', 'perceiver.models') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = "from perceiver import Perceiver, PerceiverIO, ModelOutput, __all__; import perceiver; " + (
        "print(all(getattr(perceiver, n) is not None for n in __all__))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr[-2000:]


def test_cached_subcommand_help_equals_the_real_parser(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text((CONFIGS / "digits.yaml").read_text())
    argv = ["fit", "--config", str(config), "--help"]
    real, probe = run_probe(*argv, cache=None)
    assert probe["code"] == 0 and "--trainer.max_epochs" in real and "last_if_any" in real
    cache = tmp_path / "cache"
    rendered, _ = run_probe(*argv, cache=cache)  # rendered by the real parser, then stored
    assert rendered == real
    (entry,) = (cache / "help").glob("*.txt")
    assert entry.read_text() == real + "\n"
    entry.write_text(entry.read_text() + "(from the cache)\n")  # mark it, to see where the next help comes from
    cached, probe = run_probe(*argv, cache=cache)
    assert cached == real + "\n(from the cache)" and probe["code"] == 0
    if "lightning" not in probe["imported"]:  # (perceiver.training's package may still import it: see above)
        assert probe["imported"] == []
    # the config file changed (mtime): the entry is not used, the help is rendered again by the real parser
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    again, _ = run_probe(*argv, cache=cache)
    assert again == real and len(list((cache / "help").glob("*.txt"))) == 2


def test_help_request_is_an_option_not_a_value():
    assert help_cache.is_help_request(["fit", "--help"]) and help_cache.is_help_request(["fit", "-h"])
    assert help_cache.is_help_request(["fit", "--model.help", "ClassificationTask"])
    assert help_cache.is_help_request(["fit", "--trainer.callbacks.help=ModelCheckpoint"])
    assert not help_cache.is_help_request(["fit", "--data.init_args.root", "data.help"])


def test_help_cache_key_follows_versions_sources_and_files(tmp_path, monkeypatch):
    config = tmp_path / "cfg.yaml"
    config.write_text("seed_everything: 1\n")
    argv = ["fit", "--config", str(config), "--help"]
    key = help_cache.help_cache_key(argv)
    assert help_cache.help_cache_key(argv) == key
    site = tmp_path / "site"
    (site / "lightning-2.6.6.dist-info").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(site))
    with_lightning_266 = help_cache.help_cache_key(argv)
    assert with_lightning_266 != key
    (site / "lightning-2.6.6.dist-info").rename(site / "lightning-2.7.0.dist-info")  # an upgrade
    assert help_cache.help_cache_key(argv) not in (key, with_lightning_266)
    before = help_cache.help_cache_key(argv)
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    assert help_cache.help_cache_key(argv) != before
    assert help_cache.help_cache_key(["fit", "--config", str(config), "-h"]) != help_cache.help_cache_key(argv)


# -- 5. no advertising, no known deprecation noise -----------------------------------------------------------------


def test_fit_output_has_no_lightning_tips_or_known_deprecations(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "perceiver.training.cli", "fit", *tiny_args("digits", tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    printed = out.stdout + out.stderr
    assert "Using bfloat16" in printed or "GPU available" in printed  # Lightning's other messages still show
    for noise in ("💡 Tip", "litlogger", "LeafSpec"):
        assert noise not in printed, f"{noise!r} in the output:\n{printed[-3000:]}"


def test_litmodels_tip_and_resume_warning_are_filtered_but_other_messages_are_not(tmp_path):
    """The litmodels tip shows only when a run has no checkpoint callback (ours always has one): filtered anyway;
    resuming into the run's own checkpoints folder warns that it is not empty: that is the run layout."""
    import logging
    import warnings

    from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

    cli.quiet_lightning()
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("lightning.pytorch").addHandler(handler)
    try:
        rank_zero_info(
            "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels](https://pypi.org/project/"
            "litmodels/) to enable LitModelCheckpoint, which syncs automatically with the Lightning model registry."
        )
        rank_zero_info("GPU available: False, used: False")
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(handler)
    assert records == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        cli.quiet_lightning()
        rank_zero_warn(f"Checkpoint directory {tmp_path} exists and is not empty.")
        rank_zero_warn(
            '`.test(ckpt_path="best")` is called with Trainer configured with multiple `ModelCheckpoint` callbacks. '
            "It will use the best checkpoint path from first checkpoint callback."
        )
        rank_zero_warn(
            "You're using the WeightAveraging callback with a model that overrides the configure_model callback. "
            "WeightAveraging doesn't support sharding model layers, so you may run out of memory."
        )
        rank_zero_warn("The dataloader does not have many workers")
    assert [str(w.message) for w in caught] == ["The dataloader does not have many workers"]


def test_evaluating_another_runs_checkpoint_does_not_warn_about_its_checkpoint_folder(digits_run, tmp_path):
    """`perceiver test` of another run's checkpoint: Lightning's "The dirpath has changed ... won't be reloaded"
    concerns the top-k bookkeeping of a fit that goes on saving checkpoints; evaluating it says nothing. A fit from
    such a checkpoint still gets it."""
    import warnings

    from lightning.pytorch.utilities.rank_zero import rank_zero_warn

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        main(["test", *tiny_args("digits", tmp_path), f"--ckpt_path={digits_run / 'checkpoints' / 'last.ckpt'}"])
    assert (tmp_path / "metrics.csv").is_file()
    messages = [str(w.message) for w in caught]
    assert not any(m.startswith("The dirpath has changed from") for m in messages), messages
    changed = "The dirpath has changed from 'a/checkpoints' to 'b/checkpoints', therefore ... won't be reloaded."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        cli.quiet_lightning()  # what a fit sets
        rank_zero_warn(changed)
    assert [str(w.message) for w in caught] == [changed]


# -- 6. predict without touching the datamodule --------------------------------------------------------------------


def test_predict_runs_over_the_test_split_without_mutating_the_datamodule(digits_run, tmp_path):
    ckpt = digits_run / "checkpoints" / "best.ckpt"
    args = tiny_args("digits", tmp_path, "--trainer.limit_predict_batches=1.0")
    result = cli.PerceiverCLI(args=["predict", *args, f"--ckpt_path={ckpt}"])
    dm = result.datamodule
    assert "predict_dataloader" not in vars(dm)  # no attribute patched onto the user's object
    rows = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(rows) == len(dm.test_set) != len(dm.val_set)  # every test image once (360 digits, 72 validate)
    assert [json.loads(row)["index"] for row in rows] == list(range(len(dm.test_set)))


@pytest.mark.parametrize("subcommand", ["generate", "predict"])  # the ones whose help reads a module docstring
def test_help_works_without_docstrings(subcommand):
    """`python -OO` strips docstrings (`__doc__` is None): the help of a subcommand built from one still prints."""
    args = [sys.executable, "-OO", "-m", "perceiver.training.cli", subcommand, "--help"]
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=300, env={**os.environ, "PERCEIVER_HELP_CACHE": "0"}
    )  # parse, not a cached help
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower() or "perceiver" in done.stdout
