"""Parity with lucidrains' perceiver-pytorch (the installed 0.11) through `Perceiver.from_perceiver_pytorch`.

Older layouts are covered here by renaming 0.11 keys to their 0.8-0.10 names, and against the real wheels of each
version in `test_perceiver_pytorch_versions.py` (slow)."""

import itertools

import pytest
import torch
from pp_tiny import CLASSIC, IO, randomize

from perceiver import Perceiver

pp = pytest.importorskip("perceiver_pytorch")

SHAPES = {1: (2, 12, 3), 2: (2, 5, 4, 3), 3: (2, 3, 4, 2, 3)}


def peer_kwargs(**overrides) -> dict:
    return {**CLASSIC, **overrides}


def peer_and_ours(**kwargs):
    peer = pp.Perceiver(**kwargs).eval()
    randomize(peer)
    ours = Perceiver.from_perceiver_pytorch(peer.state_dict(), **kwargs)
    return peer, ours


def make_mask(shape, flat: bool) -> torch.Tensor:
    """A key mask over the axes (at least one valid token per sample), either `(B, *axes)` or `(B, M)`."""
    mask = torch.rand(shape[:-1]) > 0.4
    mask.view(shape[0], -1)[:, 0] = True
    return mask.reshape(shape[0], -1) if flat else mask


CASES = [
    dict(weight_tie_layers=tie, self_per_cross_attn=spc, input_axis=axis, with_mask=with_mask)
    for tie, spc, axis, with_mask in itertools.product([False, True], [1, 2], [1, 2, 3], [False, True])
]
CASES += [
    dict(fourier_encode_data=False, input_axis=1, with_mask=True),
    dict(fourier_encode_data=False, input_axis=2, with_mask=False, weight_tie_layers=True),
    dict(final_classifier_head=False, input_axis=2, with_mask=True),
    dict(final_classifier_head=False, fourier_encode_data=False, input_axis=3, self_per_cross_attn=2),
]


def case_id(case: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in case.items())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parity(case):
    case = dict(case)
    with_mask = case.pop("with_mask", False)
    kwargs = peer_kwargs(**case)
    peer, ours = peer_and_ours(**kwargs)
    assert not ours.training
    data = torch.randn(SHAPES[kwargs["input_axis"]])
    mask = make_mask(data.shape, flat=kwargs["input_axis"] == 3) if with_mask else None
    with torch.no_grad():
        expected, got = peer(data, mask=mask), ours(data, mask=mask)
    head = kwargs.get("final_classifier_head", True)
    assert got.shape == ((2, 7) if head else (2, 5, 16))
    assert (got - expected).abs().max() <= 1e-5
    if with_mask:  # the mask must matter, or the masked comparison proves nothing
        assert (ours(data) - got).abs().max() > 1e-4


def test_parity_return_embeddings():
    peer, ours = peer_and_ours(**peer_kwargs(weight_tie_layers=True, depth=4))
    data = torch.randn(2, 5, 4, 3)
    with torch.no_grad():
        expected = peer(data, return_embeddings=True)
        got = ours(data, return_embeddings=True)
    assert got.shape == (2, 5, 16)
    assert (got - expected).abs().max() <= 1e-5


def test_peer_default_num_latents():
    """perceiver-pytorch defaults to 512 latents, ours to 256: the loader applies the peer's defaults."""
    kwargs = peer_kwargs()
    del kwargs["num_latents"]
    peer = pp.Perceiver(**kwargs).eval()
    ours = Perceiver.from_perceiver_pytorch(peer.state_dict(), **kwargs)
    assert ours.config.num_latents == 512
    data = torch.randn(1, 5, 4, 3)
    with torch.no_grad():
        assert (ours(data) - peer(data)).abs().max() <= 1e-5


def test_module_instead_of_state_dict():
    kwargs = peer_kwargs(weight_tie_layers=True, self_per_cross_attn=2)
    peer = pp.Perceiver(**kwargs).eval()
    randomize(peer)
    ours = Perceiver.from_perceiver_pytorch(peer, **kwargs)
    data = torch.randn(2, 5, 4, 3)
    with torch.no_grad():
        assert (ours(data) - peer(data)).abs().max() <= 1e-5


def test_tied_weights_are_loaded_once():
    kwargs = peer_kwargs(weight_tie_layers=True, depth=4)
    peer = pp.Perceiver(**kwargs)
    assert peer.layers[1] is peer.layers[3]  # perceiver-pytorch repeats the shared block under every index
    ours = Perceiver.from_perceiver_pytorch(peer.state_dict(), **kwargs)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(ours) == count(peer)  # both count shared parameters once
    assert len(ours.encoder.cross_attends) == 2


def test_neutral_unsupported_options_are_accepted():
    kwargs = peer_kwargs(inverted_cross_attn=False, attn_residual=False, attn_residual_rank=32)
    peer = pp.Perceiver(**kwargs).eval()
    ours = Perceiver.from_perceiver_pytorch(peer.state_dict(), **kwargs)
    data = torch.randn(1, 5, 4, 3)
    with torch.no_grad():
        assert (ours(data) - peer(data)).abs().max() <= 1e-5


def test_state_dict_with_fewer_layers_raises():
    state_dict = pp.Perceiver(**peer_kwargs(depth=2)).state_dict()
    with pytest.raises(ValueError, match=r"missing \['encoder\.cross_attends\.2\."):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs(depth=3))
    state_dict = pp.Perceiver(**peer_kwargs(self_per_cross_attn=1)).state_dict()
    with pytest.raises(ValueError, match=r"missing \['encoder\.latent_blocks\.0\.1\."):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs(self_per_cross_attn=2))
    state_dict = pp.Perceiver(**peer_kwargs(final_classifier_head=False)).state_dict()
    with pytest.raises(ValueError, match=r"missing \['head\."):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs())


def test_state_dict_with_more_layers_raises():
    state_dict = pp.Perceiver(**peer_kwargs(depth=4)).state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys \['layers\.3\."):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs(depth=3))


def test_state_dict_with_more_self_attention_layers_raises():
    state_dict = pp.Perceiver(**peer_kwargs(self_per_cross_attn=2)).state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys \['layers\.0\.self_attns\.1\."):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs(self_per_cross_attn=1))


def test_state_dict_with_head_loaded_headless_raises():
    state_dict = pp.Perceiver(**peer_kwargs()).state_dict()
    with pytest.raises(ValueError, match=r"unexpected keys \['to_logits\."):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs(final_classifier_head=False))


def test_state_dict_with_missing_or_foreign_keys_raises():
    state_dict = pp.Perceiver(**peer_kwargs()).state_dict()
    del state_dict["layers.0.cross_attn.fn.to_q.weight"]
    with pytest.raises(ValueError, match=r"missing \['encoder\.cross_attends\.0\.attention\.q_proj\.weight'\]"):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs())
    state_dict = pp.Perceiver(**peer_kwargs()).state_dict()
    state_dict["something.else"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys \['something\.else'\]"):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs())


def test_state_dict_with_other_widths_raises():
    state_dict = pp.Perceiver(**peer_kwargs(num_latents=9)).state_dict()
    with pytest.raises(ValueError, match=r"encoder\.latents: expected \(5, 16\), got \(9, 16\)"):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs())
    state_dict = pp.Perceiver(**peer_kwargs(input_channels=4)).state_dict()
    with pytest.raises(ValueError, match="shape mismatch"):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs())


def test_untied_state_dict_loaded_as_tied_raises():
    state_dict = pp.Perceiver(**peer_kwargs(depth=3)).state_dict()  # layers 1 and 2 hold different weights
    with pytest.raises(ValueError, match=r"layers\.2\..* differs from the layer it is tied to"):
        Perceiver.from_perceiver_pytorch(state_dict, **peer_kwargs(depth=3, weight_tie_layers=True))


# ---------------------------------------------------------------------------------------------------- later options
OPTION_CASES = [
    dict(inverted_cross_attn=True),
    dict(inverted_cross_attn=(False, True, False)),
    dict(inverted_cross_attn=(True, False, True), weight_tie_layers=True),
    dict(attn_residual=True, attn_residual_rank=4),
    dict(attn_residual=True, weight_tie_layers=True, self_per_cross_attn=2),
    dict(attn_residual=True, inverted_cross_attn=(False, True, True), weight_tie_layers=True),
]


@pytest.mark.parametrize("option", OPTION_CASES, ids=case_id)
@pytest.mark.parametrize("with_mask", [False, True])
def test_parity_later_options(option, with_mask):
    kwargs = peer_kwargs(**option)
    peer, ours = peer_and_ours(**kwargs)
    assert ours.config.attn_residual == bool(option.get("attn_residual"))
    data = torch.randn(2, 5, 4, 3)
    mask = make_mask(data.shape, flat=False) if with_mask else None
    with torch.no_grad():
        assert (ours(data, mask=mask) - peer(data, mask=mask)).abs().max() <= 1e-5
        plain = Perceiver.from_perceiver_pytorch(
            peer.state_dict(), **peer_kwargs(**{**option, "inverted_cross_attn": False})
        )
        if "inverted_cross_attn" in option:  # the option must change the function, or parity proves nothing
            assert (plain(data, mask=mask) - ours(data, mask=mask)).abs().max() > 1e-4


def test_attention_residual_read_from_keys():
    """attn_residual and its rank come from the keys; a contradicting keyword is named in the error."""
    kwargs = peer_kwargs(attn_residual=True, attn_residual_rank=3)
    peer = pp.Perceiver(**kwargs).eval()
    randomize(peer)
    plain_kwargs = peer_kwargs()
    ours = Perceiver.from_perceiver_pytorch(peer.state_dict(), **plain_kwargs)
    assert ours.config.attn_residual and ours.config.attn_residual_rank == 3 and ours.config.attn_residual_norm
    data = torch.randn(2, 5, 4, 3)
    with torch.no_grad():
        assert (ours(data) - peer(data)).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="attn_residual_rank=8"):
        Perceiver.from_perceiver_pytorch(peer.state_dict(), **{**kwargs, "attn_residual_rank": 8})
    with pytest.raises(ValueError, match="attn_residual=False"):
        Perceiver.from_perceiver_pytorch(peer.state_dict(), **peer_kwargs(attn_residual=False))
    with pytest.raises(ValueError, match="attn_residual=True"):
        Perceiver.from_perceiver_pytorch(pp.Perceiver(**plain_kwargs).state_dict(), **peer_kwargs(attn_residual=True))


def test_new_options_for_new_models_and_save_load(tmp_path):
    model = Perceiver(**{**peer_kwargs(), "inverted_cross_attn": (True, False, True), "attn_residual": True}).eval()
    data = torch.randn(2, 5, 4, 3)
    model.save_pretrained(tmp_path / "m")
    loaded = Perceiver.from_pretrained(tmp_path / "m")
    assert loaded.config.inverted_cross_attn == (True, False, True) and loaded.config.attn_residual
    with torch.no_grad():
        assert torch.equal(loaded(data), model(data))
    with pytest.raises(ValueError, match="inverted_cross_attn"):
        Perceiver(**peer_kwargs(), inverted_cross_attn=(True, False))


# ---------------------------------------------------------------------------------------------------- old layouts
def to_old_layout(state_dict: dict, io: bool = False, residual_norm: bool = True) -> dict:
    """0.11 keys renamed to the 0.8-0.10 layout (numbered sub-modules); residual_norm=False drops 0.10.1's RMSNorm."""
    import re

    rules = (
        [
            (r"cross_attend_block\.cross_attn\.", "cross_attend_blocks.0."),
            (r"cross_attend_block\.cross_ff\.", "cross_attend_blocks.1."),
            (r"layers\.(\d+)\.self_attns\.0\.", r"layers.\1."),
            (r"attn_residuals\.(\d+)\.", r"layers.\1.2."),
        ]
        if io
        else [
            (r"layers\.(\d+)\.cross_attn\.", r"layers.\1.0."),
            (r"layers\.(\d+)\.cross_ff\.", r"layers.\1.1."),
            (r"layers\.(\d+)\.self_attns\.", r"layers.\1.2."),
            (r"attn_residuals\.(\d+)\.", r"layers.\1.3."),
        ]
    )
    out = {}
    for key, value in state_dict.items():
        for pattern, target in rules:
            key = re.sub("^" + pattern, target, key)
        if not residual_norm and "to_attn_logits" in key:
            i = int(key.rsplit(".", 2)[-2])
            if i == 0:
                continue
            key = key.rsplit(".", 2)[0] + f".{i - 1}.weight"
        out[key] = value
    return out


def drop_residual_norms(peer: torch.nn.Module) -> None:
    """The peer's 0.10.1+ residuals turned into 0.10.0's (no RMSNorm), in place."""
    for m in peer.modules():
        if hasattr(m, "to_attn_logits"):
            m.to_attn_logits[0] = torch.nn.Identity()


OLD_LAYOUT_CASES = [
    (dict(), True),
    (dict(weight_tie_layers=True, self_per_cross_attn=2), True),
    (dict(attn_residual=True, attn_residual_rank=4), True),  # 0.10.1: RMSNorm first
    (dict(attn_residual=True, attn_residual_rank=4, weight_tie_layers=True), False),  # 0.10.0: no norm
]


@pytest.mark.parametrize(
    ("option", "residual_norm"), OLD_LAYOUT_CASES, ids=lambda c: case_id(c) if isinstance(c, dict) else str(c)
)
def test_old_layout_loads(option, residual_norm):
    kwargs = peer_kwargs(**option)
    peer = pp.Perceiver(**kwargs).eval()
    randomize(peer)
    old = to_old_layout(peer.state_dict(), residual_norm=residual_norm)
    assert any(k.startswith("layers.0.0.") for k in old)
    if not residual_norm:
        drop_residual_norms(peer)
    ours = Perceiver.from_perceiver_pytorch(old, **kwargs)
    assert ours.config.attn_residual == bool(option.get("attn_residual"))
    assert ours.config.attn_residual_norm == residual_norm or not ours.config.attn_residual
    data = torch.randn(2, 5, 4, 3)
    mask = make_mask(data.shape, flat=False)
    with torch.no_grad():
        assert (ours(data, mask=mask) - peer(data, mask=mask)).abs().max() <= 1e-5


def test_layout_errors_name_the_keys():
    from perceiver.interop.perceiver_pytorch import detect_layout

    sd = pp.Perceiver(**peer_kwargs()).state_dict()
    mixed = {**sd, **{k: v for k, v in to_old_layout(sd).items() if k.startswith("layers.1.")}}
    with pytest.raises(ValueError, match=r"mixes .*layers\.0\.cross_attn.*layers\.1\.0\."):
        Perceiver.from_perceiver_pytorch(mixed, **peer_kwargs())
    with pytest.raises(ValueError, match=r"no perceiver-pytorch layer keys.*'latents'"):
        detect_layout(["latents", "to_logits.1.weight"])
    old = to_old_layout(sd)
    old["layers.0.7.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected keys \['layers\.0\.7\.weight'\]"):
        Perceiver.from_perceiver_pytorch(old, **peer_kwargs())


# ---------------------------------------------------------------------------------------------------- Perceiver IO
IO_KWARGS = IO
IO_CASES = [
    dict(),
    dict(weight_tie_layers=True),
    dict(decoder_ff=True, attn_residual=True, attn_residual_rank=4),
    dict(inverted_cross_attn=True, weight_tie_layers=True, attn_residual=True),
    dict(logits_dim=None),
]


@pytest.mark.parametrize("option", IO_CASES, ids=case_id)
@pytest.mark.parametrize("old", [False, True], ids=["0.11", "0.8-layout"])
def test_perceiver_io_parity(option, old):
    from perceiver.models.lucidrains_io import LucidrainsPerceiverIO

    kwargs = {**IO_KWARGS, **option}
    peer = pp.PerceiverIO(**kwargs).eval()
    randomize(peer)
    sd = to_old_layout(peer.state_dict(), io=True) if old else peer.state_dict()
    ours = LucidrainsPerceiverIO.from_perceiver_pytorch(sd, **kwargs)
    data, queries = torch.randn(2, 11, 12), torch.randn(2, 4, 10)
    mask = torch.rand(2, 11) > 0.4
    mask[:, 0] = True
    with torch.no_grad():
        got = ours(data, mask=mask, queries=queries)
        assert got.shape == (2, 4, kwargs["logits_dim"] or 10)
        assert (got - peer(data, mask=mask, queries=queries)).abs().max() <= 1e-5
        assert (ours(data, queries=queries[0]) - peer(data, queries=queries[0])).abs().max() <= 1e-5
        assert (ours(data) - peer(data)).abs().max() <= 1e-5  # latents without queries
        assert (ours(data, queries=queries) - got).abs().max() > 1e-4  # the mask matters


def test_perceiver_io_seq_dropout_in_training():
    """Structured input dropout: with the same seed, the same tokens are dropped and the outputs agree."""
    from perceiver.models.lucidrains_io import LucidrainsPerceiverIO, dropout_seq

    kwargs = {**IO_KWARGS, "seq_dropout_prob": 0.3}
    peer = pp.PerceiverIO(**kwargs).train()
    ours = LucidrainsPerceiverIO.from_perceiver_pytorch(peer.state_dict(), **kwargs).train()
    data, queries = torch.randn(2, 11, 12), torch.randn(2, 4, 10)
    mask = torch.rand(2, 11) > 0.3
    mask[:, :2] = True
    for m in (None, mask):
        torch.manual_seed(3)
        expected = peer(data, mask=m, queries=queries)
        torch.manual_seed(3)
        got = ours(data, mask=m, queries=queries)
        assert (got - expected).abs().max() <= 1e-5
    kept, kept_mask = dropout_seq(data, mask, 0.3)
    assert kept.shape == (2, int(0.7 * 11), 12)
    assert torch.equal(kept_mask.sum(-1), torch.ceil(mask.sum(-1) * 0.7).int().to(kept_mask.sum(-1).dtype))
    ours.eval()
    with torch.no_grad():  # eval: nothing dropped, the outputs do not depend on the seed
        assert torch.equal(ours(data, queries=queries), ours(data, queries=queries))
        assert (ours(data, queries=queries) - peer.eval()(data, queries=queries)).abs().max() <= 1e-5


@pytest.mark.parametrize("old", [False, True], ids=["0.11", "0.8-layout"])
def test_perceiver_lm_parity(old, tmp_path):
    from perceiver.models.lucidrains_io import LucidrainsPerceiverLM

    kwargs = dict(IO_KWARGS, num_tokens=20, max_seq_len=16, depth=2, decoder_ff=True)
    for k in ("queries_dim", "logits_dim"):
        kwargs.pop(k)
    peer = pp.PerceiverLM(**kwargs).eval()
    randomize(peer)
    sd = peer.state_dict()
    if old:
        sd = {
            ("perceiver_io." + k if not k.startswith(("token_emb", "pos_emb")) else k): v
            for k, v in to_old_layout({k.removeprefix("perceiver_io."): v for k, v in sd.items()}, io=True).items()
        }
        assert "perceiver_io.cross_attend_blocks.0.fn.to_q.weight" in sd
    ours = LucidrainsPerceiverLM.from_perceiver_pytorch(sd, **kwargs)
    ids = torch.randint(0, 20, (2, 10))
    mask = torch.rand(2, 10) > 0.3
    mask[:, 0] = True
    with torch.no_grad():
        assert (ours(ids, mask=mask) - peer(ids, mask=mask)).abs().max() <= 1e-5
    labels = ids.masked_fill(~mask, -100)
    logits, loss = ours(ids, mask=mask, labels=labels)
    assert torch.isfinite(loss)
    ours.save_pretrained(tmp_path / "lm")
    again = LucidrainsPerceiverLM.from_pretrained(tmp_path / "lm")
    with torch.no_grad():
        assert torch.equal(again(ids, mask=mask), ours(ids, mask=mask))


@pytest.mark.parametrize("contribute", [False, True])
@pytest.mark.parametrize("inverted", [False, True])
def test_perceiver_block_queries_contribute_kv(contribute, inverted):
    from perceiver.interop.perceiver_pytorch import from_perceiver_block

    kwargs = dict(
        dim=16,
        cross_heads=2,
        latent_heads=2,
        cross_dim_head=8,
        latent_dim_head=8,
        self_per_cross_attn=2,
        queries_contribute_kv=contribute,
    )
    peer = pp.PerceiverBlock(**kwargs).eval()
    randomize(peer)
    ours = from_perceiver_block(peer.state_dict(), **kwargs)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    mask = torch.rand(2, 9) > 0.4
    mask[:, 0] = True
    with torch.no_grad():
        expected = peer(x, context=context, mask=mask, inverted_attention=inverted)
        got = ours(x, context, mask, inverted_attention=inverted)
        assert (got - expected).abs().max() <= 1e-5
        if contribute:  # the queries must matter as keys, or the comparison proves nothing
            other = from_perceiver_block(peer.state_dict(), **{**kwargs, "queries_contribute_kv": False})
            assert (other(x, context, mask, inverted_attention=inverted) - got).abs().max() > 1e-4
