"""Token classification and question answering on the language Perceiver's encoder."""

import json

import pytest
import torch

import perceiver
from perceiver.core.model import ModelOutput
from perceiver.models.token_heads import PerceiverForQuestionAnswering, PerceiverForTokenClassification

TINY = dict(
    max_seq_len=16,
    d_model=32,
    num_latents=4,
    latent_dim=32,
    num_self_attends_per_block=1,
    cross_heads=2,
    latent_heads=2,
    cross_qk_channels=16,
    cross_v_channels=32,
    latent_qk_channels=16,
    latent_v_channels=32,
    decoder_heads=2,
    decoder_qk_channels=16,
)


def batch():
    torch.manual_seed(0)
    ids = torch.randint(0, 262, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    return ids, mask


@pytest.mark.parametrize("self_attends", [0, 2])
def test_token_classifier_shapes_loss_and_padding(self_attends):
    model = perceiver.create_model(
        "token-classifier", **TINY, num_labels=3, decoder_self_attends=self_attends, decoder_self_attend_heads=2
    ).eval()
    assert len(model.head.self_attends) == self_attends
    ids, mask = batch()
    labels = torch.randint(0, 3, (2, 10))
    out = model(ids, mask, labels=labels)
    assert out.logits.shape == (2, 10, 3) and out.last_hidden_state.shape == (2, 4, 32)
    # padding labels are ignored, whatever they say; -100 labels are ignored
    other = labels.clone()
    other[1, 7:] = (other[1, 7:] + 1) % 3
    assert torch.allclose(model(ids, mask, labels=other).loss, out.loss)
    ignored = labels.clone()
    ignored[0, :5] = -100
    assert not torch.allclose(model(ids, mask, labels=ignored).loss, out.loss)
    # padding values do not reach the valid positions (with and without decoder self-attention)
    noisy = ids.clone()
    noisy[1, 7:] = (noisy[1, 7:] + 5) % 262
    with torch.no_grad():
        assert torch.allclose(model(noisy, mask).logits[1, :7], out.logits[1, :7], atol=1e-6)
    out.loss.backward()
    assert model.head.classifier.weight.grad is not None
    assert model.encoder.latents.grad is not None


def test_decoder_self_attention_mixes_positions():
    """Without decoder self-attention a byte's logits depend on other bytes only via the latents; with it, directly:
    changing the decoder query of one position changes the logits of another only with self-attention."""
    for k, changes in ((0, False), (1, True)):
        model = perceiver.create_model(
            "token-classifier", **TINY, decoder_self_attends=k, decoder_self_attend_heads=2
        ).eval()
        ids, mask = batch()
        with torch.no_grad():
            before = model(ids, mask).logits
            model.query_builder.encoding.position_embeddings[3] += torch.randn(32)  # query of position 3 only
            after = model(ids, mask).logits
        assert ((after[:, 5] - before[:, 5]).abs().max() > 1e-5) == changes
        assert (after[:, 3] - before[:, 3]).abs().max() > 1e-5


def test_question_answering_logits_and_loss():
    model = perceiver.create_model("question-answering", **TINY).eval()
    ids, mask = batch()
    out = model(ids, mask, start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 6]))
    assert out.start_logits.shape == out.end_logits.shape == (2, 10)
    assert (out.start_logits[1, 7:] == torch.finfo(out.start_logits.dtype).min).all()  # padding is never an answer
    assert torch.isfinite(out.loss)
    # an out-of-range end position is ignored: only sample 1's end counts
    out2 = model(ids, mask, start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([99, 6]))
    ce = torch.nn.functional.cross_entropy
    expected = (ce(out.start_logits, torch.tensor([1, 2])) + ce(out.end_logits[1:], torch.tensor([6]))) / 2
    assert torch.allclose(out2.loss, expected)
    with pytest.raises(ValueError, match="num_classes=2"):
        perceiver.create_model("question-answering", **TINY, num_labels=3)


@pytest.mark.parametrize("form", ["model", "folder", "ckpt"])
def test_from_masked_lm_copies_the_encoder(form, tmp_path):
    mlm = perceiver.create_model("language-perceiver", **TINY).eval()
    if form == "model":
        source = mlm
    elif form == "folder":
        source = mlm.save_pretrained(tmp_path / "mlm")
    else:
        source = tmp_path / "mlm.ckpt"
        state = {"model." + k: v for k, v in mlm.state_dict().items()}
        torch.save(
            {"hyper_parameters": {"model": "language-perceiver", "model_kwargs": TINY}, "state_dict": state}, source
        )
    model, report = PerceiverForTokenClassification.from_masked_lm(source, num_labels=5, decoder_self_attends=1,
                                                                   decoder_self_attend_heads=2)  # fmt: skip
    assert model.num_classes == model.config.num_classes == 5 and model.config.adapter.num_channels == 32
    assert (model.config.encoder, model.config.decoder) == (mlm.config.encoder, mlm.config.decoder)
    assert report["new"] and all(k.startswith("head.") for k in report["new"])
    assert "head.classifier.weight" in report["new"] and "head.self_attends.0.attention.q_proj.weight" in report["new"]
    assert report["unused"] == ["output_adapter.bias", "output_adapter.embedding.weight"]
    ours, theirs = model.state_dict(), mlm.state_dict()
    for key in ("encoder.latents", "input_adapter.token_embedding.weight", "decoder.cross_attention.q_norm.weight"):
        assert torch.equal(ours[key], theirs[key])
    ids, mask = batch()
    with torch.no_grad():  # the latents and the decoded bytes are the masked LM's
        features, expected = model.forward_features(ids, mask), mlm.forward_features(ids, mask)
        assert torch.allclose(features.latents, expected.latents, atol=1e-6)
        decoded = model.decoder(model.query_builder(features.adapted, slice(0, 10)), features.latents)[0]
        mlm.output_adapter, tied = None, mlm.output_adapter  # the MLM's decoder outputs before the tied embedding
        assert torch.allclose(decoded, mlm.forward_head(expected).logits, atol=1e-6)
        mlm.output_adapter = tied
    qa, report = PerceiverForQuestionAnswering.from_masked_lm(source)
    assert isinstance(qa, PerceiverForQuestionAnswering) and "head.classifier.weight" in report["new"]


def test_save_load_and_head_api(tmp_path):
    model = perceiver.create_model("token-classifier", **TINY, num_labels=4, decoder_self_attends=1,
                                   decoder_self_attend_heads=2).eval()  # fmt: skip
    ids, mask = batch()
    path = model.save_pretrained(tmp_path / "tok")
    loaded = perceiver.from_pretrained(path)
    assert isinstance(loaded, PerceiverForTokenClassification)
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask).logits, model(ids, mask).logits)
    assert model.num_classes == 4 and model.get_classifier() is model.head.classifier
    model.reset_classifier(6)
    assert model(ids, mask).logits.shape == (2, 10, 6)
    with pytest.raises(ValueError, match=r"expected labels of shape \(2, 10\)"):
        model(ids, mask, labels=torch.zeros(2, 9, dtype=torch.long))


def test_decoder_query_inputs_adds_the_input_tokens_to_the_queries():
    model = perceiver.create_model("token-classifier", **TINY, decoder_query_inputs=True).eval()
    plain = perceiver.create_model("token-classifier", **TINY).eval()
    plain.load_state_dict(model.state_dict(), strict=False)  # all but the query norm
    ids, mask = batch()
    with torch.no_grad():
        adapted = model.input_adapter(ids, mask)
        queries = model.query_builder(adapted, slice(0, 10))
        expected = model.query_builder.norm(plain.query_builder(adapted, slice(0, 10)) + adapted.tokens)
        assert torch.allclose(queries, expected)
        other = ids.clone()
        other[:, 4] = (other[:, 4] + 1) % 262
        changed = model.query_builder(model.input_adapter(other, mask), slice(0, 10))
        assert (changed[:, 4] - queries[:, 4]).abs().max() > 1e-3  # a query knows its own byte
        assert torch.allclose(changed[:, 5], queries[:, 5])
    mlm = perceiver.create_model("language-perceiver", **TINY)
    _, report = PerceiverForTokenClassification.from_masked_lm(mlm, decoder_query_inputs=True)
    assert all(k.startswith(("head.", "query_builder.norm.")) for k in report["new"])
    assert "query_builder.norm.weight" in report["new"]


def test_head_convolution_is_local_and_ignores_padding():
    model = perceiver.create_model("token-classifier", **TINY, head_conv_kernel=3).eval()
    head = model.head
    x = torch.randn(2, 10, 32)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.no_grad():
        base = head(x, mask)
        y = x.clone()
        y[:, 5] += 1.0
        moved = (head(y, mask) - base).abs().amax(dim=(0, 2))
        assert (moved[4:7] > 1e-5).all() and (moved[:4] < 1e-6).all() and (moved[7:] < 1e-6).all()
        z = x.clone()
        z[1, 7:] = 100.0  # padding values never reach valid positions
        assert torch.allclose(head(z, mask)[1, :7], base[1, :7], atol=1e-6)
    with pytest.raises(ValueError, match="head_conv_kernel"):
        perceiver.create_model("token-classifier", **TINY, head_conv_kernel=4)


def test_outputs_and_head_contract():
    model = perceiver.create_model("token-classifier", **TINY, num_labels=3, decoder_self_attends=1,
                                   decoder_self_attend_heads=2, head_conv_kernel=3).eval()  # fmt: skip
    ids, mask = batch()
    with torch.no_grad():
        out = model(ids, mask)
        features = model.forward_features(ids, mask)
        torch.testing.assert_close(model.forward_head(features).logits, out.logits, rtol=0, atol=0)
        # the decoder runs in query chunks, the head (which mixes positions) once over all of them
        torch.testing.assert_close(model(ids, mask, query_chunk_size=3).logits, out.logits, rtol=0, atol=1e-6)
    assert type(out) is ModelOutput and out.loss is None
    model.reset_classifier(0)  # the pre-logits features (after the head's norm)
    assert model.num_classes == 0 and model(ids, mask).logits.shape == (2, 10, 32)
    qa = perceiver.create_model("question-answering", **TINY).eval()
    out = qa(ids, mask)
    assert isinstance(out, ModelOutput) and out.logits.shape == (2, 10, 2)
    assert torch.equal(out.start_logits, out.logits[..., 0]) and torch.equal(out.end_logits, out.logits[..., 1])
    assert qa.num_classes == 2 and qa.get_classifier() is qa.head.classifier
    with pytest.raises(NotImplementedError, match="fixed head of 2 outputs"):
        qa.reset_classifier(3)


#: the flat config the previous release wrote for a token classifier (format 1: every field, no format_version)
OLD_TOKEN = dict(
    num_latents=256, latent_dim=1280, num_blocks=1, num_self_attends_per_block=26, cross_heads=8, latent_heads=8,
    cross_attention_shape="kv", cross_qk_channels=256, cross_v_channels=1280, latent_qk_channels=256,
    latent_v_channels=1280, cross_widening_factor=1, latent_widening_factor=1, use_query_residual=True,
    attn_dropout=0.0, ff_dropout=0.0, decoder_heads=8, decoder_qk_channels=256, decoder_v_channels=None,
    decoder_widening_factor=1, decoder_use_query_residual=False, vocab_size=262, max_seq_len=2048, d_model=768,
    decode_all_positions=False, num_labels=2, decoder_self_attends=0, decoder_self_attend_heads=8,
    classifier_dropout=0.0, decoder_query_inputs=False, head_conv_kernel=0,
)  # fmt: skip


@pytest.mark.parametrize("model_type", ["perceiver-token-classifier", "perceiver-question-answering"])
def test_format1_config_of_the_previous_release_loads(model_type, tmp_path):
    qa = model_type == "perceiver-question-answering"
    head = {} if qa else dict(num_labels=4, decoder_self_attends=1, decoder_self_attend_heads=2, head_conv_kernel=3)
    fields = dict(TINY, decoder_query_inputs=True, decoder_use_query_residual=True, **head)
    model = perceiver.create_model("question-answering" if qa else "token-classifier", **fields).eval()
    folder = model.save_pretrained(tmp_path / "tok")
    flat = {"model_type": model_type, **OLD_TOKEN, **fields}
    assert set(flat) == set(OLD_TOKEN) | {"model_type"}
    (folder / "config.json").write_text(json.dumps(flat))
    loaded = perceiver.from_pretrained(folder)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.num_classes == (2 if qa else 4) and loaded.config.decoder.use_query_residual
    ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask).logits, model(ids, mask).logits)


@pytest.mark.parametrize("query_inputs", [False, True])
def test_forward_head_positions_lie_within_the_input(query_inputs):
    """One output per input byte: an `output_index` past the L input bytes (but within `max_seq_len`) is a ValueError
    naming the range; it failed inside torch (`INDICES element is out of DATA bounds`) or decoded a byte that is not
    there."""
    model = perceiver.create_model("token-classifier", **TINY, decoder_query_inputs=query_inputs).eval()
    ids, mask = batch()
    with torch.no_grad():
        features = model.forward_features(ids, mask)
        full = model.forward_head(features).logits
        some = model.forward_head(features, torch.tensor([3, 9])).logits
        torch.testing.assert_close(
            some, model.forward_head(features, slice(0, 10)).logits[:, [3, 9]], atol=1e-6, rtol=0
        )
        assert full.shape == (2, 10, 2)
        with pytest.raises(ValueError, match=r"output_index must lie in \[0, 10\), got values in \[3, 12\]"):
            model.forward_head(features, torch.tensor([3, 12]))
