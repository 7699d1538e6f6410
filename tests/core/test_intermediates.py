"""The encoder's intermediate outputs (`return_hidden_states`, transformers' `output_hidden_states`, and the latent
self-attention maps of `return_attention`): what each state is, in every weight-sharing and residual layout, through
gradient checkpointing and `torch.compile`, in every model that has an encoder."""

from __future__ import annotations

import pytest
import torch

import perceiver
from perceiver import EncoderConfig, PerceiverEncoder
from perceiver.core.encoder import EncoderOutput


def encoder(**overrides) -> PerceiverEncoder:
    torch.manual_seed(0)
    base = dict(
        input_dim=5,
        num_latents=4,
        latent_dim=8,
        num_cross_attends=2,
        num_self_attends_per_block=2,
        num_blocks=2,
        latent_heads=2,
    )
    return PerceiverEncoder(EncoderConfig(**{**base, **overrides})).eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(2, 7, generator=g) > 0.3
    mask[:, 0] = True
    return torch.randn(2, 7, 5, generator=g), mask


@pytest.mark.parametrize("share", ["all", "after_first", "none"])
@pytest.mark.parametrize("share_cross", [True, False])
def test_each_hidden_state_is_the_previous_one_after_the_next_step(share, share_cross):
    """No attention residuals: state i+1 is the next step (a cross-attend or a latent layer) applied to state i."""
    enc = encoder(share_latent_blocks=share, share_cross_attends=share_cross)
    x, mask = inputs()
    with torch.no_grad():
        out = enc(x, mask, return_hidden_states=True)
        assert isinstance(out, EncoderOutput) and out.attentions is None and out.latent_attentions is None
        states, previous, i = out.hidden_states, enc.latents.expand(2, -1, -1), 0
        for ci, li in zip(enc.cross_index, enc.latent_index):
            torch.testing.assert_close(states[i], enc.cross_attends[ci](previous, x, mask)[0], atol=1e-5, rtol=1e-5)
            for _ in range(enc.config.num_blocks):
                for layer in enc.latent_blocks[li]:
                    torch.testing.assert_close(states[i + 1], layer(states[i]), atol=1e-5, rtol=1e-5)
                    i += 1
            previous, i = states[i], i + 1
    assert len(states) == i == 2 * (1 + 2 * 2)
    torch.testing.assert_close(out.latents, enc(x, mask), atol=0, rtol=0)
    assert states[-1] is out.latents


@pytest.mark.parametrize("residual", ["cross_attend", "self_attend"])
def test_with_attention_residuals_the_states_are_what_the_next_step_receives(residual):
    enc = encoder(attn_residual=residual, num_self_attends_per_block=3)
    x, mask = inputs()
    with torch.no_grad():
        out = enc(x, mask, return_attention=True, return_hidden_states=True)
        plain = enc(x, mask)
    states = out.hidden_states
    assert len(states) == 2 * (1 + 2 * 3) and states[-1] is out.latents
    torch.testing.assert_close(out.latents, plain, atol=1e-6, rtol=0)
    # the second cross-attend reads the state listed just before it (the mixed one under "cross_attend")
    with torch.no_grad():
        second = enc.cross_attends[enc.cross_index[1]](states[6], x, mask)[0]
    torch.testing.assert_close(states[7], second, atol=1e-5, rtol=1e-5)


def test_latent_attention_maps_are_each_layers_probabilities():
    enc = encoder(num_self_attends_per_block=3)
    x, mask = inputs()
    with torch.no_grad():
        out = enc(x, mask, return_attention=True)
    assert out.hidden_states is None and len(out.attentions) == 2
    maps = out.latent_attentions
    assert len(maps) == 2 * 2 * 3  # cross-attends x blocks x layers, in the order they ran
    for probs in maps:
        assert probs.shape == (2, 2, 4, 4)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 4))
    assert not torch.allclose(maps[0], maps[1])
    # the first map is the first latent layer's attention over the first state
    layer = enc.latent_blocks[0][0]
    with torch.no_grad():
        states = enc(x, mask, return_hidden_states=True).hidden_states
        _, expected = layer.attention(layer.norm(states[0]), return_attention=True)
    torch.testing.assert_close(maps[0], expected, atol=1e-6, rtol=1e-5)


def test_hidden_states_carry_gradients_and_survive_gradient_checkpointing():
    enc = encoder().train()
    x, mask = inputs()

    def run():
        enc.zero_grad()
        states = enc(x, mask, return_hidden_states=True).hidden_states
        states[3].square().sum().backward()  # a loss on an intermediate state (a probe, a distillation target)
        return [s.detach() for s in states], {n: p.grad for n, p in enc.named_parameters() if p.grad is not None}

    plain_states, plain_grads = run()
    enc.gradient_checkpointing = True
    states, grads = run()
    assert "latents" in plain_grads and plain_grads.keys() == grads.keys()
    for got, want in zip(states, plain_states):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    for name in plain_grads:
        torch.testing.assert_close(grads[name], plain_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def classic(depth: int) -> perceiver.Perceiver:
    torch.manual_seed(0)
    return perceiver.Perceiver(
        input_channels=3, input_axis=2, depth=depth, num_latents=6, latent_dim=16, latent_heads=2, num_classes=5
    ).eval()


def test_classic_perceiver_returns_them_in_its_model_output():
    model, data = classic(depth=3), torch.randn(2, 4, 5, 3)
    with torch.no_grad():
        out = model(data, return_hidden_states=True)
        logits = model(data)
    assert len(out.hidden_states) == 3 * 2  # per cross-attend: its output and one latent layer (self_per_cross_attn)
    assert out.hidden_states[-1] is out.last_hidden_state and out.latent_attentions is None
    torch.testing.assert_close(out.logits, logits, atol=0, rtol=0)


def test_perceiver_io_heads_pass_them_through():
    """Each task head's forward takes `return_hidden_states` and returns the encoder's states."""
    torch.manual_seed(0)
    model = perceiver.create_model(
        "text-classifier", num_latents=4, latent_dim=16, d_model=24, max_seq_len=12, num_self_attends_per_block=2
    ).eval()
    ids = torch.randint(0, 262, (2, 12))
    with torch.no_grad():
        out = model(ids, return_hidden_states=True, return_attention=True)
    assert len(out.hidden_states) == 3 and len(out.latent_attentions) == 2
    assert out.hidden_states[-1] is out.last_hidden_state


def test_compiled_whole_with_both_flags():
    model, data = classic(depth=2), torch.randn(2, 4, 5, 3)

    def run(m):
        return m(data, return_hidden_states=True, return_attention=True)

    explained = torch._dynamo.explain(run)(model)
    assert explained.graph_break_count == 0, explained.break_reasons
    with torch.no_grad():
        got, want = torch.compile(run, fullgraph=True, backend="eager")(model), run(model)
    for a, b in zip([*got.hidden_states, *got.latent_attentions], [*want.hidden_states, *want.latent_attentions]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
