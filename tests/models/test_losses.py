"""Token-level losses over the scored positions (labels other than -100): the mean of the scored ones, as
transformers' heads compute it, and 0 with zero gradients for a batch with none scored, where a plain mean over
nothing is NaN and poisons every average it enters (a run's logged epoch loss, a checkpoint monitor)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import inputs, tiny

from perceiver.core.model import token_cross_entropy
from perceiver.models.lucidrains_io import LucidrainsPerceiverLM


def test_mean_over_the_scored_positions_and_zero_without_any():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, :3] = -100
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert torch.allclose(token_cross_entropy(logits, labels), expected, atol=1e-6)

    none = token_cross_entropy(logits, torch.full((2, 5), -100))
    assert none.item() == 0.0
    none.backward()  # still in the graph: a step on such a batch runs backward (DDP needs every rank to)
    assert logits.grad is not None and not logits.grad.any()
    assert F.cross_entropy(logits.flatten(0, 1), torch.full((10,), -100), ignore_index=-100).isnan()  # PyTorch's


def test_compiles_whole():
    compiled = torch.compile(token_cross_entropy, fullgraph=True, dynamic=True)
    logits, labels = torch.randn(3, 4, 6), torch.full((3, 4), -100)
    assert compiled(logits, labels).item() == 0.0
    labels[1, 2] = 3
    assert torch.allclose(compiled(logits, labels), F.cross_entropy(logits[1, 2][None], labels[1, 2][None]))


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("language-perceiver", lambda ids: {"labels": torch.full_like(ids, -100)}),
        ("token-classifier", lambda ids: {"labels": torch.full_like(ids, -100)}),
        ("perceiver-ar", lambda ids: {"labels": torch.full_like(ids, -100)}),
        ("text-classifier", lambda ids: {"labels": torch.full((ids.shape[0],), -100)}),
        (  # answers beyond the text are ignored, as transformers' clamped positions
            "question-answering",
            lambda ids: {"start_positions": torch.full((ids.shape[0],), 99), "end_positions": torch.full((2,), 99)},
        ),
    ],
)
def test_models_give_zero_loss_and_zero_gradients_when_nothing_is_scored(name, labels):
    model = tiny(name).train()
    (ids,) = inputs(name)
    loss = model(ids, **labels(ids)).loss
    assert loss.item() == 0.0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and not any(g.any() for g in grads)


def test_lucidrains_lm_port_too():
    model = LucidrainsPerceiverLM(
        num_tokens=20, max_seq_len=12, depth=1, dim=8, num_latents=4, latent_dim=16, latent_heads=2, cross_dim_head=8
    )
    _, loss = model(torch.randint(0, 20, (2, 10)), labels=torch.full((2, 10), -100))
    assert loss.item() == 0.0
