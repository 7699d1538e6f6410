"""Labels a user gets wrong (a class count off by one, 1-based ids, a Python list, float ids) are a ValueError /
TypeError naming the range and what came, from every model that takes `labels`, not PyTorch's "Target 7 is out of
bounds" (or, on CUDA, a device-side assert); -100 stays the ignored label; compiled losses are unchanged."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TEXT, inputs, tiny

import perceiver
from perceiver.checks import InputTypeError

TOKEN_HEADS = dict(TEXT, decoder_heads=2, decoder_qk_channels=8)  # the tiny text encoder, a token head


def _classifier(name):
    model = tiny(name).eval()
    return model, inputs(name, 2), model.num_classes


@pytest.mark.parametrize("name", ["perceiver", "text-classifier", "vision-perceiver-learned"])
def test_class_ids_outside_the_class_count(name):
    model, args, n = _classifier(name)
    with torch.no_grad():
        model(*args, labels=torch.tensor([0, n - 1]))  # the valid range works
        model(*args, labels=torch.tensor([0, -100]))  # and the ignored label, as F.cross_entropy's default
        for bad, got in ((torch.tensor([0, n]), f"[0, {n}]"), (torch.tensor([-1, 1]), "[-1, 1]")):
            with pytest.raises(ValueError, match=rf"expected labels in \[0, {n}\) or -100 \(ignored\) for {n} classes, "
                               rf"got values in \{got[:-1]}\]"):  # fmt: skip
                model(*args, labels=bad)


@pytest.mark.parametrize("bad", [[0, 1], (0, 1)])
def test_labels_that_are_not_tensors(bad):
    model, args, _ = _classifier("text-classifier")
    with pytest.raises(InputTypeError, match=r"expected labels as a torch.Tensor, got (list|tuple)"):
        model(*args, labels=bad)


def test_regression_targets_of_another_shape():
    """One output is regression (MSE, as transformers' problem_type): targets of another size were broadcast by
    mse_loss with only a warning ((1,) for a batch of 2) or failed inside it ((3,))."""
    model = tiny("text-classifier", num_labels=1).eval()
    args = inputs("text-classifier", 2)
    with torch.no_grad():
        for good in (torch.zeros(2), torch.zeros(2, 1)):
            assert model(*args, labels=good).loss.ndim == 0
        for bad in (torch.zeros(1), torch.zeros(3), torch.zeros(2, 2)):
            with pytest.raises(ValueError, match=r"expected regression targets of shape \(2,\) or \(2, 1\), got"):
                model(*args, labels=bad)


def test_bool_labels_are_not_class_ids():
    model, args, _ = _classifier("text-classifier")
    with pytest.raises(TypeError, match="integer class ids.*got dtype torch.bool"):
        model(*args, labels=torch.tensor([True, False]))


def test_token_level_labels():
    mlm = tiny("language-perceiver").eval()
    ids = torch.randint(6, 262, (2, 16))
    labels = torch.full((2, 16), -100)
    labels[:, 3] = 300
    with pytest.raises(ValueError, match=r"labels \(token ids\) in \[0, 262\) or -100.*got values in \[300, 300\]"):
        mlm(ids, labels=labels)

    tagger = perceiver.create_model("token-classifier", **TOKEN_HEADS, num_labels=3).eval()
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    ids = torch.randint(6, 262, (2, 10))
    labels = torch.randint(0, 3, (2, 10))
    labels[1, 8] = 7  # a padded position: ignored, as its loss is
    tagger(ids, mask, labels=labels)
    labels[0, 2] = 3
    with pytest.raises(ValueError, match=r"in \[0, 3\) or -100 \(ignored\) for 3 classes, got values in \[0, 3\]"):
        tagger(ids, mask, labels=labels)

    ar = tiny("perceiver-ar-tiny").eval()
    ids = torch.randint(0, 256, (1, 12))
    with pytest.raises(ValueError, match=r"labels \(token ids\) in \[0, 262\)"):
        ar(ids, labels=torch.full_like(ids, 262))


def test_the_compiled_loss_skips_the_value_check_and_matches_eager():
    model, args, n = _classifier("text-classifier")
    labels = torch.tensor([0, n - 1])
    eager = model(*args, labels=labels).loss
    compiled = torch.compile(model, fullgraph=True, backend="eager")(*args, labels=labels).loss
    torch.testing.assert_close(compiled, eager)


def test_a_cache_of_another_type():
    ar = tiny("perceiver-ar-tiny").eval()
    with pytest.raises(InputTypeError, match=r"expected cache as a PerceiverARCache.*got str"):
        ar(torch.randint(0, 256, (1, 12)), cache="x")
