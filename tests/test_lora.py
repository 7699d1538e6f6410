"""LoRA fine-tuning (`perceiver.lora`, peft): adapters in place, only they and the head train, the merged model
folder and the adapter folder give the adapted model's outputs, bad arguments are clear errors."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import perceiver
from perceiver import lora

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import TINY, flat, inputs, perturb_trainable, tiny  # noqa: E402


def _perturb(model: torch.nn.Module) -> None:
    perturb_trainable(model, scale=0.2)


NAMES = [n for n in TINY if n != "multimodal-perceiver"]  # every preset; multimodal below


@pytest.mark.parametrize("name", [*NAMES, "multimodal-perceiver"])
def test_adapted_model_saves_merged_and_as_adapter(name, tmp_path):
    torch.manual_seed(0)
    base = tiny(name)
    base_dir = base.save_pretrained(tmp_path / "base")
    model = perceiver.from_pretrained(base_dir)
    x = inputs(name)
    before = flat(model(*x))
    lora.add_lora(model, r=2, target_modules=r".*(q_proj|v_proj|fc2|to_q|to_kv|to_qkv)$")
    assert type(model) is type(base) and lora.has_lora(model)
    for a, b in zip(flat(model(*x)), before, strict=True):  # B starts at zero: the same function
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)  # unfolded k / v: other rounding
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    _perturb(model)
    want = flat(model.eval()(*x))
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(want, before, strict=True))

    merged_dir = model.save_pretrained(tmp_path / "merged")
    assert set(load_file(merged_dir / "model.safetensors")) <= set(base.state_dict())  # the plain model's keys
    adapter_dir = lora.save_adapter(model, tmp_path / "adapter", base_model=base_dir)
    for folder in (merged_dir, adapter_dir):
        loaded = perceiver.from_pretrained(folder)
        for a, b in zip(flat(loaded(*x)), want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert lora.has_lora(perceiver.from_pretrained(adapter_dir))
    assert not lora.has_lora(perceiver.from_pretrained(merged_dir))
    plain = lora.merge_lora(copy.deepcopy(model))
    assert not lora.has_lora(plain) and type(plain) is type(base)
    for a, b in zip(flat(plain(*x)), want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_new_head_trains_in_full_and_the_adapter_remembers_its_size(tmp_path):
    torch.manual_seed(0)
    base_dir = tiny("vision-perceiver-learned").save_pretrained(tmp_path / "base")  # 5 classes
    model = perceiver.from_pretrained(base_dir, num_classes=3, ignore_mismatched_sizes=True)
    lora.add_lora(model)
    head = {n for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n}
    assert {n.rsplit(".", 1)[-1] for n in head} == {"weight", "bias"}
    _perturb(model)
    x = inputs("vision-perceiver-learned")
    want = model.eval()(*x).logits
    assert want.shape == (2, 3)
    adapter_dir = lora.save_adapter(model, tmp_path / "adapter", base_model=base_dir)
    info = json.loads((adapter_dir / "perceiver_adapter.json").read_text())
    assert info == {"num_classes": 3, "model_type": "perceiver-image-classifier"}
    loaded = perceiver.from_pretrained(adapter_dir)
    torch.testing.assert_close(loaded(*x).logits, want, atol=1e-5, rtol=1e-4)
    weights = sum(t.numel() for t in load_file(adapter_dir / "adapter_model.safetensors").values())
    assert weights < 0.05 * sum(p.numel() for p in perceiver.from_pretrained(base_dir).parameters())


def test_training_moves_only_the_adapters_and_the_head():
    torch.manual_seed(0)
    model = tiny("language-perceiver")
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    lora.add_lora(model, r=4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    ids = inputs("language-perceiver")[0]
    model.train()
    losses = []
    for _ in range(30):  # the adapters alone fit a batch: the model learns through them
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(ids).logits.flatten(0, 1), ids.flatten())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses  # everything else is frozen
    state = model.state_dict()
    for key, value in frozen.items():
        stored = (
            key if key in state else key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        )
        assert torch.equal(state[stored], value), key
    assert any(not torch.equal(state[k], torch.zeros_like(state[k])) for k in state if "lora_B" in k)


def test_bad_arguments_are_clear_errors(tmp_path):
    model = tiny("vision-perceiver-learned")
    with pytest.raises(ValueError, match=r"rank r must be an integer >= 1, got 0"):
        lora.add_lora(model, r=0)
    with pytest.raises(ValueError, match=r"Linear layers are named \[.*'q_proj'"):
        lora.add_lora(model, target_modules=["query"])
    with pytest.raises(ValueError, match="has no LoRA adapters to save"):
        lora.save_adapter(model, tmp_path / "a")
    lora.add_lora(model)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        lora.add_lora(model)
    folder = lora.save_adapter(model, tmp_path / "adapter")  # no base model recorded
    with pytest.raises(ValueError, match="names no base model"):
        perceiver.from_pretrained(folder)
    other = tiny("vision-perceiver-fourier").save_pretrained(tmp_path / "other")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": str(other)}))
    with pytest.raises(ValueError, match="the adapter does not fit"):
        perceiver.from_pretrained(folder)
    target = perceiver.from_pretrained(other)
    state = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(
        ValueError, match="the adapter does not fit this PerceiverForImageClassification: size mismatch"
    ):
        lora.load_adapter(target, folder)
    assert not lora.has_lora(target) and all(torch.equal(v, state[k]) for k, v in target.state_dict().items())
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written folders left


def test_an_adapter_folder_loads_with_num_labels(tmp_path):
    """transformers' `num_labels` names the adapter's class count as `num_classes` does (it was refused as
    "not both" because the adapter's count was added beside it)."""
    base_dir = tiny("vision-perceiver-learned").save_pretrained(tmp_path / "base")  # 5 classes
    model = perceiver.from_pretrained(base_dir, num_classes=3, ignore_mismatched_sizes=True)
    adapter_dir = lora.save_adapter(lora.add_lora(model, r=2), tmp_path / "adapter", base_model=base_dir)
    assert perceiver.from_pretrained(adapter_dir, num_labels=3).num_classes == 3
    with pytest.raises(ValueError, match="not both"):
        perceiver.from_pretrained(adapter_dir, num_labels=3, num_classes=3)


def test_reset_classifier_of_an_adapted_model_is_refused(tmp_path):
    """peft trains and saves its copy of the head: a head reset after `add_lora` replaced that copy by a plain
    Linear that `save_adapter` then left out, and the adapter folder did not load (a KeyError)."""
    model = lora.add_lora(tiny("vision-perceiver-learned"), r=2)
    with pytest.raises(ValueError, match="expected reset_classifier before add_lora"):
        model.reset_classifier(4)
    assert model.num_classes == 5 and lora.has_lora(model)
    lora.merge_lora(model).reset_classifier(4)  # a plain model again
    assert model(*inputs("vision-perceiver-learned")).logits.shape == (2, 4)


def test_an_adapter_without_its_head_weights_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    base_dir = tiny("vision-perceiver-learned").save_pretrained(tmp_path / "base")
    adapter_dir = lora.save_adapter(lora.add_lora(perceiver.from_pretrained(base_dir), r=2), tmp_path / "adapter")
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    save_file({k: v for k, v in weights.items() if "lora_" in k}, adapter_dir / "adapter_model.safetensors")
    target = perceiver.from_pretrained(base_dir)
    with pytest.raises(ValueError, match="the adapter does not fit .*adapter_model.safetensors lacks"):
        lora.load_adapter(target, adapter_dir)
    assert not lora.has_lora(target)  # nothing half-applied


def test_an_adapter_folder_exports_to_onnx_and_to_transformers(tmp_path, capsys):
    """`perceiver export` of an adapter folder exports the merged weights; `to_transformers` of an adapted model
    converts its merged weights and leaves its adapters in place."""
    import onnxruntime
    import transformers

    from perceiver.interop.to_transformers import to_transformers
    from perceiver.training.cli import main

    torch.manual_seed(0)
    small = dict(num_latents=6, latent_dim=32, num_self_attends_per_block=2, latent_heads=4, num_classes=5)
    base = perceiver.create_model("vision-perceiver-learned", image_size=[16, 16], **small)
    base.save_pretrained(tmp_path / "base")
    model = perceiver.from_pretrained(tmp_path / "base")
    lora.add_lora(model, r=2)
    _perturb(model)
    adapter = lora.save_adapter(model, tmp_path / "adapter", base_model=tmp_path / "base")
    x = torch.randn(2, 3, 16, 16)
    want = model.eval()(x).logits

    hf = to_transformers(model)
    assert lora.has_lora(model)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, want, atol=1e-4, rtol=1e-4)
    main(["export", str(adapter), str(tmp_path / "hf-tuned"), "--transformers"])
    tuned = transformers.PerceiverForImageClassificationLearned.from_pretrained(tmp_path / "hf-tuned").eval()
    with torch.no_grad():
        torch.testing.assert_close(tuned(pixel_values=x).logits, want, atol=1e-4, rtol=1e-4)
    main(["export", str(adapter), str(tmp_path / "tuned.onnx")])
    session = onnxruntime.InferenceSession(str(tmp_path / "tuned.onnx"))
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)
    capsys.readouterr()


def test_adapted_perceiver_ar_generates_as_its_merged_weights_with_and_without_cache():
    torch.manual_seed(0)
    model = lora.add_lora(tiny("perceiver-ar"), r=2)
    _perturb(model)
    merged = lora.merge_lora(copy.deepcopy(model))
    prompt = torch.randint(0, 262, (2, 8), generator=torch.Generator().manual_seed(1))
    cached = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=True)  # the window slides (16)
    assert torch.equal(cached, model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=False))
    assert torch.equal(cached, merged.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=True))


@pytest.mark.parametrize("name", ["vision-perceiver-learned", "language-perceiver"])
def test_adapted_models_compile_whole(name):
    torch.manual_seed(0)
    model = lora.add_lora(tiny(name), r=2)
    _perturb(model)
    x = inputs(name)
    assert torch._dynamo.explain(model)(*x).graph_break_count == 0
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(*x).logits, model(*x).logits, atol=1e-5, rtol=1e-4)


def test_cli_consumers_of_an_adapter_folder_run_its_merged_weights(tmp_path, capsys):
    """`perceiver generate` / `predict` load an adapter folder and merge it: the outputs of the adapted model, without
    the adapter matmuls at every step."""
    from perceiver.training.cli import main
    from perceiver.training.predict import load_model_dir

    torch.manual_seed(0)
    base = perceiver.create_model("perceiver-ar", **TINY["perceiver-ar"][0])
    base.save_pretrained(tmp_path / "base")
    model = lora.add_lora(perceiver.from_pretrained(tmp_path / "base"), r=2)
    _perturb(model)
    adapter = lora.save_adapter(model, tmp_path / "adapter", base_model=tmp_path / "base")
    loaded, _ = load_model_dir(adapter)
    assert not lora.has_lora(loaded)
    ids = torch.tensor([list(b"abcdefgh")]) + 6  # byte ids (6 special tokens first)
    torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits, atol=1e-5, rtol=1e-4)
    capsys.readouterr()
    main(["generate", str(adapter), "--prompt", "abcdefgh", "--max-new-tokens", "5", "--greedy"])
    new = model.generate(ids, max_new_tokens=5, do_sample=False)[0, 8:] - 6
    expected = "abcdefgh" + bytes(new.clamp(0, 255).tolist()).decode("utf-8", "replace")
    assert capsys.readouterr().out == expected + "\n"  # the prompt, then the adapted model's greedy bytes


@pytest.mark.parametrize("existing", [False, True])
def test_an_adapter_save_that_fails_midway_leaves_the_old_files_or_none(tmp_path, disk_full_at, existing):
    """The files were moved in one by one: a failure after adapter_config.json had moved left a new folder with the
    config alone, or an existing one with the new config beside the old weights."""
    model = tiny("vision-perceiver-learned")
    lora.add_lora(model)
    target = tmp_path / "adapter"
    if existing:
        lora.save_adapter(model, target)
        before = {p.name: p.read_bytes() for p in target.iterdir()}
        _perturb(model)
    disk_full_at("adapter_model.safetensors")
    if existing:
        with pytest.raises(OSError, match="No space left"):
            lora.save_adapter(model, target)
        assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    else:  # a new folder is the temporary one renamed whole
        lora.save_adapter(model, target)
        assert sorted(p.name for p in target.iterdir()) == sorted(
            [lora.ADAPTER_CONFIG, lora.ADAPTER_WEIGHTS, lora.ADAPTER_INFO]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_classifier_started_from_a_masked_lm_trains_and_saves_its_new_decoder(tmp_path):
    """A text classifier drawn on a masked LM's encoder has a new decoder and query, not only a new final layer: they
    train in full and go into the adapter (before, they stayed random and frozen, and the adapter folder could not
    even be loaded: its base, the masked LM, has no class head)."""
    from perceiver.models import PerceiverForSequenceClassification

    torch.manual_seed(0)
    mlm_dir = tiny("language-perceiver").save_pretrained(tmp_path / "mlm")
    model = PerceiverForSequenceClassification.from_pretrained(mlm_dir, num_labels=3)
    lora.add_lora(model, r=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("decoder.modules_to_save.") and "cross_attention" in n for n in trainable)
    assert any(n.startswith("query_builder.modules_to_save.") for n in trainable)
    assert not any(n.startswith("decoder.") and "lora_" in n for n in trainable)  # no adapter inside them
    assert any(n.startswith("encoder.") and "lora_" in n for n in trainable)
    _perturb(model)
    ids = torch.randint(0, 262, (2, 8))
    want = model.eval()(ids).logits
    adapter_dir = lora.save_adapter(model, tmp_path / "adapter", base_model=mlm_dir)
    loaded = perceiver.from_pretrained(adapter_dir)
    assert type(loaded) is PerceiverForSequenceClassification and loaded.num_classes == 3
    torch.testing.assert_close(loaded(ids).logits, want, atol=1e-5, rtol=1e-4)


def test_importing_peft_through_lora_prints_no_third_party_noise():
    """peft pulls in torchao, whose import warned about CUDA extensions a CPU cannot load and about its enum
    registrations (torch 2.13): lines a user can do nothing about, before every LoRA run's output."""
    code = "import perceiver.lora as lora; lora._peft()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Failed to load" not in result.stderr and "Enum subclass" not in result.stderr
