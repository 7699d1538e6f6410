"""TSV files whose text starts with a double quote: the CSV parser opens a quoted cell there and merges the lines up
to the next quote into one text (labels included), silently; now a ValueError names the row."""

from __future__ import annotations

import pytest

from perceiver.data import TextClassificationDataModule, TextFilesMLMDataModule
from perceiver.data.text import read_table

STRAY_QUOTE = 'text\tlabel\n"Great movie\tpos\nbad one\tneg\nok "fine" film\tneg\nthe "best\tpos\nlast row\tneg\n'


def test_tsv_lines_merged_by_a_stray_quote_are_an_error(tmp_path):
    path = tmp_path / "reviews.tsv"
    path.write_text(STRAY_QUOTE)
    with pytest.raises(ValueError, match=r"reviews.tsv: row 0: field 'text' holds tabs and line breaks"):
        read_table(path, ["text", "label"], text_fields=["text"])
    with pytest.raises(ValueError, match="stray quote"):
        TextClassificationDataModule(train_file=str(path), max_seq_len=32).setup()
    with pytest.raises(ValueError, match="stray quote"):
        TextFilesMLMDataModule(train=str(path), max_seq_len=32).setup()


def test_tsv_quotes_inside_text_and_quoted_cells_still_read(tmp_path):
    path = tmp_path / "ok.tsv"
    path.write_text('text\tlabel\nit\'s "fine"\tneg\n"a quoted\ncell, two lines"\tpos\n"tab\tinside"\tneg\n')
    columns = read_table(path, ["text", "label"], text_fields=["text"])
    assert list(columns["text"]) == ['it\'s "fine"', "a quoted\ncell, two lines", "tab\tinside"]
    assert list(columns["label"]) == ["neg", "pos", "neg"]
