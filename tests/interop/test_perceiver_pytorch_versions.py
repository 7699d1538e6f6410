"""Parity with the real wheels of every perceiver-pytorch release that changed the state-dict layout (slow).

Each version is `pip install --target`-ed into a temporary folder and run in a subprocess that builds the peer's
`Perceiver`, `PerceiverIO` and `PerceiverLM` with the options that version has, and saves state dicts, inputs and
outputs; our loaders then rebuild the models from the saved state dicts and must give the same outputs (<= 1e-5).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from pp_tiny import CLASSIC, IO

from perceiver import Perceiver
from perceiver.models.lucidrains_io import LucidrainsPerceiverIO, LucidrainsPerceiverLM

pytestmark = pytest.mark.slow

VERSIONS = ["0.8.8", "0.9.0", "0.10.0", "0.10.1", "0.11.0"]

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    import perceiver_pytorch as pp
    assert pp.__file__.startswith(sys.argv[1]), pp.__file__
    version = tuple(int(v) for v in sys.argv[2].split("."))
    torch.manual_seed(0)

    def randomize(m):
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, torch.nn.LayerNorm):
                    mod.weight.normal_(1.0, 0.2)
                    mod.bias.normal_(0.0, 0.2)
                if type(mod).__name__ == "RMSNorm":
                    mod.weight.normal_(1.0, 0.2)

    classic = dict(input_channels=3, input_axis=2, num_freq_bands=3, max_freq=6.0, depth=3, num_latents=5,
                   latent_dim=16, cross_heads=2, latent_heads=2, cross_dim_head=8, latent_dim_head=8, num_classes=7)
    classic_cases = [dict(), dict(weight_tie_layers=True, self_per_cross_attn=2)]
    if version >= (0, 9, 0):
        classic_cases += [dict(inverted_cross_attn=True), dict(inverted_cross_attn=(True, False, True),
                                                               weight_tie_layers=True)]
    if version >= (0, 10, 0):
        classic_cases += [dict(attn_residual=True, attn_residual_rank=4),
                          dict(attn_residual=True, weight_tie_layers=True, inverted_cross_attn=(False, True, True))]
    io = dict(depth=3, dim=12, queries_dim=10, logits_dim=9, num_latents=6, latent_dim=16, cross_heads=2,
              latent_heads=2, cross_dim_head=8, latent_dim_head=8)
    io_cases = [dict(), dict(weight_tie_layers=True, decoder_ff=True)]
    if version >= (0, 10, 0):
        io_cases += [dict(attn_residual=True, attn_residual_rank=4, inverted_cross_attn=True),
                     dict(attn_residual=True, weight_tie_layers=True)]

    data = torch.randn(2, 5, 4, 3)
    mask = torch.rand(2, 5, 4) > 0.4
    mask[:, 0, 0] = True
    seq, queries = torch.randn(2, 11, 12), torch.randn(2, 4, 10)
    seq_mask = torch.rand(2, 11) > 0.4
    seq_mask[:, :2] = True
    out = {"data": data, "mask": mask, "seq": seq, "queries": queries, "seq_mask": seq_mask, "classic": [], "io": []}
    from perceiver.interop.perceiver_pytorch_settings import lm_settings, module_settings

    def settings(module, kind):  # what our loaders read from this version's module (an error: its message)
        try:
            found = lm_settings(module) if kind == "lm" else module_settings(module, kind)
            return {k: list(v) if isinstance(v, tuple) else v for k, v in found.items()}
        except Exception as e:
            return repr(e)

    out["settings"] = {"classic": [], "io": []}
    with torch.no_grad():
        for case in classic_cases:
            peer = pp.Perceiver(**classic, **case).eval()
            randomize(peer)
            out["classic"].append((case, peer.state_dict(), peer(data), peer(data, mask=mask)))
            out["settings"]["classic"].append(settings(peer, "classic"))
        for case in io_cases:
            peer = pp.PerceiverIO(**io, **case).eval()
            randomize(peer)
            out["io"].append((case, peer.state_dict(), peer(seq, mask=seq_mask, queries=queries), peer(seq)))
            out["settings"]["io"].append(settings(peer, "io"))
    drop = pp.PerceiverIO(**io, seq_dropout_prob=0.3).train()
    torch.manual_seed(7)
    out["drop"] = (drop.state_dict(), drop(seq, mask=seq_mask, queries=queries))
    lm = dict(io, num_tokens=20, max_seq_len=16, depth=2)
    del lm["queries_dim"], lm["logits_dim"]
    peer = pp.PerceiverLM(**lm).eval()
    randomize(peer)
    ids = torch.randint(0, 20, (2, 10))
    with torch.no_grad():
        out["lm"] = (lm, peer.state_dict(), ids, peer(ids, mask=seq_mask[:, :10]))
    out["settings"]["lm"] = settings(peer, "lm")
    out = {k: ([(dict(c), *rest) for c, *rest in v] if k in ("classic", "io") else v) for k, v in out.items()}
    torch.save(out, sys.argv[3])
    """
)


@pytest.fixture(scope="module", params=VERSIONS)
def reference(request, tmp_path_factory):
    version = request.param
    target = tmp_path_factory.mktemp(f"pp-{version}")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
    result = subprocess.run([*pip, f"perceiver-pytorch=={version}"], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot install perceiver-pytorch=={version}: {result.stderr[-300:]}")
    out = target / "reference.pt"
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-c", SCRIPT, str(target), version, str(out)], check=True, env=env, capture_output=True
    )
    return version, torch.load(out, weights_only=True)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= 1e-5


def test_layout_of_version(reference):
    from perceiver.interop.perceiver_pytorch import detect_layout

    version, ref = reference
    expected = "0.11" if version == "0.11.0" else "0.8"
    assert detect_layout(list(ref["classic"][0][1])) == expected
    assert detect_layout(list(ref["io"][0][1])) == expected


def test_classic_parity(reference):
    version, ref = reference
    for case, state_dict, plain, masked in ref["classic"]:
        if isinstance(case.get("inverted_cross_attn"), list):
            case["inverted_cross_attn"] = tuple(case["inverted_cross_attn"])
        ours = Perceiver.from_perceiver_pytorch(state_dict, **CLASSIC, **case)
        if case.get("attn_residual"):
            assert ours.config.attn_residual_norm == (version not in ("0.10.0",))
        with torch.no_grad():
            assert close(ours(ref["data"]), plain), (version, case)
            assert close(ours(ref["data"], mask=ref["mask"]), masked), (version, case)


def test_perceiver_io_parity(reference):
    version, ref = reference
    for case, state_dict, decoded, latents in ref["io"]:
        ours = LucidrainsPerceiverIO.from_perceiver_pytorch(state_dict, **IO, **case)
        with torch.no_grad():
            assert close(ours(ref["seq"], mask=ref["seq_mask"], queries=ref["queries"]), decoded), (version, case)
            assert close(ours(ref["seq"]), latents), (version, case)


def test_seq_dropout_parity(reference):
    version, ref = reference
    state_dict, expected = ref["drop"]
    ours = LucidrainsPerceiverIO.from_perceiver_pytorch(state_dict, **IO, seq_dropout_prob=0.3).train()
    torch.manual_seed(7)
    assert close(ours(ref["seq"], mask=ref["seq_mask"], queries=ref["queries"]), expected), version


def test_perceiver_lm_parity(reference):
    version, ref = reference
    kwargs, state_dict, ids, expected = ref["lm"]
    ours = LucidrainsPerceiverLM.from_perceiver_pytorch(state_dict, **kwargs)
    with torch.no_grad():
        assert close(ours(ids, mask=ref["seq_mask"][:, :10]), expected), version


def test_settings_read_from_the_module_of_every_version(reference):
    """What `from_perceiver_pytorch(module)` reads from each release's modules is what they were built with, and it
    completes the state dict into the whole model (no keyword needed)."""
    version, ref = reference
    for (case, state_dict, plain, _), found in zip(ref["classic"], ref["settings"]["classic"], strict=True):
        assert isinstance(found, dict), (version, found)
        built = {**CLASSIC, "weight_tie_layers": False, **case}
        assert all(found[k] == v for k, v in built.items() if k in found and k != "inverted_cross_attn"), (
            version,
            found,
        )
        assert set(found) >= set(CLASSIC) - {"num_classes"}, (version, found)
        found["inverted_cross_attn"] = (
            tuple(found["inverted_cross_attn"])
            if isinstance(found.get("inverted_cross_attn"), list)
            else found.get("inverted_cross_attn", False)
        )
        ours = Perceiver.from_perceiver_pytorch(state_dict, **found)
        with torch.no_grad():
            assert close(ours(ref["data"]), plain), (version, case)
    for (case, state_dict, decoded, _), found in zip(ref["io"], ref["settings"]["io"], strict=True):
        assert isinstance(found, dict), (version, found)
        ours = LucidrainsPerceiverIO.from_perceiver_pytorch(state_dict, **found)
        assert all(getattr(ours.config, k) == v for k, v in {**IO, **case}.items() if k != "decoder_ff"), (
            version,
            case,
        )
        with torch.no_grad():
            assert close(ours(ref["seq"], mask=ref["seq_mask"], queries=ref["queries"]), decoded), (version, case)
    kwargs, state_dict, ids, expected = ref["lm"]
    found = ref["settings"]["lm"]
    assert isinstance(found, dict) and all(found[k] == v for k, v in kwargs.items()), (version, found)
    with torch.no_grad():
        assert close(
            LucidrainsPerceiverLM.from_perceiver_pytorch(state_dict, **found)(ids, mask=ref["seq_mask"][:, :10]),
            expected,
        )
