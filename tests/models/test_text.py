"""Text Perceiver IO models: shapes, masks, chunked / subset decoding, tied output, save/load, presets, bad input."""

import pytest
import torch

import perceiver
from perceiver.adapters.text import TextAdapter, TiedEmbeddingOutput
from perceiver.models.text import PerceiverForMaskedLM, PerceiverForSequenceClassification

TINY = dict(
    max_seq_len=12,
    d_model=16,
    num_latents=4,
    latent_dim=8,
    num_self_attends_per_block=1,
    latent_heads=2,
    cross_heads=1,
    cross_qk_channels=None,
    cross_v_channels=None,
    latent_qk_channels=None,
    latent_v_channels=None,
)
MLM_TINY = dict(TINY, decoder_qk_channels=16)


@pytest.fixture
def mlm() -> PerceiverForMaskedLM:
    return perceiver.create_model("language-perceiver", **MLM_TINY).eval()


@pytest.fixture
def classifier() -> PerceiverForSequenceClassification:
    return perceiver.create_model("text-classifier", num_labels=5, **TINY).eval()


def ids_and_mask(b=3, length=10, lengths=(10, 6, 1)):
    ids = torch.randint(6, 262, (b, length))
    mask = torch.arange(length)[None] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~mask, 0), mask


def test_presets_registered_and_run(mlm, classifier):
    assert {"language-perceiver", "text-classifier"} <= set(perceiver.list_models())
    ids, mask = ids_and_mask()
    out = mlm(ids, attention_mask=mask)
    assert out.logits.shape == (3, 10, 262) and out.last_hidden_state.shape == (3, 4, 8)
    out = classifier(ids, attention_mask=mask)
    assert out.logits.shape == (3, 5) and out.last_hidden_state.shape == (3, 4, 8)
    assert classifier(input_ids=ids).logits.shape == (3, 5)


def test_published_preset_sizes():
    c = perceiver.create_model  # build on meta: the sizes without allocating 800 MB
    with torch.device("meta"):
        model = c("language-perceiver")
    cfg = model.config
    assert (cfg.d_model, cfg.num_latents, cfg.latent_dim, cfg.num_self_attends_per_block) == (768, 256, 1280, 26)
    assert (cfg.vocab_size, cfg.max_seq_len, cfg.latent_heads, cfg.cross_heads) == (
        262,
        2048,
        8,
        8,
    )
    assert model.decoder.cross_attention.attention.qk_channels == 256
    assert model.encoder.latent_blocks[0][0].attention.v_channels == 1280


def test_default_decodes_input_positions_and_all_on_request(mlm):
    ids, mask = ids_and_mask(length=7, lengths=(7, 3, 2))
    with torch.no_grad():
        short = mlm(ids, attention_mask=mask).logits
        mlm.config.decode_all_positions = True
        full = mlm(ids, attention_mask=mask).logits
    assert short.shape == (3, 7, 262) and full.shape == (3, 12, 262)
    torch.testing.assert_close(short, full[:, :7], rtol=0, atol=1e-6)


def test_chunked_decoding_equals_unchunked(mlm):
    ids, mask = ids_and_mask()
    with torch.no_grad():
        full = mlm(ids, attention_mask=mask).logits
        for chunk in (1, 3, 7, 100):
            torch.testing.assert_close(mlm(ids, mask, query_chunk_size=chunk).logits, full, rtol=0, atol=1e-5)
        index = torch.tensor([9, 0, 4, 4, 11])  # subset + chunks, beyond-input position 11 included
        mlm.config.decode_all_positions = True
        all_rows = mlm(ids, mask).logits
        torch.testing.assert_close(mlm(ids, mask, output_index=index, query_chunk_size=2).logits, all_rows[:, index])


def test_subset_decoding_equals_rows_of_full(mlm):
    ids, mask = ids_and_mask()
    index = torch.tensor([5, 0, 3])
    with torch.no_grad():
        full = mlm(ids, attention_mask=mask).logits
        sub = mlm(ids, attention_mask=mask, output_index=index)
    assert sub.logits.shape == (3, 3, 262)
    torch.testing.assert_close(sub.logits, full[:, index], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"output_index must lie in \[0, 12\)"):
        mlm(ids, mask, output_index=torch.tensor([12]))


def test_padding_does_not_change_real_positions(mlm, classifier):
    """Masked padding is invisible: a padded batch gives the unpadded sequence's outputs."""
    ids = torch.randint(6, 262, (1, 5))
    padded = torch.cat([ids, torch.randint(0, 262, (1, 4))], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 4])
    with torch.no_grad():
        torch.testing.assert_close(mlm(padded, mask).logits[:, :5], mlm(ids).logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(classifier(padded, mask).logits, classifier(ids).logits, rtol=0, atol=1e-5)
        assert not torch.allclose(classifier(padded).logits, classifier(ids).logits, atol=1e-5)  # mask matters


def test_mask_dtypes_are_equivalent(classifier):
    ids, mask = ids_and_mask()
    with torch.no_grad():
        ref = classifier(ids, mask).logits
        for m in (mask.long(), mask.int(), mask.float(), mask.double()):
            torch.testing.assert_close(classifier(ids, m).logits, ref, rtol=0, atol=0)
        torch.testing.assert_close(classifier(ids, torch.ones_like(mask)).logits, classifier(ids).logits)


def test_batching_invariance(mlm):
    ids, mask = ids_and_mask()
    with torch.no_grad():
        batch = mlm(ids, mask).logits
        for i in range(3):
            torch.testing.assert_close(mlm(ids[i : i + 1], mask[i : i + 1]).logits, batch[i : i + 1], atol=1e-5, rtol=0)


def test_tied_embedding_shared_and_trained_by_both_uses(mlm):
    emb = mlm.input_adapter.token_embedding.weight
    assert mlm.output_adapter.embedding.weight is emb
    names = [n for n, p in mlm.named_parameters() if p is emb]
    assert len(names) == 1  # counted once
    ids, mask = ids_and_mask()
    labels = torch.where(mask, ids, -100)
    mlm.train()
    out = mlm(ids, mask, labels=labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    unused = torch.ones(262, dtype=torch.bool)
    unused[ids.unique()] = False
    # Rows of ids absent from the input still get gradient through the output matrix.
    assert emb.grad[unused].abs().sum() > 0
    assert all(p.grad is not None for p in mlm.parameters())


def test_tied_output_is_x_times_embedding_transpose():
    emb = torch.nn.Embedding(10, 4)
    head = TiedEmbeddingOutput(emb)
    with torch.no_grad():
        head.bias.normal_()
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(head(x, None), x @ emb.weight.T + head.bias)


def test_classifier_losses(classifier):
    ids, mask = ids_and_mask()
    logits = classifier(ids, mask).logits
    loss = classifier(ids, mask, labels=torch.tensor([0, 4, 2])).loss
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, torch.tensor([0, 4, 2])))
    multi = torch.rand(3, 5).round()
    loss = classifier(ids, mask, labels=multi).loss
    torch.testing.assert_close(loss, torch.nn.functional.binary_cross_entropy_with_logits(logits, multi))
    reg = perceiver.create_model("text-classifier", num_labels=1, **TINY).eval()
    target = torch.randn(3)
    torch.testing.assert_close(reg(ids, mask, labels=target).loss, ((reg(ids, mask).logits[:, 0] - target) ** 2).mean())


@pytest.mark.parametrize("preset", ["language-perceiver", "text-classifier"])
def test_save_load_round_trip(preset, tmp_path):
    model = perceiver.create_model(preset, **MLM_TINY if preset == "language-perceiver" else TINY).eval()
    ids, mask = ids_and_mask()
    folder = model.save_pretrained(tmp_path / preset)
    loaded = perceiver.from_pretrained(folder)
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask).logits, model(ids, mask).logits, rtol=0, atol=0)
    if preset == "language-perceiver":
        assert loaded.output_adapter.embedding.weight is loaded.input_adapter.token_embedding.weight


def test_return_attention_maps(mlm):
    ids, mask = ids_and_mask()
    out = mlm(ids, mask, return_attention=True)
    (enc,) = out.encoder_attentions
    assert enc.shape == (3, 1, 4, 10) and out.decoder_attention.shape == (3, 8, 10, 4)
    assert enc[2, :, :, 1:].abs().max() == 0  # padded keys get no attention


# ---- bad input (issue point 9): clear ValueErrors naming what was expected and what came ----


@pytest.mark.parametrize(
    ("ids", "mask", "message"),
    [
        (torch.zeros(1, 13, dtype=torch.long), None, r"at most 12 tokens \(the model's max_seq_len\), got 13"),
        (torch.tensor([[5, 262]]), None, r"token ids in \[0, 262\), got values in \[5, 262\]"),
        (torch.tensor([[-1, 3]]), None, r"token ids in \[0, 262\), got values in \[-1, 3\]"),
        (torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 5), r"same shape as input_ids \(2, 4\), got \(2, 5\)"),
        (torch.zeros(2, 4, dtype=torch.long), torch.ones(4), r"same shape as input_ids \(2, 4\), got \(4,\)"),
        (torch.zeros(1, 4), None, r"integer token ids .* got dtype torch.float32"),
        (torch.zeros(1, 4, dtype=torch.bool), None, r"integer token ids .* got dtype torch.bool"),
        (torch.zeros(4, dtype=torch.long), None, r"input_ids of shape \(B, L\), got \(4,\)"),
        (torch.zeros(1, 2, 3, dtype=torch.long), None, r"input_ids of shape \(B, L\), got \(1, 2, 3\)"),
        (torch.zeros(1, 0, dtype=torch.long), None, r"at least one token"),
        ([[1, 2, 3]], None, r"torch.Tensor of shape \(B, L\), got list"),
        (torch.zeros(1, 3, dtype=torch.long), torch.tensor([[1.0, 0.5, 0.0]]), r"values 0 \(padding\) or 1"),
        (torch.zeros(1, 3, dtype=torch.long), torch.tensor([[1, 2, 0]]), r"values 0 \(padding\) or 1"),
    ],
)
def test_bad_input_raises(mlm, classifier, ids, mask, message):
    for model in (mlm, classifier):
        with pytest.raises(ValueError, match=message):
            model(ids, attention_mask=mask)


def test_bad_call_raises(mlm):
    ids, mask = ids_and_mask()
    with pytest.raises(ValueError, match="not both"):
        mlm(ids, input_ids=ids)
    with pytest.raises(ValueError, match="got None"):
        mlm()
    with pytest.raises(ValueError, match=r"labels of shape \(3, 10\) .* got \(3, 9\)"):
        mlm(ids, mask, labels=ids[:, :9])
    with pytest.raises(ValueError, match="query_chunk_size must be >= 1"):
        mlm(ids, mask, query_chunk_size=0)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="max_seq_len must be a positive integer, got 0"):
        perceiver.create_model("language-perceiver", **dict(MLM_TINY, max_seq_len=0))
    with pytest.raises(ValueError, match="num_labels must be a positive integer"):
        perceiver.create_model("text-classifier", num_labels=0, **TINY)
    with pytest.raises(ValueError, match="attn_dropout must be in"):
        perceiver.create_model("text-classifier", attn_dropout=1.5, **TINY)
    with pytest.raises(ValueError, match=r"unknown keys for PerceiverTextClassifierConfig: \['not_a_field'\]"):
        perceiver.create_model("text-classifier", not_a_field=1)


def test_text_adapter_standalone():
    adapter = TextAdapter(vocab_size=10, max_seq_len=5, num_channels=4)
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    out = adapter(ids, torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert out.tokens.shape == (2, 3, 4) and out.mask.dtype == torch.bool
    torch.testing.assert_close(
        out.tokens - out.without_pos, adapter.position_encoding.position_embeddings[:3].expand(2, -1, -1)
    )
    assert out.mask.tolist() == [[True] * 3, [True, True, False]]
    assert adapter(ids).mask is None
