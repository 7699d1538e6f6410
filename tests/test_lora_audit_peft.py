"""LoRA adapters and peft itself: an adapter folder of ours loads with `peft.PeftModel.from_pretrained`, one saved by
peft's `PeftModel.save_pretrained` loads into ours, and `add_lora` takes peft's `LoraConfig` names."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import perceiver

peft = pytest.importorskip("peft")
from perceiver import lora  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import flat, inputs, perturb_trainable, tiny  # noqa: E402


@pytest.mark.parametrize(("name", "num_classes"), [("vision-perceiver-learned", 3), ("language-perceiver", None)])
def test_peft_loads_our_adapter_folder(name, num_classes, tmp_path):
    """The weights were saved without peft's `base_model.model.` key prefix: `PeftModel.from_pretrained` raised a
    KeyError for a model with a trained head, and for one without it loaded no adapter at all (a warning, then the
    base model's outputs)."""
    torch.manual_seed(0)
    base_dir = tiny(name).save_pretrained(tmp_path / "base")
    kwargs = {} if num_classes is None else dict(num_classes=num_classes, ignore_mismatched_sizes=True)
    model = lora.add_lora(perceiver.from_pretrained(base_dir, **kwargs), r=2)
    perturb_trainable(model)
    x = inputs(name)
    want = flat(model.eval()(*x))
    adapter_dir = lora.save_adapter(model, tmp_path / "adapter", base_model=base_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Found missing adapter keys" was the only sign of the adapter not loading
        peft_model = peft.PeftModel.from_pretrained(perceiver.from_pretrained(base_dir, **kwargs), str(adapter_dir))
    for got, expected in zip(flat(peft_model.eval()(*x)), want, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_an_adapter_saved_by_peft_loads_into_ours(tmp_path):
    """peft writes its keys under `base_model.model.`: `load_adapter` found no head in them (a ValueError saying the
    weights file lacks it) and would have loaded no adapter either. peft saves `inference_mode: true`, which froze the
    adapters: loaded into ours they train further as our own adapters do."""
    torch.manual_seed(0)
    base_dir = tiny("vision-perceiver-learned").save_pretrained(tmp_path / "base")
    config = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj", "fc1"], modules_to_save=["decoder.final_layer"])
    peft_model = peft.get_peft_model(perceiver.from_pretrained(base_dir), config)
    perturb_trainable(peft_model)
    x = inputs("vision-perceiver-learned")
    want = peft_model.eval()(*x).logits
    peft_model.save_pretrained(str(tmp_path / "peft-adapter"))

    ours = lora.load_adapter(perceiver.from_pretrained(base_dir), tmp_path / "peft-adapter").eval()
    trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and all("lora_" in n or "modules_to_save" in n for n in trainable)
    torch.testing.assert_close(ours(*x).logits, want, atol=1e-5, rtol=1e-4)
    loaded = perceiver.from_pretrained(tmp_path / "peft-adapter", base_model=base_dir)  # peft names no base here
    torch.testing.assert_close(loaded(*x).logits, want, atol=1e-5, rtol=1e-4)
    merged = perceiver.from_pretrained(ours.save_pretrained(tmp_path / "merged"))
    torch.testing.assert_close(merged(*x).logits, want, atol=1e-5, rtol=1e-4)


def test_adapters_name_the_folder_the_base_was_loaded_from(tmp_path):
    """`from_pretrained` sets `name_or_path` as transformers does, so peft's adapters and ours record their base
    (peft's `base_model_name_or_path` was None) and load from their folder alone."""
    torch.manual_seed(0)
    base_dir = tiny("vision-perceiver-learned").save_pretrained(tmp_path / "base")
    assert perceiver.from_pretrained(base_dir).name_or_path == str(base_dir)
    peft_model = peft.get_peft_model(perceiver.from_pretrained(base_dir), peft.LoraConfig(r=2, target_modules=["fc1"]))
    perturb_trainable(peft_model)
    x = inputs("vision-perceiver-learned")
    want = peft_model.eval()(*x).logits
    peft_model.save_pretrained(str(tmp_path / "peft-adapter"))
    torch.testing.assert_close(perceiver.from_pretrained(tmp_path / "peft-adapter")(*x).logits, want)
    ours = lora.add_lora(perceiver.from_pretrained(base_dir), r=2)
    perturb_trainable(ours)
    want = ours.eval()(*x).logits
    adapter = lora.save_adapter(ours, tmp_path / "ours")  # no base_model=: the folder it was loaded from
    torch.testing.assert_close(perceiver.from_pretrained(adapter)(*x).logits, want)


def test_an_adapter_saved_without_the_prefix_still_loads(tmp_path):
    """Adapter folders written before the prefix (keys as the model names its modules) load as before."""
    torch.manual_seed(0)
    base_dir = tiny("vision-perceiver-learned").save_pretrained(tmp_path / "base")
    model = lora.add_lora(perceiver.from_pretrained(base_dir), r=2)
    perturb_trainable(model)
    x = inputs("vision-perceiver-learned")
    want = model.eval()(*x).logits
    adapter_dir = lora.save_adapter(model, tmp_path / "adapter", base_model=base_dir)
    weights = load_file(adapter_dir / lora.ADAPTER_WEIGHTS)
    assert all(k.startswith("base_model.model.") for k in weights)  # peft's layout
    save_file({k.removeprefix("base_model.model."): v for k, v in weights.items()}, adapter_dir / lora.ADAPTER_WEIGHTS)
    torch.testing.assert_close(perceiver.from_pretrained(adapter_dir)(*x).logits, want, atol=1e-5, rtol=1e-4)


def test_add_lora_takes_peft_names():
    """`lora_alpha`, `lora_dropout` (peft's names, as in a copied `LoraConfig`) and `modules_to_save` were a TypeError
    "got multiple values for keyword argument"."""
    model = lora.add_lora(tiny("text-classifier"), r=2, lora_alpha=8, lora_dropout=0.1)
    layer = model.get_submodule("encoder.cross_attends.0.attention.q_proj")
    assert layer.scaling["default"] == 4.0 and layer.lora_dropout["default"].p == 0.1
    assert model.peft_config["default"].lora_alpha == 8
    with pytest.raises(ValueError, match=r"expected alpha or peft's lora_alpha .*got alpha=4 and lora_alpha=8"):
        lora.add_lora(tiny("text-classifier"), r=2, alpha=4, lora_alpha=8)
    with pytest.raises(ValueError, match=r"modules_to_save: expected names of .*got 'nope', which matches none"):
        lora.add_lora(tiny("text-classifier"), r=2, modules_to_save=["nope"])


def test_modules_to_save_train_in_full_beside_the_head(tmp_path):
    """A model without a class head (optical flow) keeps its output layer trainable when asked, and both the merged
    folder and the adapter folder bring it back."""
    torch.manual_seed(0)
    name = "optical-flow-perceiver"
    base_dir = tiny(name).save_pretrained(tmp_path / "base")
    model = lora.add_lora(perceiver.from_pretrained(base_dir), r=2, modules_to_save=["final_layer"])
    trained = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trained == {
        "decoder.final_layer.modules_to_save.default.weight",
        "decoder.final_layer.modules_to_save.default.bias",
    }
    perturb_trainable(model)
    x = inputs(name)
    want = model.eval()(*x).logits
    for folder in (model.save_pretrained(tmp_path / "merged"), lora.save_adapter(model, tmp_path / "a", base_dir)):
        torch.testing.assert_close(perceiver.from_pretrained(folder)(*x).logits, want, atol=1e-5, rtol=1e-4)


def test_bias_all_with_a_head_saves_and_loads_the_adapter(tmp_path):
    """peft's `bias="all"` lists a trained head's bias under two names (one tensor): safetensors refused to save
    ("Some tensors share memory"), and the second name did not load back."""
    torch.manual_seed(0)
    base_dir = tiny("vision-perceiver-learned").save_pretrained(tmp_path / "base")
    model = lora.add_lora(perceiver.from_pretrained(base_dir), r=2, bias="all")
    perturb_trainable(model)
    x = inputs("vision-perceiver-learned")
    want = model.eval()(*x).logits
    adapter_dir = lora.save_adapter(model, tmp_path / "adapter", base_model=base_dir)
    torch.testing.assert_close(perceiver.from_pretrained(adapter_dir)(*x).logits, want, atol=1e-5, rtol=1e-4)
