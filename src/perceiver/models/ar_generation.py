"""Generation for `PerceiverAR`: its static KV cache (`PerceiverARCache`), `init_cache` and `generate`.

`generate` keeps the cache (cross-attention keys / values of every window position, self-attention keys / values of
every latent). A new token becomes a new latent, so the cached states stay exact while the window grows. When the
window would exceed `max_seq_len` or the latents `max_latents`, the window slides and the cache is recomputed from it
(see `perceiver.models.ar`). `ARGeneration` is a mixin: it uses the model's `config`, `forward`, `to_logits` and
`_num_latents`.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from perceiver.checks import InputTypeError, check_int, check_token_ids, token_mask

if TYPE_CHECKING:
    from perceiver.models.ar import PerceiverARConfig


@dataclass
class PerceiverARCache:
    """Static KV cache of `PerceiverAR` for a batch of B rows (see `PerceiverAR.init_cache`).

    cross_k / cross_v: per cross layer `(B, H, W_c, Dh)` keys / values of the window positions (rotary applied);
    self_k / self_v: per latent layer `(B, H, M, Dh)` of the latents; cross_valid `(B, W_c)` / self_valid `(B, M)`:
    slot written and a token (not padding); cross_len / self_len: slots written (0-dim tensors, so a compiled step
    does not recompile as they grow); next_position `(B,)`: position id of the next token (valid tokens so far).
    filled: `(cross_len, self_len)` as Python ints, kept by eager calls so that a step past the capacity is a clear
    error without reading the tensors back (a compiled step does not update it).
    """

    cross_k: list[Tensor]
    cross_v: list[Tensor]
    self_k: list[Tensor]
    self_v: list[Tensor]
    cross_valid: Tensor
    self_valid: Tensor
    cross_len: Tensor
    self_len: Tensor
    next_position: Tensor
    prefilled: bool = False
    filled: tuple[int, int] = (0, 0)

    @property
    def batch_size(self) -> int:
        return self.cross_valid.shape[0]

    @property
    def window_capacity(self) -> int:
        return self.cross_valid.shape[1]

    @property
    def latent_capacity(self) -> int:
        return self.self_valid.shape[1]


class ARGeneration:
    """`init_cache` and `generate` of `PerceiverAR` (a mixin; see the module docstring)."""

    if TYPE_CHECKING:  # what the mixin uses of the model
        config: PerceiverARConfig
        to_logits: nn.Linear

        def _num_latents(self, length: int, num_latents: int | None) -> int: ...

        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def init_cache(
        self,
        batch_size: int,
        max_latents: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> PerceiverARCache:
        """An empty cache for `batch_size` rows: `max_seq_len` window slots, `max_latents` latent slots (default
        `max_seq_len`), on the model's device and dtype unless given."""
        c = self.config
        ref = self.to_logits.weight
        device = ref.device if device is None else torch.device(device)
        dtype = ref.dtype if dtype is None else dtype
        batch_size = check_int(batch_size, "batch_size", check_range=False)
        m = c.max_seq_len if max_latents is None else check_int(max_latents, "max_latents", check_range=False)
        if batch_size < 1 or not 1 <= m <= c.max_seq_len:
            raise ValueError(f"expected batch_size >= 1 and max_latents in [1, {c.max_seq_len}], got {batch_size}, {m}")
        h, d = c.num_heads, c.dim_head

        def buffers(count: int, slots: int) -> list[Tensor]:
            return [torch.zeros(batch_size, h, slots, d, device=device, dtype=dtype) for _ in range(count)]

        return PerceiverARCache(
            cross_k=buffers(c.num_cross_layers, c.max_seq_len),
            cross_v=buffers(c.num_cross_layers, c.max_seq_len),
            self_k=buffers(c.num_layers, m),
            self_v=buffers(c.num_layers, m),
            cross_valid=torch.zeros(batch_size, c.max_seq_len, dtype=torch.bool, device=device),
            self_valid=torch.zeros(batch_size, m, dtype=torch.bool, device=device),
            cross_len=torch.zeros((), dtype=torch.long, device=device),
            self_len=torch.zeros((), dtype=torch.long, device=device),
            next_position=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | Sequence[int] | Tensor | None = None,
        use_cache: bool = True,
        attention_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        num_latents: int | None = None,
        max_latents: int | None = None,
        pad_token_id: int = 0,
        streamer: Any | None = None,
        repetition_penalty: float = 1.0,
        min_new_tokens: int = 0,
        num_return_sequences: int = 1,
        logits_processor: Callable[[Tensor, Tensor], Tensor]
        | Sequence[Callable[[Tensor, Tensor], Tensor]]
        | None = None,
        max_length: int | None = None,
    ) -> Tensor:
        """Prompt + up to `max_new_tokens` new tokens `(B * num_return_sequences, L + T)` (greedy, or sampling with
        `do_sample`). The keywords mean what they mean in transformers' `generate`.

        Args:
            input_ids: prompt `(B, L)`, 1 <= L <= max_seq_len (longer prompts: pass `input_ids[:, -max_seq_len:]`).
            max_new_tokens / max_length: how many tokens to add, or the length L + T to reach (transformers'
                `max_length`, prompt included); give one of them.
            attention_mask: `(B, L)` True = token, left padding only (rows end with their last token). The rows
                of a batch share one window schedule (that of the padded length), so a left-padded row generates
                what it generates alone until the first window slide / latent reset (with `config.prefix_len`, N
                counts the padding: the prefix / latent split then differs from the row's alone).
            temperature / top_k / top_p: sampling filters (temperature > 0, top_p in (0, 1]; top_k None or 0 and
                top_p None or 1 filter nothing, as in transformers).
            eos_token_id: one id or a list of them (as transformers' models with several end tokens); a row that
                produced one continues with `pad_token_id`; generation stops when all did.
            use_cache: KV cache (default) or a full forward per token; both follow the same window schedule and
                give the same tokens in fp32 / fp64 (in bf16 / fp16 their roundings differ, and where two logits
                are that close the argmax may too).
            generator: for sampling, e.g. `torch.Generator().manual_seed(0)`.
            num_latents: latents N at the start and after every slide (default as `forward`).
            max_latents: M, the latents may grow to M new tokens before the window slides (default min(W, 2N));
                M = N slides at every token, as perceiver-ar-pytorch's wrapper.
            streamer: an object with `put(ids)` and `end()`, as transformers' streamers (`TextStreamer`,
                `TextIteratorStreamer`): `put` gets the prompt `(B, L)` once, then each step's new tokens `(B,)`, on
                the CPU; `end()` follows the last. transformers' text streamers take one row (B = 1).
            repetition_penalty: > 0; the logit of every token already in the row (prompt included, padding not) is
                divided by it where positive and multiplied where negative (CTRL's penalty, transformers'
                `RepetitionPenaltyLogitsProcessor`); 1 = off.
            min_new_tokens: `eos_token_id` cannot be chosen before this many new tokens.
            num_return_sequences: sampled continuations per prompt (rows `i * n ... i * n + n - 1` continue prompt
                `i`); needs `do_sample` (greedy ones would be copies).
            logits_processor: `(ids (B, L), scores (B, V)) -> scores`, or a list of them applied in order, after
                the above and before temperature / top-k / top-p: e.g. transformers' processors, in a
                `LogitsProcessorList` or a plain list (as its `generate` takes them).
        """
        c = self.config
        input_ids = check_token_ids(input_ids, c.vocab_size).long()  # e.g. uint8 bytes; the result is int64
        b, length = input_ids.shape
        if length > c.max_seq_len:
            raise ValueError(
                f"expected a prompt of at most max_seq_len={c.max_seq_len} tokens, got {length} "
                f"(truncate it, e.g. input_ids[:, -{c.max_seq_len}:])"
            )
        max_new_tokens = _new_tokens(max_new_tokens, max_length, length)
        for name, number in (
            ("temperature", temperature),
            ("top_p", top_p),
            ("repetition_penalty", repetition_penalty),
        ):
            if (number is not None or name == "repetition_penalty") and (
                isinstance(number, bool) or not isinstance(number, numbers.Real)
            ):
                raise InputTypeError(f"expected {name} as a number, got {number!r} ({type(number).__name__})")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"expected top_p in (0, 1], got {top_p}")
        top_k = None if top_k is None else _count(top_k, "top_k", 0) or None  # 0: off (transformers' meaning)
        if do_sample and (temperature is None or not temperature > 0):
            raise ValueError(f"expected temperature > 0 for sampling, got {temperature}")
        if not repetition_penalty > 0:
            raise ValueError(f"expected repetition_penalty > 0, got {repetition_penalty}")
        min_new_tokens = _count(min_new_tokens, "min_new_tokens", 0)
        num_return_sequences = _count(num_return_sequences, "num_return_sequences", 1)
        if num_return_sequences > 1 and not do_sample:
            raise ValueError(
                f"expected do_sample=True for num_return_sequences={num_return_sequences} (greedy continuations of "
                "one prompt are all the same), got do_sample=False"
            )
        eos_ids = _eos_ids(eos_token_id, c.vocab_size)
        if pad_token_id is not None or eos_ids:  # finished rows continue with pad_token_id
            pad_token_id = _token_id(pad_token_id, "pad_token_id", c.vocab_size)
        mask = token_mask(attention_mask, input_ids)
        if mask is not None:
            _check_left_padded(mask)
        base = self._num_latents(c.max_seq_len, num_latents)  # N at a full window
        m = (
            min(c.max_seq_len, 2 * base)
            if max_latents is None
            else check_int(max_latents, "max_latents", check_range=False)
        )
        if not base <= m <= c.max_seq_len:
            raise ValueError(f"expected max_latents in [num_latents={base}, max_seq_len={c.max_seq_len}], got {m}")
        keep = max(1, c.max_seq_len - (m - base))  # window length after a slide

        processors = _processors(logits_processor)
        if streamer is not None and not (
            callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))
        ):
            raise ValueError(f"expected a streamer with put(ids) and end() methods, got {type(streamer).__name__}")
        if num_return_sequences > 1:
            input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
            mask = None if mask is None else mask.repeat_interleave(num_return_sequences, dim=0)
            b = input_ids.shape[0]
        ids = input_ids
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
        if streamer is not None:
            streamer.put(ids.cpu())
        done = torch.zeros(b, dtype=torch.bool, device=ids.device)
        start, n, cache, refresh = 0, 0, None, True
        for step in range(max_new_tokens):
            total = ids.shape[1]
            if refresh:
                start = max(start, total - keep) if total - start > c.max_seq_len or n > m else start
                window, wmask = ids[:, start:], mask[:, start:]
                n = self._num_latents(window.shape[1], num_latents)
                if use_cache:
                    cache = self.init_cache(b, m)
                    logits = self(window, wmask, num_latents=n, cache=cache).logits[:, -1]
                else:
                    logits = self(window, wmask, num_latents=n).logits[:, -1]
            elif use_cache:
                logits = self(ids[:, -1:], cache=cache).logits[:, -1]
            else:
                logits = self(ids[:, start:], mask[:, start:], num_latents=n).logits[:, -1]
            logits = logits.float()
            if repetition_penalty != 1.0:
                logits = _penalize_repeats(logits, ids, mask, repetition_penalty)
            if eos_ids and step < min_new_tokens:
                logits[:, eos_ids] = float("-inf")
            for processor in processors:
                scores = processor(ids, logits)
                if not isinstance(scores, Tensor) or scores.shape != logits.shape:
                    got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
                    raise ValueError(
                        f"expected logits_processor to return scores of shape {tuple(logits.shape)}, got {got}"
                    )
                logits = scores
            token = _next_token(logits, do_sample, temperature, top_k, top_p, generator)
            if eos_ids:
                token = torch.where(done, torch.full_like(token, pad_token_id), token)
                done = done | torch.isin(token, torch.tensor(eos_ids, device=token.device))
            ids = torch.cat((ids, token.unsqueeze(1)), dim=1)
            mask = torch.cat((mask, torch.ones_like(mask[:, :1])), dim=1)
            if streamer is not None:
                streamer.put(token.cpu())
            n += 1
            refresh = ids.shape[1] - start > c.max_seq_len or n > m
            if eos_ids and bool(done.all()):
                break
        if streamer is not None:
            streamer.end()
        return ids


def _count(value: Any, name: str, least: int) -> int:
    """`value` as a plain int >= `least`: an integral number (a numpy integer too, as transformers' `generate` takes
    them); bools, floats and others are a ValueError naming the type."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"expected {name} >= {least} (an int), got {value!r} ({type(value).__name__})")
    return int(value)


def _check_left_padded(mask: Tensor) -> None:
    """A ValueError naming the first row of `mask` `(B, L)` (True = token) that is not left-padded, and how."""
    bad = (mask[:, 1:] < mask[:, :-1]).any(1) | ~mask[:, -1]
    if not bool(bad.any()):
        return
    row = int(bad.nonzero()[0, 0])
    if not bool(mask[row].any()):
        how = "no token at all (every row needs at least one)"
    elif bool((mask[row, 1:] > mask[row, :-1]).any()):  # padding both before and after the tokens
        how = "padding between or after its tokens"
    else:
        how = "right padding (pad on the left, e.g. tokenizer.padding_side = 'left', as for transformers' causal LMs)"
    raise ValueError(
        f"expected a left-padded attention_mask (each row: False..., then True...), got row {row} with {how}"
    )


def _new_tokens(max_new_tokens: Any, max_length: Any, length: int) -> int:
    """New tokens T to generate for a prompt of `length` tokens from `max_new_tokens` or `max_length` (= L + T,
    transformers' meaning): exactly one of them."""
    if max_new_tokens is not None and max_length is not None:
        raise ValueError(
            f"expected max_new_tokens or max_length, not both, got max_new_tokens={max_new_tokens!r} and "
            f"max_length={max_length!r}"
        )
    if max_new_tokens is None and max_length is None:
        raise ValueError("expected max_new_tokens (tokens to add) or max_length (prompt + new tokens), got neither")
    if max_new_tokens is not None:
        return _count(max_new_tokens, "max_new_tokens", 0)
    total = _count(max_length, "max_length", 1)
    if total < length:
        raise ValueError(
            f"expected max_length >= the prompt length {length} (max_length counts the prompt), got {total}"
        )
    return total - length


def _eos_ids(value: Any, vocab_size: int) -> list[int]:
    """`eos_token_id` as a list of ids in `[0, vocab_size)`: none, one id, or a list / tuple / 1-D tensor of them."""
    if value is None:
        return []
    if isinstance(value, Tensor) and value.dim() == 1:
        value = value.tolist()
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("expected eos_token_id as an id or a non-empty list of ids, got an empty list")
        return [_token_id(v, "eos_token_id", vocab_size) for v in value]
    return [_token_id(value, "eos_token_id", vocab_size)]


def _processors(value: Any) -> list[Callable[[Tensor, Tensor], Tensor]]:
    """`logits_processor` as a list of callables: none, the one given (e.g. a `LogitsProcessorList`), or the items
    of a list / tuple (transformers' `generate` takes a plain list too)."""
    if value is None:
        return []
    items = [value] if callable(value) else list(value) if isinstance(value, list | tuple) else [value]
    for item in items:
        if not callable(item):
            raise InputTypeError(
                f"expected logits_processor as a callable (ids, scores) -> scores or a list of them, got "
                f"{type(item).__name__}"
            )
    return items


def _token_id(value: Any, name: str, vocab_size: int) -> int:
    """`value` as one token id in `[0, vocab_size)`: an int (a numpy int or a one-element integer tensor too)."""
    try:
        index = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        index = None
    if index is None:
        raise InputTypeError(f"expected {name} as one token id (an int), got {value!r} ({type(value).__name__})")
    if not 0 <= index < vocab_size:
        raise ValueError(f"expected {name} in [0, {vocab_size}), got {index}")
    return index


def _penalize_repeats(logits: Tensor, ids: Tensor, mask: Tensor, penalty: float) -> Tensor:
    """CTRL's repetition penalty on `logits` `(B, V)`: the tokens of each row of `ids` `(B, L)` where `mask` is True
    get `logit / penalty` if positive, `logit * penalty` otherwise."""
    seen = torch.zeros_like(logits, dtype=torch.int8).scatter_reduce(1, ids, mask.to(torch.int8), "amax").bool()
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def _next_token(
    logits: Tensor, do_sample: bool, temperature: float, top_k: int | None, top_p: float | None, generator: Any
) -> Tensor:
    """One token per row `(B,)` from logits `(B, V)`: argmax, or a sample after temperature / top-k / top-p."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
