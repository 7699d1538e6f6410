"""The Perceiver IO core: decoder, query builders, PerceiverIO composition, registry, from_pretrained dispatch."""

from __future__ import annotations

import json

import pytest
import torch

import perceiver
from perceiver import (
    AdaptedInputs,
    DecoderConfig,
    EncoderConfig,
    FourierQueries,
    InputAdapter,
    InputQueries,
    PerceiverDecoder,
    PerceiverEncoder,
    PerceiverIO,
    TrainableQueries,
)
from perceiver.adapters.outputs import ClassificationOutput
from perceiver.hub import WEIGHTS_NAME
from perceiver.nn.position import fourier_features, linear_positions


class Identity(InputAdapter):
    num_channels = 5

    def forward(self, inputs, mask=None):
        return AdaptedInputs(inputs, mask)


def tiny_io(query_builder, output_dim=3, query_dim=None):
    enc = PerceiverEncoder(
        EncoderConfig(input_dim=5, num_latents=4, latent_dim=8, num_self_attends_per_block=1, latent_heads=2)
    )
    dec = PerceiverDecoder(
        DecoderConfig(
            query_dim=query_dim or query_builder.num_channels,
            latent_dim=8,
            output_dim=output_dim,
            num_heads=2,
            widening_factor=2,
        )
    )
    return PerceiverIO(Identity(), enc, query_builder, dec).eval()


@pytest.mark.parametrize("chunk", [1, 3, 7, 19, 100])
def test_chunked_decoding_equals_one_shot(chunk):
    model = tiny_io(FourierQueries((4, 5), num_bands=3, project_dim=6))
    x = torch.randn(2, 7, 5)
    full = model(x).logits
    assert full.shape == (2, 20, 3)
    torch.testing.assert_close(model(x, query_chunk_size=chunk).logits, full, atol=1e-6, rtol=0)


def test_subset_decoding_equals_rows_of_full_decoding_and_chunks():
    model = tiny_io(FourierQueries((4, 5), num_bands=3))
    x = torch.randn(2, 7, 5)
    full = model(x).logits
    index = torch.tensor([19, 0, 7, 7, 3])
    sub = model(x, output_index=index).logits
    torch.testing.assert_close(sub, full[:, index], atol=1e-6, rtol=0)
    torch.testing.assert_close(model(x, output_index=index, query_chunk_size=2).logits, sub, atol=1e-6, rtol=0)


def test_decoder_attention_maps_are_gathered_over_chunks():
    model = tiny_io(TrainableQueries(6, 4))
    x = torch.randn(1, 7, 5)
    out = model(x, return_attention=True, query_chunk_size=4)
    assert out.decoder_attention.shape == (1, 2, 6, 4)
    torch.testing.assert_close(out.decoder_attention.sum(-1), torch.ones(1, 2, 6))
    assert len(out.encoder_attentions) == 1 and out.encoder_attentions[0].shape == (1, 1, 4, 7)


def test_fourier_queries_are_fourier_features_of_the_output_grid():
    qb = FourierQueries((3, 4), num_bands=2)
    adapted = AdaptedInputs(torch.zeros(2, 1, 5))
    expected = fourier_features(linear_positions((3, 4)), 2, (3, 4)).reshape(12, -1)
    q = qb(adapted)
    assert q.shape == (2, 12, qb.num_channels)
    torch.testing.assert_close(q[1], expected)
    torch.testing.assert_close(qb(adapted, torch.tensor([5, 2]))[0], expected[[5, 2]])


def test_input_queries_take_rows_of_the_adapted_inputs():
    adapted = AdaptedInputs(torch.randn(2, 6, 5))
    qb = InputQueries(5)
    assert qb.num_queries(adapted) == 6
    torch.testing.assert_close(qb(adapted, torch.tensor([4, 1])), adapted.tokens[:, [4, 1]])


def test_classification_model_and_padding_invariance():
    model = tiny_io(TrainableQueries(1, 4), output_dim=3)
    model.output_adapter = ClassificationOutput()
    x = torch.randn(2, 7, 5)
    logits = model(x).logits
    assert logits.shape == (2, 3)
    padded = torch.cat([x, 100 * torch.randn(2, 4, 5)], dim=1)
    mask = torch.arange(11) < 7
    torch.testing.assert_close(model(padded, mask.expand(2, -1)).logits, logits, atol=1e-5, rtol=0)


def test_bad_decoding_arguments_raise():
    model = tiny_io(TrainableQueries(6, 4))
    x = torch.randn(1, 7, 5)
    with pytest.raises(ValueError, match=r"output_index must lie in \[0, 6\)"):
        model(x, output_index=torch.tensor([6]))
    with pytest.raises(ValueError, match="query_chunk_size must be >= 1"):
        model(x, query_chunk_size=0)


def test_mismatched_parts_raise():
    enc = PerceiverEncoder(EncoderConfig(input_dim=7, num_latents=4, latent_dim=8, num_self_attends_per_block=0))
    dec = PerceiverDecoder(DecoderConfig(query_dim=4, latent_dim=8))
    with pytest.raises(ValueError, match="input adapter gives 5 channels, encoder expects 7"):
        PerceiverIO(Identity(), enc, TrainableQueries(1, 4), dec)


def test_registry_lists_and_creates_presets():
    assert "perceiver" in perceiver.list_models()
    assert perceiver.list_models("perceiver*") == [
        "perceiver",
        "perceiver-ar",
        "perceiver-ar-tiny",
        "perceiver-resampler",
    ]
    model = perceiver.create_model("perceiver", depth=1, num_latents=4, latent_dim=8, latent_heads=2, num_classes=5)
    assert model(torch.randn(1, 3, 3, 3)).shape == (1, 5)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        perceiver.create_model("nope")


def test_from_pretrained_dispatches_to_our_model_type(tmp_path):
    model = perceiver.create_model("perceiver", depth=2, num_latents=4, latent_dim=8, latent_heads=2, num_classes=5)
    model.eval().save_pretrained(tmp_path / "m")
    loaded = perceiver.from_pretrained(tmp_path / "m")
    assert type(loaded) is type(model)
    x = torch.randn(2, 3, 3, 3)
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_from_pretrained_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        perceiver.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ValueError, match="BertForMaskedLM.*not supported"):
        perceiver.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "perceiver", "depth": 0}))
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        perceiver.from_pretrained(tmp_path)


def test_save_pretrained_overwrites_atomically_and_leaves_no_temp_files(tmp_path, monkeypatch):
    model = perceiver.create_model("perceiver", depth=1, num_latents=4, latent_dim=8, latent_heads=2, num_classes=5)
    target = model.save_pretrained(tmp_path / "m")
    before = (target / WEIGHTS_NAME).read_bytes()

    import safetensors.torch

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_model", crash)
    with torch.no_grad():
        model.head.fc.bias.add_(1)
    with pytest.raises(RuntimeError, match="disk full"):
        model.save_pretrained(tmp_path / "m")
    assert (target / WEIGHTS_NAME).read_bytes() == before  # the old model is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left behind


def test_unknown_config_keys_are_rejected(tmp_path):
    model = perceiver.create_model("perceiver", depth=1, num_latents=4, latent_dim=8, latent_heads=2, num_classes=5)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["depht"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unknown keys for PerceiverConfig: \['depht'\]"):
        perceiver.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("share", ["all", "none"])
def test_gradient_checkpointing_gives_the_same_gradients(share):
    torch.manual_seed(0)
    enc = PerceiverEncoder(
        EncoderConfig(
            input_dim=5,
            num_latents=4,
            latent_dim=8,
            num_cross_attends=2,
            num_self_attends_per_block=2,
            latent_heads=2,
            share_latent_blocks=share,
        )
    )
    x, mask = torch.randn(2, 7, 5), torch.rand(2, 7) > 0.3

    def grads():
        enc.zero_grad()
        enc(x, mask).square().sum().backward()
        return {n: p.grad.clone() for n, p in enc.named_parameters()}

    plain = grads()
    enc.gradient_checkpointing = True
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_gradient_checkpointing_stores_fewer_activations():
    torch.manual_seed(0)
    model = perceiver.create_model("perceiver", depth=2, num_latents=16, latent_dim=32, latent_heads=2, num_classes=5)
    x = torch.randn(2, 12, 12, 3)

    def saved_bytes():
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x).sum()
        return total

    plain = saved_bytes()
    model.set_grad_checkpointing()
    assert saved_bytes() < plain / 2
