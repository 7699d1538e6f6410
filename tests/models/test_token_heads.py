"""Token classification and question answering on the language Perceiver's encoder."""

import pytest
import torch

import perceiver
from perceiver.models.text import PerceiverForMaskedLM, PerceiverMaskedLMConfig
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
    with pytest.raises(ValueError, match="num_labels=2"):
        perceiver.create_model("question-answering", **TINY, num_labels=3)


@pytest.mark.parametrize("form", ["model", "folder", "ckpt"])
def test_from_masked_lm_copies_the_encoder(form, tmp_path):
    mlm = PerceiverForMaskedLM(PerceiverMaskedLMConfig(**TINY)).eval()
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
    assert model.config.num_labels == 5 and model.config.d_model == 32
    assert report["new"] and all(k.startswith("head.") for k in report["new"])
    assert "head.classifier.weight" in report["new"] and "head.self_attends.0.attention.q_proj.weight" in report["new"]
    assert report["unused"] == ["output_adapter.bias", "output_adapter.embedding.weight"]
    ours, theirs = model.state_dict(), mlm.state_dict()
    for key in ("encoder.latents", "input_adapter.token_embedding.weight", "decoder.cross_attention.q_norm.weight"):
        assert torch.equal(ours[key], theirs[key])
    ids, mask = batch()
    with torch.no_grad():  # the decoded features are the masked LM's decoder outputs
        decoded = model.forward_features(ids, mask)[0]
        adapted, latents, _ = mlm.forward_features(ids, mask)
        expected = mlm.decoder(mlm.query_builder(adapted, slice(0, 10)), latents)[0]
        assert torch.allclose(decoded, expected, atol=1e-6)
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
    mlm = PerceiverForMaskedLM(PerceiverMaskedLMConfig(**TINY))
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
