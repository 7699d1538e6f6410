"""The error messages of the `perceiver` command (`perceiver.training.cli`): a GPU accelerator where there is none,
unknown keys with the closest known ones, a checkpoint file that does not exist, a model or datamodule that could not
be built. Imports torch only inside `check_accelerator`."""

from __future__ import annotations

from typing import Any

__all__ = ["check_accelerator", "instantiation_error", "missing_file_error", "with_suggestions"]


def check_accelerator(accelerator: Any) -> None:
    """`--trainer.accelerator gpu` / `cuda` where torch finds no such device: an error saying so, before the precision
    is chosen for a GPU that is not there (Lightning's own error is `No supported gpu backend found!`)."""
    import torch

    name = str(accelerator).lower() if isinstance(accelerator, str) else ""
    mps = getattr(torch.backends, "mps", None)
    found = torch.cuda.is_available() or (name == "gpu" and mps is not None and mps.is_available())
    if name in ("gpu", "cuda") and not found:
        build = f"torch {torch.__version__}" + (
            f", CUDA {torch.version.cuda}" if torch.version.cuda else ", a CPU build"
        )
        raise SystemExit(
            f"error: --trainer.accelerator {accelerator}: torch finds no GPU here ({build}; "
            "torch.cuda.is_available() is False); use --trainer.accelerator auto (a GPU where there is one, else the "
            "CPU) or cpu"
        )


def with_suggestions(message: str, options: dict[str, Any]) -> str:
    """argparse's "unrecognized arguments: --a=1 --b" + the closest known keys of each."""
    import difflib

    prefix = "unrecognized arguments:"
    if not message.startswith(prefix):
        return message
    hints = []
    for token in message[len(prefix) :].split():
        key = token.split("=", 1)[0]
        if key.startswith("--"):
            close = difflib.get_close_matches(key, list(options), n=3, cutoff=0.75)
            if close:
                hints.append(f"{key}: did you mean {' or '.join(close)}?")
    return message + ("\n" + "\n".join(hints) if hints else "")


def missing_file_error(error: FileNotFoundError) -> str:
    """Lightning's "Checkpoint file not found: PATH" (a `--ckpt_path` that is no file) said as what to change; any
    other missing file as its own message."""
    prefix = "Checkpoint file not found:"
    text = str(error)
    if not text.startswith(prefix):
        return text
    path = text[len(prefix) :].strip()
    return (
        f"checkpoint {path} not found (--ckpt_path {path}); give an existing checkpoint file, or 'last' for the "
        "last checkpoint of the run directory (trainer.default_root_dir)"
    )


def instantiation_error(error: ValueError) -> str:
    """jsonargparse wraps an error raised while building the model / datamodule (e.g. an unknown model keyword) in a
    long "Does not validate against any of the Union subtypes" message; keep the lines that say what went wrong."""
    text = str(error)
    if "Does not validate against any of the Union subtypes" not in text:
        return text
    reasons = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("- ")]
    reasons = [r for r in reasons if not r.startswith("Expected a <class 'NoneType'>")]
    return "could not build the model or datamodule from the configuration: " + "; ".join(reasons or [text])
