"""krasserm perceiver-io's Perceiver IO models load into ours with equal outputs (max abs diff <= 1e-5, fp32).

The reference is the real wheel from PyPI (`tests/krasserm_peer.py`), run once per module in a subprocess: small odd
configs of its masked LM (tied and untied output), text classifier, image classifier and optical flow model, covering
its options (one cross-attention with weight-shared blocks, as many cross-attentions as blocks with shared or unique
blocks, separate qk / v widths, widening factors, decoder residual on and off, query widths other than the latents',
more decoder queries than positions, fairscale's activation checkpointing), with every weight randomised so that the
outputs depend on each one. Its Hugging Face folder layout loads through `perceiver.from_pretrained`; the layouts our
encoder cannot run are refused with a ValueError naming the option.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from krasserm_peer import run
from safetensors.torch import save_file

import perceiver
from perceiver.interop.krasserm_io import (
    image_classifier_from_krasserm,
    masked_lm_from_krasserm,
    optical_flow_from_krasserm,
    text_classifier_from_krasserm,
)

TOL = 1e-5
FOURIER_BUFFER = "0.input_adapter.position_encoding.position_encoding"

SCRIPT = r"""
import dataclasses

from perceiver.model.core import ClassificationDecoderConfig
from perceiver.model.text.classifier.backend import TextClassifier, TextClassifierConfig
from perceiver.model.text.common import TextEncoderConfig
from perceiver.model.text.mlm.backend import MaskedLanguageModel, MaskedLanguageModelConfig, TextDecoderConfig
from perceiver.model.vision.image_classifier.backend import ImageClassifier, ImageClassifierConfig, ImageEncoderConfig

torch.manual_seed(0)


def randomise(model):
    # krasserm inits LayerNorms to 1 / 0, Linear biases to 0 and everything else with std init_scale (0.02): outputs
    # would barely depend on the inputs. Perturb every 1-d parameter, give matrices std 1 / sqrt(fan-in).
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5)
    return model.eval()


def record(model, config, inputs):
    out = {"config": dataclasses.asdict(config), "state_dict": dict(model.state_dict()), "inputs": inputs}
    with torch.no_grad():
        out["outputs"] = {name: model(*args) for name, args in inputs.items()}
    return out


def text_inputs(vocab, n):
    ids = torch.randint(0, vocab, (2, n))
    pad = torch.zeros(2, n, dtype=torch.bool)
    pad[1, n - 3 :] = True  # krasserm: True = padding
    return {"plain": (ids,), "padded": (ids, pad)}


enc = dict(vocab_size=29, max_seq_len=12, num_input_channels=16, num_cross_attention_heads=2,
           num_self_attention_heads=2, num_self_attention_layers_per_block=2, init_scale=0.1)
mlm_cases = [
    # tied output, DeepMind-like decoder (no query residual), one block
    (dict(enc), dict(num_cross_attention_heads=2, cross_attention_residual=False), 5, 24),
    # TokenOutputAdapter, 3 cross-attends alternating with 3 unshared blocks, separate qk / v widths, widening
    (dict(enc, num_cross_attention_layers=3, num_self_attention_blocks=3, first_self_attention_block_shared=False,
          num_cross_attention_qk_channels=8, num_cross_attention_v_channels=12, num_self_attention_qk_channels=10,
          num_self_attention_v_channels=6, cross_attention_widening_factor=2, self_attention_widening_factor=3),
     dict(num_output_query_channels=12, num_cross_attention_heads=2, num_cross_attention_qk_channels=8,
          num_cross_attention_v_channels=14, cross_attention_widening_factor=2), 3, 20),
    # tied, one cross-attend then 2 weight-shared blocks, query residual, more decoder queries than positions
    (dict(enc, num_self_attention_blocks=2, cross_attention_widening_factor=3),
     dict(num_cross_attention_heads=1, num_cross_attention_v_channels=8, max_seq_len=14), 4, 18),
]
mlm = []
for i, (e, d, n_lat, c_lat) in enumerate(mlm_cases):
    config = MaskedLanguageModelConfig(
        TextEncoderConfig(**e), TextDecoderConfig(**{"vocab_size": 29, "max_seq_len": 12, **d}), num_latents=n_lat,
        num_latent_channels=c_lat, activation_checkpointing=i == 2,  # fairscale's wrapper: same keys
    )
    model = randomise(MaskedLanguageModel(config))
    mlm.append(record(model, config, text_inputs(29, 9)))
    ids = torch.randint(0, 29, (1, 12))
    mlm[-1]["inputs"]["full"] = (ids,)
    with torch.no_grad():
        mlm[-1]["outputs"]["full"] = model(ids)

clf_cases = [
    # query narrower than the latents (num_output_query_channels), 3 classes
    (dict(enc), dict(num_output_query_channels=20, num_classes=3, num_cross_attention_heads=2), 5, 24),
    # 2 cross-attends with shared blocks, separate widths, no decoder residual
    (dict(enc, num_cross_attention_layers=2, num_self_attention_blocks=2, num_cross_attention_qk_channels=8,
          num_cross_attention_v_channels=16, num_self_attention_qk_channels=8, num_self_attention_v_channels=12),
     dict(num_output_query_channels=16, num_classes=2, num_cross_attention_heads=2, num_cross_attention_qk_channels=12,
          num_cross_attention_v_channels=8, cross_attention_residual=False, cross_attention_widening_factor=2), 3, 16),
]
clf = []
for e, d, n_lat, c_lat in clf_cases:
    config = TextClassifierConfig(
        TextEncoderConfig(**e), ClassificationDecoderConfig(**d), num_latents=n_lat, num_latent_channels=c_lat
    )
    model = randomise(TextClassifier(config))
    clf.append(record(model, config, text_inputs(29, 9)))

img_cases = [
    # DeepMind's layout: 1 cross-attend (qk = input width, 1 head), 3 weight-shared blocks
    (dict(image_shape=(5, 7, 3), num_frequency_bands=3, num_cross_attention_heads=1, num_self_attention_heads=2,
          num_self_attention_layers_per_block=2, num_self_attention_blocks=3, init_scale=0.1),
     dict(num_output_query_channels=16, num_classes=4, num_cross_attention_heads=1), 4, 16),
    # grey images, 2 cross-attends with unshared blocks, explicit widths
    (dict(image_shape=(4, 6, 1), num_frequency_bands=2, num_cross_attention_heads=2, num_cross_attention_qk_channels=8,
          num_cross_attention_v_channels=12, num_self_attention_heads=2, num_self_attention_layers_per_block=1,
          num_cross_attention_layers=2, num_self_attention_blocks=2, first_self_attention_block_shared=False,
          cross_attention_widening_factor=2, init_scale=0.1),
     dict(num_output_query_channels=10, num_classes=3, num_cross_attention_heads=2), 3, 12),
]
img = []
for e, d, n_lat, c_lat in img_cases:
    config = ImageClassifierConfig(
        ImageEncoderConfig(**e), ClassificationDecoderConfig(**d), num_latents=n_lat, num_latent_channels=c_lat
    )
    model = randomise(ImageClassifier(config))
    img.append(record(model, config, {"plain": (torch.randn(2, *e["image_shape"]),)}))

# the optical_flow package's __init__ imports its data module (torchvision): load the backend file alone
import importlib.util, os
path = os.path.join(sys.argv[1], "perceiver", "model", "vision", "optical_flow", "backend.py")
spec = importlib.util.spec_from_file_location("krasserm_flow_backend", path)
flow_backend = importlib.util.module_from_spec(spec)
spec.loader.exec_module(flow_backend)
flow_cases = [
    # DeepMind's layout: unset widths (the inputs' 8 + 2 * 5 = 18), no decoder residual, weight-shared blocks
    (dict(num_cross_attention_heads=2, num_self_attention_blocks=2),
     dict(num_cross_attention_heads=2, cross_attention_residual=False)),
    # qk set, v unset (krasserm's flow: the inputs' width), decoder widths set, residual, another rescale
    (dict(num_cross_attention_heads=2, num_cross_attention_qk_channels=8, num_cross_attention_layers=2,
          num_self_attention_blocks=2, first_self_attention_block_shared=False),
     dict(num_cross_attention_heads=2, num_cross_attention_qk_channels=6, num_cross_attention_v_channels=10,
          rescale_factor=10.0)),
]
flow = []
for e, d in flow_cases:
    config = flow_backend.OpticalFlowConfig(
        flow_backend.OpticalFlowEncoderConfig(image_shape=(4, 5), num_patch_hidden_channels=8, num_frequency_bands=2,
                                              num_self_attention_heads=2, num_self_attention_layers_per_block=2, **e),
        flow_backend.OpticalFlowDecoderConfig(image_shape=(4, 5), **d), num_latents=3, num_latent_channels=12,
    )
    model = randomise(flow_backend.OpticalFlow(config))
    flow.append(record(model, config, {"plain": (torch.randn(2, 2, 27, 4, 5),)}))

torch.save({"mlm": mlm, "clf": clf, "img": img, "flow": flow}, sys.argv[2])
"""


@pytest.fixture(scope="module")
def reference(krasserm_site):
    return run(krasserm_site, SCRIPT, "krasserm_io.pt")


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, scale: float = 1.0) -> None:
    assert ours.shape == theirs.shape
    assert ((ours - theirs) * scale).abs().max().item() <= TOL


def text_call(model, args) -> torch.Tensor:
    """krasserm's `model(ids, pad_mask)` (True = padding) on ours (`attention_mask`, True = token)."""
    mask = None if len(args) == 1 else ~args[1]
    with torch.no_grad():
        return model(args[0], attention_mask=mask).logits


def expected_parameters(case: dict) -> int:
    """krasserm's parameter count (the state dict holds shared blocks once), without its Fourier buffer and the
    decoder queries beyond the encoder's positions (never decoded; dropped by the conversion)."""
    sd = case["state_dict"]
    count = sum(v.numel() for k, v in sd.items() if k != FOURIER_BUFFER)
    dec, enc = case["config"]["decoder"], case["config"]["encoder"]
    if "max_seq_len" in dec and "num_classes" not in dec:
        count -= (dec["max_seq_len"] - enc["max_seq_len"]) * sd["1.output_query_provider._query"].shape[1]
    return count


@pytest.mark.parametrize("case", range(3))
def test_masked_lm_equals_krasserm(reference, case):
    ref = reference["mlm"][case]
    model = masked_lm_from_krasserm(ref["state_dict"], ref["config"])
    for name, args in ref["inputs"].items():  # 9 of 12 positions with and without padding, all 12
        assert_close(text_call(model, args), ref["outputs"][name])
    assert model.num_parameters() == expected_parameters(ref)
    assert (model.output_adapter is None) == (ref["config"]["decoder"]["num_output_query_channels"] is not None)


@pytest.mark.parametrize("case", range(2))
def test_text_classifier_equals_krasserm(reference, case):
    ref = reference["clf"][case]
    model = text_classifier_from_krasserm(ref["state_dict"], ref["config"])
    for name, args in ref["inputs"].items():
        assert_close(text_call(model, args), ref["outputs"][name])
    assert model.num_parameters() == expected_parameters(ref)


@pytest.mark.parametrize("case", range(2))
def test_image_classifier_equals_krasserm(reference, case):
    ref = reference["img"][case]
    model = image_classifier_from_krasserm(ref["state_dict"], ref["config"])
    (x,) = ref["inputs"]["plain"]
    with torch.no_grad():  # krasserm takes (B, H, W, C), ours (B, C, H, W)
        assert_close(model(x.permute(0, 3, 1, 2)).logits, ref["outputs"]["plain"])
    assert model.num_parameters() == expected_parameters(ref)


@pytest.mark.parametrize("case", range(2))
def test_optical_flow_equals_krasserm(reference, case):
    ref = reference["flow"][case]
    rescale = ref["config"]["decoder"]["rescale_factor"]
    (x,) = ref["inputs"]["plain"]
    ours = optical_flow_from_krasserm(ref["state_dict"], ref["config"], flow_scale_factor=1.0)
    pixels = optical_flow_from_krasserm(ref["state_dict"], ref["config"])  # default: x 20, flow in pixels
    with torch.no_grad():  # compared in decoder units (krasserm divides by rescale_factor)
        assert_close(ours(x).logits, ref["outputs"]["plain"], scale=rescale)
        assert_close(pixels(x).logits / 20, ref["outputs"]["plain"], scale=rescale)
    assert ours.num_parameters() == expected_parameters(ref)


HF = {  # reference key -> krasserm's Hugging Face wrapper and model_type
    "mlm": ("PerceiverMaskedLanguageModel", "perceiver-io-masked-language-model"),
    "clf": ("PerceiverTextClassifier", "perceiver-io-text-classifier"),
    "img": ("PerceiverImageClassifier", "perceiver-io-image-classifier"),
    "flow": ("OpticalFlowPerceiver", "perceiver-io-optical-flow"),
}


def write_hf_folder(path, kind: str, ref: dict, weights: str = "safetensors", model_type: str | None = None):
    """A folder as krasserm's `PreTrainedModel.save_pretrained` writes it: the backend under `backend_model.`."""
    path.mkdir()
    arch, default_type = HF[kind]
    config = {"architectures": [arch], "model_type": model_type or default_type, "model_config": ref["config"]}
    (path / "config.json").write_text(json.dumps(config))
    sd = {f"backend_model.{k}": v.contiguous() for k, v in ref["state_dict"].items()}
    if weights == "safetensors":
        save_file(sd, str(path / "model.safetensors"))
    else:
        torch.save(sd, path / "pytorch_model.bin")
    return path


def our_output(kind: str, model, ref: dict) -> torch.Tensor:
    args = ref["inputs"]["padded" if kind in ("mlm", "clf") else "plain"]
    if kind in ("mlm", "clf"):
        return text_call(model, args)
    with torch.no_grad():
        return model(args[0].permute(0, 3, 1, 2) if kind == "img" else args[0]).logits


@pytest.mark.parametrize("kind, case", [("mlm", 1), ("mlm", 2), ("clf", 0), ("img", 1), ("flow", 1)])
def test_from_pretrained_loads_krasserm_hub_folders(reference, tmp_path, kind, case):
    ref = reference[kind][case]
    weights = "bin" if case == 2 else "safetensors"
    folder = write_hf_folder(tmp_path / kind, kind, ref, weights)
    overrides = {"flow_scale_factor": 1.0} if kind == "flow" else {}
    model = perceiver.from_pretrained(folder, **overrides)
    assert not model.training
    rescale = ref["config"]["decoder"].get("rescale_factor", 1.0)
    out = ref["outputs"]["padded" if kind in ("mlm", "clf") else "plain"]
    assert_close(our_output(kind, model, ref), out, scale=rescale)
    # and it saves / loads as one of ours (query widths and the untied output are config fields)
    model.save_pretrained(tmp_path / "ours")
    assert_close(our_output(kind, perceiver.from_pretrained(tmp_path / "ours", **overrides), ref), out, scale=rescale)


def test_lightning_prefix_and_hf_config_dict_are_accepted(reference):
    ref = reference["clf"][0]
    sd = {f"model.{k}": v for k, v in ref["state_dict"].items()}  # LitTextClassifier.state_dict()
    model = text_classifier_from_krasserm(sd, {"model_config": ref["config"]})
    assert_close(text_call(model, ref["inputs"]["padded"]), ref["outputs"]["padded"])


def test_a_wrong_model_type_or_foreign_weights_are_refused(reference, tmp_path):
    ref = reference["clf"][0]
    folder = write_hf_folder(tmp_path / "clf", "clf", ref, model_type="perceiver-io-image-classifier")
    with pytest.raises(ValueError, match="expected model_type 'perceiver-io-text-classifier'"):
        perceiver.from_pretrained(folder)
    sd = dict(ref["state_dict"], **{"0.cross_attn_n.0.module.q_norm.weight": torch.ones(24)})
    with pytest.raises(ValueError, match=r"keys this config does not use \['0.cross_attn_n"):
        text_classifier_from_krasserm(sd, ref["config"])
    config = copy.deepcopy(ref["config"])
    config["num_latents"] = 6  # not the checkpoint's
    with pytest.raises(ValueError, match="shape"):
        text_classifier_from_krasserm(ref["state_dict"], config)


def text_config(**encoder) -> dict:
    """A krasserm TextClassifierConfig dict (its defaults elsewhere)."""
    return {
        "encoder": {"vocab_size": 29, "max_seq_len": 12, "num_input_channels": 16, **encoder},
        "decoder": {"num_output_query_channels": 16, "num_classes": 2},
        "num_latents": 4,
        "num_latent_channels": 16,
    }


@pytest.mark.parametrize(
    "encoder, message",
    [
        (
            dict(num_cross_attention_layers=2, num_self_attention_blocks=3),
            "num_cross_attention_layers=2 with num_self_attention_blocks=3",
        ),
        (
            dict(num_cross_attention_layers=2, num_self_attention_blocks=2, first_cross_attention_layer_shared=True),
            "first_cross_attention_layer_shared=True",
        ),
        (
            dict(num_self_attention_blocks=2, first_self_attention_block_shared=False),
            "first_self_attention_block_shared=False",
        ),
        (dict(num_cross_attention_layers=0), "num_cross_attention_layers >= 1, got 0"),
        (dict(residual_dropout=0.1), r"unknown keys \['residual_dropout'\]"),
    ],
)
def test_layouts_ours_cannot_run_are_refused(encoder, message):
    with pytest.raises(ValueError, match=message):
        text_classifier_from_krasserm({}, text_config(**encoder))


def test_other_unrepresentable_options_are_refused():
    config = text_config()
    config["decoder"]["num_output_queries"] = 2
    with pytest.raises(ValueError, match="num_output_queries=1.*got 2"):
        text_classifier_from_krasserm({}, config)
    mlm = text_config()
    mlm["decoder"] = {"vocab_size": 29, "max_seq_len": 8}
    with pytest.raises(ValueError, match=r"decoder.max_seq_len >= encoder.max_seq_len \(12\).*got 8"):
        masked_lm_from_krasserm({}, mlm)
    mlm["decoder"] = {"vocab_size": 30, "max_seq_len": 12}
    with pytest.raises(ValueError, match=r"decoder.vocab_size = encoder.vocab_size \(29\), got 30"):
        masked_lm_from_krasserm({}, mlm)
    image = {"encoder": {"image_shape": [8, 8, 8, 3]}, "decoder": {}, "num_latents": 4, "num_latent_channels": 16}
    with pytest.raises(ValueError, match="image_shape"):
        image_classifier_from_krasserm({}, image)
    flow = {"encoder": {"num_patch_input_channels": 12}, "decoder": {}, "num_latents": 4, "num_latent_channels": 16}
    with pytest.raises(ValueError, match=r"num_patch_input_channels = 3 \* k \* k.*got 12"):
        optical_flow_from_krasserm({}, flow)
    with pytest.raises(ValueError, match=r"expected the keys \['num_latent_channels'\]"):
        text_classifier_from_krasserm({}, {"encoder": {}, "decoder": {}, "num_latents": 4})


def test_masked_lm_query_and_output_options_are_checked():
    """The two fields krasserm's untied MLM needs: `decoder.output_dim` (an own Linear) and `decoder.query_dim`."""
    from perceiver.adapters.text import TextAdapterConfig
    from perceiver.core.encoder import EncoderConfig
    from perceiver.models.text import PerceiverForMaskedLM, PerceiverMaskedLMConfig, masked_lm_decoder

    def build(**decoder):
        adapter = TextAdapterConfig(vocab_size=29, max_seq_len=12, num_channels=16)
        encoder = EncoderConfig(num_latents=4, latent_dim=16, num_self_attends_per_block=1)
        decoder = masked_lm_decoder(num_heads=2, qk_channels=8, **decoder)
        return PerceiverForMaskedLM(PerceiverMaskedLMConfig(adapter, encoder, decoder))

    with pytest.raises(ValueError, match=r"decoder.query_dim = adapter.num_channels \(16\).*got 12"):
        build(query_dim=12)
    with pytest.raises(ValueError, match=r"decoder.output_dim = vocab_size \(29\) or None.*got 30"):
        build(output_dim=30)
    model = build(query_dim=12, output_dim=29)
    assert model.output_adapter is None and model.decoder.final_layer.in_features == 12
    assert model(torch.randint(0, 29, (2, 7))).logits.shape == (2, 7, 29)
