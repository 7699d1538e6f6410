"""`perceiver generate MODEL_DIR --prompt TEXT`: continue a text with a saved causal byte model (Perceiver AR).

The prompt is encoded as UTF-8 bytes + 6 (the ids of `ByteTokenizer`, no special tokens); a prompt longer than the
model's window keeps its last `max_seq_len` bytes. Prints prompt + continuation (special ids dropped, invalid UTF-8
replaced). Sampling by default (`--temperature`, `--top-k`, `--top-p`, `--seed`), `--greedy` for argmax.
"""

from __future__ import annotations

import argparse

import torch

from perceiver.tokenizer import decode_bytes, encode_bytes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perceiver generate", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a model folder (config.json + model.safetensors), e.g. RUN_DIR/model")
    parser.add_argument("--prompt", required=True, help="text to continue (at least one byte)")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="bytes to generate (default 200)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature > 0 (default 0.8)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely bytes")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    parser.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--num-latents", type=int, default=None, help="latents N (default: the model's)")
    parser.add_argument("--no-cache", action="store_true", help="full forward per token (same output, slower)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def generate_text(model: torch.nn.Module, prompt: str, args: argparse.Namespace) -> str:
    if not prompt:
        raise ValueError("expected a non-empty --prompt, got ''")
    window = model.config.max_seq_len
    ids = torch.tensor(encode_bytes(prompt)[-window:], dtype=torch.long).unsqueeze(0)
    out = model.generate(
        ids,
        args.max_new_tokens,
        do_sample=not args.greedy,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        use_cache=not args.no_cache,
        generator=torch.Generator().manual_seed(args.seed),
        num_latents=args.num_latents,
    )
    return decode_bytes(out[0].tolist())


def generate_main(argv: list[str]) -> None:
    """Entry point of `perceiver generate` (see the module docstring)."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import perceiver

    try:
        model = perceiver.from_pretrained(args.model_dir).eval()
        if not hasattr(model, "generate"):
            raise ValueError(
                f"expected a causal language model with generate() in {args.model_dir}, got {type(model).__name__}"
            )
        print(generate_text(model, args.prompt, args))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from e
