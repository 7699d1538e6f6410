"""PydocMLMDataModule: topic split, chunking, BERT-style masking statistics, fixed validation masks, baseline."""

import numpy as np
import pytest
import torch

from perceiver.data import PydocMLMDataModule
from perceiver.data._common import SampleKey, sample_rng
from perceiver.data.pydoc import mask_sequence, split_topics
from perceiver.data.text import CLS_ID, MASK_ID, PAD_ID, SEP_ID


@pytest.fixture(scope="module")
def dm():
    dm = PydocMLMDataModule(max_seq_len=128, batch_size=16)
    dm.setup("fit")
    return dm


def test_topics_split_disjoint_deterministic_and_sized(dm):
    train, val = dm.train_topics, dm.val_topics
    assert val and train and not set(train) & set(val)
    assert set(train) | set(val) == set(dm.topics)
    assert (train, val) == split_topics(dm.topics, 0.1)
    assert PydocMLMDataModule(seed=7).val_topics == val  # the split does not depend on the seed
    nbytes = {n: len(t.encode()) for n, t in dm.topics.items()}
    share = sum(nbytes[n] for n in val) / sum(nbytes.values())
    assert 0.08 <= share <= 0.15


def test_chunks_are_cls_bytes_sep(dm):
    seqs = dm.train_set.sequences
    assert all(len(s) <= 128 and s[0] == CLS_ID and s[-1] == SEP_ID for s in seqs)
    assert all((s[1:-1] >= 6).all() for s in seqs)
    total = sum(len(s) - 2 for s in seqs) + sum(len(s) - 2 for s in dm.val_set.sequences)
    assert total == sum(len(t.encode()) for t in dm.topics.values())


def test_batch_format_and_masking_statistics(dm):
    batch = next(iter(dm.train_dataloader()))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == 16 and ids.shape[1] <= 128
    assert ids.dtype == labels.dtype == torch.long and mask.dtype == torch.bool
    assert ids.min() >= 0 and ids.max() < dm.vocab_size == 262

    # statistics over many sequences
    rng = sample_rng(0)
    orig = np.concatenate([[CLS_ID], rng.integers(6, 262, size=4000), [SEP_ID]])
    x, y = mask_sequence(orig, rng)
    sel = y != -100
    assert abs(sel.mean() - 0.15) < 0.02
    assert not sel[0] and not sel[-1]  # special tokens never selected
    assert (y[sel] == orig[sel]).all()
    assert (x[~sel] == orig[~sel]).all()  # unselected inputs untouched
    frac_mask = (x[sel] == MASK_ID).mean()
    frac_same = (x[sel] == orig[sel]).mean()
    assert abs(frac_mask - 0.8) < 0.05 and abs(frac_same - 0.1) < 0.04
    assert (x[sel & (x != MASK_ID)] >= 6).all()  # random replacements are bytes


def test_padding_never_masked_and_labels_ignored(dm):
    # the last chunk of a topic is short, so a full pass pads
    for batch in dm.val_dataloader():
        pad = ~batch["attention_mask"]
        assert (batch["input_ids"][pad] == PAD_ID).all() and (batch["labels"][pad] == -100).all()
        special = (batch["input_ids"] == CLS_ID) | (batch["input_ids"] == SEP_ID)
        assert (batch["labels"][special] == -100).all()
        assert ((batch["labels"] != -100).sum(1) >= 1).all()


def test_validation_masks_fixed_training_masks_change(dm):
    a = next(iter(dm.val_dataloader()))
    b = next(iter(PydocMLMDataModule(max_seq_len=128, batch_size=16, seed=3).val_dataloader()))
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    items = [dm.train_set[SampleKey(e, 0)] for e in (0, 0, 1)]
    m = [dm.collate_fn([it])["labels"] for it in items]
    assert torch.equal(m[0], m[1]) and not torch.equal(m[0], m[2])


def test_most_frequent_byte_baseline(dm):
    assert dm.most_frequent_byte_id() == ord(" ") + 6
    acc = dm.most_frequent_byte_baseline()
    assert 0.05 < acc < 0.4
    assert acc == dm.most_frequent_byte_baseline()


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_seq_len"):
        PydocMLMDataModule(max_seq_len=2)
    with pytest.raises(ValueError, match="val_fraction"):
        PydocMLMDataModule(val_fraction=1.0)
