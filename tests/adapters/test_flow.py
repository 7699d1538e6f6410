"""Flow adapter pieces: the one frame normalisation (training, `perceiver predict` and `model.predict` give the model
the same inputs), the adapter config, and the output adapter run per query chunk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import perceiver
from perceiver.adapters.flow import (
    FlowAdaptedInputs,
    FlowAdapter,
    FlowAdapterConfig,
    FlowOutputConfig,
    frames_to_patches,
    normalize_frames,
)
from perceiver.hub import config_from_dict, config_to_dict

SIZE = (8, 12)


def tiny_flow(**overrides):
    kw = dict(train_size=SIZE, num_latents=8, latent_dim=16, num_self_attends_per_block=1, latent_heads=2)
    kw |= dict(num_bands=4, out_channels=8, output_init_zeros=False)
    return perceiver.create_model("optical-flow-perceiver", **(kw | overrides)).eval()


def test_normalize_frames_gives_deepmind_range():
    u = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert normalize_frames(u).dtype == torch.float32
    torch.testing.assert_close(normalize_frames(u), torch.tensor([-1.0, -0.6, 1.0]))
    assert torch.equal(normalize_frames(u), u.float() / 255 * 2 - 1)  # DeepMind colab's `im / 255 * 2 - 1`
    assert torch.equal(normalize_frames(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))
    assert normalize_frames(u, torch.float64).dtype == torch.float64
    assert normalize_frames(torch.rand(3, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ValueError, match="uint8 frames in \\[0, 255\\] or floating frames in \\[0, 1\\]"):
        normalize_frames(torch.zeros(3, dtype=torch.int32))


@pytest.mark.parametrize("patch_size", [3, 5])
def test_data_pipeline_and_predict_paths_feed_the_model_identical_inputs(patch_size, tmp_path):
    """Two PNG frames reach the model as the same patches (bit for bit) through the data modules' loader (floats in
    [0, 1]) with the training task's conversion, through `perceiver predict`, and through `model.predict` on the
    uint8 pixels: the normalisations cannot diverge."""
    Image = pytest.importorskip("PIL.Image")
    from perceiver.data._common import load_image
    from perceiver.training.flow_task import frames_to_model_input
    from perceiver.training.predict import predict_flow

    pixels = np.random.default_rng(0).integers(0, 256, (2, *SIZE, 3), dtype=np.uint8)
    paths = [tmp_path / f"frame_{i}.png" for i in range(2)]
    for p, img in zip(paths, pixels):
        Image.fromarray(img).save(p)
    loaded = np.stack([load_image(p) for p in paths])  # what SintelFlowDataModule and `perceiver predict` read
    model = tiny_flow(patch_size=patch_size)
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        with torch.no_grad():
            model.predict(torch.from_numpy(pixels[0]), torch.from_numpy(pixels[1]))
            predict_flow(model, loaded[0], loaded[1])
    finally:
        hook.remove()
    training = frames_to_model_input(torch.from_numpy(loaded)[None], patch_size)  # FlowTask's model input
    via_model_predict, via_cli = seen
    assert via_model_predict.shape == (1, 2, 3 * patch_size**2, *SIZE)
    assert torch.equal(via_model_predict, training)
    assert torch.equal(via_cli, training)
    reference = frames_to_patches(normalize_frames(torch.from_numpy(pixels))[None], patch_size=patch_size)
    assert torch.equal(training, reference)


def test_flow_adapter_config_builds_the_adapter_and_round_trips():
    config = FlowAdapterConfig(train_size=[8, 12], patch_size=5, out_channels=8, num_bands=4, pyramid_scales=[2])
    assert config.train_size == (8, 12) and config.pyramid_scales == (2,) and config.patch_channels == 75
    adapter = config.build()
    assert isinstance(adapter, FlowAdapter)
    assert (adapter.patch_size, adapter.patch_channels, adapter.train_size) == (5, 75, (8, 12))
    assert adapter.num_channels == 8 + 2 * (1 + 2 * 4)
    assert config_from_dict(FlowAdapterConfig, json.loads(json.dumps(config_to_dict(config)))) == config
    with pytest.raises(ValueError, match="patch_size must be an odd number >= 1, got 4"):
        FlowAdapterConfig(patch_size=4)
    with pytest.raises(ValueError, match="train_size must be"):
        FlowAdapterConfig(train_size=(8,))


def test_flow_output_scales_each_chunk_and_shapes_a_whole_decode():
    config = FlowOutputConfig(rescale_factor=10.0, flow_scale_factor=4.0)
    out = config.build()
    assert out.config is config
    adapted = FlowAdaptedInputs(torch.zeros(2, 6, 1), image_shape=(2, 3))
    x = torch.randn(2, 6, 2)
    pieces = [out(x[:, :4], adapted, slice(0, 4)), out(x[:, 4:], adapted, slice(4, 6))]
    whole = out.assemble(pieces, adapted, None)
    assert whole.shape == (2, 2, 3, 2)
    torch.testing.assert_close(whole, (x / 10 * 4).reshape(2, 2, 3, 2))
    index = torch.tensor([5, 0])
    assert out.assemble([out(x[:, [5, 0]], adapted, index)], adapted, index).shape == (2, 2, 2)  # subsets stay flat
    config.flow_scale_factor = 1.0  # read at every call
    torch.testing.assert_close(out(x, adapted), x / 10)
