"""`python -m perceiver.training.demo` (`make demo`): train a classic Perceiver on scikit-learn's digits, on CPU.

It is `perceiver fit --config configs/digits.yaml` run programmatically (the same `PerceiverCLI`, task, datamodule,
callbacks and run-directory layout), followed by a test on the fixed 360-image test split and two plots:

    runs/demo/model/                   the trained model (final weights, `monitor: last`): perceiver.from_pretrained(..)
    runs/demo/training_curves.png      loss, accuracy and learning rate
    runs/demo/attention.png            first cross-attend's attention over a few test digits
    runs/demo/checkpoints, metrics.csv, tb/, config.yaml   as for any `perceiver fit` run

and prints `digits test accuracy: 0.XXXX`. Options: `--max-epochs N`, `--fast` (a few batches, for tests),
`--out DIR`, and any `--trainer.* / --model.* / --data.*` override of the CLI after `--`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from perceiver.training.config_files import shipped_config

__all__ = ["main", "run_demo"]

FAST_OVERRIDES = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.log_every_n_steps=1",
    "--model.init_args.optimize=false",  # a few batches: timing compiled candidates would cost more than the run
]


def run_demo(
    out: str | Path = "runs/demo",
    max_epochs: int | None = None,
    fast: bool = False,
    extra_args: list[str] | None = None,
    num_images: int = 8,
) -> dict[str, object]:
    """Train, test and plot; returns `{"test_acc", "model_dir", "curves", "attention", "seconds"}`."""
    from perceiver import from_pretrained
    from perceiver.training.cli import PerceiverCLI
    from perceiver.training.inspect import attention_figure
    from perceiver.training.plots import plot_training_curves

    start = time.perf_counter()
    out = Path(out)
    args = ["--config", str(shipped_config("digits.yaml")), f"--trainer.default_root_dir={out}", "--overwrite=true"]
    args += FAST_OVERRIDES if fast else []
    args += [f"--trainer.max_epochs={max_epochs}"] if max_epochs else []
    args += list(extra_args or [])
    cli = PerceiverCLI(args=args, run=False)
    trainer, task, data = cli.trainer, cli.model, cli.datamodule
    trainer.fit(task, datamodule=data)
    has_best = bool(getattr(trainer.checkpoint_callback, "best_model_path", ""))
    results = trainer.test(task, datamodule=data, ckpt_path="best" if has_best else None, verbose=False)
    test_acc = float(results[0]["test/acc"])
    if trainer.global_rank != 0:  # the other processes of a multi-process run stop here (rank 0 plots and reports)
        return {"test_acc": test_acc, "model_dir": out / "model", "curves": None, "attention": None, "seconds": 0.0}

    curves = plot_training_curves(out, out / "training_curves.png", title="classic Perceiver on sklearn digits")
    model = from_pretrained(out / "model")
    test = data.test_set
    n = min(num_images, len(test))
    images = torch.stack([test[i]["inputs"] for i in range(n)])
    labels = [int(test[i]["labels"]) for i in range(n)]
    attention = attention_figure(model, images, out / "attention.png", data.class_names, labels)
    seconds = time.perf_counter() - start
    print(f"outputs in {out}/: model/ ({out / 'model'}), {curves.name}, {attention.name}; {seconds:.0f} s")
    print(f"digits test accuracy: {test_acc:.4f}")
    return {
        "test_acc": test_acc,
        "model_dir": out / "model",
        "curves": curves,
        "attention": attention,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m perceiver.training.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="runs/demo", help="run directory (default runs/demo; replaced)")
    parser.add_argument("--max-epochs", type=int, help="epochs (default: the config's)")
    parser.add_argument("--fast", action="store_true", help="1 epoch of 3 batches: checks the code path only")
    parser.add_argument("cli_args", nargs="*", help="extra CLI overrides after --, e.g. -- --trainer.precision=32")
    args = parser.parse_args(argv)
    run_demo(args.out, args.max_epochs, args.fast, args.cli_args)


if __name__ == "__main__":
    main()
