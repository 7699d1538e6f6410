"""Class names (`id2label`), as transformers keeps them: taken from a transformers classifier, kept through our
config.json, given back by `to_transformers`, printed by `perceiver predict`; placeholders and names that do not
cover the head are not used."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import perceiver
from perceiver.labels import class_names, id2label_from_json, set_id2label
from perceiver.training.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hf_vision import hf_model  # noqa: E402

transformers = pytest.importorskip("transformers")

NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray", "stingray"]


@pytest.fixture
def hf_folder(tmp_path) -> Path:
    """A transformers image classifier with 7 named classes, saved as transformers saves it."""
    model = hf_model("learned", id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def test_names_go_from_transformers_through_our_folder_and_back(hf_folder, tmp_path):
    ours = perceiver.from_pretrained(hf_folder)
    assert ours.id2label == dict(enumerate(NAMES)) and class_names(ours) == NAMES
    ours.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())["id2label"]
    assert saved == {str(i): n for i, n in enumerate(NAMES)}  # string keys, as transformers writes them
    again = perceiver.from_pretrained(tmp_path / "ours")
    assert class_names(again) == NAMES
    from perceiver.interop.to_transformers import to_transformers

    hf = to_transformers(again)
    assert hf.config.id2label == dict(enumerate(NAMES)) and hf.config.label2id["stingray"] == 6


def test_predict_prints_the_names_of_a_converted_classifier(hf_folder, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(image)
    main(["predict", str(hf_folder), str(image), "--top-k", "7", "--json"])
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert sorted(t["label"] for t in row["top"]) == sorted(NAMES)


def test_placeholders_other_counts_and_bad_values(tmp_path):
    assert id2label_from_json({"0": "LABEL_0", "1": "LABEL_1"}) is None  # transformers' default: no names
    assert perceiver.from_pretrained(_saved(hf_model("learned"), tmp_path / "plain")).id2label is None
    model = perceiver.create_model("vision-perceiver-learned", num_latents=4, latent_dim=16, num_classes=3)
    set_id2label(model, ["a", "b"])  # two names for three classes: not used, not saved
    assert class_names(model) is None
    assert "id2label" not in json.loads((model.save_pretrained(tmp_path / "m") / "config.json").read_text())
    set_id2label(model, ["a", "b", "c"])
    folder = model.save_pretrained(tmp_path / "m3")
    assert class_names(perceiver.from_pretrained(folder, num_classes=5, ignore_mismatched_sizes=True)) is None
    config = json.loads((folder / "config.json").read_text())
    for bad, match in (([1, 2], "an object"), ({"x": "a"}, "integer class ids"), ({"0": 3}, "names")):
        (folder / "config.json").write_text(json.dumps(config | {"id2label": bad}))
        with pytest.raises(ValueError, match=rf"config.json: key 'id2label': expected .*{match}"):
            perceiver.from_pretrained(folder)


def _saved(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder
