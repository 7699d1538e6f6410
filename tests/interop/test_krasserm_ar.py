"""krasserm perceiver-io's Perceiver AR (`CausalSequenceModel`) loads into our `PerceiverAR` with equal logits.

The reference is the real wheel from PyPI (`tests/krasserm_peer.py`), run in a subprocess: odd configs covering its
options (rotary in the first k self-attention layers or all, absolute positions on / off, output norm and bias,
different widening factors), fewer latents than configured, left padding within the prefix, prefix dropout in
training with the same random draws, the base class of its symbolic audio model (`SymbolicAudioModel` adds nothing to
`CausalSequenceModel`; its module imports pretty_midi), and its Hub folder layout.
"""

from __future__ import annotations

import json

import pytest
import torch
from krasserm_peer import run
from safetensors.torch import save_file

import perceiver
from perceiver import PerceiverAR
from perceiver.interop.krasserm import config_from_krasserm, convert_state_dict, from_krasserm

SCRIPT = """
import dataclasses
from perceiver.model.text.clm.backend import CausalLanguageModel, CausalLanguageModelConfig
from perceiver.model.core import CausalSequenceModel, CausalSequenceModelConfig  # the symbolic audio model's class

torch.manual_seed(0)
base = dict(vocab_size=37, max_seq_len=24, max_latents=8, num_channels=32, num_heads=4, num_self_attention_layers=3)
cases = [
    (CausalLanguageModel, CausalLanguageModelConfig, base),
    (CausalLanguageModel, CausalLanguageModelConfig, dict(base, abs_pos_emb=False, num_self_attention_rotary_layers=-1,
        output_norm=True, output_bias=False, self_attention_widening_factor=2, cross_attention_widening_factor=3)),
    (CausalLanguageModel, CausalLanguageModelConfig, dict(base, num_channels=24, num_heads=2,
        num_self_attention_rotary_layers=2, output_norm=True, cross_attention_dropout=0.25)),
    (CausalSequenceModel, CausalSequenceModelConfig, dict(base, vocab_size=53, num_self_attention_layers=2)),
]
ids = torch.randint(0, 37, (2, 20))
pad_mask = torch.zeros(2, 20, dtype=torch.bool)
pad_mask[1, :5] = True  # left padding, within the prefix (krasserm's latent self-attention does not mask padding)
out = {"ids": ids, "pad_mask": pad_mask, "cases": []}
for model_cls, config_cls, kwargs in cases:
    model = model_cls(config_cls(**kwargs)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
        if getattr(model.output_adapter, "bias", None) is not None:
            model.output_adapter.bias.normal_(0.0, 0.5)
        x = ids % kwargs["vocab_size"]
        logits = model(x, prefix_len=12).logits
        fewer = model(x[:, :15], prefix_len=10).logits
        padded = model(x, prefix_len=12, pad_mask=pad_mask).logits
        model.train()
        torch.manual_seed(5)
        dropped = model(x, prefix_len=12).logits
        model.eval()
    out["cases"].append((dataclasses.asdict(model.config), model.state_dict(), logits, fewer, padded, dropped))
torch.save(out, sys.argv[2])
"""


@pytest.fixture(scope="module")
def reference(krasserm_site):
    return run(krasserm_site, SCRIPT, "ar.pt")


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= 1e-5


def test_logits_equal_krasserm(reference):
    ids, pad_mask = reference["ids"], reference["pad_mask"]
    for config, state_dict, logits, fewer, padded, dropped in reference["cases"]:
        ours = PerceiverAR.from_krasserm(state_dict, config)
        x = ids % config["vocab_size"]
        with torch.no_grad():
            assert close(ours(x, num_latents=8).logits, logits), config
            assert close(ours(x[:, :15], num_latents=5).logits, fewer), config
            assert close(ours(x, attention_mask=~pad_mask, num_latents=8).logits, padded), config
            ours.train()
            torch.manual_seed(5)
            assert close(ours(x, num_latents=8).logits, dropped), config


def test_options_map_to_ours(reference):
    first, second = reference["cases"][0][0], reference["cases"][1][0]
    c = config_from_krasserm(first)
    assert (c.rotary_layers, c.rotary_dim, c.rotary_interleaved, c.abs_pos_emb) == (1, 4, True, True)
    assert (c.tie_embeddings, c.logits_bias, c.final_norm, c.num_latents) == (True, True, False, 8)
    c = config_from_krasserm(second)
    assert (c.rotary_layers, c.rotary_dim, c.abs_pos_emb, c.logits_bias, c.final_norm) == (None, 8, False, False, True)
    assert (c.ff_mult, c.cross_ff_mult) == (2.0, 3.0)


def test_hub_folder_loads_with_from_pretrained(reference, tmp_path):
    config, state_dict, logits, *_ = reference["cases"][0]
    weights = {f"backend_model.{k}": v.contiguous() for k, v in state_dict.items()}
    save_file(weights, str(tmp_path / "model.safetensors"))
    hub_config = {
        "architectures": ["PerceiverCausalLanguageModel"],
        "model_type": "perceiver-ar-causal-language-model",
        "model_config": config,
        "is_decoder": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(hub_config))
    ours = perceiver.from_pretrained(tmp_path)
    assert isinstance(ours, PerceiverAR) and not ours.training
    with torch.no_grad():
        assert close(ours(reference["ids"] % config["vocab_size"], num_latents=8).logits, logits)
    # saved in our format, it loads back as a plain PerceiverAR folder
    ours.save_pretrained(tmp_path / "ours")
    again = perceiver.from_pretrained(tmp_path / "ours")
    with torch.no_grad():
        assert close(again(reference["ids"] % config["vocab_size"], num_latents=8).logits, logits)


def test_lightning_prefix_and_module_forms(reference):
    config, state_dict, logits, *_ = reference["cases"][1]
    ours = from_krasserm({f"model.{k}": v for k, v in state_dict.items()}, config)
    with torch.no_grad():
        assert close(ours(reference["ids"] % config["vocab_size"], num_latents=8).logits, logits)


def test_bad_inputs(reference):
    config, state_dict, *_ = reference["cases"][0]
    with pytest.raises(ValueError, match=r"unknown \['num_latents'\]"):
        config_from_krasserm({**config, "num_latents": 4})
    with pytest.raises(ValueError, match="expected krasserm's model config"):
        from_krasserm(state_dict)
    broken = {k: v for k, v in state_dict.items() if k != "self_attention.1.0.module.attention.v_proj.weight"}
    with pytest.raises(ValueError, match=r"layers.1.to_qkv.weight, missing \['v_proj'\]"):
        convert_state_dict(broken)
    with pytest.raises(ValueError, match="unexpected krasserm CausalSequenceModel key 'extra.weight'"):
        convert_state_dict({**state_dict, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="state_dict does not match the config"):
        from_krasserm(state_dict, {**config, "num_self_attention_layers": 4})
    with pytest.raises(ValueError, match="expected 'model_config'"):
        perceiver.pretrained.HF_CONVERTERS["PerceiverCausalLanguageModel"]({"architectures": ["X"]}, state_dict)
    with pytest.warns(UserWarning, match="residual_dropout=0.1"):
        assert config_from_krasserm({**config, "residual_dropout": 0.1}).dropout == 0.0
