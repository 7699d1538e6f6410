"""PerceiverAR: causality, latents, prefix dropout, KV-cached generation (sliding window, left padding), bad input,
save / load, compile and ONNX export."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from ar_util import V, ids, tiny

import perceiver
from perceiver import PerceiverAR
from perceiver.models.ar import PerceiverARConfig


@pytest.fixture(scope="module", params=[False, True], ids=["rotary", "rotary+abs"])
def model(request) -> PerceiverAR:
    return tiny(abs_pos_emb=request.param, num_cross_layers=2 if request.param else 1)


def test_shapes_and_shifted_loss(model):
    x = ids(2, 20)
    out = model(x, labels=x)
    assert out.logits.shape == (2, 6, V) and out.last_hidden_state.shape == (2, 6, 32)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), x[:, 15:].reshape(-1))
    assert torch.allclose(out.loss, expected)
    assert model(x, num_latents=9).logits.shape == (2, 9, V)
    assert model(x[:, :4]).logits.shape == (2, 4, V)  # fewer tokens than latents: all positions are latents
    labels = x.clone()
    labels[:, -3:] = -100
    masked = model(x, labels=labels).loss
    assert torch.allclose(masked, F.cross_entropy(out.logits[:, :2].reshape(-1, V), x[:, 15:17].reshape(-1)))


@pytest.mark.parametrize("padded", [False, True])
def test_changing_a_future_token_never_changes_an_earlier_logit(model, padded):
    x = ids(2, 20)
    mask = None
    if padded:
        mask = torch.ones_like(x, dtype=torch.bool)
        mask[1, :4] = False
    base = model(x, mask, num_latents=10).logits  # latent i is window position 10 + i
    for t in (3, 12, 16, 19):
        y = x.clone()
        y[:, t] = (y[:, t] + 7) % V
        diff = (model(y, mask, num_latents=10).logits - base).abs().amax(-1)  # (B, 10)
        positions = torch.arange(10, 20)
        assert (diff[:, positions < t] == 0).all()
        if padded and t < 4:  # a padding token of row 1 changes nothing in it
            assert (diff[1] == 0).all() and (diff[0, positions >= t] > 0).all()
        else:
            assert (diff[:, positions >= t] > 0).all()  # ... and does change the later ones


def test_left_padded_row_equals_the_row_alone(model):
    x = ids(2, 18)
    short = x[1, 5:]
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, :5] = False
    batched = model(x, mask, num_latents=8).logits
    alone = model(short[None], num_latents=8).logits
    assert torch.allclose(batched[1], alone[0], atol=1e-5)
    assert torch.isfinite(model(x, mask, num_latents=16).logits).all()  # padded latents stay finite


def test_gradients_reach_every_parameter():
    model = tiny(abs_pos_emb=True, final_norm=True, cross_out_bias=True).train()
    x = ids(2, 20)
    model(x, labels=x).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_prefix_dropout_drops_that_fraction_of_prefix_positions_in_training_only():
    model = tiny(prefix_dropout=0.5).train()
    x = ids(3, 20)  # 14 prefix positions, 7 kept per row
    grads = {}

    def keep(module, args, output):
        output.retain_grad()
        grads["emb"] = output

    model.token_emb.register_forward_hook(keep)
    model(x, labels=x).loss.backward()
    reached = grads["emb"].grad.abs().sum(-1) > 0  # (B, L): positions that took part
    assert reached[:, :14].sum(1).tolist() == [7, 7, 7]
    assert reached[:, 14:-1].all()  # (the last position predicts nothing with a target)
    model.eval()
    assert torch.equal(model(x).logits, model(x).logits)
    assert torch.equal(model(x).logits, tiny()(x).logits)  # no dropout at eval


def _schedule_reference(model, prompt, steps, num_latents, max_latents):
    """The documented window schedule written out with full forwards (greedy)."""
    w = model.config.max_seq_len
    keep = w - (max_latents - num_latents)
    out, start, n = prompt, 0, min(num_latents, prompt.shape[1])
    for i in range(steps):
        if i > 0:
            n += 1
            if out.shape[1] - start > w or n > max_latents:
                start = max(start, out.shape[1] - keep)
                n = min(num_latents, out.shape[1] - start)
        logits = model(out[:, start:], num_latents=n).logits[:, -1]
        out = torch.cat((out, logits.argmax(-1, keepdim=True)), 1)
    return out


@pytest.mark.parametrize("max_latents", [6, 11])
def test_cached_greedy_equals_uncached_and_the_schedule_past_max_seq_len(max_latents):
    model = tiny(abs_pos_emb=True, num_cross_layers=2)  # learned positions: a wrong position after a slide shows
    prompt = ids(2, 10)
    steps = 34  # the window (24) slides several times
    cached = model.generate(prompt, steps, max_latents=max_latents)
    uncached = model.generate(prompt, steps, max_latents=max_latents, use_cache=False)
    assert cached.shape == (2, 44)
    assert torch.equal(cached[:, :10], prompt)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, _schedule_reference(model, prompt, steps, 6, max_latents))


def test_krasserm_options_generate_with_the_cache_as_without_and_compile_clean():
    """Rotary in the first self-attention layer only, interleaved, a wider cross-attention MLP and a logits bias
    (krasserm's layout): each changes the function, and generation and compile hold for it as for the defaults."""
    options = dict(rotary_interleaved=True, cross_ff_mult=2.0, logits_bias=True, tie_embeddings=True)
    model = tiny(abs_pos_emb=True, rotary_layers=1, **options)
    with torch.no_grad():
        model.to_logits.bias.normal_(0, 0.5)
    x = ids(2, 20)
    all_rotate = tiny(abs_pos_emb=True, **options)
    all_rotate.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(model(x).logits, all_rotate(x).logits, atol=1e-4)
    assert model.cross_layers[0].ff.fc1.out_features == 64 and model.layers[0].ff.fc1.out_features == 128
    assert model.to_logits.weight is model.token_emb.weight
    prompt = ids(2, 10)
    cached = model.generate(prompt, 30, max_latents=9)
    assert torch.equal(cached, model.generate(prompt, 30, max_latents=9, use_cache=False))
    assert torch.equal(cached, _schedule_reference(model, prompt, 30, 6, 9))
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_cached_sampling_equals_uncached_with_a_fixed_generator():
    model = tiny()
    prompt = ids(3, 7)
    kw = dict(do_sample=True, temperature=0.9, top_k=20, top_p=0.9)
    a = model.generate(prompt, 16, generator=torch.Generator().manual_seed(1), **kw)
    b = model.generate(prompt, 16, generator=torch.Generator().manual_seed(1), use_cache=False, **kw)
    c = model.generate(prompt, 16, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = model.generate(prompt, 10)
    assert torch.equal(model.generate(prompt, 10, do_sample=True, top_k=1), greedy)
    assert torch.equal(model.generate(prompt, 10, do_sample=True, top_p=1e-6), greedy)


@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(model, use_cache):
    prompts = [ids(1, 9, seed=1)[0], ids(1, 4, seed=2)[0], ids(1, 1, seed=3)[0]]
    batch = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for i, p in enumerate(prompts):
        batch[i, 9 - len(p) :] = p
        mask[i, 9 - len(p) :] = True
    # equal while no window slides: 9 + 8 < 24 tokens, latents <= max_latents (rows slide together, see generate)
    out = model.generate(batch, 8, attention_mask=mask, use_cache=use_cache, max_latents=24)
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], 8, use_cache=use_cache, max_latents=24)
        assert torch.equal(out[i, 9 - len(p) :], alone[0])


def test_eos_stops_rows_and_pads_them(model):
    prompt = ids(2, 5)
    free = model.generate(prompt, 12)
    eos = int(free[0, 7])
    out = model.generate(prompt, 12, eos_token_id=eos, pad_token_id=0)
    for row_free, row in zip(free, out):
        hits = (row_free[5:] == eos).nonzero()
        if len(hits):
            cut = 5 + int(hits[0]) + 1
            assert torch.equal(row[:cut], row_free[:cut]) and (row[cut:] == 0).all()
    assert model.generate(prompt, 0).shape == (2, 5)


class Recorder:
    """A streamer that records what `generate` hands it."""

    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        assert self.ended == 0, "put after end"
        self.puts.append(value)

    def end(self):
        self.ended += 1


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
def test_streamer_gets_the_prompt_then_each_step_then_end(model, use_cache):
    prompt, rec = ids(2, 5), Recorder()
    out = model.generate(prompt, 30, use_cache=use_cache, streamer=rec, max_latents=9)  # slides the window too
    assert rec.ended == 1 and torch.equal(rec.puts[0], prompt)
    assert all(p.shape == (2,) and p.device.type == "cpu" for p in rec.puts[1:])
    assert torch.equal(torch.cat([rec.puts[0], torch.stack(rec.puts[1:], dim=1)], dim=1), out)
    eos = int(out[0, 8])  # early stop: the steps streamed are the steps generated
    rec = Recorder()
    stopped = model.generate(prompt[:1], 30, use_cache=use_cache, eos_token_id=eos, streamer=rec, max_latents=9)
    first = 5 + int((out[0, 5:] == eos).nonzero()[0])  # where row 0 first produced it
    assert stopped.shape[1] == first + 1 and len(rec.puts) == 1 + first + 1 - 5


def test_transformers_text_streamer_prints_what_generate_returns(capsys):
    transformers = pytest.importorskip("transformers")
    tok = perceiver.ByteTokenizer()
    prompt = torch.tensor([tok.encode("ab", add_special_tokens=False)])
    small = tiny(vocab_size=262)
    out = small.generate(prompt, 12, streamer=transformers.TextStreamer(tok, skip_prompt=True))
    printed = capsys.readouterr().out
    assert printed == tok.decode(out[0, prompt.shape[1] :].tolist()) + "\n"


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sample"])
def test_repetition_penalty_is_transformers_processor(model, do_sample):
    transformers = pytest.importorskip("transformers")
    prompt, kw = ids(2, 6), dict(do_sample=do_sample, max_latents=9)  # slides the window too

    def run(**more):
        return model.generate(prompt, 24, generator=torch.Generator().manual_seed(3), **kw, **more)

    penalised = run(repetition_penalty=3.0)
    assert torch.equal(penalised, run(logits_processor=transformers.RepetitionPenaltyLogitsProcessor(3.0)))
    assert not torch.equal(penalised, run())  # it changes what is generated


def test_repetition_penalty_ignores_left_padding():
    from perceiver.models.ar_generation import _penalize_repeats

    logits = torch.tensor([[2.0, -2.0, 4.0, 1.0]])
    row, mask = torch.tensor([[3, 0, 1]]), torch.tensor([[False, True, True]])  # id 3 only in the padding
    assert torch.equal(_penalize_repeats(logits, row, mask, 2.0), torch.tensor([[1.0, -4.0, 4.0, 1.0]]))


def test_min_new_tokens_is_transformers_processor(model):
    transformers = pytest.importorskip("transformers")
    prompt = ids(2, 5)
    eos = int(model.generate(prompt, 1)[0, -1])  # row 0's first greedy token
    out = model.generate(prompt, 10, eos_token_id=eos, min_new_tokens=4)
    assert not (out[:, 5:9] == eos).any()
    hf = transformers.MinNewTokensLengthLogitsProcessor(5, 4, eos)
    assert torch.equal(out, model.generate(prompt, 10, eos_token_id=eos, logits_processor=hf))


def test_num_return_sequences_samples_continuations_of_each_prompt(model):
    prompt = ids(2, 5)
    out = model.generate(prompt, 8, do_sample=True, num_return_sequences=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, 13) and torch.equal(out[:, :5], prompt.repeat_interleave(3, dim=0))
    assert len({tuple(r) for r in out[:3, 5:].tolist()}) > 1  # samples, not copies
    same = model.generate(prompt.repeat_interleave(3, 0), 8, do_sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, same)


def test_logits_processor_sees_the_rows_and_decides(model):
    calls = []

    def forbid_seven(row_ids, scores):
        calls.append((row_ids.shape, scores.shape))
        return scores.masked_fill(torch.arange(scores.shape[-1]) == 7, float("-inf"))

    out = model.generate(ids(2, 5), 20, do_sample=True, logits_processor=forbid_seven)
    assert not (out[:, 5:] == 7).any()
    assert calls[0] == ((2, 5), (2, V)) and calls[-1] == ((2, 24), (2, V))


def test_a_streamer_without_put_and_end_is_a_clear_error(model):
    with pytest.raises(ValueError, match="expected a streamer with put\\(ids\\) and end\\(\\) methods, got list"):
        model.generate(ids(1, 3), 2, streamer=[])


def test_save_load_round_trip_and_presets(tmp_path, model):
    model.save_pretrained(tmp_path / "ar")
    loaded = perceiver.from_pretrained(tmp_path / "ar")
    x = ids(2, 20)
    assert isinstance(loaded, PerceiverAR) and torch.equal(loaded(x).logits, model(x).logits)
    assert "perceiver-ar" in perceiver.list_models("perceiver-ar*")
    small = perceiver.create_model("perceiver-ar-tiny", max_seq_len=64, num_latents=16)
    assert small.config.vocab_size == 262 and small.num_parameters() > 0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m.generate(ids(1, 25), 1), "at most max_seq_len=24 tokens, got 25"),
        (lambda m: m.generate(ids(1, 3) + V, 1), r"token ids in \[0, 41\)"),
        (lambda m: m.generate(ids(1, 3) - 50, 1), r"token ids in \[0, 41\)"),
        (lambda m: m(ids(1, 3) + V), r"token ids in \[0, 41\)"),
        (lambda m: m.generate(torch.zeros(1, 0, dtype=torch.long), 1), "at least one token"),
        (lambda m: m.generate(ids(1, 3).float(), 1), "integer token ids"),
        (lambda m: m.generate(ids(1, 3), -1), "max_new_tokens >= 0"),
        (lambda m: m.generate(ids(1, 3), 2, do_sample=True, top_p=0.0), r"top_p in \(0, 1\]"),
        (lambda m: m.generate(ids(1, 3), 2, do_sample=True, top_p=1.5), r"top_p in \(0, 1\]"),
        (lambda m: m.generate(ids(1, 3), 2, do_sample=True, temperature=0.0), "temperature > 0"),
        (lambda m: m.generate(ids(1, 3), 2, top_k=-1), r"top_k >= 0 \(an int\), got -1"),  # 0: off
        (lambda m: m.generate(ids(2, 3), 2, attention_mask=torch.tensor([[1, 0, 1], [1, 1, 1]])), "left-padded"),
        (lambda m: m(ids(2, 3), torch.ones(2, 4)), r"attention_mask of shape \(2, 3\)"),
        (lambda m: m(ids(2, 8), labels=ids(2, 7)), r"labels of shape \(2, 8\)"),
        (lambda m: m(ids(2, 8), num_latents=0), "num_latents must be a positive integer"),
        (lambda m: m.generate(ids(1, 3), 2, max_latents=3), r"max_latents in \[num_latents=6"),
        (lambda m: m.generate(ids(1, 3), 2, repetition_penalty=0.0), "repetition_penalty > 0, got 0.0"),
        (lambda m: m.generate(ids(1, 3), 2, min_new_tokens=-1), r"min_new_tokens >= 0 \(an int\), got -1"),
        (lambda m: m.generate(ids(1, 3), 2, num_return_sequences=0), r"num_return_sequences >= 1 \(an int\), got 0"),
        (lambda m: m.generate(ids(1, 3), 2, num_return_sequences=2), "expected do_sample=True for num_return_seq"),
        (lambda m: m(ids(2, 1), cache=_filled_cache(m, 3)), "cache for batch size 2, got a cache for batch size 3"),
        (lambda m: m(ids(1, 20), num_latents=10, cache=m.init_cache(1, 8)), "at most 24 tokens and 8 latents"),
    ],
)
def test_bad_input_is_a_clear_value_error(model, call, match):
    with pytest.raises(ValueError, match=match):
        call(model)


def _filled_cache(model, b):
    cache = model.init_cache(b, 12)
    model(ids(b, 10), cache=cache)
    return cache


def test_hidden_states_of_every_layer_in_a_window_and_a_cached_step(model):
    """`return_hidden_states`: the latents after each cross-attention and latent layer, the last being
    `last_hidden_state`; a cached decoding step returns those of its new latent, equal to the last rows of the
    uncached window with one more latent (the cache keeps the prompt's 6 latents and adds one)."""
    layers = model.config.num_cross_layers + model.config.num_layers
    x = ids(2, 11)
    with torch.no_grad():
        out = model(x, return_hidden_states=True, num_latents=7)
        cache = model.init_cache(2, 12)
        model(x[:, :10], cache=cache)
        step = model(x[:, 10:], cache=cache, return_hidden_states=True)
    assert len(out.hidden_states) == len(step.hidden_states) == layers
    assert out.hidden_states[-1] is out.last_hidden_state and step.hidden_states[-1] is step.last_hidden_state
    assert all(s.shape == (2, 7, 32) for s in out.hidden_states)
    assert not torch.allclose(out.hidden_states[0], out.hidden_states[1])
    for got, want in zip(step.hidden_states, out.hidden_states):  # the step's new latent is the window's last row
        torch.testing.assert_close(got[:, -1], want[:, -1], atol=1e-5, rtol=1e-4)
    assert model(x).hidden_states is None


def test_config_validation():
    with pytest.raises(ValueError, match="num_latents must be <= max_seq_len"):
        PerceiverARConfig(max_seq_len=8, num_latents=9)
    with pytest.raises(ValueError, match="rotary dim"):
        PerceiverARConfig(d_model=32, num_heads=2, rotary_dim=18)
    with pytest.raises(ValueError, match="rotary_layers must be None .all. or a non-negative integer, got -1"):
        PerceiverARConfig(rotary_layers=-1)
    with pytest.raises(ValueError, match="cross_ff_mult must be a positive number, got 0"):
        PerceiverARConfig(cross_ff_mult=0)


def test_forward_has_no_graph_breaks_and_a_compiled_decoding_step_matches_eager():
    model = tiny(abs_pos_emb=True)
    x = ids(2, 20)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, :3] = False
    explained = torch._dynamo.explain(model)(x, mask)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    with torch.no_grad():
        cache = model.init_cache(2, 12)
        model(x, mask, cache=cache)
        eager_cache = copy.deepcopy(cache)
        step = torch.compile(model, fullgraph=True, dynamic=False)  # fullgraph: any graph break is an error
        token = x[:, -1:]
        for _ in range(3):  # the cache lengths are tensors: one graph for every step
            got = step(token, cache=cache).logits
            expected = model(token, cache=eager_cache).logits
            assert torch.allclose(got, expected, atol=1e-5)
            token = expected.argmax(-1)


@pytest.mark.slow
def test_compiled_forward_matches_eager():
    model = tiny(abs_pos_emb=True)
    x = ids(2, 20)
    with torch.no_grad():
        assert torch.allclose(torch.compile(model, fullgraph=True)(x).logits, model(x).logits, atol=1e-5)


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask).logits


@pytest.mark.slow  # ~5 s of export
def test_onnx_export_matches_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _Logits(tiny(abs_pos_emb=True)).eval()
    x = ids(2, 20)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, :5] = False
    torch.onnx.export(model, (x, mask), str(tmp_path / "ar.onnx"), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(tmp_path / "ar.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, dict(zip(names, (x.numpy(), mask.numpy()))))[0]
    with torch.no_grad():
        expected = model(x, mask).numpy()
    assert abs(got - expected).max() <= 1e-4


def test_matmul_kernel_equals_sdpa_in_forward_gradients_and_cached_generation(model):
    """`use_matmul_attention` reaches Perceiver AR's own layers: the written-out attention computes what SDPA does
    (left padding, prefix + latents, training gradients) and cached generation picks the same tokens."""
    from perceiver.nn.attention import use_matmul_attention

    twin = use_matmul_attention(model)
    kernels = {m.kernel for m in twin.modules() if hasattr(m, "kernel")}
    assert kernels == {"matmul"} and {m.kernel for m in model.modules() if hasattr(m, "kernel")} == {"sdpa"}
    assert twin.token_emb.weight is model.token_emb.weight  # parameters shared
    x = ids(2, 20)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, :4] = False
    for n in (6, 20):  # a prefix, and every position a latent (the self-attention's is_causal path)
        torch.testing.assert_close(twin(x, mask, num_latents=n).logits, model(x, mask, num_latents=n).logits)
        torch.testing.assert_close(twin(x, num_latents=n).logits, model(x, num_latents=n).logits)
    grads = []
    for m in (model, twin):
        m.train()
        m.zero_grad()
        m(x, labels=x).loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
        m.zero_grad()
        m.eval()
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, atol=1e-5, rtol=1e-4, msg=n)
    prompt = ids(2, 10, seed=1)
    assert torch.equal(twin.generate(prompt, 20), model.generate(prompt, 20))
    assert torch._dynamo.explain(twin)(x, mask).graph_break_count == 0  # compile-clean like the default kernel


def test_matmul_attention_optimize_candidate_runs_perceiver_ar():
    model = tiny().train()
    x = ids(2, 20)
    fast = perceiver.optimize(
        model, (x,), {"labels": x}, training=True, candidates=["matmul-attention"], loss_fn=lambda out: out.loss,
        repeats=1, verbose=False,
    )  # fmt: skip
    assert "matmul-attention" in fast.report.seconds, fast.report.skipped
    assert fast.report.max_rel_error["matmul-attention"] <= 1e-4
