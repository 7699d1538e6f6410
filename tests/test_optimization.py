"""`perceiver.optimize`: the chosen candidate gives the model's own outputs, the report names it and what was skipped."""

from __future__ import annotations

import pytest
import torch
from tiny_models import inputs, tiny

import perceiver
from perceiver.optimization import CANDIDATES, OptimizedModel, compile_frozen


def test_inference_choice_keeps_outputs_and_reports(capsys):
    model = tiny("perceiver")
    x = inputs("perceiver")
    fast = perceiver.optimize(model, x, candidates=["eager", "compile-freezing", "bf16-autocast"], repeats=2)
    assert isinstance(fast, OptimizedModel) and fast.module is model
    report = fast.report
    assert report.chosen in report.seconds and set(report.seconds) <= {"eager", "compile-freezing"}
    assert report.skipped["bf16-autocast"] == "allow_bf16=False"
    assert report.speedup == pytest.approx(report.seconds["eager"] / report.seconds[report.chosen])
    with torch.no_grad():
        torch.testing.assert_close(fast(*x), model(*x), atol=1e-5, rtol=1e-5)
    printed = capsys.readouterr().out
    assert f"chose {report.chosen!r}" in printed and "eager" in printed


def test_training_choice_gives_gradients():
    model = tiny("language-perceiver").train()
    x = inputs("language-perceiver")
    fast = perceiver.optimize(model, x, training=True, candidates=["eager", "sdpa-math"], repeats=2, verbose=False)
    assert set(fast.report.seconds) == {"eager", "sdpa-math"}
    assert all(p.grad is None for p in model.parameters())  # timing leaves no gradients behind
    fast(*x).logits.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unknown_candidates_and_failures():
    model = tiny("perceiver")
    x = inputs("perceiver")
    with pytest.raises(ValueError, match=r"unknown inference candidates \['sdpa-math'\]"):
        perceiver.optimize(model, x, candidates=["sdpa-math"])
    with pytest.raises(RuntimeError, match="does not run on the example inputs"):
        perceiver.optimize(model, (torch.randn(2, 8, 8, 5),), candidates=["eager"], verbose=False)


def test_wrong_outputs_are_rejected(monkeypatch):
    import perceiver.optimization as opt

    model = tiny("perceiver")
    x = inputs("perceiver")
    real = opt._build

    def broken(name, *args):
        fn, contexts = real(name, *args)
        return ((lambda *a, **k: fn(*a, **k) * 2) if name == "compile" else fn), contexts

    monkeypatch.setattr(opt, "_build", broken)
    monkeypatch.setattr(torch, "compile", lambda m, **kw: m)  # no real compilation needed to test the check
    fast = perceiver.optimize(model, x, candidates=["eager", "compile"], verbose=False)
    assert fast.report.chosen == "eager"
    assert fast.report.skipped["compile"].startswith("outputs differ from eager")


def test_every_candidate_name_is_buildable():
    assert set(CANDIDATES) == {"inference", "training"}
    with pytest.raises(ValueError, match="expected warmup >= 1"):
        perceiver.optimize(tiny("perceiver"), inputs("perceiver"), warmup=0)
    for bad in (dict(warmup=1.5), dict(repeats=2.0)):  # were a RuntimeError naming no argument (range() of a float)
        with pytest.raises(ValueError, match=r"expected warmup >= 1 and repeats >= 1 \(ints\)"):
            perceiver.optimize(tiny("perceiver"), inputs("perceiver"), candidates=["eager"], verbose=False, **bad)


@pytest.mark.parametrize("compiled_before", [False, True])
@pytest.mark.parametrize("how", ["compile_frozen", "optimize candidate"])
def test_freezing_folds_the_weights(how, compiled_before):
    """Frozen means the Linear weights are pre-packed constants of the compiled graph, so an in-place edit after
    compiling is not seen (what Inductor does not fold, e.g. biases, stays live). `torch.compile(model,
    options={"freezing": True})` fails this: Dynamo keeps the weights as graph inputs. So does a frozen form built
    after a plain `torch.compile` of the same model (as `optimize` builds its candidates) unless it has a backend of
    its own: Dynamo hands it the plain graph."""
    import perceiver.optimization as opt

    model = tiny("perceiver")
    x = inputs("perceiver")
    if compiled_before:
        with torch.no_grad():
            torch.compile(model)(*x)
    if how == "compile_frozen":
        run = compile_frozen(model).eval()
        assert run.module is model and not model.training
    else:
        fn, contexts = opt._build("compile-freezing", model, False, "cpu")

        def run(*a):
            with contexts():
                return fn(*a)

    with torch.no_grad():
        expected = model(*x)
        torch.testing.assert_close(run(*x), expected, atol=1e-5, rtol=1e-5)
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(1.5)
        assert not torch.allclose(model(*x), expected, atol=1e-3)
        torch.testing.assert_close(run(*x), expected, atol=1e-5, rtol=1e-5)


def test_compiled_candidates_run_their_own_graphs():
    """`compile-sdpa-math` built after `compile` on the same model runs SDPA's math backend, not the plain compiled
    graph's fused kernel (which Dynamo's cache would hand it if both shared a backend)."""
    from torch.profiler import profile

    import perceiver.optimization as opt

    model = tiny("language-perceiver").train()
    x = inputs("language-perceiver")
    kernels = {}
    for name in ("compile", "compile-sdpa-math"):
        fn, contexts = opt._build(name, model, True, "cpu")
        with contexts():
            fn(*x).logits.sum().backward()
        with profile() as prof, contexts():
            fn(*x).logits.sum().backward()
        kernels[name] = {e.key for e in prof.key_averages() if "flash_attention" in e.key}
    assert kernels["compile"] and not kernels["compile-sdpa-math"]


def test_report_names_the_memory_a_candidate_keeps():
    """oneDNN's packed copy of a 2048 x 2048 fp32 weight is 16 MB: the report says the candidate keeps about that
    much, also when the process freed such copies before (an earlier `optimize`: glibc kept the freed memory for
    reuse, which read as +0 MB until the heap was trimmed before each reading), and `max_memory_mb` below it skips
    the candidate with the figure."""
    from perceiver.nn.cpu_kernels import onednn_available

    if not onednn_available() or perceiver.optimization._held_bytes("cpu") is None:
        pytest.skip("needs oneDNN and a memory reading")
    model = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 8)).eval()
    x = torch.randn(4, 2048)
    for _ in range(3):
        report = perceiver.optimize(model, (x,), candidates=["eager", "onednn-linear"], repeats=1, verbose=False).report
        assert 12 <= report.added_memory_mb["onednn-linear"] <= 64, report.added_memory_mb
    assert "keeps +" in str(report)
    report = perceiver.optimize(
        model, (x,), candidates=["eager", "onednn-linear"], repeats=1, max_memory_mb=4, verbose=False
    ).report
    assert report.chosen == "eager" and report.skipped["onednn-linear"].startswith("keeps ")
    assert "more than max_memory_mb=4" in report.skipped["onednn-linear"]
    with pytest.raises(ValueError, match="max_memory_mb needs a value >= 0, got -1"):
        perceiver.optimize(model, (x,), max_memory_mb=-1)


def test_onednn_linear_candidate_keeps_outputs():
    from perceiver.nn.cpu_kernels import onednn_available

    model = tiny("language-perceiver")
    x = inputs("language-perceiver")
    fast = perceiver.optimize(model, x, candidates=["eager", "onednn-linear"], repeats=2, verbose=False)
    if not onednn_available():
        assert "onednn-linear" in fast.report.skipped
        return
    assert set(fast.report.seconds) == {"eager", "onednn-linear"}
    assert fast.report.max_rel_error["onednn-linear"] <= 1e-4
    assert all(type(m).__name__ == "Linear" for m in model.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        torch.testing.assert_close(fast(*x).logits, model(*x).logits, atol=1e-5, rtol=1e-4)


def test_onednn_linear_training_candidate_trains_the_models_parameters():
    from perceiver.nn.cpu_kernels import onednn_available, use_onednn_linear

    if not onednn_available():
        pytest.skip("this PyTorch build has no oneDNN")
    torch.manual_seed(0)
    model = tiny("perceiver").train()
    x = inputs("perceiver")
    fast = perceiver.optimize(model, x, training=True, candidates=["onednn-linear"], repeats=1, verbose=False)
    assert set(fast.report.seconds) == {"eager", "onednn-linear"}
    assert fast.report.max_rel_error["onednn-linear"] <= 1e-4
    fast = use_onednn_linear(model)  # what the candidate runs, whichever `optimize` chose on this machine
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # the second step's outputs and gradients follow the first step's update
        reference = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.zero_grad()
        fast(*x).square().mean().backward()
        got = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.zero_grad()
        model(*x).square().mean().backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(got[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
        opt.step()
        assert any(not torch.equal(reference[n], p) for n, p in model.named_parameters())


def test_candidates_are_timed_in_turns(monkeypatch):
    """Drift in the machine's speed must hit every candidate alike: after each candidate's warm-up, the timed calls
    alternate between the candidates, the order reversing every round."""
    import perceiver.optimization as opt

    model = tiny("perceiver")
    x = inputs("perceiver")
    real, log = opt._build, []

    def logged(name, *args):
        fn, contexts = real(name, *args)

        def run(*a, **k):
            log.append(name)
            return fn(*a, **k)

        return run, contexts

    monkeypatch.setattr(opt, "_build", logged)
    monkeypatch.setattr(torch, "compile", lambda m, **kw: m)
    fast = perceiver.optimize(model, x, candidates=["eager", "compile"], warmup=2, repeats=3, verbose=False)
    assert log[:4] == ["eager", "eager", "compile", "compile"]  # warm-up (and the check against eager)
    assert log[4:] == ["eager", "compile", "compile", "eager", "eager", "compile"]
    assert set(fast.report.seconds) == {"eager", "compile"}


def test_report_separates_the_one_time_setup_from_the_time_per_call(monkeypatch):
    """A candidate whose first call is slow (as compiling is) reports that cost once, not in its time per call."""
    import time

    import perceiver.optimization as opt

    # a model whose calls take microseconds, so that the 0.4 s first call dominates however loaded the machine is
    model, x = torch.nn.Linear(3, 3), (torch.randn(2, 3),)
    build = opt._build

    def slow_first_call(name, m, training, device):
        fn, contexts = build("eager", m, training, device)
        calls = []

        def run(*a, **k):
            if name == "compile" and not calls:
                time.sleep(0.4)
            calls.append(1)
            return fn(*a, **k)

        return run, contexts

    monkeypatch.setattr(opt, "_build", slow_first_call)
    fast = perceiver.optimize(model, x, candidates=["eager", "compile"], warmup=3, repeats=3, verbose=False)
    report = fast.report
    assert set(report.setup_seconds) == {"compile"}  # eager has nothing to set up
    # lower bounds only (no wall-clock ceilings: the suite runs beside other work): the 0.4 s first call is counted
    # once as setup, and no timed call carries it
    assert report.setup_seconds["compile"] >= 0.35
    assert report.seconds["compile"] < 0.4
    assert f"one-time setup {report.setup_seconds['compile']:.1f} s" in str(report)


def test_matmul_attention_candidate_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    model = tiny("vision-perceiver-learned").train()
    x = inputs("vision-perceiver-learned")
    fast = perceiver.optimize(model, x, training=True, candidates=["matmul-attention"], repeats=1, verbose=False)
    assert set(fast.report.seconds) == {"eager", "matmul-attention"}
    assert fast.report.max_rel_error.get("matmul-attention", 0.0) <= 1e-4
    assert all(m.kernel == "sdpa" for m in model.modules() if hasattr(m, "kernel"))  # the model itself unchanged
    skip = perceiver.optimize(torch.nn.Linear(3, 3), (torch.randn(2, 3),), training=True,
                              candidates=["matmul-attention"], repeats=1, verbose=False)  # fmt: skip
    assert "has no attention with a kernel choice" in skip.report.skipped["matmul-attention"]


@pytest.mark.parametrize("name", ["language-perceiver", "vision-perceiver-learned"])
def test_int8_candidates_are_opt_in_and_close(name):
    """int8 Linears (torchao) only with allow_int8; the chosen copy computes in int8 within int8_rtol of eager and
    leaves the model's fp32 weights alone."""
    from torchao.quantization import Int8Tensor

    model = tiny(name)
    x = inputs(name)
    skipped = perceiver.optimize(model, x, candidates=["eager", "int8-dynamic"], repeats=1, verbose=False)
    assert skipped.report.skipped["int8-dynamic"] == "allow_int8=False"
    fast = perceiver.optimize(model, x, candidates=["int8-dynamic"], allow_int8=True, repeats=1, verbose=False)
    report = fast.report
    assert "int8-dynamic" in report.seconds and 0 < report.max_rel_error["int8-dynamic"] <= 0.1
    assert all(type(p.data) is torch.Tensor for p in model.parameters())
    quantized = perceiver.optimization._build("int8-dynamic", model, False, "cpu")[0]
    assert any(isinstance(m.weight, Int8Tensor) for m in quantized.modules() if isinstance(m, torch.nn.Linear))


def test_a_half_precision_model_is_checked_with_the_bf16_tolerance(monkeypatch):
    """A bf16 / fp16 model's compiled outputs differ from its eager ones by its own rounding (~1e-2 relative in bf16):
    the fp32 `rtol` (1e-4) rejected every compiled candidate of such a model ("outputs differ from eager")."""
    import perceiver.optimization as opt

    real = opt._build

    def rounded(name, *args):  # a candidate off by bf16 rounding, as Inductor's fused kernels are
        fn, contexts = real(name, *args)
        return ((lambda *a, **k: fn(*a, **k) * (1 + 2**-8)) if name == "compile" else fn), contexts

    monkeypatch.setattr(opt, "_build", rounded)
    monkeypatch.setattr(torch, "compile", lambda m, **kw: m)
    x = inputs("perceiver")
    for dtype in (torch.bfloat16, torch.float16):
        fast = perceiver.optimize(tiny("perceiver").to(dtype), (x[0].to(dtype),), candidates="compile", verbose=False)
        assert "compile" in fast.report.seconds, fast.report.skipped
    fp32 = perceiver.optimize(tiny("perceiver"), x, candidates="compile", verbose=False).report  # fp32 stays strict
    assert fp32.skipped["compile"].startswith("outputs differ from eager")


def test_the_optimized_model_saves_and_reoptimizes_as_its_model(tmp_path):
    """`fast.save_pretrained(folder)` was an AttributeError (the wrapper had none of the model's methods), and
    `optimize(fast)` wrapped the wrapper (compiling it, packing the copies of a oneDNN twin again)."""
    model = tiny("perceiver")
    x = inputs("perceiver")
    fast = perceiver.optimize(model, x, candidates="eager", warmup=1, repeats=1, verbose=False)
    folder = fast.save_pretrained(tmp_path / "model")
    torch.testing.assert_close(perceiver.from_pretrained(folder).eval()(*x), model(*x))
    assert fast.config is model.config and fast.num_classes == model.num_classes
    with pytest.raises(AttributeError, match="no_such_thing"):
        fast.no_such_thing  # noqa: B018
    again = perceiver.optimize(fast, x, candidates="eager", warmup=1, repeats=1, verbose=False)
    assert again.module is model
    import copy

    assert copy.deepcopy(fast).report.chosen == "eager"  # copying (pickling) does not recurse through the lookup


def test_models_optimize_refuses_clearly(tmp_path):
    """A model on the meta device failed with torch's "unknown device type for autocast"; a model left in training
    mode with dropout was timed for inference with random outputs (its candidates "differed from eager"); a training
    step of a model without trainable parameters failed in backward, reported as "does not run on the inputs"."""
    meta = tiny("perceiver").to("meta")
    with pytest.raises(ValueError, match="expected a model with weights to time, got one .* on the meta device"):
        perceiver.optimize(meta, (torch.randn(2, 8, 8, 3, device="meta"),), verbose=False)
    training = tiny("text-classifier", attn_dropout=0.1).train()
    with pytest.raises(ValueError, match=r"expected the model in eval mode .*\(model\.eval\(\)\).*training=True"):
        perceiver.optimize(training, inputs("text-classifier"), candidates="eager", verbose=False)
    fast = perceiver.optimize(training.eval(), inputs("text-classifier"), candidates="eager", repeats=1, verbose=False)
    assert fast.report.chosen == "eager"
    frozen = tiny("perceiver").requires_grad_(False)  # was "the model does not run ...: element 0 of tensors does not"
    with pytest.raises(ValueError, match="training=True times forward and backward: expected parameters that require"):
        perceiver.optimize(frozen, inputs("perceiver"), training=True, candidates="eager", verbose=False)


def test_onednn_linear_takes_weights_made_in_inference_mode():
    """Weights created under `torch.inference_mode()` have no version counter: reading it raised "Inference tensors
    do not track version counter", so the `onednn-linear` candidate of such a model was always skipped."""
    from perceiver.nn.cpu_kernels import OneDNNLinear, onednn_available

    if not onednn_available():
        pytest.skip("no oneDNN in this PyTorch build")
    with torch.inference_mode():
        linear = torch.nn.Linear(16, 8)
    fast = OneDNNLinear(linear)
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), linear(x))
        with torch.inference_mode():
            linear.weight.mul_(2)  # an edit is still seen (the sampled values changed)
        torch.testing.assert_close(fast(x), linear(x))


def test_the_onednn_twin_compiles_and_exports():
    """An `OptimizedModel` that chose `onednn-linear` could not be compiled or exported: tracing reached oneDNN's
    private ops ("Operator does not support running with fake tensors", "Cannot access data pointer of Tensor").
    Traced, `OneDNNLinear` is the plain Linear (Inductor / the exporter choose the GEMM)."""
    from perceiver.export import export_program
    from perceiver.nn.cpu_kernels import onednn_available, use_onednn_linear

    if not onednn_available():
        pytest.skip("no oneDNN in this PyTorch build")
    model = tiny("perceiver")
    x = inputs("perceiver")
    twin = use_onednn_linear(model)
    with torch.no_grad():
        want = model(*x)
        torch.testing.assert_close(torch.compile(twin, fullgraph=True, dynamic=True)(*x), want)
        torch.testing.assert_close(export_program(twin, x).module()(*x), want)
