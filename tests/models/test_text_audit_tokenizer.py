"""ByteTokenizer where code written for transformers' PerceiverTokenizer calls more than __call__ / pad / decode:
DataCollatorForLanguageModeling, special-token masks, token type ids, lengths, token <-> id conversion."""

from __future__ import annotations

import pytest
import torch

from perceiver.tokenizer import ByteTokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf():
    return transformers.PerceiverTokenizer()


def _lists(enc):
    return {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in enc.items()}


def test_mlm_data_collator_masks_as_with_transformers_tokenizer(hf):
    """DataCollatorForLanguageModeling(ByteTokenizer()) used to fail (no get_special_tokens_mask); it now masks the
    same bytes as with transformers' tokenizer and never [CLS] / [SEP] / [PAD]."""
    tok = ByteTokenizer()
    for with_mask in (False, True):
        batches = []
        for t in (hf, tok):
            torch.manual_seed(0)
            collator = transformers.DataCollatorForLanguageModeling(t, mlm_probability=0.5)
            examples = [t(s, return_special_tokens_mask=with_mask) for s in ("hello world", "héllo 🙂", "")]
            batches.append(_lists(collator(examples)))
        assert batches[0] == batches[1]
        labels = torch.tensor(batches[1]["labels"])
        ids = torch.tensor(tok(["hello world", "héllo 🙂", ""], padding=True)["input_ids"])
        assert (labels[ids < 6] == -100).all()  # special tokens are never targets


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("pair", [False, True])
def test_extra_outputs_equal_transformers(hf, padding_side, pair):
    texts = ["ab", "héllo [MASK] 🙂", "x" * 20]
    pairs = ["cd", "", "yz"] if pair else None
    for kw in (
        dict(padding=True),
        dict(padding="max_length", max_length=24, truncation=True),
        dict(padding=True, return_tensors="pt"),
        dict(truncation=True, max_length=9),
        dict(padding=True, add_special_tokens=False),
    ):
        kw |= dict(return_token_type_ids=True, return_special_tokens_mask=True, return_length=True)
        kw |= dict(padding_side=padding_side)
        assert _lists(ByteTokenizer()(texts, pairs, **kw)) == _lists(hf(texts, pairs, **kw)), kw
        one = ByteTokenizer()(texts[1], pairs[1] if pairs else None, **kw)
        assert _lists(one) == _lists(hf(texts[1], pairs[1] if pairs else None, **kw)), kw
    assert ByteTokenizer()("ab", verbose=False)["input_ids"] == [4, 103, 104, 5]


def test_pad_pads_special_tokens_mask_and_token_type_ids(hf):
    tok = ByteTokenizer()
    rows = [tok(s, return_special_tokens_mask=True, return_token_type_ids=True) for s in ("a", "abcd")]
    want = hf.pad([dict(r) for r in rows], padding_side="left", return_tensors="pt")
    got = tok.pad(rows, padding_side="left", return_tensors="pt")
    assert _lists(got) == _lists(want)
    assert got["special_tokens_mask"].tolist() == [[1, 1, 1, 1, 0, 1], [1, 0, 0, 0, 0, 1]]
    with pytest.raises(ValueError, match="special_tokens_mask"):
        tok.pad([{"input_ids": [4, 5], "special_tokens_mask": [1]}])


def test_token_conversions_equal_transformers(hf):
    tok = ByteTokenizer()
    ids = [0, 3, 4, 110, 200, 255, 261]
    assert tok.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert tok.convert_ids_to_tokens(torch.tensor(ids), skip_special_tokens=True) == ["h", "Â", "ù", "ÿ"]
    assert tok.convert_ids_to_tokens(110) == "h"
    tokens = ["[MASK]", "h", "é", "ab", "\xc3", "[CLS]"]
    assert tok.convert_tokens_to_ids(tokens) == hf.convert_tokens_to_ids(tokens)
    assert tok.convert_tokens_to_ids("[MASK]") == tok.mask_token_id
    assert tok.convert_tokens_to_string(["[CLS]", "h", "\xc3", "\xa9"]) == "[CLS]hé"
    assert tok.get_vocab() == hf.get_vocab()
    assert sorted(tok.all_special_tokens) == sorted(hf.all_special_tokens)
    assert tok.special_tokens_map == hf.special_tokens_map
    for ids0, ids1 in (([7, 8], None), ([7, 8], [9]), ([], None)):
        assert tok.get_special_tokens_mask(ids0, ids1) == hf.get_special_tokens_mask(ids0, ids1)
    encoded = [4, 110, 5, 0, 3]
    assert tok.get_special_tokens_mask(encoded, already_has_special_tokens=True) == [1, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.convert_ids_to_tokens([262])


def test_decode_takes_clean_up_tokenization_spaces(hf):
    tok = ByteTokenizer()
    ids = hf.encode("a . b , it 's n't")
    for clean in (None, False, True):
        assert tok.decode(ids, clean_up_tokenization_spaces=clean) == hf.decode(ids, clean_up_tokenization_spaces=clean)
        got = tok.batch_decode([ids], skip_special_tokens=True, clean_up_tokenization_spaces=clean)
        assert got == hf.batch_decode([ids], skip_special_tokens=True, clean_up_tokenization_spaces=clean)


def test_encode_plus_spellings():
    tok = ByteTokenizer()
    assert tok.encode_plus("ab", "c") == tok("ab", "c")
    assert tok.batch_encode_plus(["ab", ("c", "d")], padding=True) == tok(["ab", ("c", "d")], padding=True)
    with pytest.raises(ValueError, match="batch_encode_plus takes a list"):
        tok.batch_encode_plus("ab")


def test_return_options_none_are_transformers_defaults(hf):
    """`return_attention_mask=None` (transformers' default, which wrappers forward) used to drop the mask silently,
    so a padded batch ran unmasked."""
    tok = ByteTokenizer()
    none = dict(return_attention_mask=None, return_token_type_ids=None, return_special_tokens_mask=None)
    got = tok(["a", "abc"], padding=True, return_length=None, **none)
    assert _lists(got) == _lists(hf(["a", "abc"], padding=True, return_length=None, **none))
    assert got["attention_mask"] == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    rows = [{"input_ids": [4, 5]}, {"input_ids": [4, 6, 5]}]
    assert tok.pad(rows, return_attention_mask=None)["attention_mask"] == [[1, 1, 0], [1, 1, 1]]
    assert "attention_mask" not in tok(["a"], return_attention_mask=False)


def test_batch_encoding_to_device_as_transformers():
    """`tokenizer(texts, return_tensors="pt").to(model.device)`, transformers' idiom, used to raise AttributeError."""
    enc = ByteTokenizer()(["a", "bc"], padding=True, return_tensors="pt")
    assert enc.to("cpu") is enc
    assert enc.to(torch.device("cpu"))["input_ids"].device.type == "cpu"
    assert enc.input_ids.dtype == torch.long
    lists = ByteTokenizer()(["a"], return_length=True)
    assert lists.to("cpu")["input_ids"] == [[4, 103, 5]]  # lists stay lists
    with pytest.raises(TypeError, match="takes a device"):
        enc.to(torch.float16)
