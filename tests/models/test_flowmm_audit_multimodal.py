"""PerceiverForMultimodalAutoencoding fed video as decoders give it: channels-last frames (PyAV, torchvision.io,
`VideoFolderDataModule` batches) and uint8 pixels get errors that say what to do, in `forward` and `classify`."""

from __future__ import annotations

import pytest
import torch

import perceiver
from perceiver.checks import InputTypeError

T, HW, LABELS, AUDIO = 2, 16, 5, 64
TINY = dict(
    num_frames=T, image_size=HW, audio_samples_per_frame=AUDIO // T, num_labels=LABELS, num_latents=8, latent_dim=32,
    num_self_attends_per_block=1, latent_heads=2, label_query_channels=24, output_num_channels=16,
)  # fmt: skip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return perceiver.create_model("multimodal-perceiver", **TINY).eval()


def inputs(video: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "image": video,
        "audio": torch.randn(video.shape[0], AUDIO, 1),
        "label": torch.zeros(video.shape[0], LABELS),
    }


def test_channels_last_video_is_named_with_the_permute_to_apply(model):
    video = torch.rand(2, T, 3, HW, HW)
    channels_last = video.permute(0, 1, 3, 4, 2)  # (B, T, H, W, C)
    # was: "expected image height and width that are multiples of the space-to-depth factor 4, got 16 x 3"
    match = r"channels first, got \(2, 2, 16, 16, 3\); it looks channels-last .*permute\(0, 1, 4, 2, 3\)"
    with pytest.raises(ValueError, match=match):
        model(inputs(channels_last))
    with pytest.raises(ValueError, match=match):
        model.classify(channels_last, torch.randn(2, AUDIO, 1))
    with torch.no_grad():  # the suggested permute is the right one
        want = model.classify(video, torch.zeros(2, AUDIO, 1))
        got = model.classify(channels_last.permute(0, 1, 4, 2, 3), torch.zeros(2, AUDIO, 1))
    torch.testing.assert_close(got, want)


def test_wrong_channel_count_names_the_expected_shape(model):
    with pytest.raises(
        ValueError, match=r"\(B, 2, 3, 16, 16\) \(B, T, C, H, W\), channels first, got \(1, 2, 4, 16, 16\)$"
    ):
        model(inputs(torch.rand(1, T, 4, HW, HW)))


def test_uint8_video_says_to_scale_to_unit_range(model):
    video = torch.randint(0, 256, (1, T, 3, HW, HW), dtype=torch.uint8)
    with pytest.raises(InputTypeError, match=r"uint8; convert it with \.float\(\) / 255"):
        model(inputs(video))
    with pytest.raises(TypeError, match=r"\.float\(\) / 255"):
        model.classify(video, torch.randn(1, AUDIO, 1))
