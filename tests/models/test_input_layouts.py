"""`model.input_layout` says which layout a model takes, and trainers / `perceiver predict` convert channels-last
batches to it (`perceiver.training.layouts.to_model_layout`). A video classifier built with the adapter's
`channels_last=True` takes `(B, T, H, W, C)`; it reported the class's `"channels_first"`, so the training task
permuted the channels-last batches it was built for into `(B, T, C, H, W)` and the adapter rejected them."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY

import perceiver
from perceiver.training.layouts import to_model_layout


def video_classifier(channels_last: bool):
    torch.manual_seed(0)
    overrides = TINY["video-classifier"][0]
    return perceiver.create_model("video-classifier", **overrides, channels_last=channels_last).eval()


def test_a_channels_last_video_classifier_says_so_and_takes_channels_last_batches():
    first, last = video_classifier(False), video_classifier(True)
    last.load_state_dict(first.state_dict())
    assert first.input_layout == "channels_first" and last.input_layout == "channels_last"
    video = torch.randn(2, 4, 8, 12, 3)  # (B, T, H, W, C), as perceiver.data gives videos
    with torch.no_grad():
        expected = first(to_model_layout(first, video)).logits
        torch.testing.assert_close(last(to_model_layout(last, video)).logits, expected)


def test_a_channels_last_video_classifier_names_its_layout_in_errors():
    model = video_classifier(True)
    with pytest.raises(ValueError, match=r"\(B, T, H, W, C\) with no zero-size axis"):
        model(torch.randn(0, 4, 8, 12, 3))
    with pytest.raises(ValueError, match=r"expected video of shape \(B, 4, 8, 12, 3\)"):
        model(torch.randn(2, 4, 3, 8, 12))
