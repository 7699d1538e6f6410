"""ByteTokenizer against transformers' PerceiverTokenizer: ids, masks, padding, truncation, decode, errors."""

import random
import warnings

import pytest
import torch

from perceiver.tokenizer import ByteTokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello, world!",
    "héllo wörld – naïve café, Ærøskøbing, Ωμέγα",
    "日本語のテキストと中文文本，한국어",
    "emoji 🙂👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "",
    " leading and trailing  ",
    "tabs\tnew\nlines\r\n nul\x00 bell\x07 nbsp\u00a0 bom\ufeff",
    "a [MASK] b [[SEP]] [MAS[MASK]K] [mask] [ MASK ] [CLS][SEP][PAD][BOS][EOS]",
    "[MASK",
    "x" * 300,
]
PAIRS = [("question?", "answer."), ("日本", "🙂 [MASK] ok"), ("", "only second"), ("only first", "")]


@pytest.fixture(scope="module")
def hf():
    return transformers.PerceiverTokenizer()


@pytest.fixture(scope="module")
def tok():
    return ByteTokenizer()


def _hf_call(hf, *args, **kwargs):
    out = hf(*args, **kwargs)
    return {k: out[k] for k in ("input_ids", "attention_mask")}


def test_vocabulary_and_special_ids(tok, hf):
    assert tok.vocab_size == len(tok) == len(hf) == 262
    assert tok.model_max_length == hf.model_max_length == 2048
    for name in ("pad", "bos", "eos", "mask", "cls", "sep"):
        assert getattr(tok, f"{name}_token_id") == getattr(hf, f"{name}_token_id"), name
        assert getattr(tok, f"{name}_token") == str(getattr(hf, f"{name}_token")), name
    assert tok.all_special_ids == sorted(hf.all_special_ids) == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("text", TEXTS)
def test_single_text_ids_and_mask(tok, hf, text):
    ours = tok(text)
    assert dict(ours) == _hf_call(hf, text)
    assert ours.input_ids[0] == 4 and ours.input_ids[-1] == 5  # [CLS] ... [SEP]
    assert tok(text, add_special_tokens=False)["input_ids"] == hf(text, add_special_tokens=False)["input_ids"]
    assert tok.encode(text) == hf.encode(text)


def test_byte_layout(tok):
    # byte + 6, special-token strings as one id
    assert tok.tokenize("é🙂") == [b + 6 for b in "é🙂".encode()]
    assert tok.tokenize("a[MASK]b") == [ord("a") + 6, 3, ord("b") + 6]


def test_random_unicode_matches(tok, hf):
    rng = random.Random(0)
    alphabet = "ab [MASK]SEP]é日🙂\u200d\n\x00\ud7ff\U0010ffff"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(100)]
    assert dict(tok(texts, padding=True)) == _hf_call(hf, texts, padding=True)


def test_split_special_tokens(hf):
    ours = ByteTokenizer(split_special_tokens=True)
    ref = transformers.PerceiverTokenizer(split_special_tokens=True)
    text = "a [MASK] b [SEP]"
    assert ours(text)["input_ids"] == ref(text)["input_ids"]
    assert 3 not in ours(text)["input_ids"]


@pytest.mark.parametrize("pair", PAIRS)
def test_pairs(tok, hf, pair):
    ours = tok(*pair)
    assert dict(ours) == _hf_call(hf, *pair)
    a, b = (len(tok.tokenize(s)) for s in pair)
    assert ours.input_ids[0] == 4 and ours.input_ids[a + 1] == 5 and ours.input_ids[-1] == 5
    assert len(ours.input_ids) == a + b + 3


def test_batch_of_pairs(tok, hf):
    a, b = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    assert dict(tok(a, b, padding=True)) == _hf_call(hf, a, b, padding=True)
    assert dict(tok(PAIRS, padding=True)) == _hf_call(hf, PAIRS, padding=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"padding": True},
        {"padding": "longest"},
        {"padding": "max_length", "max_length": 64},
        {"padding": "max_length", "max_length": 20},  # shorter than some: no truncation without truncation=...
        {"padding": "max_length", "max_length": 20, "truncation": True},
        {"padding": True, "pad_to_multiple_of": 8},
        {"padding": "max_length", "max_length": 61, "pad_to_multiple_of": 8},
        {"padding": True, "padding_side": "left"},
        {"padding": True, "max_length": 10},  # max_length ignored by padding=True without truncation
        {"padding": True, "max_length": 10, "truncation": True},
        {"padding": True, "max_length": 10, "truncation": "longest_first", "padding_side": "left"},
    ],
)
def test_batch_padding(tok, hf, kwargs):
    texts = TEXTS[:6]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers warns that padding=True ignores max_length
        expected = _hf_call(hf, texts, **kwargs)
    ours = tok(texts, **kwargs)
    assert dict(ours) == expected
    for ids, mask in zip(ours.input_ids, ours.attention_mask):
        assert [i for i, m in zip(ids, mask) if m == 0] == [0] * mask.count(0)  # padding is [PAD]


def test_padding_max_length_defaults_to_model_max_length(tok, hf):
    ours = tok("abc", padding="max_length")
    assert dict(ours) == _hf_call(hf, "abc", padding="max_length")
    assert len(ours.input_ids) == 2048 and sum(ours.attention_mask) == 5


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("abcdefgh",), {"max_length": 4}),  # max_length alone turns truncation on (transformers' legacy rule)
        (("abcdefgh",), {"max_length": 4, "truncation": True}),
        (("abcdefgh",), {"max_length": 2, "truncation": True}),
        (("héllo 世界 🙂",), {"max_length": 7, "truncation": True}),  # may cut inside a UTF-8 character
        (("abcdefgh",), {"max_length": 4, "truncation": False}),
        (("abcdefgh", "xyz"), {"max_length": 8, "truncation": True}),
        (("ab", "uvwxyz"), {"max_length": 8, "truncation": True}),
        (("abcd", "wxyz"), {"max_length": 8, "truncation": True}),
        (("abcd", "wxyz"), {"max_length": 7, "truncation": "longest_first"}),
        (("abcdefgh", "xyz"), {"max_length": 3, "truncation": True}),
        (("abcdefgh", "xyz"), {"max_length": 8, "truncation": "only_first"}),
        (("abcdefgh", "xyz"), {"max_length": 12, "truncation": "only_second"}),
        (("abcdefgh",), {"max_length": 5, "truncation": "only_first"}),
    ],
)
def test_truncation(tok, hf, args, kwargs):
    ours = tok(*args, **kwargs)
    assert dict(ours) == _hf_call(hf, *args, **kwargs)
    if kwargs.get("truncation", True) is not False:
        assert len(ours.input_ids) <= kwargs["max_length"]


def test_truncation_side_left(hf):
    ours, ref = ByteTokenizer(truncation_side="left"), transformers.PerceiverTokenizer(truncation_side="left")
    for args in [("abcdefgh",), ("abcdefgh", "xy"), ("ab", "uvwxyz")]:
        assert dict(ours(*args, max_length=6, truncation=True)) == _hf_call(ref, *args, max_length=6, truncation=True)


def test_truncation_defaults_to_model_max_length(tok, hf):
    text = "é" * 3000
    ours = tok(text, truncation=True)
    assert dict(ours) == _hf_call(hf, text, truncation=True)
    assert len(ours.input_ids) == 2048
    assert len(ByteTokenizer(model_max_length=16)(text, truncation=True)["input_ids"]) == 16


def test_return_tensors_pt(tok, hf):
    texts = ["héllo", "世界 🙂", ""]
    ours = tok(texts, padding=True, return_tensors="pt")
    ref = hf(texts, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask"):
        assert ours[key].dtype == torch.long and ours[key].shape == (3, 13)  # "世界 🙂": 3 + 3 + 1 + 4 bytes + 2
        assert torch.equal(ours[key], ref[key])
    single = tok("abc", return_tensors="pt")
    assert single.input_ids.shape == (1, 5) and torch.equal(
        single.input_ids, hf("abc", return_tensors="pt")["input_ids"]
    )


def test_no_attention_mask(tok):
    assert set(tok("abc", return_attention_mask=False)) == {"input_ids"}


def test_pad_for_collators(tok, hf):
    seqs = [tok.encode(t) for t in TEXTS[:4]]
    ours = tok.pad(seqs, return_tensors="pt")
    ref = hf.pad({"input_ids": seqs}, return_tensors="pt")
    assert torch.equal(ours.input_ids, ref["input_ids"]) and torch.equal(ours.attention_mask, ref["attention_mask"])


def test_pad_takes_encodings_as_transformers_collators_pass_them(tok, hf):
    rows = [{"input_ids": tok.encode(t), "labels": i} for i, t in enumerate(TEXTS[:3])]
    ours, ref = tok.pad(rows, return_tensors="pt"), hf.pad(rows, return_tensors="pt")
    assert set(ours) == set(ref) == {"input_ids", "attention_mask", "labels"}
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key
    as_lists = tok.pad({"input_ids": [r["input_ids"] for r in rows], "labels": [0, 1, 2]})
    assert as_lists["input_ids"] == ours["input_ids"].tolist() and as_lists["labels"] == [0, 1, 2]
    for bad, match in (
        (["ab", "c"], "got an element of type str; encode text first"),
        (None, "got NoneType"),
        ([{"ids": [1]}], r"with 'input_ids' \(every row\), got keys \['ids'\]"),
        ({"labels": [1]}, r"with 'input_ids' \(every row\), got keys \['labels'\]"),
    ):
        with pytest.raises(ValueError, match=match):
            tok.pad(bad)


@pytest.mark.parametrize("text", TEXTS)
def test_decode_matches_and_round_trips(tok, hf, text):
    ids = tok.encode(text)
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    if "[" not in text:  # special-token strings come back as special tokens, dropped by skip_special_tokens
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.decode(ids) == f"[CLS]{text}[SEP]"


def test_decode_invalid_utf8_and_specials(tok, hf):
    rng = random.Random(1)
    cases = [
        [6 + 0xFF, 6 + 0xC3, 7, 8],  # invalid start byte, truncated 2-byte sequence
        [6 + 0xE4, 6 + 0xB8],  # truncated 3-byte sequence
        [6 + 0xC3, 3, 6 + 0xA9],  # a special token inside a multi-byte character
        [0, 1, 2, 3, 4, 5, 100],
    ] + [[rng.randrange(262) for _ in range(rng.randint(0, 30))] for _ in range(50)]
    for ids in cases:
        for skip in (False, True):
            assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), ids
    assert tok.decode([6 + 0xFF]) == "\ufffd"
    assert tok.decode([0, 1, 2, 3, 4, 5]) == "[PAD][BOS][EOS][MASK][CLS][SEP]"
    assert tok.decode([0, 1, 2, 3, 4, 5, 6 + ord("z")], skip_special_tokens=True) == "z"


def test_decode_tensors_and_batches(tok, hf):
    enc = tok(["héllo", "世界"], padding=True, return_tensors="pt")
    assert tok.batch_decode(enc.input_ids, skip_special_tokens=True) == ["héllo", "世界"]
    assert tok.batch_decode(enc.input_ids) == hf.batch_decode(enc.input_ids)
    assert tok.decode(enc.input_ids[1]) == hf.decode(enc.input_ids[1])
    assert tok.decode(110) == hf.decode(110) == "h"


def test_errors(tok):
    bad_calls = {
        "int input": lambda: tok(123),
        "bytes input": lambda: tok(b"abc"),
        "None input": lambda: tok(None),
        "ids input": lambda: tok([1, 2, 3]),
        "mixed batch": lambda: tok(["a", 1]),
        "empty batch": lambda: tok([]),
        "triple in batch": lambda: tok([("a", "b", "c")]),
        "pair batch length": lambda: tok(["a", "b"], ["c"]),
        "pair type": lambda: tok("a", ["b"]),
        "single max_length too small": lambda: tok("abc", max_length=1, truncation=True),
        "pair max_length too small": lambda: tok("abc", "d", max_length=2, truncation=True),
        "only_first cannot fit": lambda: tok("ab", "uvwxyz", max_length=6, truncation="only_first"),
        "only_second cannot fit": lambda: tok("abcdefgh", "xyz", max_length=8, truncation="only_second"),
        "only_second without pair": lambda: tok("abcdefgh", max_length=4, truncation="only_second"),
        "max_length 0": lambda: tok("abc", max_length=0),
        "padding value": lambda: tok("abc", padding="max"),
        "truncation value": lambda: tok("abc", truncation="left"),
        "padding side": lambda: tok("abc", padding=True, padding_side="top"),
        "pad multiple vs max_length": lambda: tok(
            "abc", padding=True, truncation=True, max_length=10, pad_to_multiple_of=8
        ),
        "tensors of unequal length": lambda: tok(["a", "abc"], return_tensors="pt"),
        "return_tensors np": lambda: tok("a", return_tensors="np"),
        "encode a batch": lambda: tok.encode(["a"]),
        "decode id 262": lambda: tok.decode([262]),
        "decode id -1": lambda: tok.decode([-1]),
        "decode float": lambda: tok.decode([1.5]),
        "decode 2-D tensor": lambda: tok.decode(torch.zeros(2, 3, dtype=torch.long)),
        "decode None": lambda: tok.decode(None),
        "model_max_length": lambda: ByteTokenizer(model_max_length=0),
    }
    for name, call in bad_calls.items():
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"no ValueError for {name}")
    with pytest.raises(ValueError, match=r"max_length=2 is too small.*3 special tokens"):
        tok("abc", "d", max_length=2, truncation=True)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([300])


def test_one_byte_encoding_for_tokenizer_datasets_and_generate():
    """The tokenizer, the datasets and `perceiver generate` share `perceiver.tokenizer.encode_bytes`: the same ids."""
    import perceiver.data.text as data_text
    import perceiver.training.generate as generate
    from perceiver import tokenizer

    text = "Perceiver: ∑ bytes, é"
    ids = tokenizer.encode_bytes(text)
    assert ids == data_text.encode_bytes(text).tolist() == ByteTokenizer(split_special_tokens=True).tokenize(text)
    assert generate.encode_bytes is tokenizer.encode_bytes and generate.decode_bytes is tokenizer.decode_bytes
    assert tokenizer.decode_bytes([0, *ids, 5]) == data_text.decode_bytes([0, *ids, 5]) == text
    assert data_text.NUM_SPECIAL_TOKENS is tokenizer.NUM_SPECIAL_TOKENS and data_text.VOCAB_SIZE == 262
