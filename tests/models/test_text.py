"""Text Perceiver IO models: shapes, masks, chunked / subset decoding, tied output, save/load, presets, bad input."""

import json

import pytest
import torch

import perceiver
from perceiver.adapters.text import TextAdapter, TextAdapterConfig, TiedEmbeddingOutput
from perceiver.checks import InputTypeError
from perceiver.core.model import Features, ModelOutput
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
    adapter, enc = model.config.adapter, model.config.encoder
    assert (adapter.num_channels, enc.num_latents, enc.latent_dim, enc.num_self_attends_per_block) == (
        768,
        256,
        1280,
        26,
    )
    assert (adapter.vocab_size, adapter.max_seq_len, enc.latent_heads, enc.cross_heads) == (262, 2048, 8, 8)
    assert (model.config.vocab_size, model.config.max_seq_len) == (262, 2048)  # read-only views of the adapter's
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


def test_id_dtypes_are_equivalent(mlm):
    """uint8 / int16 / int32 ids (raw bytes come as uint8) give the int64 logits; not an error from nn.Embedding."""
    ids, mask = ids_and_mask()
    ids = ids.clamp_max(255)  # ids that uint8 holds
    with torch.no_grad():
        ref = mlm(ids, mask).logits
        for dtype in (torch.uint8, torch.int16, torch.int32):
            torch.testing.assert_close(mlm(ids.to(dtype), mask).logits, ref, rtol=0, atol=0)


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
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 0 .* got -1"):
        perceiver.create_model("text-classifier", num_labels=-1, **TINY)
    with pytest.raises(ValueError, match="decoder_heads must be a positive integer, got 0"):
        perceiver.create_model("language-perceiver", decoder_heads=0, **TINY)
    with pytest.raises(ValueError, match="attn_dropout must be in"):
        perceiver.create_model("text-classifier", attn_dropout=1.5, **TINY)
    with pytest.raises(ValueError, match=r"unknown keys \['not_a_field'\] for PerceiverTextClassifierConfig"):
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


# ---- the model contract (issue 13): one output type, head API, nested configs, flat files of the previous release ----


def test_outputs_are_model_outputs_with_loss_from_compute_loss(mlm, classifier):
    import perceiver.models.text as text

    assert not hasattr(text, "TextModelOutput")
    ids, mask = ids_and_mask()
    labels = torch.where(mask, ids, -100)
    with torch.no_grad():
        out = mlm(ids, mask, labels=labels)
        features = mlm.forward_features(ids, mask)
        head = mlm.forward_head(features)
    assert type(out) is ModelOutput and type(head) is ModelOutput and isinstance(features, Features)
    torch.testing.assert_close(head.logits, out.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, mlm.compute_loss(out.logits, labels))
    out = classifier(ids, mask, labels=torch.tensor([0, 4, 2]))
    assert type(out) is ModelOutput and out.loss.ndim == 0


def test_head_api(mlm, classifier):
    assert mlm.num_classes == 262  # the logits' last axis: the vocabulary
    with pytest.raises(NotImplementedError, match=r"PerceiverForMaskedLM has no class head.*vocabulary"):
        mlm.get_classifier()
    with pytest.raises(NotImplementedError, match=r"over its vocabulary \(262 ids\).*SequenceClassification.from_pre"):
        mlm.reset_classifier(3)  # names the class that starts a classifier from a masked LM
    assert classifier.num_classes == classifier.config.num_classes == 5
    assert classifier.get_classifier() is classifier.decoder.final_layer
    ids, mask = ids_and_mask()
    classifier.reset_classifier(7)
    assert classifier.config.num_classes == 7 and classifier(ids, mask).logits.shape == (3, 7)
    classifier.reset_classifier(0)  # no classifier: the pre-logits features (the decoded query, latent_dim wide)
    assert classifier(ids, mask).logits.shape == (3, 8) and classifier.num_classes == 0


def test_nested_config_and_flat_or_dotted_preset_keywords(tmp_path):
    model = perceiver.create_model("language-perceiver", **MLM_TINY)
    c = model.config
    assert isinstance(c.adapter, TextAdapterConfig) and c.adapter.build().num_channels == 16
    assert (c.adapter.max_seq_len, c.adapter.num_channels, c.encoder.num_latents, c.decoder.qk_channels) == (
        12,
        16,
        4,
        16,
    )
    assert c.encoder.input_dim is None and model.encoder.config.input_dim == 16  # the adapter gives the input width
    assert model.decoder.config.v_channels == 16  # v_channels None: as wide as the queries (d_model), as DeepMind's
    dotted = {k: v for k, v in MLM_TINY.items() if k not in ("d_model", "max_seq_len", "decoder_qk_channels")}
    dotted |= {"adapter.num_channels": 16, "adapter.max_seq_len": 12, "decoder.qk_channels": 16}
    assert perceiver.create_model("language-perceiver", **dotted).config == c
    saved = json.loads((model.save_pretrained(tmp_path / "m") / "config.json").read_text())
    assert saved["format_version"] == 2 and set(saved) == {
        "model_type",
        "format_version",
        "adapter",
        "encoder",
        "decoder",
        "decode_all_positions",
    }
    assert saved["adapter"] == {"vocab_size": 262, "max_seq_len": 12, "num_channels": 16, "init_scale": 0.02}
    with pytest.raises(ValueError, match="num_channels must be a positive integer, got 0"):
        TextAdapterConfig(num_channels=0)


#: every field of the flat text configs of the release before nested part configs (format 1), with its default
OLD_FLAT = dict(
    num_latents=256, latent_dim=1280, num_blocks=1, num_self_attends_per_block=26, cross_heads=8, latent_heads=8,
    cross_attention_shape="kv", cross_qk_channels=256, cross_v_channels=1280, latent_qk_channels=256,
    latent_v_channels=1280, cross_widening_factor=1, latent_widening_factor=1, use_query_residual=True,
    attn_dropout=0.0, ff_dropout=0.0, decoder_v_channels=None, decoder_widening_factor=1, vocab_size=262,
    max_seq_len=2048, d_model=768,
)  # fmt: skip
OLD_MLM = OLD_FLAT | dict(decoder_heads=8, decoder_qk_channels=256, decoder_use_query_residual=False)
OLD_MLM |= dict(decode_all_positions=False)
OLD_CLASSIFIER = OLD_FLAT | dict(decoder_heads=1, decoder_qk_channels=None, decoder_use_query_residual=True)
OLD_CLASSIFIER |= dict(num_labels=2)


@pytest.mark.parametrize(
    ("preset", "model_type", "old", "fields"),
    [
        (
            "language-perceiver",
            "perceiver-masked-lm",
            OLD_MLM,
            dict(
                MLM_TINY,
                cross_attention_shape="q",
                decoder_v_channels=8,
                decoder_widening_factor=2,
                use_query_residual=False,
                attn_dropout=0.1,
                decode_all_positions=True,
            ),
        ),  # fmt: skip
        (
            "text-classifier",
            "perceiver-text-classifier",
            OLD_CLASSIFIER,
            dict(TINY, num_labels=4, decoder_qk_channels=12, decoder_heads=2, ff_dropout=0.1),
        ),
    ],
)
def test_format1_config_of_the_previous_release_loads(preset, model_type, old, fields, tmp_path):
    """A flat config.json as the previous release wrote it (every field, no format_version) next to weights of the
    current model: it loads into the nested config the same flat keywords give, with the same outputs."""
    model = perceiver.create_model(preset, **fields).eval()
    folder = model.save_pretrained(tmp_path / preset)
    flat = {"model_type": model_type, **old, **fields}
    assert set(flat) == set(old) | {"model_type"}  # only the old release's fields
    (folder / "config.json").write_text(json.dumps(flat))
    loaded = perceiver.from_pretrained(folder)
    assert loaded.config == model.config
    c = loaded.config
    if preset == "language-perceiver":
        assert (c.encoder.cross_attention_shape, c.decoder.cross_attention_shape) == ("q", "q")
        assert (c.decoder.v_channels, c.decoder.widening_factor, c.encoder.use_query_residual) == (8, 2, False)
        assert c.encoder.attn_dropout == c.decoder.attn_dropout == 0.1 and c.decode_all_positions
    else:
        assert (loaded.num_classes, c.decoder.qk_channels, c.decoder.num_heads, c.decoder.ff_dropout) == (4, 12, 2, 0.1)
    ids, mask = ids_and_mask()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask).logits, model(ids, mask).logits, rtol=0, atol=0)
    again = perceiver.from_pretrained(loaded.save_pretrained(tmp_path / "again"))  # written as format 2
    assert again.config == model.config


def test_fill_mask_replaces_each_mask_by_the_most_likely_byte(mlm):
    model = mlm
    tok = perceiver.ByteTokenizer()
    texts = ["Sky: [MASK][MASK][MASK].", "ab[MASK]"]  # 9 and 3 bytes (max_seq_len 12)
    got = model.fill_mask(texts)
    for text, filled in zip(texts, got):  # one at a time, by hand
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0]
        ids = enc["input_ids"][0].clone()
        masked = ids == tok.mask_token_id
        ids[masked] = logits[masked][:, 6:].argmax(-1) + 6  # bytes only: ids 6..261
        assert filled == tok.decode(ids, skip_special_tokens=True)
        assert filled.startswith(text.split("[MASK]")[0]) and "[MASK]" not in filled
    assert model.fill_mask(texts[1]) == got[1]  # a single text, the same as in a batch of other lengths
    assert model.fill_mask("no mask") == "no mask"
    transformers = pytest.importorskip("transformers")
    assert model.fill_mask(texts, tokenizer=transformers.PerceiverTokenizer()) == got  # transformers' tokenizer


def test_fill_mask_errors_name_the_problem(mlm):
    model = mlm
    limit = model.config.adapter.max_seq_len
    with pytest.raises(ValueError, match=rf"at most max_seq_len={limit} tokens .*got {limit + 1}"):
        model.fill_mask("x" * (limit - 1))
    other = perceiver.create_model("language-perceiver", vocab_size=300, num_latents=4, latent_dim=16, d_model=16)
    with pytest.raises(ValueError, match="expected a tokenizer for this model's 300-token vocabulary"):
        other.fill_mask("a[MASK]")
    for bad in (123, None, b"a[MASK]"):  # was "TypeError: 'int' object is not iterable" from inside
        with pytest.raises(InputTypeError, match=f"expected text as a str or a list of str, got {type(bad).__name__}"):
            model.fill_mask(bad)
