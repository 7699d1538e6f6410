"""bench_ar's generate-cached case: ours vs krasserm's perceiver-io, both with a KV cache (its PyPI wheel, run in a
subprocess because its package is also named `perceiver`, see `tests/krasserm_peer.py`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

KRASSERM = dict(
    vocab_size=262, max_seq_len=2048, max_latents=512, num_channels=256, num_heads=4, num_self_attention_layers=4
)
KRASSERM_PROMPT, KRASSERM_LATENTS = 1792, 256

KRASSERM_SCRIPT = """
import dataclasses, json, time
from perceiver.model.text.clm import PerceiverCausalLanguageModel, PerceiverCausalLanguageModelConfig
from perceiver.model.text.clm.backend import CausalLanguageModelConfig

spec = json.loads(open(sys.argv[1] + "/spec.json").read())
torch.manual_seed(0)
wrapper = PerceiverCausalLanguageModel(PerceiverCausalLanguageModelConfig(CausalLanguageModelConfig(**spec["config"])))
wrapper.eval()
with torch.no_grad():  # weights of std 1 / sqrt(fan-in), so that greedy tokens are not near-ties of a 0.02 init
    for p in wrapper.parameters():
        if p.ndim > 1:
            p.normal_(0.0, p.shape[-1] ** -0.5)
prompt = torch.load(sys.argv[1] + "/prompt.pt", weights_only=True)


@torch.no_grad()
def generate(ids, new_tokens):
    prefix_len, past = ids.shape[1] - spec["num_latents"], None
    for _ in range(new_tokens):
        inputs = wrapper.prepare_inputs_for_generation(ids, past_key_values=past, use_cache=True, prefix_len=prefix_len)
        out = wrapper(**inputs)
        past, prefix_len = out.past_key_values, inputs["prefix_len"]
        ids = torch.cat((ids, out.logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return ids


generate(prompt[:, -spec["num_latents"] - 64 :], 2)  # warm-up
start = time.perf_counter()
out = generate(prompt, spec["new_tokens"])
seconds = time.perf_counter() - start
state = {k: v for k, v in wrapper.backend_model.state_dict().items()}
torch.save({"config": dataclasses.asdict(wrapper.backend_model.config), "state_dict": state, "tokens": out,
            "seconds": seconds}, sys.argv[2])
"""


def bench_generate_krasserm(new_tokens: int, prompt: torch.Tensor, threads: int) -> dict:
    """Ours vs krasserm's perceiver-io, both with a KV cache (see bench_ar's docstring), on `prompt` `(1,
    KRASSERM_PROMPT)`; its error if it cannot run."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from krasserm_peer import VERSION, install, run

    from perceiver import PerceiverAR

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp)
        error = install(target)
        if error is not None:
            return {"error": f"cannot install krasserm's perceiver-io {VERSION}: {error}"}
        torch.save(prompt, target / "prompt.pt")
        spec = {"config": KRASSERM, "num_latents": KRASSERM_LATENTS, "new_tokens": new_tokens}
        (target / "spec.json").write_text(json.dumps(spec))
        peer = run(target, KRASSERM_SCRIPT, "krasserm.pt", threads=threads)
    ours = PerceiverAR.from_krasserm(peer["state_dict"], peer["config"])
    kwargs = dict(do_sample=False, num_latents=KRASSERM_LATENTS, max_latents=KRASSERM["max_latents"])
    ours.generate(prompt[:, -KRASSERM_LATENTS - 64 :], 2, **kwargs)  # warm-up
    start = time.perf_counter()
    got = ours.generate(prompt, new_tokens, **kwargs)
    seconds = time.perf_counter() - start
    same = got[0, KRASSERM_PROMPT:] == peer["tokens"][0, KRASSERM_PROMPT:]
    first_diff = int((~same).nonzero()[0, 0]) if not bool(same.all()) else None
    return {
        "version": VERSION,
        "ours": {"seconds": seconds, "tokens_per_s": new_tokens / seconds},
        "peer": {"seconds": peer["seconds"], "tokens_per_s": new_tokens / peer["seconds"]},
        "speedup": peer["seconds"] / seconds,
        "same_tokens": first_diff is None,
        "first_different_token": first_diff,
    }
