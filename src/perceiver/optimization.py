"""`perceiver.optimize(model, example_inputs)`: pick the fastest way to run a model on this machine, by timing.

Machines differ (an AMD EPYC with native bf16 where oneDNN's fp32 GEMM ran 2.2x MKL's; an Intel Xeon without bf16
where MKL won and bf16 ran five times slower than fp32), so nothing machine-specific is assumed. This is the one
place where such choices are made, and only when it is called: it builds each candidate that exists here, checks
that it gives the model's own outputs, times it on the user's inputs, keeps the fastest and reports by how much.

Candidates (`CANDIDATES`):
- `eager`: the model as it is (the baseline).
- `compile`: `torch.compile(model)` (Inductor).
- `compile-freezing` (inference): Inductor with freezing: weights become constants, so it folds the position
  encodings, pre-packs Linear weights and on CPU emits packed MKL / oneDNN GEMMs. The frozen graph keeps the weights
  it was compiled with: after changing the model's parameters, call `optimize` again (see `compile_frozen`).
  Each compiled candidate has an Inductor backend of its own (`inductor_backend`), else Dynamo would hand the one
  built second the first one's graph.
- `onednn-linear` (CPU): the model's fp32 `nn.Linear`s run oneDNN's GEMM on packed copies of their weights
  (`perceiver.nn.cpu_kernels`; in training also the input gradient); PyTorch's own fp32 Linear, eager and
  frozen-compiled, is MKL's. On the AVX-512 AMD EPYC (Zen 4) it ran the resampler 1.2x faster than frozen
  flamingo-pytorch (its few-token MLP GEMMs 1.4x), the vision training step 1.04-1.07x, and the MLM and vision
  forwards 1.15x and 1.18x eager, ahead of Inductor freezing (652 against 745 ms, 2.20 against 2.34 s); on the Intel
  Xeon MKL's GEMM was the faster.
  The packed copies are rebuilt when a weight changes (an optimiser step, `load_state_dict`), so unlike a frozen
  graph they follow the weights.
- `sdpa-math` (training): attention through SDPA's math backend (matmuls and a softmax), whose backward on CPU was
  measured 1.7-3.3x faster than the fused kernel's (in bf16 the fused backward was a quarter of a small model's
  step); `compile-sdpa-math`: both.
- `matmul-attention` (training): `perceiver.nn.MultiHeadAttention` written out as two matmuls and a softmax in the
  compute dtype (`kernel="matmul"`, on a copy sharing the parameters); `bf16-matmul-attention`: the same under bf16
  autocast. Under bf16 on the Zen 4 EPYC its forward + backward ran the vision latent self-attention 2.3x and the
  cross-attention 1.46x faster than SDPA's fused CPU kernel, whose bf16 backward is slow.
- `bf16-autocast`, `bf16-compile-freezing` / `bf16-compile`: the same under bf16 autocast, only with
  `allow_bf16=True` and where the device computes bf16 natively (`perceiver.hardware.has_native_bf16`); their
  outputs are compared with a bf16 tolerance instead.
- `int8-dynamic`, `int8-compile` (inference, only with `allow_int8=True`; needs torchao, the `quant` extra): a copy of
  the model whose Linears compute in int8 (torchao's `Int8DynamicActivationInt8WeightConfig`: weights quantised once
  per output channel, activations per token at each call), eager or under `torch.compile`. It changes the arithmetic
  (compared with `int8_rtol`) and keeps the weights it was quantised from, as a frozen graph does. On the Zen 4 EPYC
  (AVX-512 VNNI; `benchmarks/bench_quant.py`, random weights) `int8-compile` ran the language perceiver's forward
  (2048 bytes) in 0.294 s against 0.804 s eager fp32 (max rel. error 4.0%, the same top-1 byte at every position)
  and vision-perceiver-learned's in 1.69 against 2.71 s.

    fast = perceiver.optimize(model.eval(), (pixel_values,))
    print(fast.report)           # chosen candidate, time of each, speed-up over eager
    logits = fast(pixel_values).logits

The returned `OptimizedModel` shares the model's parameters (`fast.module` is the model, whose other attributes it
passes on: `fast.save_pretrained(folder)` saves the model's weights, `fast.state_dict()` has the model's keys,
`optimize(fast, ...)` starts from the model again; a model on the meta device or in training mode with dropout is
refused for inference; see `perceiver.optimization_model`); a frozen candidate (`compile-freezing`) computes with the
weights they had when it was compiled, an int8 one with the weights it quantised. Inputs of other shapes than the
examples may recompile (compiled candidates) and are not re-timed. `optimize` leaves the process and the model as it
found them: the random number generators, the model's gradients and buffers (a training step's BatchNorm statistics).
How it measures (outputs against eager, memory kept, the state it restores): `perceiver.optimization_measure`.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from perceiver._quiet import quiet_imports
from perceiver.hardware import has_native_bf16
from perceiver.optimization_measure import _has_dropout, _held_bytes, _kept_state, _reason, _rel_error, _tensors
from perceiver.optimization_model import CompiledModel, OptimizedModel
from perceiver.optimization_report import OptimizeReport

__all__ = [
    "CANDIDATES",
    "TRAINING_FP32",
    "CompiledModel",
    "OptimizeReport",
    "OptimizedModel",
    "compile_frozen",
    "inductor_backend",
    "optimize",
]

INFERENCE = (
    "eager",
    "compile",
    "compile-freezing",
    "onednn-linear",
    "bf16-autocast",
    "bf16-compile-freezing",
    "int8-dynamic",
    "int8-compile",
)
TRAINING = (
    "eager",
    "compile",
    "sdpa-math",
    "compile-sdpa-math",
    "matmul-attention",
    "onednn-linear",
    "bf16-autocast",
    "bf16-compile",
    "bf16-matmul-attention",
)
# TRAINING_FP32: the candidates that keep the arithmetic of the caller's autocast (no bf16 of their own)
TRAINING_FP32 = ("eager", "compile", "sdpa-math", "compile-sdpa-math", "matmul-attention", "onednn-linear")
CANDIDATES = {"inference": INFERENCE, "training": TRAINING}


def _double_sine(x: Tensor) -> Tensor:
    return (2 * x).sin()


def _load_compiler(device: str) -> None:
    """Import Inductor and compile a one-line function once, so that the memory the compiler itself takes (~150 MB on
    CPU, once per process) is not counted against the first compiled candidate."""
    torch.compile(_double_sine)(torch.ones(4, device=device))


def inductor_backend(**options: Any) -> Callable[..., Any]:
    """A new Inductor backend for `torch.compile(model, backend=...)`, with these Inductor config patches.

    Dynamo keeps compiled code per Python code object (a model class's `forward`) and hands an entry to any later
    `torch.compile` whose backend compares equal, and `torch.compile`'s own Inductor backends compare equal whenever
    their mode and options do. So a second compilation of the same model reuses the first one's graph whatever
    state it runs under: measured, Inductor freezing after a plain compile ran unfrozen (it followed weight updates),
    and SDPA's math backend after a plain compile ran the fused kernel. A function is its own backend (compared by
    identity), so each compiled form built with a new one gets its own cache entries.
    """

    def inductor(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs, config_patches=dict(options))  # type: ignore[return-value]  # torch hints AOT results too; a GraphModule gets a callable

    return inductor


def compile_frozen(
    model: nn.Module, *, dynamic: bool | None = None, fullgraph: bool = False, options: dict[str, Any] | None = None
) -> CompiledModel:
    """`torch.compile(model)` with Inductor freezing, for inference: the model run under `torch.no_grad()` with its
    Linear weights folded into the compiled graph as pre-packed constants. `options`: more Inductor config patches.

    `torch.compile(model, options={"freezing": True})` does not freeze: Dynamo reads the global
    `torch._inductor.config.freezing` when it traces, to keep parameters out of the graph's inputs, and `options` only
    reach Inductor after that, so the weights stay inputs and nothing is folded or pre-packed (pytorch/pytorch#139272
    describes the Dynamo side). Here every call, and so every (re)compilation, runs under the global flag, with a
    backend of its own (`inductor_backend`), so it is frozen even where the same model was compiled before.

    The compiled graph keeps the weights it was traced with; changes to the parameters afterwards (an optimiser
    step, `load_state_dict`) are not seen: compile again.
    """
    backend = inductor_backend(**(options or {}), freezing=True)
    return CompiledModel(
        model,
        torch.compile(model, backend=backend, dynamic=dynamic, fullgraph=fullgraph),
        _contexts(bf16=False, math_sdpa=False, no_grad=True, device="cpu", freezing=True),
    )


def _contexts(bf16: bool, math_sdpa: bool, no_grad: bool, device: str, freezing: bool = False) -> Callable[[], Any]:
    def make() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if no_grad:
            stack.enter_context(torch.no_grad())
        if freezing:  # read by Dynamo at trace time (see `compile_frozen`), so it wraps every call
            import torch._inductor.config as inductor_config

            stack.enter_context(inductor_config.patch(freezing=True))
        if bf16:
            stack.enter_context(torch.autocast(device, torch.bfloat16))
        if math_sdpa:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        return stack

    return make


def _build(name: str, model: nn.Module, training: bool, device: str) -> tuple[Callable[..., Any], Callable[[], Any]]:
    bf16 = name.startswith("bf16-")
    base = name.removeprefix("bf16-")
    freezing = base == "compile-freezing"
    contexts = _contexts(bf16, base.endswith("sdpa-math"), not training, device, freezing=freezing)
    if base in ("eager", "autocast", "sdpa-math"):
        return model, contexts
    if base == "matmul-attention":
        from perceiver.nn.attention import use_matmul_attention

        try:
            return use_matmul_attention(model), contexts
        except ValueError as e:  # no MultiHeadAttention: nothing to switch
            raise RuntimeError(str(e)) from None
    if base in ("compile", "compile-sdpa-math", "compile-freezing"):  # each its own graph (see `inductor_backend`)
        return torch.compile(model, backend=inductor_backend(**({"freezing": True} if freezing else {}))), contexts
    if base in ("int8-dynamic", "int8-compile"):
        try:
            with quiet_imports():
                from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        except ImportError as e:
            raise RuntimeError("int8 candidates need torchao: pip install 'perceiver-torch[quant]'") from e
        import copy

        quantized = copy.deepcopy(model)
        quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
        if base == "int8-compile":
            return torch.compile(quantized, backend=inductor_backend()), contexts
        return quantized, contexts
    if base == "onednn-linear":
        from perceiver.nn.cpu_kernels import OneDNNLinear, onednn_available, use_onednn_linear

        if device != "cpu" or not onednn_available():
            raise RuntimeError(f"oneDNN's CPU Linear is not available for a model on {device}")
        twin = use_onednn_linear(model)
        if not any(isinstance(m, OneDNNLinear) for m in twin.modules()):
            raise RuntimeError("the model has no dense fp32 CPU nn.Linear for oneDNN to run")
        return twin, contexts
    raise ValueError(f"unknown candidate {name!r}; expected one of {sorted(set(INFERENCE) | set(TRAINING))}")


def _rebuilt(name: str, training: bool, device: str, model: nn.Module) -> Callable[..., Any]:
    """Candidate `name` built again for `model` (an `OptimizedModel`'s twin after the model's parts were replaced)."""
    return _build(name, model, training, device)[0]


def optimize(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Any],
    example_kwargs: dict[str, Any] | None = None,
    *,
    training: bool = False,
    candidates: str | Sequence[str] | None = None,
    allow_bf16: bool = False,
    allow_int8: bool = False,
    loss_fn: Callable[[Any], Tensor] | None = None,
    rtol: float = 1e-4,
    bf16_rtol: float = 5e-2,
    int8_rtol: float = 1e-1,
    warmup: int = 2,
    repeats: int = 5,
    max_memory_mb: float | None = None,
    verbose: bool = True,
) -> OptimizedModel:
    """Time the candidates on `model(*example_inputs, **example_kwargs)` and return the fastest as `OptimizedModel`.

    Args:
        model: the model, in the mode it will run in (`.eval()` for inference).
        example_inputs / example_kwargs: a call of the model as it will be used (shapes matter): the positional
            arguments as a tuple (a single tensor is taken as `(tensor,)`, not iterated over its batch) and keywords.
        training: time a training step (forward + backward of `loss_fn(output)`, default the mean square of the
            outputs; gradients are cleared after each) instead of inference under `torch.no_grad()`.
        candidates: names to try (default `CANDIDATES["training" | "inference"]`; one name as a string is that
            candidate); `eager` is always timed.
        allow_bf16: also try bf16 autocast, where the device computes bf16 natively (it changes the arithmetic).
        allow_int8: also try int8 Linears (inference; torchao): it changes the arithmetic; compared with `int8_rtol`.
        rtol: largest relative difference (max abs error over max abs value) from eager for an fp32 candidate;
            `bf16_rtol` for bf16 ones, for a bf16 / fp16 model and under the caller's autocast, `int8_rtol` for int8
            ones. Candidates that differ more, or fail, are skipped with the reason. A training step of a model with
            dropout is not compared (the masks differ).
        warmup, repeats: calls of each candidate before timing (compilation happens here) and timed calls of each
            (the median is kept); the timed calls take turns between the candidates, the order reversing every round.
        max_memory_mb: skip candidates that keep more memory than this (MB). What each keeps is measured either way
            (`report.added_memory_mb`): the process's resident memory (PyTorch's allocated memory on CUDA) after
            building the candidate and its warm-up calls, less before: copies of the weights it holds (oneDNN's packed
            weights; a frozen graph's constants, which also hold what the weights alone determine, such as projected
            position encodings: language-perceiver's +1176 MB, vision-perceiver-learned's +1505 MB on a Zen 4 EPYC),
            compiled code and caches.
        verbose: print the report.
    """
    example_inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else example_inputs  # not its rows
    if isinstance(example_inputs, str | bytes | dict) or not isinstance(example_inputs, Sequence):
        hint = "; pass keywords as example_kwargs" if isinstance(example_inputs, dict) else ""
        raise TypeError(
            f"expected example_inputs as a tuple (or one tensor), got {type(example_inputs).__name__}{hint}"
        )
    if example_kwargs is not None and not isinstance(example_kwargs, Mapping):  # optimize(model, ids, mask)
        raise TypeError(
            "expected example_kwargs as a dict of keyword arguments (e.g. {'attention_mask': mask}), got "
            f"{type(example_kwargs).__name__}; pass positional arguments together: example_inputs=(inputs, mask)"
        )
    kwargs = dict(example_kwargs or {})
    while isinstance(model, OptimizedModel):  # optimize(fast, ...) again: choose afresh for the model itself
        model = model.module
    mode = "training" if training else "inference"
    if not training and model.training and _has_dropout(model):  # its outputs are random: nothing to check against
        raise ValueError(
            "expected the model in eval mode to time inference (model.eval()), got it in training mode with dropout; "
            "pass training=True to time a training step"
        )
    candidates = [candidates] if isinstance(candidates, str) else candidates  # one name, not its characters
    names = list(candidates if candidates is not None else CANDIDATES[mode])
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"expected candidates as names (str) from CANDIDATES[{mode!r}], got {names!r}")
    names = list(dict.fromkeys(["eager", *names]))  # eager first: the reference the others are checked against
    unknown = sorted(set(names) - set(CANDIDATES[mode]))
    if unknown:
        other = [n for n in unknown if n in CANDIDATES["inference" if training else "training"]]
        hint = f" ({other} {'are inference' if training else 'are training'} candidates: pass training={not training})"
        hint = hint if other else ""
        raise ValueError(f"unknown {mode} candidates {unknown}; expected some of {list(CANDIDATES[mode])}{hint}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in (warmup, repeats)):
        raise ValueError(f"expected warmup >= 1 and repeats >= 1 (ints), got {warmup!r} and {repeats!r}")
    param = next(model.parameters(), None)
    device = param.device.type if param is not None else "cpu"
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ValueError(
            "expected a model with weights to time, got one whose parameters are on the meta device (shapes without "
            "values); load its weights first, e.g. perceiver.from_pretrained(folder)"
        )
    if max_memory_mb is not None and (max_memory_mb < 0 or _held_bytes(device) is None):
        why = "a memory reading (Linux, psutil or CUDA)" if max_memory_mb >= 0 else "a value >= 0"
        raise ValueError(f"max_memory_mb needs {why}, got {max_memory_mb} for a model on {device}")
    loss_fn = loss_fn or (lambda out: sum((t.float().square().mean() for t in _tensors(out)), torch.zeros(())))
    params = [p for p in model.parameters() if p.requires_grad]
    leaves = [t for t in (*example_inputs, *kwargs.values()) if isinstance(t, Tensor) and t.requires_grad]
    if training and not params and not leaves:  # backward would fail with "element 0 of tensors does not require grad"
        raise ValueError("training=True times forward and backward: expected parameters that require grad, got none")

    def call(fn: Callable[..., Any], contexts: Callable[[], Any]) -> Any:
        with contexts():
            out = fn(*example_inputs, **kwargs)
            if training:
                loss_fn(out).backward()
        if training:
            for p in params:
                p.grad = None
        return out

    with _kept_state(model):  # the RNG (seeded for dropout), gradients and buffers as they were
        if any("compile" in name for name in names):
            with contextlib.suppress(Exception):  # if it fails, so do the compiled candidates, reported with the reason
                _load_compiler(device)
        random = training and _has_dropout(model)  # outputs of a training step differ with the dropout masks
        autocast = torch.is_autocast_enabled(device)  # the caller's autocast: its rounding, not fp32's
        report = OptimizeReport(chosen="eager", mode=mode)
        built: dict[str, tuple[Callable[..., Any], Callable[[], Any]]] = {}
        first_calls: dict[str, float] = {}
        reference = None
        torch.manual_seed(0)
        for name in names:  # build, check against eager and warm up each candidate
            if name.startswith("bf16-") and not (allow_bf16 and has_native_bf16(device)):
                why = "allow_bf16=False" if not allow_bf16 else f"no native bf16 on this {device}"
                report.skipped[name] = why
                continue
            if name.startswith("int8-") and not allow_int8:
                report.skipped[name] = "allow_int8=False"
                continue
            before = _held_bytes(device)
            try:
                fn, contexts = _build(name, model, training, device)
                start = time.perf_counter()
                torch.manual_seed(0)
                out = call(fn, contexts)
                for _ in range(warmup - 1):
                    call(fn, contexts)
                if name != "eager":
                    first_calls[name] = time.perf_counter() - start  # build, compile and the warm-up calls
            except Exception as e:  # a candidate that cannot run here is skipped, not fatal
                if name == "eager":  # nothing to compare with: stop before compiling the others
                    raise RuntimeError(f"the model does not run on the example inputs: {_reason(e)}") from e
                report.skipped[name] = _reason(e)
                continue
            if name == "eager":
                reference = out
                # an fp16 / bf16 model: its own rounding, whatever the autocast (as under the caller's autocast)
                autocast = autocast or any(t.dtype in (torch.float16, torch.bfloat16) for t in _tensors(out))
            elif random:
                report.not_compared.append(name)
            else:
                err = _rel_error(out, reference)
                bf16 = name.startswith("bf16-") or autocast
                limit = int8_rtol if name.startswith("int8-") else bf16_rtol if bf16 else rtol
                if not err <= limit:
                    report.skipped[name] = f"outputs differ from eager (max rel. error {err:.2e} > {limit:.0e})"
                    continue
                report.max_rel_error[name] = err
            del out
            after = _held_bytes(device)
            if name != "eager" and before is not None and after is not None:
                mb = report.added_memory_mb[name] = max(0.0, (after - before) / 2**20)
                if max_memory_mb is not None and mb > max_memory_mb:
                    report.skipped[name] = f"keeps {mb:.0f} MB, more than max_memory_mb={max_memory_mb:g}"
                    continue
            built[name] = (fn, contexts)
        # Timed in turns, the order reversing every round: a shared machine's speed drifts by 20% and more within
        # minutes, which timing one candidate after another would read as a difference between them.
        times: dict[str, list[float]] = {name: [] for name in built}
        for r in range(repeats):
            for name in list(built) if r % 2 == 0 else list(built)[::-1]:
                if name not in times:
                    continue
                try:
                    start = time.perf_counter()
                    call(*built[name])
                    times[name].append(time.perf_counter() - start)
                except Exception as e:
                    report.skipped[name] = _reason(e)
                    del times[name]
    built = {name: built[name] for name in times}
    report.seconds = {name: statistics.median(t) for name, t in times.items()}
    report.setup_seconds = {  # the warm-up's time beyond that of as many timed calls
        name: max(0.0, s - warmup * report.seconds[name]) for name, s in first_calls.items() if name in report.seconds
    }
    if "eager" not in report.seconds:
        raise RuntimeError(f"the model does not run on the example inputs: {report.skipped.get('eager')}")
    report.chosen = min(report.seconds, key=report.seconds.__getitem__)
    if verbose:
        print(report)
    twin = report.chosen.removeprefix("bf16-") in ("onednn-linear", "matmul-attention", "int8-dynamic", "int8-compile")
    rebuild = functools.partial(_rebuilt, report.chosen, training, device) if twin else None
    return OptimizedModel(model, *built[report.chosen], report, rebuild)
