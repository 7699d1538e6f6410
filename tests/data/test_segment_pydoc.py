"""Word segmentation data: space-less pydoc bytes with word-start labels, the MLM topic split, the rule baseline."""

import torch

from perceiver.data.pydoc import PydocMLMDataModule
from perceiver.data.segment_pydoc import (
    IGNORE_INDEX,
    SegmentPydocDataModule,
    f1_counts,
    f1_score,
    heuristic_starts,
    pack_words,
    topic_words,
)
from perceiver.data.text import CLS_ID, NUM_SPECIAL_TOKENS, SEP_ID, decode_bytes


def test_pack_words_labels_word_starts():
    words = topic_words("The  cat\nsat on(the) mat.")
    ids, starts, end = pack_words(words, 0, 11)
    assert bytes((ids - NUM_SPECIAL_TOKENS).tolist()) == b"Thecatsat"  # "on(the)" is one word and does not fit
    assert starts.tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 0] and end == 3
    ids, starts, end = pack_words(words, end, 100)
    assert bytes((ids - NUM_SPECIAL_TOKENS).tolist()) == b"on(the)mat." and end == len(words)
    long = pack_words([b"abcdefgh"], 0, 5)  # a word longer than a sequence is cut
    assert long[1].tolist() == [1, 0, 0, 0, 0] and long[2] == 1


def test_batches_and_split():
    dm = SegmentPydocDataModule(max_seq_len=64, batch_size=8)
    mlm = PydocMLMDataModule(max_seq_len=64)
    assert dm.val_topics == mlm.val_topics and dm.train_topics == mlm.train_topics
    assert not set(dm.val_topics) & set(dm.train_topics)
    batch = next(iter(dm.val_dataloader()))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[1] <= 64
    assert (ids[:, 0] == CLS_ID).all() and (labels[:, :2] == IGNORE_INDEX).all()  # CLS and the free first byte
    assert set(labels[labels != IGNORE_INDEX].unique().tolist()) == {0, 1}
    assert (labels[~mask] == IGNORE_INDEX).all() and (labels[ids == SEP_ID] == IGNORE_INDEX).all()
    text = decode_bytes(ids[0][mask[0]])
    assert " " not in text and "\n" not in text
    # the labels mark exactly the words of the topic text
    first = dm.val_set.chunks[0]
    words = dm.val_set.topics[first[0]][first[1] : first[2]]
    assert int((labels[0] == 1).sum()) == len(words) - 1


def test_training_sequences_move_with_the_epoch_and_validation_is_fixed():
    dm = SegmentPydocDataModule(max_seq_len=64, batch_size=4)
    dm.setup()
    a = dm.train_set[(0, 5)]
    assert torch.equal(dm.train_set[(0, 5)]["input_ids"], a["input_ids"])  # a function of (seed, epoch, index)
    assert any(not torch.equal(dm.train_set[(e, 5)]["input_ids"], a["input_ids"]) for e in range(1, 6))
    v1, v2 = next(iter(dm.val_dataloader())), next(iter(dm.val_dataloader()))
    assert torch.equal(v1["input_ids"], v2["input_ids"])


def test_heuristic_and_f1():
    ids = torch.tensor([[CLS_ID] + [c + NUM_SPECIAL_TOKENS for c in b"a.Bcd2x"] + [SEP_ID]])
    assert heuristic_starts(ids)[0, 1:-1].tolist() == [True, False, True, False, False, True, True]
    pred = torch.tensor([[1, 0, 1, 1]])
    labels = torch.tensor([[1, 1, 0, IGNORE_INDEX]])
    assert f1_counts(pred, labels) == (1, 1, 1) and abs(f1_score(1, 1, 1) - 0.5) < 1e-9
    dm = SegmentPydocDataModule(max_seq_len=64, batch_size=64)
    assert 0.1 < dm.heuristic_f1() < 0.5  # the rule finds some starts, far from all
