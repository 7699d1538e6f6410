"""Compare our `return_hidden_states` / `return_attention` outputs with transformers' `output_hidden_states` /
`output_attentions` ones (shared by the interop tests of each transformers head)."""

from __future__ import annotations

import torch


def assert_same_intermediates(mine, theirs, num_blocks: int, layers: int, tol: float = 1e-4) -> None:
    """`mine` (our `ModelOutput`) against `theirs` (a transformers output with hidden states and attentions).

    transformers lists, per latent block, the state before each layer and then the state after the block, so the
    state between two blocks stands there twice; ours lists the state after the cross-attend and after every layer,
    each once. Its `attentions` and `cross_attentions` are ours too (`latent_attentions`; the encoder maps, then the
    decoder's)."""
    assert len(theirs.hidden_states) == num_blocks * (layers + 1)
    expected = [s for i, s in enumerate(theirs.hidden_states) if i == 0 or i % (layers + 1) != 0]
    assert len(mine.hidden_states) == len(expected) == 1 + num_blocks * layers
    for got, want in zip(mine.hidden_states, expected):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    assert mine.hidden_states[-1] is mine.last_hidden_state
    assert len(mine.latent_attentions) == len(theirs.attentions) == num_blocks * layers
    assert mine.attentions is mine.latent_attentions  # transformers' names
    for got, want in zip(mine.latent_attentions, theirs.attentions):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    assert len(mine.cross_attentions) == len(theirs.cross_attentions) == len(mine.encoder_attentions) + 1
    assert mine.cross_attentions[-1] is mine.decoder_attention
    for got, want in zip(mine.cross_attentions, theirs.cross_attentions):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
