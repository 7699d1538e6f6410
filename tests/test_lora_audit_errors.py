"""An adapter on the wrong base model names the base it expects (and how to load it at its class count); a base
folder gone since the adapter was saved is named as the adapter's; saving a model whose adapters a user merged in
place (peft's `merge()`) warns about nothing."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

import perceiver

pytest.importorskip("peft")
from perceiver import lora  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import inputs, tiny  # noqa: E402


@pytest.fixture
def adapter(tmp_path):
    """A 3-class adapter on a 5-class tiny image classifier; returns (base folder, adapter folder)."""
    base_dir = tiny("vision-perceiver-learned").save_pretrained(tmp_path / "base")
    model = perceiver.from_pretrained(base_dir, num_classes=3, ignore_mismatched_sizes=True)
    return base_dir, lora.save_adapter(lora.add_lora(model, r=2), tmp_path / "adapter", base_model=base_dir)


def test_an_adapter_on_a_base_of_another_class_count_says_how_to_load_it(adapter):
    base_dir, adapter_dir = adapter
    with pytest.raises(ValueError) as error:
        lora.load_adapter(perceiver.from_pretrained(base_dir), adapter_dir)
    message = str(error.value)
    assert "the adapter does not fit this PerceiverForImageClassification: size mismatch" in message
    assert f"expected its base model '{base_dir}' (perceiver-image-classifier, a head of 3 classes)" in message
    assert "got a model with 5 classes: load the base with num_classes=3, ignore_mismatched_sizes=True" in message
    loaded = lora.load_adapter(
        perceiver.from_pretrained(base_dir, num_classes=3, ignore_mismatched_sizes=True), adapter_dir
    )
    assert lora.has_lora(loaded)


def test_an_adapter_on_another_kind_of_model_names_both(adapter):
    _, adapter_dir = adapter
    with pytest.raises(
        ValueError, match=r"does not fit this PerceiverAR: .*perceiver-image-classifier.*got a perceiver-ar$"
    ):
        lora.load_adapter(tiny("perceiver-ar"), adapter_dir)
    with pytest.raises(ValueError, match=r"expected its base model '.*base' \(perceiver-image-classifier, a head of 3"):
        lora.load_adapter(tiny("vision-perceiver-learned", latent_dim=32, num_labels=3), adapter_dir)


def test_a_missing_base_folder_is_named_as_the_adapters(adapter, tmp_path):
    _, adapter_dir = adapter
    config = json.loads((adapter_dir / lora.ADAPTER_CONFIG).read_text())
    gone = tmp_path / "moved"
    (adapter_dir / lora.ADAPTER_CONFIG).write_text(json.dumps(config | {"base_model_name_or_path": str(gone)}))
    with pytest.raises(
        FileNotFoundError, match=r"adapter_config.json names the base model '.*moved', which did not load "
    ):
        perceiver.from_pretrained(adapter_dir)


def test_saving_after_merging_in_place_warns_about_nothing(tmp_path):
    """`save_pretrained` merged every LoRA layer again on its copy: peft warned "All adapters are already merged" once
    for a model whose layers were merged (for faster inference) with peft's `merge()`."""
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(0)
    model = lora.add_lora(tiny("vision-perceiver-learned"), r=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    x = inputs("vision-perceiver-learned")
    want = model(*x).logits
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folder = model.save_pretrained(tmp_path / "merged")
    torch.testing.assert_close(perceiver.from_pretrained(folder)(*x).logits, want, atol=1e-5, rtol=1e-4)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.unmerge()
    torch.testing.assert_close(model(*x).logits, want, atol=1e-5, rtol=1e-4)
