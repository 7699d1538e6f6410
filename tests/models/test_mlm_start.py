"""`from_pretrained` of the text heads on a masked LM's folder: the LM's embedding and encoder, a new rest, as
transformers' `PerceiverForSequenceClassification.from_pretrained("deepmind/language-perceiver")` starts it."""

import logging

import pytest
import torch
from tiny_models import tiny

import perceiver
from perceiver.models import PerceiverForSequenceClassification
from perceiver.models.token_heads import PerceiverForQuestionAnswering, PerceiverForTokenClassification

KEPT = ("input_adapter.", "encoder.")


@pytest.fixture(scope="module")
def mlm_folder(tmp_path_factory):
    torch.manual_seed(0)
    return tiny("language-perceiver").save_pretrained(tmp_path_factory.mktemp("m") / "mlm")


@pytest.mark.parametrize(
    ("cls", "kwargs", "classes"),
    [
        (PerceiverForSequenceClassification, {"num_labels": 3}, 3),
        (PerceiverForSequenceClassification, {}, 2),  # transformers' default num_labels
        (PerceiverForTokenClassification, {"num_classes": 5}, 5),
        (PerceiverForQuestionAnswering, {}, None),
    ],
)
def test_heads_start_from_a_masked_lm_folder(cls, kwargs, classes, mlm_folder, caplog):
    mlm = perceiver.from_pretrained(mlm_folder)
    with caplog.at_level(logging.WARNING, logger="perceiver"):
        model = cls.from_pretrained(mlm_folder, **kwargs)
    assert type(model) is cls and not model.training
    if classes is not None:
        assert model.num_classes == classes
    theirs, ours = mlm.state_dict(), model.state_dict()
    kept = [k for k in ours if k.startswith(KEPT)]
    assert kept and all(torch.equal(ours[k], theirs[k]) for k in kept)
    assert model.reinitialized_keys and not any(k.startswith(KEPT) for k in model.reinitialized_keys)
    assert set(model.reinitialized_keys) <= set(ours) and "newly initialized" in caplog.text
    ids = torch.randint(0, 262, (2, 10))
    with torch.no_grad():  # the latents are the masked LM's
        assert torch.allclose(model.forward_features(ids).latents, mlm.forward_features(ids).latents, atol=1e-6)


def test_the_start_keeps_dtype_and_head_overrides(mlm_folder):
    model = PerceiverForTokenClassification.from_pretrained(
        mlm_folder, num_labels=3, decoder_self_attends=1, decoder_self_attend_heads=2, dtype=torch.bfloat16
    )
    assert model.num_classes == 3 and next(model.parameters()).dtype == torch.bfloat16
    assert "head.self_attends.0.attention.q_proj.weight" in model.reinitialized_keys


@pytest.mark.parametrize("where", [{"device_map": "cpu"}, {"device": "cpu"}])
def test_the_start_takes_the_device_keywords(where, mlm_folder):
    model = PerceiverForSequenceClassification.from_pretrained(mlm_folder, num_labels=3, **where)
    assert model.num_classes == 3 and next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("cls", [PerceiverForSequenceClassification, PerceiverForTokenClassification])
def test_overrides_that_resize_the_masked_lm_are_an_error(cls, mlm_folder):
    with pytest.raises(
        ValueError,
        match=r"masked LM's embedding and encoder weights \['encoder\..* do not fit the model with the overrides \['d_model'\]",
    ):
        cls.from_pretrained(mlm_folder, num_labels=3, d_model=48)


def test_a_folder_of_another_model_is_still_refused(tmp_path):
    folder = tiny("token-classifier").save_pretrained(tmp_path / "tagger")
    with pytest.raises(ValueError, match="holds a 'perceiver-token-classifier' model, expected 'perceiver-text-"):
        PerceiverForSequenceClassification.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        PerceiverForSequenceClassification.from_pretrained(tmp_path / "missing")


def test_its_own_folder_loads_as_before(mlm_folder, tmp_path):
    first = PerceiverForSequenceClassification.from_pretrained(mlm_folder, num_classes=3)
    again = PerceiverForSequenceClassification.from_pretrained(first.save_pretrained(tmp_path / "cls"))
    assert not getattr(again, "reinitialized_keys", None)  # nothing new: every tensor read from the folder
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())


def test_create_model_with_a_masked_lm_checkpoint_path(mlm_folder):
    """timm's `create_model(name, checkpoint_path=...)`: a text head preset on a masked LM's local folder."""
    model = perceiver.create_model("text-classifier", checkpoint_path=str(mlm_folder), num_labels=4)
    assert type(model) is PerceiverForSequenceClassification and model.num_classes == 4
    with pytest.raises(ValueError, match="holds a PerceiverForMaskedLM model .* not a 'vision-perceiver-fourier'"):
        perceiver.create_model("vision-perceiver-fourier", checkpoint_path=str(mlm_folder))


def test_id2label_names_the_new_head_as_in_transformers(mlm_folder):
    """transformers' call: `from_pretrained(mlm, num_labels=2, id2label={0: "neg", 1: "pos"})` (before: unknown key
    id2label); id2label alone sets the class count."""
    model = PerceiverForSequenceClassification.from_pretrained(mlm_folder, id2label={0: "neg", 1: "pos", 2: "mixed"})
    assert model.num_classes == 3 and model.id2label == {0: "neg", 1: "pos", 2: "mixed"}
    with pytest.raises(ValueError, match="id2label: expected one name for each of the model's 4 classes"):
        PerceiverForSequenceClassification.from_pretrained(mlm_folder, num_labels=4, id2label={0: "a", 1: "b"})
