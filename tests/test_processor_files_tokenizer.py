"""ByteTokenizer.save_pretrained / from_pretrained against transformers' PerceiverTokenizer folders, both ways."""

import json

import pytest

from perceiver.tokenizer import ByteTokenizer

transformers = pytest.importorskip("transformers")

TEXTS = ["Hello, world!", "héllo 日本語 🙂👍🏽", "a [MASK] b [SEP][PAD]", "", "x" * 40]
SETTINGS = {"model_max_length": 16, "padding_side": "left", "truncation_side": "left"}


def _ids(tokenizer, **kwargs):
    out = tokenizer(TEXTS, padding="max_length", truncation=True, **kwargs)
    return out["input_ids"], out["attention_mask"]


def test_saved_folder_is_read_by_transformers(tmp_path):
    ours = ByteTokenizer(**SETTINGS)
    files = ours.save_pretrained(tmp_path / "tok")
    assert [p.rsplit("/", 1)[-1] for p in files] == ["tokenizer_config.json"]
    for loader in (transformers.PerceiverTokenizer, transformers.AutoTokenizer):
        ref = loader.from_pretrained(tmp_path / "tok")
        assert type(ref).__name__ == "PerceiverTokenizer"
        assert (ref.model_max_length, ref.padding_side, ref.truncation_side) == (16, "left", "left")
        assert _ids(ref) == _ids(ours)
        assert ref.convert_ids_to_tokens([0, 3, 5]) == ["[PAD]", "[MASK]", "[SEP]"]


def test_split_special_tokens_is_kept_both_ways(tmp_path):
    ByteTokenizer(split_special_tokens=True).save_pretrained(tmp_path / "a")
    ref = transformers.PerceiverTokenizer.from_pretrained(tmp_path / "a")
    assert ref("[MASK]")["input_ids"] == ByteTokenizer(split_special_tokens=True)("[MASK]")["input_ids"]
    transformers.PerceiverTokenizer(split_special_tokens=True).save_pretrained(tmp_path / "b")
    assert ByteTokenizer.from_pretrained(tmp_path / "b").split_special_tokens is True


def test_reads_a_folder_saved_by_transformers(tmp_path):
    transformers.PerceiverTokenizer(**SETTINGS).save_pretrained(tmp_path / "hf")
    ours = ByteTokenizer.from_pretrained(tmp_path / "hf")
    assert (ours.model_max_length, ours.padding_side, ours.truncation_side) == (16, "left", "left")
    assert _ids(ours) == _ids(transformers.PerceiverTokenizer.from_pretrained(tmp_path / "hf"))
    assert ByteTokenizer.from_pretrained(tmp_path / "hf", model_max_length=8).model_max_length == 8  # kwargs win


def test_round_trip_beside_a_model_keeps_its_files(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "perceiver-io"}')
    ByteTokenizer(**SETTINGS).save_pretrained(folder)
    ByteTokenizer(model_max_length=32).save_pretrained(folder)  # saving again replaces the config
    assert (folder / "config.json").read_text() == '{"model_type": "perceiver-io"}'
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "tokenizer_config.json"]
    loaded = ByteTokenizer.from_pretrained(str(folder))
    assert (loaded.model_max_length, loaded.padding_side) == (32, "right")


def test_transformers_4_style_files(tmp_path):
    """Special tokens as serialized AddedToken dicts, and a special_tokens_map.json, as transformers 4.x wrote them."""
    added = {"__type": "AddedToken", "content": "[MASK]", "lstrip": False, "normalized": True, "rstrip": False}
    config = {"tokenizer_class": "PerceiverTokenizer", "model_max_length": 2048, "mask_token": added}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "[PAD]", "cls_token": "[CLS]"}))
    assert ByteTokenizer.from_pretrained(tmp_path).model_max_length == 2048


def test_folder_without_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer_config.json"):
        ByteTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ByteTokenizer.from_pretrained(tmp_path / "missing")
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ByteTokenizer.from_pretrained(tmp_path / "f")
    with pytest.raises(NotADirectoryError):
        ByteTokenizer().save_pretrained(tmp_path / "f" / "sub")


def test_refuses_what_the_byte_tokenizer_cannot_encode(tmp_path):
    transformers.PerceiverTokenizer(pad_token="<pad>").save_pretrained(tmp_path / "pad")
    with pytest.raises(ValueError, match="pad_token '\\[PAD\\]'.*got '<pad>'"):
        ByteTokenizer.from_pretrained(tmp_path / "pad")
    hf = transformers.PerceiverTokenizer()
    hf.add_tokens(["<new>"])
    hf.save_pretrained(tmp_path / "added")
    with pytest.raises(ValueError, match="<new>"):
        ByteTokenizer.from_pretrained(tmp_path / "added")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "tokenizer_config.json").write_text('{"tokenizer_class": "BertTokenizer"}')
    with pytest.raises(ValueError, match="BertTokenizer"):
        ByteTokenizer.from_pretrained(tmp_path / "bert")
    (tmp_path / "bert" / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        ByteTokenizer.from_pretrained(tmp_path / "bert")
    (tmp_path / "bert" / "tokenizer_config.json").write_text('{"model_max_length": 0}')
    with pytest.raises(ValueError, match="model_max_length must be a positive int"):
        ByteTokenizer.from_pretrained(tmp_path / "bert")
