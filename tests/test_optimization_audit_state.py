"""`perceiver.optimize` used as a user would after it returns: what it leaves behind (the RNG, gradients, buffers),
the returned model's state dict, and a twin candidate (`matmul-attention`, `onednn-linear`) that keeps up with the
model it shares its parameters with (its train / eval mode, a new classifier head, replaced weights)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import inputs, tiny

import perceiver
import perceiver.optimization as opt
from perceiver.optimization import compile_frozen


def measured_fastest(monkeypatch: pytest.MonkeyPatch, chosen: str) -> None:
    """Make `optimize` measure `chosen` as the fastest candidate: a clock that only the candidates' calls advance
    (1 s per call of `chosen`, 10 s of any other), so that no test depends on this machine's speed."""
    clock = [0.0]
    real = opt._build

    def build(name, *args):
        fn, contexts = real(name, *args)

        def timed():
            clock[0] += 1.0 if name == chosen else 10.0
            return contexts()

        return fn, timed

    monkeypatch.setattr(opt, "_build", build)
    monkeypatch.setattr(opt.time, "perf_counter", lambda: clock[0])


def test_eager_is_the_reference_whatever_order_the_candidates_are_given_in(monkeypatch):
    """`candidates=["compile", "eager"]` checked `compile` before eager had run: every candidate but eager was
    skipped as "outputs differ from eager (max rel. error inf)"."""
    monkeypatch.setattr(torch, "compile", lambda m, **kw: m)  # no real compilation needed to test the order
    model, x = tiny("perceiver"), inputs("perceiver")
    report = perceiver.optimize(model, x, candidates=["compile", "eager"], warmup=1, repeats=1, verbose=False).report
    assert set(report.seconds) == {"eager", "compile"}, report.skipped
    assert report.max_rel_error["compile"] == 0.0


def test_a_model_that_does_not_run_stops_before_the_other_candidates(monkeypatch):
    """When eager fails on the example inputs, every other candidate was still built, compiled and warmed up (minutes
    for a real model) before the error came."""
    built = []
    real = opt._build

    def build(name, *args):
        built.append(name)
        return real(name, *args)

    monkeypatch.setattr(opt, "_build", build)
    with pytest.raises(RuntimeError, match="does not run on the example inputs: ValueError: expected"):
        perceiver.optimize(tiny("perceiver"), (torch.randn(2, 8, 8, 5),), candidates=["compile"], verbose=False)
    assert built == ["eager"]


def test_optimize_leaves_the_rng_gradients_and_buffers_as_it_found_them():
    """`optimize` reseeded the global RNG (`torch.manual_seed(0)`: every run's later random numbers were the same),
    dropped gradients the model had accumulated, and its timed training steps moved BatchNorm's running statistics
    to the example batch's (a fine-tuned model's statistics overwritten)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)).train()
    x = torch.randn(16, 4) * 3 + 5
    model(torch.randn(16, 4)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "tracked" in k}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    perceiver.optimize(model, (x,), training=True, candidates=["sdpa-math"], warmup=2, repeats=2, verbose=False)
    assert torch.equal(torch.get_rng_state(), rng)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
    for k, v in stats.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    perceiver.optimize(model.eval(), (x,), candidates=["eager"], warmup=1, repeats=1, verbose=False)
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_state_dict_has_the_models_keys_once():
    """`fast.state_dict()` listed every tensor twice (`module.*` and the chosen form's `_fn.*` or `_fn._orig_mod.*`):
    `model.load_state_dict(fast.state_dict())` failed on missing keys (and safetensors refused to save it, below)."""
    model, x = tiny("perceiver"), inputs("perceiver")
    keys = list(model.state_dict())
    for fast in (
        perceiver.optimize(model, x, candidates="eager", warmup=1, repeats=1, verbose=False),
        compile_frozen(model),
    ):
        assert list(fast.state_dict()) == keys
        assert len(list(fast.parameters())) == len(list(model.parameters()))
        model.load_state_dict(fast.state_dict())
        shifted = {k: v + 1 for k, v in model.state_dict().items()}
        fast.load_state_dict(shifted)  # the model's keys load into the wrapper
        torch.testing.assert_close(model.state_dict(), shifted, rtol=0, atol=0)
        fast.load_state_dict({f"module.{k}": v - 1 for k, v in shifted.items()})  # as saved before the fix
        with pytest.raises(RuntimeError, match=f'Missing key.*"{keys[0]}"'):
            fast.load_state_dict({k: v for k, v in model.state_dict().items() if k != keys[0]})
    fast = perceiver.optimize(model, x, candidates="eager", warmup=1, repeats=1, verbose=False)
    parent = torch.nn.ModuleDict({"net": fast})  # nested (e.g. in a LightningModule): the parent's keys are "net.*"
    assert list(parent.state_dict()) == [f"net.{k}" for k in keys]
    parent.load_state_dict(parent.state_dict())


def test_safetensors_saves_the_optimized_models_state_dict(tmp_path):
    from safetensors.torch import load_file, save_file

    model, x = tiny("perceiver"), inputs("perceiver")
    fast = perceiver.optimize(model, x, candidates="eager", warmup=1, repeats=1, verbose=False)
    save_file(fast.state_dict(), tmp_path / "w.safetensors")
    other = tiny("perceiver")
    other.load_state_dict(load_file(tmp_path / "w.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(other(*x), model(*x))


def test_a_twin_follows_the_models_train_and_eval_mode(monkeypatch):
    """A twin candidate (a copy sharing the parameters) kept the train / eval mode it was built in: after
    `model.eval()` the optimized model of a model with dropout still dropped (random outputs in validation)."""
    measured_fastest(monkeypatch, "matmul-attention")
    torch.manual_seed(0)
    model, x = tiny("text-classifier", ff_dropout=0.5).train(), inputs("text-classifier")
    fast = perceiver.optimize(model, x, training=True, candidates=["matmul-attention"], repeats=1, verbose=False)
    assert fast.report.chosen == "matmul-attention"
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(*x).logits, model(*x).logits)
    fast.train()  # through the wrapper as well
    assert not torch.equal(fast(*x).logits, fast(*x).logits)
    fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(*x).logits, model(*x).logits)


@pytest.mark.parametrize("chosen", ["matmul-attention", "onednn-linear"])
def test_a_twin_follows_a_new_head_and_replaced_weights(monkeypatch, chosen):
    """After `fast.reset_classifier(7)` the twin still ran the old 5-class head: 5 logits, and in training the new
    head got no gradient (an optimizer over `fast.parameters()` never changed it). Weights loaded with
    `load_state_dict(..., assign=True)` (new tensors) were not seen either."""
    from perceiver.nn.cpu_kernels import onednn_available

    if chosen == "onednn-linear" and not onednn_available():
        pytest.skip("no oneDNN in this PyTorch build")
    measured_fastest(monkeypatch, chosen)
    model, x = tiny("vision-perceiver-learned").train(), inputs("vision-perceiver-learned")
    fast = perceiver.optimize(model, x, training=True, candidates=[chosen], repeats=1, verbose=False)
    assert fast.report.chosen == chosen
    fast.reset_classifier(7)
    out = fast(*x).logits
    assert out.shape == (2, 7)
    out.square().mean().backward()
    head = fast.get_classifier()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    model.load_state_dict({k: v * 1.5 for k, v in model.state_dict().items()}, assign=True)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(*x).logits, model(*x).logits, atol=1e-5, rtol=1e-4)


def test_bad_arguments_name_what_was_expected():
    model, x = tiny("perceiver"), inputs("perceiver")
    with pytest.raises(TypeError, match=r"expected example_kwargs as a dict .* got Tensor; pass positional"):
        perceiver.optimize(model, x[0], x[0], verbose=False)  # optimize(model, ids, mask): was "Boolean value of"
    with pytest.raises(TypeError, match=r"expected candidates as names \(str\) .* got \[\['compile'\]\]"):
        perceiver.optimize(model, x, candidates=[["compile"]], verbose=False)  # was "unhashable type: 'list'"
    with pytest.raises(ValueError, match=r"\['sdpa-math'\] are training candidates: pass training=True"):
        perceiver.optimize(model, x, candidates=["sdpa-math"], verbose=False)
    with pytest.raises(ValueError, match=r"\['compile-freezing'\] are inference candidates: pass training=False"):
        perceiver.optimize(model.train(), x, training=True, candidates=["compile-freezing"], verbose=False)


def test_training_a_model_optimized_for_inference_says_why_there_are_no_gradients():
    """`fast.train()` on a model optimized for inference, then `backward`: only torch's "element 0 of tensors does not
    require grad" (the inference candidates run under `torch.no_grad()`). Now a warning says so, once."""
    import warnings

    model, x = tiny("perceiver"), inputs("perceiver")
    fast = perceiver.optimize(model, x, candidates="eager", warmup=1, repeats=1, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast(*x)  # eval mode: as optimized, no warning
        fast.train()
        with torch.no_grad():
            fast(*x)  # no gradients asked for
    with pytest.warns(UserWarning, match=r"optimized for inference: it runs under torch.no_grad\(\).*training=True"):
        assert not fast(*x).requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast(*x)  # once
