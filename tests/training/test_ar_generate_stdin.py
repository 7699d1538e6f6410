"""`perceiver generate --prompt -` reads the prompt from stdin as UTF-8 (emoji and all, whatever the locale), drops
the one trailing newline `echo` adds, and text that is not UTF-8 is a clear error, not a traceback."""

from __future__ import annotations

import io
import sys

import pytest
import torch

import perceiver
from perceiver.training.cli import main
from perceiver.training.generate import read_prompt


def _save(tmp_path):
    model = perceiver.create_model("perceiver-ar-tiny", max_seq_len=32, num_latents=8)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.save_pretrained(tmp_path / "model")
    return model.eval(), str(tmp_path / "model")


def _stdin(data: bytes):
    return io.TextIOWrapper(io.BytesIO(data), encoding="ascii")  # a C-locale stdin: its bytes must be read as UTF-8


def test_prompt_dash_reads_stdin(tmp_path, capsys, monkeypatch):
    model, folder = _save(tmp_path)
    monkeypatch.setattr(sys, "stdin", _stdin("héllo 🙂\n".encode()))
    main(["generate", folder, "--prompt", "-", "--max-new-tokens", "6", "--greedy"])
    tokenizer = perceiver.ByteTokenizer()
    prompt = tokenizer.encode("héllo 🙂", add_special_tokens=False)
    out = model.generate(torch.tensor([prompt]), 6)[0].tolist()
    assert capsys.readouterr().out == tokenizer.decode(out, skip_special_tokens=True) + "\n"


def test_read_prompt_keeps_inner_newlines_and_drops_one_trailing():
    assert read_prompt("-", _stdin(b"a\n\nb\n\n")) == "a\n\nb\n"
    assert read_prompt("-", _stdin(b"line\r\n")) == "line"
    assert read_prompt("-", io.StringIO("plain")) == "plain"
    assert read_prompt("x\n") == "x\n"  # an argument is taken as it is


def test_prompts_that_are_not_utf8_are_clear_errors(tmp_path, monkeypatch):
    _, folder = _save(tmp_path)
    monkeypatch.setattr(sys, "stdin", _stdin(b"ab\xff"))
    with pytest.raises(SystemExit, match="expected UTF-8 text on stdin for --prompt -"):
        main(["generate", folder, "--prompt", "-", "--max-new-tokens", "2"])
    with pytest.raises(SystemExit, match="expected a UTF-8 --prompt, got bytes that are not UTF-8 at character 2"):
        main(["generate", folder, "--prompt", b"ab\xff".decode("utf-8", "surrogateescape"), "--max-new-tokens", "2"])
    with pytest.raises(SystemExit, match="non-empty --prompt"):
        monkeypatch.setattr(sys, "stdin", _stdin(b"\n"))
        main(["generate", folder, "--prompt", "-", "--max-new-tokens", "2"])
