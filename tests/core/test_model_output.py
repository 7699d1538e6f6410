"""`ModelOutput` read as transformers' outputs are: `out["logits"]`, `out[0]` (the loss when labels were given, else
the logits) and `to_tuple()` in the order of transformers' Perceiver heads, which is what transformers' `Trainer` and
code written for transformers' models read."""

import pytest
import torch

from perceiver.core.model import ModelOutput
from perceiver.models.token_heads import QuestionAnsweringOutput


def test_index_and_tuple_follow_transformers():
    loss, logits, latents = torch.tensor(1.5), torch.randn(2, 3), torch.randn(2, 4, 8)
    maps = [torch.rand(2, 1, 4, 8)]
    out = ModelOutput(logits, latents, loss, encoder_attentions=maps, latent_attentions=[torch.rand(2, 1, 4, 4)])
    assert out[0] is loss and out[1] is logits and out["loss"] is loss and out["last_hidden_state"] is latents
    assert out.to_tuple() == (loss, logits, out.latent_attentions, maps) and out[1:] == out.to_tuple()[1:]
    assert out["attentions"] is out.latent_attentions and out["cross_attentions"] == maps
    plain = ModelOutput(logits, latents)
    assert plain[0] is logits and plain.to_tuple() == (logits,)  # no labels: the logits come first
    with pytest.raises(KeyError, match=r"'loss': not set in this ModelOutput \(set: \['logits', 'last_hidden_state'\]"):
        plain["loss"]
    with pytest.raises(KeyError, match="'nonsense'"):
        plain["nonsense"]
    with pytest.raises(IndexError):
        plain[1]


def test_question_answering_tuple_has_start_and_end_logits():
    logits = torch.randn(2, 7, 2)
    out = QuestionAnsweringOutput(logits, loss=torch.tensor(0.3))
    loss, start, end = out.to_tuple()
    assert loss is out.loss and torch.equal(start, logits[..., 0]) and torch.equal(end, logits[..., 1])
    assert torch.equal(out["end_logits"], logits[..., 1])


@pytest.mark.parametrize(
    "name", ["text-classifier", "question-answering", "vision-perceiver-learned", "perceiver-ar-tiny"]
)
def test_torch_export_takes_a_model_that_returns_it(name):
    """`torch.export.export(model, ...)` directly, not only through `perceiver.export`: the output dataclass is a
    pytree node (before: "Found ModelOutput in output, which is not a known type")."""
    from tiny_models import inputs, tiny

    model, x = tiny(name), inputs(name)
    program = torch.export.export(model, x)
    got, want = program.module()(*x), model(*x)
    assert type(got) is type(want) and torch.allclose(got.logits, want.logits, atol=1e-5)
    assert torch.allclose(got[0], want[0], atol=1e-5)  # the logits (question answering: the start logits)


HF_HEADS = ["language-perceiver", "text-classifier", "token-classifier", "question-answering", "optical-flow-perceiver"]


@pytest.mark.parametrize("name", HF_HEADS)
def test_transformers_output_flags_on_every_head(name):
    """`output_attentions` / `output_hidden_states` / `return_dict=False`, as code written for transformers passes them
    (before: TypeError, unexpected keyword argument); a flag that is not a bool is a TypeError."""
    from tiny_models import inputs, tiny

    model, x = tiny(name), inputs(name)
    with torch.no_grad():
        ours = model(*x, return_attention=True, return_hidden_states=True)
        theirs = model(*x, output_attentions=True, output_hidden_states=True, return_dict=False)
    assert isinstance(theirs, tuple) and len(theirs) == len(ours.to_tuple()) >= 4  # logits, hidden, maps
    assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else len(a) == len(b) for a, b in zip(theirs, ours))
    with pytest.raises(TypeError, match="output_attentions must be True, False or None, got 'yes'"):
        model(*x, output_attentions="yes")
