"""A new user composing a Perceiver IO model from `perceiver.core` parts and the adapters (audit of the core API).

Each test is a defect that was found that way: meta-device initialisation left the latents as uninitialised memory,
a decoder built for other latents failed only in the first forward, a classification output dropped all queries but
the first, empty inputs came out as if no input was given, masks with other values than 0 / 1 were cast silently, and
`save_pretrained` of a composed model failed with an AttributeError.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from perceiver.adapters.image import ImageAdapter
from perceiver.adapters.outputs import ClassificationOutput
from perceiver.adapters.point_cloud import PointCloudAdapter
from perceiver.adapters.text import TextAdapter, TiedEmbeddingOutput
from perceiver.core.decoder import AdaptedInputs, DecoderConfig, InputQueries, PerceiverDecoder, TrainableQueries
from perceiver.core.encoder import EncoderConfig, PerceiverEncoder
from perceiver.core.io import InputAdapter, PerceiverIO


class Identity(InputAdapter):
    """Tokens as given `(B, M, 5)`."""

    num_channels = 5

    def forward(self, inputs: Tensor, mask: Tensor | None = None) -> AdaptedInputs:
        return AdaptedInputs(inputs, mask)


def encoder(input_dim: int = 5, latent_dim: int = 8, **kwargs) -> PerceiverEncoder:
    cfg = dict(input_dim=input_dim, num_latents=4, latent_dim=latent_dim, num_self_attends_per_block=1, latent_heads=2)
    return PerceiverEncoder(EncoderConfig(**{**cfg, **kwargs}))


def classifier(num_queries: int = 1, adapter: InputAdapter | None = None) -> PerceiverIO:
    adapter = adapter if adapter is not None else Identity()
    dec = PerceiverDecoder(DecoderConfig(query_dim=6, latent_dim=8, output_dim=3))
    return PerceiverIO(
        adapter, encoder(adapter.num_channels), TrainableQueries(num_queries, 6), dec, ClassificationOutput()
    )


def reset_all(model: nn.Module) -> None:
    """What FSDP does to materialise a model built on the meta device: `reset_parameters()` of every module."""
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def test_meta_device_model_is_initialised_by_reset_parameters():
    torch.manual_seed(0)
    with torch.device("meta"):
        model = classifier()
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        model.encoder.latents.fill_(1e30)  # what uninitialised memory may hold
    reset_all(model)
    latents = model.encoder.latents
    assert latents.abs().max() <= 2 * model.encoder.config.latent_init_std  # truncated at 2 std, as at construction
    assert latents.std() > 0
    assert torch.isfinite(model(torch.randn(2, 7, 5)).logits).all()


def test_every_module_with_own_parameters_can_reset_them():
    """FSDP calls `reset_parameters()` on each module that holds parameters itself and fails on one without it."""
    text = TextAdapter(vocab_size=20, max_seq_len=9, num_channels=8)
    dec = PerceiverDecoder(DecoderConfig(query_dim=8, latent_dim=8))
    lm = PerceiverIO(text, encoder(8), InputQueries(8), dec, TiedEmbeddingOutput(text.token_embedding))
    for model in (classifier(), lm):
        lacking = [
            name or type(model).__name__
            for name, m in model.named_modules()
            if any(True for _ in m.parameters(recurse=False)) and not hasattr(m, "reset_parameters")
        ]
        assert lacking == []
    with torch.no_grad():
        lm.output_adapter.bias.fill_(3.0)
    lm.output_adapter.reset_parameters()
    assert torch.equal(lm.output_adapter.bias, torch.zeros(20))


def test_decoder_for_other_latents_is_refused_when_the_model_is_built():
    dec = PerceiverDecoder(DecoderConfig(query_dim=6, latent_dim=16, output_dim=3))
    with pytest.raises(ValueError, match=r"encoder gives latents of 8 channels .* decoder expects 16"):
        PerceiverIO(Identity(), encoder(), TrainableQueries(1, 6), dec, ClassificationOutput())


def test_classification_output_refuses_more_than_one_query():
    x = torch.randn(2, 7, 5)
    assert classifier(1)(x).logits.shape == (2, 3)
    with pytest.raises(ValueError, match=r"one classification query \(B, 1, K\), got \(2, 4, 3\)"):
        classifier(4)(x)


@pytest.mark.parametrize("shape", [(2, 0, 5), (0, 7, 5)])
def test_encoder_refuses_empty_inputs(shape):
    """No tokens: the latents attended to nothing and the model answered as if it had seen an input."""
    with pytest.raises(ValueError, match="no zero-size axis"):
        encoder()(torch.randn(*shape))
    with pytest.raises(ValueError, match="no zero-size axis"):
        classifier()(torch.randn(*shape))


def test_point_cloud_adapter_checks_mask_values():
    pc = PointCloudAdapter(3, num_bands=2, max_resolution=8.0)
    points = torch.randn(2, 5, 3)
    additive = torch.zeros(2, 5)
    additive[:, 3:] = float("-inf")  # torch's additive mask (0 = keep): was cast to the opposite validity
    with pytest.raises(ValueError, match="values 0 .* or 1"):
        pc(points, additive)
    with pytest.raises(TypeError, match="got list"):
        pc(points, [[1] * 5] * 2)
    ones = pc(points, torch.tensor([[1, 1, 1, 0, 0]] * 2)).mask
    assert ones.dtype == torch.bool and ones.tolist() == [[True] * 3 + [False] * 2] * 2


def test_image_adapter_checks_mask_values():
    adapter = ImageAdapter((4, 4), prep_type="pixels", spatial_downsample=1, num_bands=2)
    image = torch.randn(2, 3, 4, 4)
    additive = torch.zeros(2, 16)
    additive[:, 8:] = float("-inf")
    with pytest.raises(ValueError, match="values 0 .* or 1"):
        adapter(image, additive)
    with pytest.raises(ValueError, match=r"token mask of shape \(2, 16\)"):
        adapter(image, torch.ones(2, 4, 4, dtype=torch.bool))
    assert adapter(image, torch.ones(2, 16)).mask.all()


def test_additive_mask_through_a_composed_model_is_an_error():
    model = classifier(adapter=PointCloudAdapter(3, num_bands=2, max_resolution=8.0))
    additive = torch.zeros(2, 5)
    additive[:, 3:] = float("-inf")
    with pytest.raises(ValueError, match="values 0 .* or 1"):
        model(torch.randn(2, 5, 3), mask=additive)


def test_save_pretrained_of_a_composed_model_says_what_to_do(tmp_path):
    model = classifier()
    with pytest.raises(TypeError, match=r"composed from parts.*safetensors\.torch\.save_model"):
        model.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: TextAdapter(vocab_size=20.0), r"TextAdapter\.vocab_size must be a positive integer, got 20\.0"),
        (lambda: ImageAdapter(in_channels=0, prep_type="pixels"), r"ImageAdapter\.in_channels .* got 0"),
        (lambda: ImageAdapter(prep_type="pixels", spatial_downsample=2.0), r"spatial_downsample .* got 2\.0"),
        (lambda: PointCloudAdapter(3, num_bands=0), r"PointCloudAdapter\.num_bands .* got 0"),
        (lambda: PointCloudAdapter(3, max_resolution=0), r"PointCloudAdapter\.max_resolution .* got 0"),
    ],
)
def test_adapter_constructors_check_their_sizes(build, match):
    """As their configs do: a float size failed inside nn.Embedding / slicing, zero channels in the first forward."""
    with pytest.raises((TypeError, ValueError), match=match):
        build()


def test_image_adapter_takes_an_int_image_size_as_its_config_does():
    adapter = ImageAdapter(image_size=4, prep_type="pixels", spatial_downsample=1, num_bands=2, max_resolution=4)
    reference = ImageAdapter(image_size=(4, 4), prep_type="pixels", spatial_downsample=1, num_bands=2)
    image = torch.randn(1, 3, 4, 4)
    assert adapter.image_size == (4, 4)
    torch.testing.assert_close(adapter(image).tokens, reference(image).tokens)


def test_output_index_as_a_list_or_an_int():
    """A list of positions (what a user writes first) reached `index_select` as it came: an AttributeError."""
    dec = PerceiverDecoder(DecoderConfig(query_dim=6, latent_dim=8))
    model = PerceiverIO(Identity(), encoder(), TrainableQueries(6, 6), dec).eval()
    x = torch.randn(2, 7, 5)
    every = model(x).logits
    torch.testing.assert_close(model(x, output_index=[4, 1]).logits, every[:, [4, 1]])
    torch.testing.assert_close(model(x, output_index=(4, 1), query_chunk_size=1).logits, every[:, [4, 1]])
    torch.testing.assert_close(model(x, output_index=3).logits, every[:, [3]])
    with pytest.raises(ValueError, match=r"output_index must lie in \[0, 6\)"):
        model(x, output_index=[6])
    with pytest.raises(TypeError, match="expected output_index as integer positions"):
        model(x, output_index=[1.5])


def test_audio_and_multimodal_adapters_check_mask_values():
    """The audio and multimodal adapters took any mask with `.to(torch.bool)`: torch's additive float mask (0 = keep,
    -inf = drop) came out with the opposite validity. Like the other adapters they take bool or 0 / 1 only."""
    from tiny_models import inputs, tiny

    from perceiver.adapters.audio import AudioAdapter

    audio = AudioAdapter(32, 16, 8, max_resolution=32)
    additive = torch.zeros(2, 32)
    additive[:, 16:] = float("-inf")
    with pytest.raises(ValueError, match="values 0 .* or 1"):
        audio(torch.randn(2, 32), additive)
    assert audio(torch.randn(2, 32), torch.ones(2, 32)).mask.all()

    model = tiny("multimodal-perceiver")
    (x,) = inputs("multimodal-perceiver")
    tokens = model.input_adapter(x).tokens.shape[1]
    additive = torch.zeros(2, tokens)
    additive[:, 1:] = float("-inf")
    with pytest.raises(ValueError, match="values 0 .* or 1"):
        model.input_adapter(x, additive)
