"""`perceiver generate MODEL_DIR --prompt TEXT`: continue a text with a saved causal model (Perceiver AR).

How text becomes ids (`--tokenizer`, default `auto`): `bytes`, UTF-8 bytes + 6 (the ids of `ByteTokenizer`, no
special tokens; `auto` for a 262-token vocabulary); `raw-bytes`, the UTF-8 bytes as ids 0-255 (`auto` for 256, as
perceiver-ar-pytorch's enwik8 models); or a transformers tokenizer, a Hub id or folder (`auto`: the one saved in
MODEL_DIR or its Hub repository, as krasserm perceiver-io's; needs transformers). Any other vocabulary without a
tokenizer is an error, not a byte decoding of ids that are not bytes. Of a prompt longer than the model's window the
model reads the last `max_seq_len` ids; the text printed is still the whole prompt (a cut inside a character would
print replacement characters). Prints prompt + continuation (special ids dropped, invalid UTF-8 replaced) as it is
generated (`TextPrinter`, a streamer of `generate`). Sampling by default (`--temperature`, `--top-k`, `--top-p`,
`--seed`, `--repetition-penalty`), `--greedy` for argmax. `--prompt -` reads the prompt from stdin (UTF-8; one
trailing newline, as `echo` adds, is dropped).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TextIO, runtime_checkable

import torch

from perceiver.loading import DTYPE_NAMES
from perceiver.tokenizer import NUM_BYTES, VOCAB_SIZE, decode_bytes, encode_bytes

Codec = tuple[Callable[[str], list[int]], Callable[[list[int]], str]]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@runtime_checkable
class CausalGenerator(Protocol):
    """What `generate_text` uses of a model: `config` (its `max_seq_len`, the window) and `generate` (as
    `PerceiverAR`'s)."""

    config: Any

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *args: Any, **kwargs: Any) -> torch.Tensor: ...


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perceiver generate", description="Continue a text with a saved causal model (Perceiver AR)."
    )
    parser.add_argument("model_dir", help="a model folder (config.json + model.safetensors), e.g. RUN_DIR/model")
    parser.add_argument(
        "--prompt",
        required=True,
        help="text to continue (at least one byte); '-' reads it from stdin as UTF-8 (one trailing newline dropped)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=200, help="tokens to generate (bytes for a byte vocabulary; default 200)"
    )
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature > 0 (default 0.8)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeating tokens already in the text"
    )
    parser.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--num-latents", type=int, default=None, help="latents N (default: the model's)")
    parser.add_argument("--no-cache", action="store_true", help="full forward per token (same output, slower)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default="auto",
        help="weights' dtype (default auto: as the model was saved)",
    )
    parser.add_argument(
        "--tokenizer",
        default="auto",
        help="'bytes' (UTF-8 bytes + 6), 'raw-bytes' (ids 0-255) or a transformers tokenizer (Hub id or folder); "
        "default auto: from the model's vocabulary size, or the tokenizer saved in MODEL_DIR",
    )
    return parser


def _raw_decode(ids: list[int]) -> str:
    return bytes(i for i in ids if 0 <= i < NUM_BYTES).decode("utf-8", "replace")


def text_codec(name: str, model_dir: str, vocab_size: int) -> Codec:
    """`(encode, decode)` between text and the model's ids for `--tokenizer name` (see the module docstring)."""
    if name == "auto":
        folder = Path(model_dir)
        if vocab_size == VOCAB_SIZE:
            name = "bytes"
        elif vocab_size == NUM_BYTES:
            name = "raw-bytes"
        elif any((folder / f).is_file() for f in _TOKENIZER_FILES) or not folder.is_dir():
            name = model_dir  # its saved tokenizer (a Hub id: its repository's)
        else:
            raise ValueError(
                f"expected --tokenizer for a model with a {vocab_size}-token vocabulary (auto knows {VOCAB_SIZE}: "
                f"bytes + 6, and {NUM_BYTES}: raw bytes), and found no tokenizer files in {model_dir}"
            )
    if name == "bytes":
        return encode_bytes, decode_bytes
    if name == "raw-bytes":
        return (lambda text: list(text.encode("utf-8"))), _raw_decode
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ValueError(f"--tokenizer {name!r} needs transformers (pip install transformers)") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:  # no such folder or Hub repository, no tokenizer files in it
        raise ValueError(
            f"expected --tokenizer 'bytes', 'raw-bytes' or a transformers tokenizer (Hub id or folder), got {name!r}, "
            f"which transformers cannot load: {e}"
        ) from e
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"expected a tokenizer of at most the model's {vocab_size} ids, got {name!r} with {len(tokenizer)}"
        )

    def decode(ids: list[int]) -> str:
        # transformers types decode() as str | list[str] (the latter for a batch); one id list decodes to one str
        return tokenizer.decode(ids, skip_special_tokens=True)  # type: ignore[return-value]  # one id list decodes to one str

    return (lambda text: tokenizer.encode(text, add_special_tokens=False)), decode


class TextPrinter:
    """A streamer for `generate` (`put(ids)`, `end()`, as transformers' streamers) that prints one row's text as it
    grows: the prompt, then each new piece, then a newline.

    Each `put` decodes all ids so far and prints what extends the printed text; a trailing U+FFFD (an incomplete UTF-8
    sequence of a byte vocabulary, or a tokenizer's partial character) waits for the next token. What is printed in
    all is `decode(ids)` of the whole sequence whenever the decoding of a prefix is a prefix of the decoding of the
    whole (bytes; tokenizers that do not re-space earlier text)."""

    def __init__(self, decode: Callable[[list[int]], str], file: TextIO | None = None) -> None:
        self.decode, self.file = decode, file
        self.ids: list[int] = []
        self.printed = ""

    def put(self, ids: Any) -> None:
        if ids.dim() > 1 and ids.shape[0] != 1:
            raise ValueError(f"TextPrinter prints one row, got ids of shape {tuple(ids.shape)}")
        self.ids.extend(ids.reshape(-1).tolist())
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)
        print(file=self.file or sys.stdout, flush=True)

    def _flush(self, final: bool) -> None:
        text = self.decode(self.ids)
        if not final:
            text = text.rstrip("\ufffd")
        if not text.startswith(self.printed):  # the decoding of earlier ids changed: print only what is new
            if not final:
                return
            common = 0
            while common < min(len(text), len(self.printed)) and text[common] == self.printed[common]:
                common += 1
            self.printed = text[:common]
        new = text[len(self.printed) :]
        if new:
            print(new, end="", file=self.file or sys.stdout, flush=True)
            self.printed = text


def generate_text(
    model: CausalGenerator,
    prompt: str,
    args: argparse.Namespace,
    codec: Codec | None = None,
    streamer: Any | None = None,
) -> str:
    """`prompt` continued by `model.generate` as `args` say; `codec`: `(encode, decode)`, default bytes + 6;
    `streamer`: passed on to `generate` (e.g. a `TextPrinter`). The model reads the last `max_seq_len` ids of the
    prompt; the text returned (and the prompt the streamer gets) is the whole prompt + continuation."""
    encode, decode = codec or (encode_bytes, decode_bytes)
    if not prompt:
        raise ValueError("expected a non-empty --prompt, got ''")
    window = model.config.max_seq_len
    ids = encode(prompt)
    if not ids:
        raise ValueError(f"expected a prompt that encodes to at least one token, got {prompt!r}")
    head, ids = ids[:-window], ids[-window:]  # head: what the window leaves out (it may end inside a character)
    if head and streamer is not None:
        streamer = _PrefixedStreamer(streamer, head)
    out = model.generate(
        torch.tensor(ids, dtype=torch.long).unsqueeze(0),
        args.max_new_tokens,
        do_sample=not args.greedy,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        use_cache=not args.no_cache,
        generator=torch.Generator().manual_seed(args.seed),
        num_latents=args.num_latents,
        streamer=streamer,
        repetition_penalty=args.repetition_penalty,
    )
    return decode(head + out[0].tolist())


class _PrefixedStreamer:
    """Hands `streamer` the prompt `(1, L)` of `generate` with the ids `head` the model's window left out in front
    `(1, len(head) + L)`, then the new tokens as they come."""

    def __init__(self, streamer: Any, head: list[int]) -> None:
        self.streamer, self.head = streamer, head

    def put(self, ids: torch.Tensor) -> None:
        if self.head:  # the first put: the prompt
            ids = torch.cat((torch.tensor([self.head], dtype=ids.dtype), ids), dim=1)
            self.head = []
        self.streamer.put(ids)

    def end(self) -> None:
        self.streamer.end()


def read_prompt(prompt: str, stdin: Any = None) -> str:
    """The text of `--prompt`: itself, or for '-' the UTF-8 text of `stdin` (default `sys.stdin`) less one trailing
    newline. Text that is not UTF-8 (stdin, or undecodable bytes in the argument) is a ValueError."""
    if prompt == "-":
        stream = sys.stdin if stdin is None else stdin
        data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"expected UTF-8 text on stdin for --prompt -, got bytes that are not: {e}") from e
        prompt = data[:-2] if data.endswith("\r\n") else data[:-1] if data.endswith("\n") else data
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # argv bytes that are not UTF-8 arrive as lone surrogates
        raise ValueError(f"expected a UTF-8 --prompt, got bytes that are not UTF-8 at character {e.start}") from e
    return prompt


def generate_main(argv: list[str]) -> None:
    """Entry point of `perceiver generate` (see the module docstring)."""
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"error: expected --threads >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    import perceiver

    try:
        args.prompt = read_prompt(args.prompt)  # before loading the model: a bad prompt fails fast
        from perceiver.lora import merge_lora

        # an adapter folder: generate with merged weights (no adapter matmuls per step)
        model = merge_lora(perceiver.from_pretrained(args.model_dir, dtype=args.dtype).eval())
        if not isinstance(model, CausalGenerator):  # has generate (and config)
            raise ValueError(
                f"expected a causal language model with generate() in {args.model_dir}, got {type(model).__name__}"
            )
        codec = text_codec(args.tokenizer, args.model_dir, model.config.vocab_size)
        generate_text(model, args.prompt, args, codec, streamer=TextPrinter(codec[1]))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from e
