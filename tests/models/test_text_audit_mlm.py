"""The byte masked LM with `decode_all_positions=True` (transformers' output length, the converter's option):
`fill_mask` and `MaskedLMTask` take the batch's positions instead of crashing inside torch."""

from __future__ import annotations

import pytest
import torch

import perceiver
from perceiver.tokenizer import ByteTokenizer

TINY = dict(
    max_seq_len=32,
    d_model=16,
    num_latents=4,
    latent_dim=16,
    num_self_attends_per_block=1,
    cross_heads=1,
    latent_heads=1,
    decoder_heads=1,
    cross_qk_channels=8,
    cross_v_channels=16,
    latent_qk_channels=8,
    latent_v_channels=16,
    decoder_qk_channels=8,
)


def _pair() -> tuple[perceiver.PerceiverForMaskedLM, perceiver.PerceiverForMaskedLM]:
    torch.manual_seed(0)
    some = perceiver.create_model("language-perceiver", **TINY).eval()
    every = perceiver.create_model("language-perceiver", **TINY, decode_all_positions=True).eval()
    every.load_state_dict(some.state_dict())
    return some, every


def test_fill_mask_with_decode_all_positions():
    some, every = _pair()
    texts = ["ab[MASK]c", "héllo [MASK][MASK] 🙂"]
    assert every.fill_mask(texts) == some.fill_mask(texts)
    assert every.fill_mask("[MASK]") == some.fill_mask("[MASK]")


def test_masked_lm_task_with_decode_all_positions():
    from perceiver.training.mlm_task import MaskedLMTask

    torch.manual_seed(0)
    tasks = [
        MaskedLMTask(model="language-perceiver", model_kwargs=TINY | extra)
        for extra in ({}, {"decode_all_positions": True})
    ]
    tasks[1].model.load_state_dict(tasks[0].model.state_dict())
    enc = ByteTokenizer()(["hello", "hi"], padding=True, return_tensors="pt")
    labels = torch.where(enc["attention_mask"].bool(), enc["input_ids"], -100)
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"].bool(), "labels": labels}
    losses, rows = [], []
    for task in tasks:
        task.eval()
        with torch.no_grad():
            assert task(batch).shape == (2, enc["input_ids"].shape[1], 262)
            losses.append(task.step(batch, "val"))
            rows.append(task.predict_step(batch, 0))
    assert losses[1].item() == pytest.approx(losses[0].item(), rel=1e-5)
    assert rows[1] == rows[0]


def test_fill_mask_of_a_batch_is_that_of_each_text_whatever_the_padding_side():
    """With a left-padding tokenizer the shorter texts of a batch used to sit at shifted (learned) positions and
    were filled differently from the same text alone."""
    torch.manual_seed(0)
    model = perceiver.create_model("language-perceiver", **TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(50)  # confident, position-dependent predictions
    texts = ["a[MASK][MASK][MASK]", "The [MASK]ython has [MASK]ersions"]
    alone = [model.fill_mask(t) for t in texts]
    assert model.fill_mask(texts) == alone
    assert model.fill_mask(texts, tokenizer=ByteTokenizer(padding_side="left")) == alone
    transformers = pytest.importorskip("transformers")
    assert model.fill_mask(texts, tokenizer=transformers.PerceiverTokenizer(padding_side="left")) == alone
