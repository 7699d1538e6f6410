"""Parity with transformers' text heads: random `PerceiverForMaskedLM` / `PerceiverForSequenceClassification`
checkpoints saved with `save_pretrained`, loaded with `perceiver.from_pretrained`, same logits (<= 1e-4, fp32)."""

from pathlib import Path

import pytest
import torch
from hf_intermediates import assert_same_intermediates

import perceiver
from perceiver.models.text import PerceiverForMaskedLM, PerceiverForSequenceClassification

transformers = pytest.importorskip("transformers")

TOL = 1e-4
MAX_LEN = 16

# Small random configurations covering the acceptance grid: 1 and 8 heads (cross and self), qk / v channels set and
# unset, num_blocks 1 and 2, query residual on and off, both `cross_attention_shape_for_attention` defaults.
# (transformers uses `v_channels` for the self-attends too, whose output must keep d_latents channels.)
CONFIGS = {
    "1head-unset-1block-res": dict(num_cross_attention_heads=1, num_self_attention_heads=1),
    "8heads-qk-v-2blocks-nores": dict(
        num_cross_attention_heads=8,
        num_self_attention_heads=8,
        qk_channels=16,
        v_channels=16,
        num_blocks=2,
        use_query_residual=False,
    ),
    "8cross-1self-qk-only": dict(num_cross_attention_heads=8, num_self_attention_heads=1, qk_channels=16),
    "1cross-8self-v-only-q-shape-wide": dict(
        num_cross_attention_heads=1,
        num_self_attention_heads=8,
        v_channels=16,
        cross_attention_shape_for_attention="q",
        cross_attention_widening_factor=2,
        self_attention_widening_factor=3,
        num_blocks=2,
        use_query_residual=False,
    ),
}


def hf_config(**overrides) -> "transformers.PerceiverConfig":
    base = dict(
        num_latents=6,
        d_latents=16,
        d_model=24,
        num_self_attends_per_block=2,
        vocab_size=262,
        max_position_embeddings=MAX_LEN,
        num_labels=3,
        attention_probs_dropout_prob=0.1,
    )
    return transformers.PerceiverConfig(**{**base, **overrides})


def random_hf(cls, config, seed: int = 0):
    """A transformers model whose every weight is O(1) random, so any wiring mistake shows in the logits."""
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = name.endswith("weight") and p.dim() == 1
            p.copy_(1 + 0.2 * torch.randn_like(p) if is_norm_scale else 0.3 * torch.randn_like(p))
    return model


def save(model, path: Path, bin_file: bool = False) -> Path:
    """`save_pretrained`; with `bin_file`, rewrite the weights as `pytorch_model.bin` (old transformers'
    `safe_serialization=False` format: a `torch.save`d state dict)."""
    model.save_pretrained(path)
    if bin_file:
        from safetensors.torch import load_file

        st = path / "model.safetensors"
        torch.save(load_file(st), path / "pytorch_model.bin")
        st.unlink()
    return path


def padded_batch(lengths=(MAX_LEN, 11, 3), total=MAX_LEN, seed=1):
    """Token ids `(B, total)` and a 0/1 float mask (as tokenizers return), each row with at least one token."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 262, (len(lengths), total), generator=g)
    mask = torch.zeros(len(lengths), total)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0  # [PAD]
    return ids, mask


@pytest.mark.parametrize("name", list(CONFIGS))
def test_masked_lm_parity(name, tmp_path):
    theirs = random_hf(transformers.PerceiverForMaskedLM, hf_config(**CONFIGS[name]))
    ours = perceiver.from_pretrained(save(theirs, tmp_path))
    ours_all = perceiver.from_pretrained(tmp_path, decode_all_positions=True)  # transformers' output length
    assert isinstance(ours, PerceiverForMaskedLM) and not ours.training and ours_all.config.decode_all_positions
    for total in (MAX_LEN, 12):  # full length and shorter than max_position_embeddings
        ids, mask = padded_batch(lengths=(total, 9, 2), total=total)
        with torch.no_grad():
            expected = theirs(inputs=ids, attention_mask=mask).logits  # (B, MAX_LEN, V) whatever the length
            got = ours(ids, attention_mask=mask).logits  # (B, total, V): the input positions only
            got_all = ours_all(ids, attention_mask=mask).logits  # (B, MAX_LEN, V) as transformers
        assert got.shape == (3, total, 262) and got_all.shape == expected.shape == (3, MAX_LEN, 262)
        # Padded positions (and those beyond the input) are compared too: transformers computes them.
        assert (got - expected[:, :total]).abs().max() <= TOL
        assert (got_all - expected).abs().max() <= TOL
        assert expected.abs().max() > 1.0  # the check is not vacuous


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sequence_classification_parity(name, tmp_path):
    theirs = random_hf(transformers.PerceiverForSequenceClassification, hf_config(**CONFIGS[name]))
    ours = perceiver.from_pretrained(save(theirs, tmp_path))
    assert isinstance(ours, PerceiverForSequenceClassification) and ours.config.num_classes == ours.num_classes == 3
    ids, mask = padded_batch(lengths=(MAX_LEN, 7, 1))
    with torch.no_grad():
        expected = theirs(inputs=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask)
        unmasked = ours(ids[:1]).logits  # no mask: every token counts (row 0 has no padding)
    assert got.logits.shape == (3, 3) and got.last_hidden_state.shape == (3, 6, 16)
    assert (got.logits - expected).abs().max() <= TOL
    assert (unmasked - expected[:1]).abs().max() <= TOL
    assert expected.abs().max() > 0.1


def test_last_hidden_state_parity(tmp_path):
    theirs = random_hf(transformers.PerceiverForMaskedLM, hf_config(**CONFIGS["8heads-qk-v-2blocks-nores"]))
    ours = perceiver.from_pretrained(save(theirs, tmp_path))
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = theirs.perceiver(inputs=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask).last_hidden_state
    assert (got - expected).abs().max() <= TOL


@pytest.mark.parametrize("cls", ["PerceiverForMaskedLM", "PerceiverForSequenceClassification"])
def test_pytorch_model_bin_checkpoint(cls, tmp_path):
    theirs = random_hf(getattr(transformers, cls), hf_config(**CONFIGS["1head-unset-1block-res"]))
    folder = save(theirs, tmp_path, bin_file=True)
    assert not (folder / "model.safetensors").exists() and (folder / "pytorch_model.bin").exists()
    ours = perceiver.from_pretrained(folder)
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = theirs(inputs=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    assert (got - expected).abs().max() <= TOL


def test_converted_embedding_stays_tied(tmp_path):
    theirs = random_hf(transformers.PerceiverForMaskedLM, hf_config())
    ours = perceiver.from_pretrained(save(theirs, tmp_path))
    assert ours.output_adapter.embedding.weight is ours.input_adapter.token_embedding.weight
    reloaded = perceiver.from_pretrained(ours.save_pretrained(tmp_path / "ours"))
    assert reloaded.output_adapter.embedding.weight is reloaded.input_adapter.token_embedding.weight
    ids, mask = padded_batch()
    with torch.no_grad():
        assert torch.equal(ours(ids, mask).logits, reloaded(ids, mask).logits)


def test_training_step_gradients_match(tmp_path):
    """Same loss and same embedding gradient as transformers (dropout off): the tied weight gets both uses."""
    theirs = random_hf(transformers.PerceiverForMaskedLM, hf_config(attention_probs_dropout_prob=0.0))
    ours = perceiver.from_pretrained(save(theirs, tmp_path))
    ids, mask = padded_batch(total=MAX_LEN)
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    theirs_loss = theirs(inputs=ids, attention_mask=mask, labels=labels).loss
    ours_loss = ours(ids, attention_mask=mask, labels=labels).loss
    theirs_loss.backward()
    ours_loss.backward()
    assert abs(theirs_loss.item() - ours_loss.item()) <= TOL
    g_theirs = theirs.perceiver.input_preprocessor.embeddings.weight.grad
    g_ours = ours.input_adapter.token_embedding.weight.grad
    assert (g_theirs - g_ours).abs().max() <= 1e-3 * g_theirs.abs().max()


def test_published_sizes_match_presets():
    """Converting transformers' heads at DeepMind's published config (on the meta device: no memory) gives exactly
    the configs of our `language-perceiver` and `text-classifier` presets."""
    published = dict(qk_channels=256, v_channels=1280, attention_probs_dropout_prob=0.0)  # deepmind/language-perceiver
    with torch.device("meta"):
        for arch, preset in (
            ("PerceiverForMaskedLM", "language-perceiver"),
            ("PerceiverForSequenceClassification", "text-classifier"),
        ):
            theirs = getattr(transformers, arch)(transformers.PerceiverConfig(**published))
            converter = perceiver.pretrained.HF_CONVERTERS[arch]
            ours = converter(theirs.config.to_dict(), theirs.state_dict())
            assert ours.config == perceiver.create_model(preset).config
            n_theirs = sum(p.numel() for p in theirs.parameters())
            assert sum(p.numel() for p in ours.parameters()) == n_theirs
    assert 200e6 < n_theirs < 210e6  # ~201M parameters as published


def test_real_tokenizer_end_to_end(tmp_path):
    """`perceiver.tokenizer.ByteTokenizer` output feeds our converted MLM and transformers' alike."""
    from perceiver.tokenizer import ByteTokenizer

    theirs = random_hf(transformers.PerceiverForMaskedLM, hf_config())
    ours = perceiver.from_pretrained(save(theirs, tmp_path))
    enc = ByteTokenizer(model_max_length=MAX_LEN)(["héllo wörld", "日本 🙂", "a"], padding=True, return_tensors="pt")
    enc["input_ids"][0, 3] = ByteTokenizer.mask_token_id
    with torch.no_grad():
        expected = theirs(inputs=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        got = ours(enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    length = enc["input_ids"].shape[1]
    assert got.shape == (3, length, 262)
    assert (got - expected[:, :length]).abs().max() <= TOL


def test_unsupported_activation_is_rejected(tmp_path):
    theirs = random_hf(transformers.PerceiverForMaskedLM, hf_config(hidden_act="relu"))
    with pytest.raises(ValueError, match="expected hidden_act 'gelu'.*got 'relu'"):
        perceiver.from_pretrained(save(theirs, tmp_path))


def test_converter_options(tmp_path):
    save(random_hf(transformers.PerceiverForSequenceClassification, hf_config()), tmp_path)
    config = perceiver.from_pretrained(tmp_path).config
    assert config.encoder.attn_dropout == config.decoder.attn_dropout == 0.1  # as the checkpoint says
    config = perceiver.from_pretrained(tmp_path, attn_dropout=0.0).config  # a flat key: encoder and decoder
    assert config.encoder.attn_dropout == config.decoder.attn_dropout == 0.0
    config = perceiver.from_pretrained(tmp_path, **{"decoder.attn_dropout": 0.0}, decoder_widening_factor=1).config
    assert (config.encoder.attn_dropout, config.decoder.attn_dropout) == (0.1, 0.0)  # dotted and legacy keys
    with pytest.raises(ValueError, match=r"unknown keys \['nope'\] for PerceiverTextClassifierConfig"):
        perceiver.from_pretrained(tmp_path, nope=1)


@pytest.mark.parametrize("name", ["1head-unset-1block-res", "8heads-qk-v-2blocks-nores"])
def test_hidden_states_and_attention_maps_parity(name, tmp_path):
    """The masked LM's `return_hidden_states` / `return_attention` on a padded batch give transformers'
    `hidden_states`, `attentions` and `cross_attentions` (decoding all positions, as transformers does)."""
    theirs = random_hf(transformers.PerceiverForMaskedLM, hf_config(**CONFIGS[name]))
    save(theirs, tmp_path)
    ours = perceiver.from_pretrained(tmp_path, decode_all_positions=True)
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = theirs(inputs=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        got = ours(ids, attention_mask=mask, return_hidden_states=True, return_attention=True)
    assert_same_intermediates(got, expected, theirs.config.num_blocks, theirs.config.num_self_attends_per_block, TOL)


def test_a_classifier_starts_from_a_masked_lm_as_in_transformers(tmp_path):
    """Fine-tuning the language Perceiver for classification: transformers'
    `PerceiverForSequenceClassification.from_pretrained(mlm_checkpoint)` keeps the embedding and encoder and draws a
    new decoder; `from_masked_lm` does the same from our (converted) masked LM, and so does our class's own
    `from_pretrained` of the transformers folder: the latents are transformers'."""
    mlm = random_hf(transformers.PerceiverForMaskedLM, hf_config(**CONFIGS["8heads-qk-v-2blocks-nores"]))
    folder = save(mlm, tmp_path)
    theirs = transformers.PerceiverForSequenceClassification.from_pretrained(folder, num_labels=4).eval()
    ours_mlm = perceiver.from_pretrained(folder)
    ours = PerceiverForSequenceClassification.from_masked_lm(ours_mlm, num_classes=4).eval()
    assert ours.num_classes == 4 and ours.reinitialized_keys
    assert all(k.startswith(("decoder.", "query_builder.", "output_adapter.")) for k in ours.reinitialized_keys)
    ids, mask = padded_batch()
    with torch.no_grad():
        expected = theirs.perceiver(inputs=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask)
    assert got.logits.shape == (3, 4) and (got.last_hidden_state - expected).abs().max() <= TOL
    direct = PerceiverForSequenceClassification.from_pretrained(folder, num_labels=4)  # transformers' own call
    assert direct.num_classes == 4 and direct.reinitialized_keys == ours.reinitialized_keys
    with torch.no_grad():
        assert (direct(ids, attention_mask=mask).last_hidden_state - expected).abs().max() <= TOL
    ours.config.encoder.num_latents = 99  # a copy of the LM's config, not the same object
    assert ours_mlm.config.encoder.num_latents == 6
    with pytest.raises(TypeError, match="expected a PerceiverForMaskedLM, got PerceiverForSequenceClassification"):
        PerceiverForSequenceClassification.from_masked_lm(ours)


@pytest.mark.parametrize(
    ("problem_type", "labels"),
    [
        ("regression", lambda: torch.randn(3, 4)),  # 4 regression targets: MSE, not the inferred multi-label BCE
        ("multi_label_classification", lambda: (torch.rand(3, 4) > 0.5).float()),
        ("single_label_classification", lambda: torch.tensor([0, 3, 1])),
    ],
)
def test_text_classifier_loss_follows_the_checkpoints_problem_type(problem_type, labels, tmp_path):
    """A transformers text classifier trained with `problem_type`: our loss is its loss (before, the loss was guessed
    from the labels: 0.62 where transformers gave 8.18 for regression), kept by save / load; transformers' call
    flags give its tuple."""
    config = hf_config(**CONFIGS["8heads-qk-v-2blocks-nores"], num_labels=4, problem_type=problem_type)
    theirs = random_hf(transformers.PerceiverForSequenceClassification, config)
    ours = perceiver.from_pretrained(save(theirs, tmp_path))
    ids, mask = padded_batch()
    y = labels()
    with torch.no_grad():
        expected = theirs(inputs=ids, attention_mask=mask, labels=y, output_attentions=True)
        got = ours(ids, attention_mask=mask, labels=y, output_attentions=True, return_dict=False)
    loss, logits, *maps = got
    assert (loss - expected.loss).abs() <= TOL and (logits - expected.logits).abs().max() <= TOL
    assert len(maps) == 2  # the latent self-attention maps and the cross-attention maps, as transformers' tuple
    again = perceiver.from_pretrained(ours.save_pretrained(tmp_path / "ours"))
    assert again.config.problem_type == problem_type
