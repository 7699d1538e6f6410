"""A perceiver-pytorch user switching over: its modules load without keywords (and the settings a state dict does not
hold are read from them), its state dicts go through `load_state_dict`, `return_hiddens` gives its tuple."""

from __future__ import annotations

import pytest
import torch
from pp_tiny import CLASSIC, IO, randomize

from perceiver import Perceiver
from perceiver.models.lucidrains_io import LucidrainsPerceiverBlock, LucidrainsPerceiverIO, LucidrainsPerceiverLM

pp = pytest.importorskip("perceiver_pytorch")

LM = dict(
    num_tokens=20, dim=12, max_seq_len=16, depth=2, num_latents=6, latent_dim=16, latent_heads=2, latent_dim_head=8
)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= 1e-5


DATA = torch.randn(2, 5, 4, 3)
SEQ, QUERIES = torch.randn(2, 11, 12), torch.randn(2, 4, 10)


# ----------------------------------------------------------------------------- a module: its settings are read
@pytest.mark.parametrize(
    "option",
    [
        dict(max_freq=50.0),  # not in the weights: it was silently 10.0 (ours) before
        dict(latent_heads=4, latent_dim_head=4),  # the same widths as 2 x 8: same shapes, other outputs
        dict(inverted_cross_attn=(True, False, True)),
        dict(weight_tie_layers=True, self_per_cross_attn=2, input_axis=1, input_channels=2, attn_dropout=0.1),
        dict(final_classifier_head=False, fourier_encode_data=False, attn_residual=True, attn_residual_rank=4),
    ],
    ids=lambda o: "-".join(o),
)
def test_a_module_loads_without_keywords(option):
    kwargs = {**CLASSIC, **option}
    peer = randomize(pp.Perceiver(**kwargs))
    ours = Perceiver.from_perceiver_pytorch(peer)
    if not kwargs.get("final_classifier_head", True):
        kwargs["num_classes"] = ours.config.num_classes  # without a head it is not in the module (nor used)
    assert ours.config == Perceiver(**kwargs).config
    data = torch.randn(2, 9, 2) if kwargs.get("input_axis") == 1 else DATA
    with torch.no_grad():
        assert close(ours(data), peer(data))


def test_settings_the_state_dict_cannot_show_are_read_from_the_module():
    peer = randomize(pp.Perceiver(**{**CLASSIC, "max_freq": 50.0, "inverted_cross_attn": True}))
    without = {k: v for k, v in CLASSIC.items() if k != "max_freq"}  # the module knows; our default is 10
    ours = Perceiver.from_perceiver_pytorch(peer, **without)
    assert ours.config.max_freq == 50.0 and ours.config.inverted_cross_attn is True
    with torch.no_grad():
        assert close(ours(DATA), peer(DATA))


def test_keywords_that_disagree_with_the_module_raise():
    peer = pp.Perceiver(**CLASSIC)
    with pytest.raises(
        ValueError, match=r"max_freq=10\.0 \(the module has 6\.0\).*latent_heads=8 \(the module has 2\)"
    ):
        Perceiver.from_perceiver_pytorch(peer, **{**CLASSIC, "max_freq": 10.0, "latent_heads": 8})
    tied = pp.Perceiver(**CLASSIC, weight_tie_layers=True)
    untied = Perceiver.from_perceiver_pytorch(tied, weight_tie_layers=False)  # untying is a valid load
    assert len(untied.encoder.cross_attends) == 3


def test_io_and_lm_modules_load_without_keywords():
    peer = randomize(pp.PerceiverIO(**IO, inverted_cross_attn=True, seq_dropout_prob=0.2, weight_tie_layers=True))
    ours = LucidrainsPerceiverIO.from_perceiver_pytorch(peer)
    assert (ours.config.inverted_cross_attn, ours.config.seq_dropout_prob, ours.config.weight_tie_layers) == (
        True,
        0.2,
        True,
    )
    with torch.no_grad():
        assert close(ours(SEQ, queries=QUERIES), peer(SEQ, queries=QUERIES))
    lm = randomize(pp.PerceiverLM(**LM))
    ours_lm = LucidrainsPerceiverLM.from_perceiver_pytorch(lm)
    ids = torch.randint(0, 20, (2, 10))
    with torch.no_grad():
        assert close(ours_lm(ids), lm(ids))


# ----------------------------------------------------------------------------- load_state_dict of a peer state dict
@pytest.mark.parametrize(
    "option",
    [dict(), dict(weight_tie_layers=True, self_per_cross_attn=2), dict(attn_residual=True, attn_residual_rank=4)],
)
def test_load_state_dict_takes_a_perceiver_pytorch_state_dict(option):
    peer = randomize(pp.Perceiver(**CLASSIC, **option))
    ours = Perceiver(**CLASSIC, **option).eval()
    result = ours.load_state_dict(peer.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        assert close(ours(DATA), peer(DATA))
    ddp = {"module." + k: v for k, v in peer.state_dict().items()}
    Perceiver(**CLASSIC, **option).load_state_dict(ddp)  # a DDP-saved one as well


def test_load_state_dict_of_the_io_lm_and_block():
    peer = randomize(pp.PerceiverIO(**IO, decoder_ff=True))
    ours = LucidrainsPerceiverIO(**IO, decoder_ff=True).eval()
    ours.load_state_dict(peer.state_dict())
    with torch.no_grad():
        assert close(ours(SEQ, queries=QUERIES), peer(SEQ, queries=QUERIES))
    lm = randomize(pp.PerceiverLM(**LM))
    ours_lm = LucidrainsPerceiverLM(**LM).eval()
    ours_lm.load_state_dict(lm.state_dict())
    ids = torch.randint(0, 20, (2, 10))
    with torch.no_grad():
        assert close(ours_lm(ids), lm(ids))
    block_kwargs = dict(dim=16, context_dim=12, cross_heads=2, latent_heads=2, cross_dim_head=8, latent_dim_head=8)
    block = randomize(pp.PerceiverBlock(**block_kwargs))
    ours_block = LucidrainsPerceiverBlock(**block_kwargs).eval()
    ours_block.load_state_dict(block.state_dict())
    x, context = torch.randn(2, 5, 16), torch.randn(2, 9, 12)
    with torch.no_grad():
        assert close(ours_block(x, context), block(x, context=context))
        loaded = LucidrainsPerceiverBlock.from_perceiver_pytorch(block, **block_kwargs)  # as the other ports
        assert close(loaded(x, context), block(x, context=context))


def test_load_state_dict_names_what_does_not_fit():
    state_dict = pp.Perceiver(**CLASSIC).state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys \['layers\.2\.cross_attn"):
        Perceiver(**{**CLASSIC, "depth": 2}).load_state_dict(state_dict)
    with pytest.raises(ValueError, match=r"head\.fc\.weight: expected \(3, 16\), got \(7, 16\)"):
        Perceiver(**{**CLASSIC, "num_classes": 3}).load_state_dict(state_dict)
    result = Perceiver(**{**CLASSIC, "depth": 2}).load_state_dict(state_dict, strict=False)
    assert not result.missing_keys and all(k.startswith("layers.2.") for k in result.unexpected_keys)
    residual = pp.Perceiver(**CLASSIC, attn_residual=True, attn_residual_rank=4).state_dict()
    with pytest.raises(ValueError, match="need a model built with attn_residual=True, attn_residual_rank=4"):
        Perceiver(**CLASSIC).load_state_dict(residual)
    with pytest.raises(RuntimeError, match="Missing key"):  # neither ours nor the peer's: PyTorch's own error
        Perceiver(**CLASSIC).load_state_dict({"foo": torch.zeros(1)})


# ----------------------------------------------------------------------------- return_hiddens (perceiver-pytorch 0.11)
@pytest.mark.parametrize(
    "option",
    [
        dict(),
        dict(self_per_cross_attn=2, weight_tie_layers=True),
        dict(self_per_cross_attn=0),
        dict(attn_residual=True, attn_residual_rank=4),
        dict(attn_residual=True, attn_residual_rank=4, weight_tie_layers=True, self_per_cross_attn=2),
    ],
    ids=lambda o: "-".join(o) or "plain",
)
@pytest.mark.parametrize("embeddings", [False, True])
def test_return_hiddens_as_perceiver_pytorch(option, embeddings):
    peer = randomize(pp.Perceiver(**CLASSIC, **option))
    ours = Perceiver.from_perceiver_pytorch(peer)
    with torch.no_grad():
        expected, expected_blocks = peer(DATA, return_hiddens=True, return_embeddings=embeddings)
        got, blocks = ours(DATA, return_hiddens=True, return_embeddings=embeddings)
    assert close(got, expected)
    assert len(blocks) == len(expected_blocks) == CLASSIC["depth"] + 1
    assert all(close(a, b) for a, b in zip(blocks, expected_blocks, strict=True))


def test_return_hiddens_of_the_io_and_its_errors():
    for option in (dict(), dict(attn_residual=True, attn_residual_rank=4, weight_tie_layers=True)):
        peer = randomize(pp.PerceiverIO(**IO, **option))
        ours = LucidrainsPerceiverIO.from_perceiver_pytorch(peer)
        with torch.no_grad():
            expected, expected_blocks = peer(SEQ, queries=QUERIES, return_hiddens=True)
            got, blocks = ours(SEQ, queries=QUERIES, return_hiddens=True)
        assert close(got, expected) and len(blocks) == len(expected_blocks) == IO["depth"] + 1
        assert all(close(a, b) for a, b in zip(blocks, expected_blocks, strict=True))
    with pytest.raises(ValueError, match="return_hiddens=True .* alone"):
        Perceiver(**CLASSIC)(DATA, return_hiddens=True, return_dict=True)


# ----------------------------------------------------------------------------- constructor details
def test_lm_rejects_queries_and_logits_dims_it_would_ignore():
    with pytest.raises(ValueError, match=r"queries_dim = dim \(12\).*got queries_dim=5"):
        LucidrainsPerceiverLM(**LM, queries_dim=5)
    LucidrainsPerceiverLM(**LM, queries_dim=12, logits_dim=20)  # the values it sets itself are harmless


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(dim=16.0), r"LucidrainsBlockConfig\.dim must be a positive integer, got 16\.0"),  # was "not iterable"
        (dict(self_per_cross_attn=-1), r"self_per_cross_attn must be an integer >= 0, got -1"),  # was no layers
        (dict(context_dim=0), r"context_dim must be a positive integer or None, got 0"),  # was a LayerNorm(0)
        (dict(ff_dropout=1.0), r"ff_dropout must be in \[0, 1\), got 1\.0"),
    ],
)
def test_block_config_is_checked_when_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LucidrainsPerceiverBlock(**{"dim": 16, **kwargs})


@pytest.mark.parametrize(
    ("cls", "config"),
    [
        (LucidrainsPerceiverIO, "LucidrainsIOConfig"),
        (LucidrainsPerceiverLM, "LucidrainsLMConfig"),
        (LucidrainsPerceiverBlock, "LucidrainsBlockConfig"),
    ],
)
def test_ports_take_a_config_or_keywords_not_both(cls, config):
    with pytest.raises(ValueError, match=f"pass a {config} or keywords, not both"):  # the keywords were ignored
        cls(cls.config_class(), depth=2)
    with pytest.raises(ValueError, match=f"expected a {config}, got dict"):
        cls({"depth": 2})


def test_the_peer_names_import_from_perceiver():
    """`from perceiver import PerceiverLM` (an AttributeError before) is perceiver-pytorch's LM; `perceiver.PerceiverIO`
    is our composable core, and its peer's keywords name the class that takes them (a bare "unexpected keyword
    argument 'depth'" before)."""
    import copy

    import perceiver

    assert perceiver.PerceiverLM is LucidrainsPerceiverLM
    lm = perceiver.PerceiverLM(**LM)
    assert lm(torch.randint(0, 20, (2, 16))).shape == (2, 16, 20)
    with pytest.raises(TypeError, match=r"keywords \['depth', 'dim', 'logits_dim'.*use perceiver.models.LucidrainsPer"):
        perceiver.PerceiverIO(**IO)
    copy.deepcopy(LucidrainsPerceiverIO(**IO))  # its subclasses build and copy as before
