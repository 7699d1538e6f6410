"""`perceiver generate` encodes the prompt the way the model's vocabulary needs: bytes + 6 (262 ids), raw bytes (256),
or the transformers tokenizer saved with the model; any other vocabulary without a tokenizer is a clear error."""

from __future__ import annotations

import pytest
import torch

import perceiver
from perceiver.training.cli import main


def _save(tmp_path, vocab_size: int):
    model = perceiver.create_model("perceiver-ar-tiny", vocab_size=vocab_size, max_seq_len=32, num_latents=8)
    with torch.no_grad():  # larger weights than the init, so that greedy decoding does not repeat one id
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.save_pretrained(tmp_path / "model")
    return model.eval(), str(tmp_path / "model")


def _greedy(model, ids: list[int]) -> list[int]:
    return model.generate(torch.tensor([ids]), 6, do_sample=False)[0].tolist()


def test_raw_byte_vocabulary_gets_raw_byte_ids(tmp_path, capsys):
    model, folder = _save(tmp_path, 256)
    main(["generate", folder, "--prompt", "abc", "--max-new-tokens", "6", "--greedy"])
    expected = bytes(_greedy(model, list(b"abc"))).decode("utf-8", "replace")
    assert capsys.readouterr().out == expected + "\n"


def test_saved_transformers_tokenizer_is_used(tmp_path, capsys):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    words = ["the", "assert", "statement", "is", "a", "way", "to", "insert", "debugging", "checks"]
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    model, folder = _save(tmp_path, 40)
    tok.save_pretrained(folder)
    main(["generate", folder, "--prompt", "the assert statement", "--max-new-tokens", "6", "--greedy"])
    ids = tok.encode("the assert statement", add_special_tokens=False)
    assert ids == [1, 2, 3]
    out = _greedy(model, ids)
    expected = tok.decode(out, skip_special_tokens=True)  # ids past the tokenizer's 11 decode to nothing
    assert capsys.readouterr().out == expected + "\n"


def test_other_vocabulary_without_tokenizer_is_an_error(tmp_path):
    _, folder = _save(tmp_path, 40)
    with pytest.raises(SystemExit, match="expected --tokenizer for a model with a 40-token vocabulary"):
        main(["generate", folder, "--prompt", "abc"])
    with pytest.raises(SystemExit, match="token ids"):  # bytes + 6 do not fit 40 ids: the model says so
        main(["generate", folder, "--prompt", "abc", "--tokenizer", "bytes"])


def test_text_printer_holds_an_incomplete_utf8_character_until_it_completes():
    import io

    from perceiver.tokenizer import decode_bytes, encode_bytes
    from perceiver.training.generate import TextPrinter

    out = io.StringIO()
    printer = TextPrinter(decode_bytes, out)
    ids = encode_bytes("né€")  # 1 + 2 + 3 bytes
    printer.put(torch.tensor([ids[:1]]))  # the prompt, as generate hands it: (1, L)
    seen = [out.getvalue()]
    for i in ids[1:]:
        printer.put(torch.tensor([i]))  # each step: (1,)
        seen.append(out.getvalue())
    assert seen == ["n", "n", "né", "né", "né", "né€"]  # never half a character
    printer.end()
    assert out.getvalue() == "né€\n"


def test_text_printer_prints_trailing_invalid_bytes_at_the_end_and_refuses_batches():
    import io

    from perceiver.tokenizer import decode_bytes, encode_bytes
    from perceiver.training.generate import TextPrinter

    out = io.StringIO()
    printer = TextPrinter(decode_bytes, out)
    printer.put(torch.tensor([encode_bytes("a")]))
    printer.put(torch.tensor([0xE2 + 6]))  # the first byte of a 3-byte character that never completes
    assert out.getvalue() == "a"
    printer.end()
    assert out.getvalue() == "a\ufffd\n" == decode_bytes([*encode_bytes("a"), 0xE2 + 6]) + "\n"
    with pytest.raises(ValueError, match=r"prints one row, got ids of shape \(2, 3\)"):
        TextPrinter(decode_bytes, out).put(torch.zeros(2, 3, dtype=torch.long))


def test_cli_streams_the_same_text_generate_returns(tmp_path, capsys, monkeypatch):
    model, folder = _save(tmp_path, 262)
    from perceiver.training import generate as cli_generate

    chunks = []
    real_print = print

    def spy(*args, **kwargs):  # the streamed pieces, as the printer writes them
        chunks.extend(a for a in args if a)
        real_print(*args, **kwargs)

    monkeypatch.setattr(cli_generate, "print", spy, raising=False)
    main(["generate", folder, "--prompt", "héllo", "--max-new-tokens", "12", "--greedy"])
    prompt = perceiver.ByteTokenizer().encode("héllo", add_special_tokens=False)
    expected = perceiver.ByteTokenizer().decode(_greedy12(model, prompt), skip_special_tokens=True)
    assert capsys.readouterr().out == expected + "\n"
    assert len(chunks) > 1 and "".join(chunks) == expected  # printed as it went, not once at the end


def _greedy12(model, ids: list[int]) -> list[int]:
    return model.generate(torch.tensor([ids]), 12, do_sample=False)[0].tolist()


def test_cli_repetition_penalty_reaches_generate(tmp_path, capsys):
    model, folder = _save(tmp_path, 262)
    main(["generate", folder, "--prompt", "aaaa", "--max-new-tokens", "12", "--greedy", "--repetition-penalty", "4"])
    prompt = perceiver.ByteTokenizer().encode("aaaa", add_special_tokens=False)
    out = model.generate(torch.tensor([prompt]), 12, repetition_penalty=4.0)[0].tolist()
    assert capsys.readouterr().out == perceiver.ByteTokenizer().decode(out, skip_special_tokens=True) + "\n"
    assert out != _greedy12(model, prompt)  # the penalty changed the continuation


def test_bad_threads_and_an_unloadable_tokenizer_are_clear_errors(tmp_path):
    _, folder = _save(tmp_path, 262)
    for threads in ("0", "-1"):
        with pytest.raises(SystemExit, match=f"expected --threads >= 1, got {threads}"):
            main(["generate", folder, "--prompt", "abc", "--threads", threads])
    pytest.importorskip("transformers")
    (tmp_path / "empty").mkdir()  # a folder without tokenizer files: transformers raises OSError
    with pytest.raises(SystemExit, match="expected --tokenizer 'bytes', 'raw-bytes' or a transformers tokenizer"):
        main(["generate", folder, "--prompt", "abc", "--tokenizer", str(tmp_path / "empty")])


def test_a_prompt_longer_than_the_window_is_printed_whole(tmp_path, capsys):
    """The model reads the last 32 bytes of a 36-byte prompt; that cut falls inside a 3-byte "€". The printed text
    began with two U+FFFD and lacked the first characters of the prompt; now it is the whole prompt + continuation."""
    from perceiver.tokenizer import decode_bytes, encode_bytes

    model, folder = _save(tmp_path, 262)
    prompt = "€" * 12  # 36 bytes
    main(["generate", folder, "--prompt", prompt, "--max-new-tokens", "6", "--greedy"])
    ids = encode_bytes(prompt)
    expected = decode_bytes(ids[:4] + _greedy(model, ids[4:]))
    printed = capsys.readouterr().out
    assert printed == expected + "\n" and printed.startswith(prompt)


def test_generate_text_hands_a_streamer_the_whole_prompt():
    """Any streamer (here transformers-like: the first `put` is the prompt) gets the prompt the user gave, not its
    window."""
    import argparse

    from perceiver.training.generate import build_parser, generate_text

    class Recorder:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, ids):
            self.puts.append(ids)

        def end(self):
            self.ended = True

    model = perceiver.create_model("perceiver-ar-tiny", max_seq_len=8, num_latents=4, d_model=32, num_layers=1).eval()
    args: argparse.Namespace = build_parser().parse_args(["x", "--prompt", "-", "--max-new-tokens", "3", "--greedy"])
    rec = Recorder()
    text = generate_text(model, "abcdefghij", args, streamer=rec)
    assert rec.puts[0].shape == (1, 10) and rec.puts[0][0].tolist() == [b + 6 for b in b"abcdefghij"]
    assert len(rec.puts) == 4 and rec.ended and text.startswith("abcdefghij")
