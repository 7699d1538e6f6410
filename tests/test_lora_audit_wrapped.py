"""LoRA on a `torch.compile(model)`: the adapters go into the model inside the wrapper and are saved under its own
keys, so the adapter folder loads on a plain base (it was written under `_orig_mod.` keys, and the folder's own
`from_pretrained` failed with "adapter_model.safetensors lacks 'decoder.final_layer.weight'")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import perceiver

pytest.importorskip("peft")
from perceiver import lora  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import inputs, perturb_trainable, tiny  # noqa: E402


def test_adapters_of_a_compiled_model_save_under_the_models_keys(tmp_path):
    torch.manual_seed(0)
    base_dir = tiny("vision-perceiver-learned").save_pretrained(tmp_path / "base")
    model = perceiver.from_pretrained(base_dir)
    compiled = torch.compile(model)  # compiled before the adapters are added (compilation itself happens at a call)
    assert lora.add_lora(compiled, r=2) is compiled
    assert lora.has_lora(model) and model.peft_config["default"].r == 2  # on the model itself
    perturb_trainable(model)
    x = inputs("vision-perceiver-learned")
    want = model.eval()(*x).logits

    adapter_dir = lora.save_adapter(compiled, tmp_path / "adapter", base_model=base_dir)
    assert not any("_orig_mod" in k for k in load_file(adapter_dir / lora.ADAPTER_WEIGHTS))
    torch.testing.assert_close(perceiver.from_pretrained(adapter_dir)(*x).logits, want, atol=1e-5, rtol=1e-4)
    assert set(lora.merged_state_dict(compiled)) == set(perceiver.from_pretrained(base_dir).state_dict())

    target = perceiver.from_pretrained(base_dir)
    assert lora.load_adapter(torch.compile(target), adapter_dir) is not target and lora.has_lora(target)
    torch.testing.assert_close(target.eval()(*x).logits, want, atol=1e-5, rtol=1e-4)
    lora.merge_lora(torch.compile(target))
    assert not lora.has_lora(target)
    torch.testing.assert_close(target(*x).logits, want, atol=1e-5, rtol=1e-4)
