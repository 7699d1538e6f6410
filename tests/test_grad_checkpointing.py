"""Activation (gradient) checkpointing on every model: `set_grad_checkpointing()` / transformers'
`gradient_checkpointing_enable()` give the same gradients, keep less for the backward pass, leave evaluation and
cached generation alone, compile whole, and bad arguments are clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import perceiver
from perceiver.models.lucidrains_io import LucidrainsPerceiverLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import TINY, flat, inputs, tiny  # noqa: E402


def loss_of(output) -> torch.Tensor:
    return sum(t.float().square().mean() for t in flat(output))


def gradients(model: torch.nn.Module, x: tuple) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks in both runs
    loss_of(model(*x)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def saved_bytes(model: torch.nn.Module, x: tuple) -> int:
    """Bytes the autograd graph keeps for the backward pass (tensors saved outside checkpointed regions)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_of(model(*x))
    return total


@pytest.mark.parametrize("name", sorted(TINY))
def test_same_gradients_and_less_kept(name):
    torch.manual_seed(0)
    model = tiny(name, **({"prefix_dropout": 0.25, "dropout": 0.1} if "perceiver-ar" in name else {})).train()
    x = inputs(name)
    assert not model.is_gradient_checkpointing
    plain, plain_bytes = gradients(model, x), saved_bytes(model, x)
    model.set_grad_checkpointing()
    assert model.is_gradient_checkpointing
    got, got_bytes = gradients(model, x), saved_bytes(model, x)
    assert got.keys() == plain.keys() and got
    for n in plain:  # dropout included: the recomputation draws the same masks
        torch.testing.assert_close(got[n], plain[n], atol=1e-5, rtol=1e-4, msg=n)
    assert got_bytes < plain_bytes
    model.eval()  # evaluation and no_grad forwards are unaffected
    with torch.no_grad():
        off = flat(model(*x))
        model.set_grad_checkpointing(False)
        for a, b in zip(flat(model(*x)), off, strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("name", "overrides", "x"),
    [
        ("perceiver-ar", dict(max_seq_len=256, num_latents=64, d_model=64, num_heads=4, num_layers=4),
         (torch.randint(0, 262, (2, 256)),)),
        ("perceiver-resampler", dict(dim=64, depth=4, num_latents=16, num_heads=4, head_dim=16),
         (torch.randn(2, 1, 128, 64),)),
    ],
)  # fmt: skip
def test_long_inputs_keep_a_fraction(name, overrides, x):
    """Where the per-layer activations dominate (a long window, many media tokens), checkpointing keeps a fraction."""
    model = perceiver.create_model(name, **overrides).train()
    plain = saved_bytes(model, x)
    model.gradient_checkpointing_enable()
    assert saved_bytes(model, x) < plain / 4


def test_ar_generation_unaffected():
    """The KV-cache path never checkpoints: generation with the flag on equals generation with it off, and a
    training-mode forward with gradients that fills a cache writes it."""
    torch.manual_seed(0)
    model = tiny("perceiver-ar")
    (prompt,) = inputs("perceiver-ar", 2, size=6)
    want = model.generate(prompt, max_new_tokens=5)
    model.set_grad_checkpointing()
    torch.testing.assert_close(model.generate(prompt, max_new_tokens=5), want, atol=0, rtol=0)
    model.train()
    cache = model.init_cache(2)
    model(prompt, cache=cache)
    assert cache.prefilled and cache.cross_k[0].abs().sum() > 0


@pytest.mark.parametrize("name", ["perceiver-ar", "perceiver-resampler", "vision-perceiver-learned"])
def test_checkpointed_training_step_compiles_whole(name):
    torch._dynamo.reset()
    model = tiny(name).train()
    model.set_grad_checkpointing()
    x = inputs(name)
    want = gradients(model, x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    loss_of(compiled(*x)).backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=1e-5, rtol=1e-4, msg=n)
    torch._dynamo.reset()


def test_lucidrains_lm():
    torch.manual_seed(0)
    model = LucidrainsPerceiverLM(
        num_tokens=50, dim=16, depth=2, max_seq_len=12, num_latents=4, latent_dim=16, latent_heads=2,
        latent_dim_head=8, cross_dim_head=8,
    ).train()  # fmt: skip
    x = (torch.randint(0, 50, (2, 12)),)
    plain, plain_bytes = gradients(model, x), saved_bytes(model, x)
    model.set_grad_checkpointing()
    assert model.is_gradient_checkpointing and saved_bytes(model, x) < plain_bytes
    got = gradients(model, x)
    for n in plain:
        torch.testing.assert_close(got[n], plain[n], atol=1e-5, rtol=1e-4, msg=n)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


def test_bad_arguments():
    model = tiny("perceiver")
    with pytest.raises(ValueError, match=r"enable must be True or False, got 'yes'"):
        model.set_grad_checkpointing("yes")
    with pytest.raises(ValueError, match=r"at most \{'use_reentrant': False\}.*got \{'use_reentrant': True\}"):
        model.gradient_checkpointing_enable({"use_reentrant": True})
    with pytest.raises(ValueError, match=r"got \{'preserve_rng_state': False\}"):
        model.gradient_checkpointing_enable({"preserve_rng_state": False})
    assert not model.is_gradient_checkpointing  # nothing half-applied
    model.gradient_checkpointing_enable({"use_reentrant": False})
    assert model.is_gradient_checkpointing


@pytest.mark.parametrize("name", ["perceiver-ar", "text-classifier"])
def test_with_lora_adapters(name):
    """LoRA on frozen weights (peft) inside checkpointed layers: the adapters get the same gradients (non-reentrant
    checkpointing needs no `enable_input_require_grads`)."""
    pytest.importorskip("peft")
    from perceiver.lora import add_lora

    torch.manual_seed(0)
    model = add_lora(tiny(name), r=2).train()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()  # B = 0 at the start would give A no gradient
    x = inputs(name)
    plain = gradients(model, x)
    assert any("lora_A" in n for n in plain)
    model.set_grad_checkpointing()
    got = gradients(model, x)
    assert got.keys() == plain.keys()
    for n in plain:
        torch.testing.assert_close(got[n], plain[n], atol=1e-5, rtol=1e-4, msg=n)


def test_the_training_task_turns_it_on():
    from perceiver.training.tasks import PerceiverTask

    kwargs = dict(model="perceiver-ar", model_kwargs=TINY["perceiver-ar"][0])
    assert not PerceiverTask(**kwargs).model.is_gradient_checkpointing
    assert PerceiverTask(**kwargs, grad_checkpointing=True).model.is_gradient_checkpointing
