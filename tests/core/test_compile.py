"""Every registry model and every converted transformers head compiles whole: `torch.compile(fullgraph=True)`, 0 graph
breaks (`torch._dynamo.explain`), eval outputs equal to eager, a compiled training step with gradients, dynamic batch
and input length.

The fast suite checks graph breaks for every model and converted head, compiles the training step and dynamic shapes
with AOT autograd (`backend="aot_eager"`: the graph capture and the autograd graph, without code generation) for a
representative subset, and runs Inductor on the classic model; the slow suite does all of it for every model and
runs Inductor (the default backend) on each, in eval and for a training step. (Compiling takes seconds per model on a
2-core CPU; the whole set is minutes.)
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from tiny_models import TINY, flat, inputs, tiny

import perceiver

transformers = pytest.importorskip("transformers")

VARIABLE_LENGTH = {  # models whose input length may change between calls (the `size` of tiny_models' inputs)
    "perceiver": (8, 6),
    "language-perceiver": (10, 7),
    "text-classifier": (10, 7),
    "vision-perceiver-fourier": (16, 12),
    "vision-perceiver-conv": (16, 32),
    "optical-flow-perceiver": (12, 8),
    "audio-classifier": (16, 9),
    "point-cloud-classifier": (20, 13),
    "token-classifier": (10, 7),
    "question-answering": (10, 7),
    "perceiver-ar": (12, 9),
    "perceiver-ar-tiny": (12, 9),
    "perceiver-resampler": (5, 3),
}


FAST_TRAINING = {"perceiver", "vision-perceiver-learned"}
FAST_DYNAMIC = {"language-perceiver", "vision-perceiver-learned"}


def subset(names, fast):
    """`names`, the ones outside `fast` marked slow."""
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in sorted(names)]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def assert_same(got, expected, atol: float = 1e-5) -> None:
    for g, e in zip(flat(got), flat(expected), strict=True):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, atol=atol, rtol=1e-5)


def loss_of(output) -> torch.Tensor:
    return sum(t.float().square().mean() for t in flat(output))


def test_every_registry_model_has_a_tiny_configuration():
    assert sorted(TINY) == sorted(perceiver.list_models())


@pytest.mark.parametrize("name", sorted(TINY))
def test_no_graph_breaks(name):
    model = tiny(name)
    explanation = torch._dynamo.explain(model)(*inputs(name))
    assert explanation.graph_break_count == 0, [str(r.reason)[:300] for r in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.parametrize("name", subset(TINY, FAST_TRAINING))
def test_training_step_compiles_whole(name):
    """Forward + backward through one captured graph (AOT autograd) give eager's gradients."""
    model = tiny(name).train()
    x = inputs(name)
    torch.manual_seed(1)
    loss_of(model(*x)).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)  # the same dropout masks (the tiny configs have no dropout; kept for safety)
    loss_of(compiled(*x)).backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys() and got
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", subset(TINY, FAST_DYNAMIC))
def test_dynamic_batch_and_length(name):
    """`dynamic=True`: other batch sizes (and input lengths where the model takes any) reuse the graph, same outputs."""
    model = tiny(name)
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="aot_eager")
    sizes = VARIABLE_LENGTH.get(name)
    cases = [(2, {}), (3, {})] + ([(3, {"size": sizes[1]})] if sizes else [])
    with torch.no_grad():
        for batch, kw in cases:
            x = inputs(name, batch, **kw)
            assert_same(compiled(*x), model(*x))


def test_inductor_classic_eval_and_training_step():
    """The default backend (Inductor) on the seed API's model: eval equals eager, a training step has gradients."""
    model = tiny("perceiver")
    x = inputs("perceiver")
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert_same(compiled(*x), model(*x))
    model.train()
    loss_of(compiled(*x)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_inductor_every_model(name):
    model = tiny(name)
    x = inputs(name)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert_same(compiled(*x), model(*x))
    model.train()
    loss_of(compiled(*x)).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


# ------------------------------------------------------------------------- converted transformers checkpoints


def _hf_heads():
    base = dict(num_latents=6, d_latents=16, num_self_attends_per_block=1, num_self_attention_heads=2,
                num_cross_attention_heads=1, num_labels=3)  # fmt: skip
    text = dict(base, d_model=16, vocab_size=262, max_position_embeddings=16)
    ids = (torch.randint(6, 262, (2, 16)),)
    image = (torch.randn(2, 3, 16, 16),)
    multimodal = dict(
        base, d_latents=32, num_frames=2, image_size=16, audio_samples_per_frame=32, samples_per_patch=16,
        output_shape=[1, 2, 16, 16], output_num_channels=16, _label_trainable_num_channels=24, num_labels=5,
    )  # fmt: skip
    mm_inputs = ({"image": torch.randn(2, 2, 3, 16, 16), "audio": torch.randn(2, 64, 1), "label": torch.zeros(2, 5)},)
    return {
        "PerceiverForMaskedLM": (text, ids),
        "PerceiverForSequenceClassification": (text, ids),
        "PerceiverForImageClassificationLearned": (dict(base, image_size=16), image),
        "PerceiverForImageClassificationFourier": (dict(base, image_size=16), image),
        "PerceiverForImageClassificationConvProcessing": (dict(base, image_size=32), (torch.randn(2, 3, 32, 32),)),
        "PerceiverForOpticalFlow": (dict(base, train_size=[12, 16]), (torch.randn(2, 2, 27, 12, 16),)),
        "PerceiverForMultimodalAutoencoding": (multimodal, mm_inputs),
    }


HF_HEADS = _hf_heads()


def converted(head: str, path) -> tuple[torch.nn.Module, tuple]:
    config, x = HF_HEADS[head]
    hf = getattr(transformers, head)(transformers.PerceiverConfig(**config))
    hf.save_pretrained(path)
    return perceiver.from_pretrained(path), x


@pytest.mark.parametrize("head", sorted(HF_HEADS))
def test_converted_transformers_heads_have_no_graph_breaks(head, tmp_path):
    model, x = converted(head, tmp_path)
    explanation = torch._dynamo.explain(model)(*x)
    assert explanation.graph_break_count == 0, [str(r.reason)[:300] for r in explanation.break_reasons]


@pytest.mark.slow
@pytest.mark.parametrize("head", sorted(HF_HEADS))
def test_converted_transformers_heads_compile_whole(head, tmp_path):
    model, x = converted(head, tmp_path)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert_same(compiled(*x), model(*x))
    model.train()
    loss_of(compiled(*x)).backward()
    assert any(p.grad is not None for p in model.parameters())
