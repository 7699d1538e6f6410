"""The constructor settings of a perceiver-pytorch module that its state dict does not hold.

A state dict holds the weights, not `max_freq`, `num_freq_bands` vs `input_channels`, `input_axis`, the head split of
each attention (`heads x dim_head` is one width), `inverted_cross_attn`, `seq_dropout_prob` or the dropout rates. A
model built with other values loads without a shape error and gives other outputs, so when the loaders get the
module itself (`Perceiver.from_perceiver_pytorch(peer_model)`), they read these settings from it (`module_settings`)
and `merge_settings` fills the keywords left out and rejects the ones that disagree. Every release 0.8 - 0.11 keeps
them as attributes (`max_freq`, ..., `Attention.heads`, `nn.Dropout.p`); the sub-module paths differ by layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch import nn

Kind = Literal["classic", "io"]

# Sub-module paths (0.11 layout first, then 0.8 - 0.10) of the first cross-attention, its feed-forward and the first
# latent self-attention, each a PreNorm wrapping the module (`.fn`).
_PATHS: dict[Kind, dict[str, Sequence[str]]] = {
    "classic": {
        "cross": ("layers.0.cross_attn.fn", "layers.0.0.fn"),
        "cross_ff": ("layers.0.cross_ff.fn", "layers.0.1.fn"),
        "latent": ("layers.0.self_attns.0.0.fn", "layers.0.2.0.0.fn"),
    },
    "io": {
        "cross": ("cross_attend_block.cross_attn.fn", "cross_attend_blocks.0.fn"),
        "latent": ("layers.0.self_attns.0.0.fn", "layers.0.0.fn"),
        "decoder": ("decoder_cross_attn.fn",),
    },
}
_SELF_ATTNS = ("layers.0.self_attns", "layers.0.2")  # the classic model's first block's latent layers


def _find(module: nn.Module, paths: Sequence[str]) -> nn.Module | None:
    for path in paths:
        try:
            return module.get_submodule(path)
        except AttributeError:
            continue
    return None


def _heads(attention: nn.Module | None, prefix: str) -> dict[str, Any]:
    """`{prefix}_heads` and `{prefix}_dim_head` (`latent_dim_head` / `cross_dim_head`) of a perceiver-pytorch
    `Attention`, from its `heads` and the width of `to_q`."""
    heads = getattr(attention, "heads", None)
    to_q = getattr(attention, "to_q", None)
    if not isinstance(heads, int) or not isinstance(to_q, nn.Linear) or heads < 1:
        return {}
    names = ("cross_heads", "cross_dim_head") if prefix == "cross" else ("latent_heads", "latent_dim_head")
    return {names[0]: heads, names[1]: to_q.out_features // heads}


def module_settings(module: nn.Module, kind: Kind) -> dict[str, Any]:
    """The settings of a perceiver-pytorch `Perceiver` (`kind="classic"`) or `PerceiverIO` (`"io"`) module that its
    state dict cannot show, under the constructor's keyword names (those the module's version has)."""
    for wrapper in ("_orig_mod", "module"):  # torch.compile, DDP
        inner = getattr(module, wrapper, None)
        module = inner if isinstance(inner, nn.Module) else module
    paths = _PATHS[kind]
    out: dict[str, Any] = {}
    names = ("input_axis", "max_freq", "num_freq_bands", "fourier_encode_data") if kind == "classic" else ()
    for name in (*names, "seq_dropout_prob") if kind == "io" else names:
        if hasattr(module, name):
            out[name] = getattr(module, name)
    inverted = getattr(module, "inverted_cross_attn", None)  # 0.9+ (classic: a tuple, one per layer), 0.10+ (io)
    if isinstance(inverted, bool):
        out["inverted_cross_attn"] = inverted
    elif isinstance(inverted, (tuple, list)) and inverted:
        values = tuple(bool(v) for v in inverted)
        out["inverted_cross_attn"] = values[0] if len(set(values)) == 1 else values
    cross = _find(module, paths["cross"])
    out.update(_heads(cross, "cross"))
    out.update(_heads(_find(module, paths["latent"]), "latent"))
    out.update(_structure(module, kind, cross, out))
    if kind == "classic":  # the io model has no dropout
        attn_dropout = getattr(cross, "dropout", None)
        if isinstance(attn_dropout, nn.Dropout):
            out["attn_dropout"] = attn_dropout.p
        net = getattr(_find(module, paths["cross_ff"]), "net", None)
        if isinstance(net, nn.Sequential) and isinstance(net[-1], nn.Dropout):
            out["ff_dropout"] = net[-1].p
    return out


def _structure(module: nn.Module, kind: Kind, cross: nn.Module | None, settings: dict[str, Any]) -> dict[str, Any]:
    """The sizes a state dict shows too, read from the module so that no keyword is needed: depth, latents, widths,
    classes, layers per block and weight tying (seen as one module under two indices)."""
    out: dict[str, Any] = {}
    layers, latents = getattr(module, "layers", None), getattr(module, "latents", None)
    if isinstance(layers, nn.ModuleList) and len(layers):
        out["depth"] = len(layers)
        first = 1 if kind == "classic" else 0  # the classic model shares the layers after the first
        if len(layers) > first + 1:  # 0.8 - 0.10 wrap the shared modules in a new ModuleList per layer
            a, b = (next(layers[i].parameters(), None) for i in (first, first + 1))
            out["weight_tie_layers"] = a is not None and a is b
    if isinstance(latents, nn.Parameter) and latents.ndim == 2:
        out["num_latents"], out["latent_dim"] = latents.shape
    to_kv = getattr(cross, "to_kv", None)
    to_logits = getattr(module, "to_logits", None)
    if kind == "io":
        if isinstance(to_kv, nn.Linear):
            out["dim"] = to_kv.in_features
        to_q = getattr(_find(module, _PATHS["io"]["decoder"]), "to_q", None)
        if isinstance(to_q, nn.Linear):
            out["queries_dim"] = to_q.in_features
        if isinstance(to_logits, (nn.Linear, nn.Identity)):
            out["logits_dim"] = to_logits.out_features if isinstance(to_logits, nn.Linear) else None
        return out
    self_attns = _find(module, _SELF_ATTNS)
    if isinstance(self_attns, nn.ModuleList):
        out["self_per_cross_attn"] = len(self_attns)
    if isinstance(to_logits, nn.Identity):
        out["final_classifier_head"] = False
    elif isinstance(to_logits, nn.Sequential) and isinstance(to_logits[-1], nn.Linear):
        out["final_classifier_head"], out["num_classes"] = True, to_logits[-1].out_features
    if isinstance(to_kv, nn.Linear) and {"input_axis", "num_freq_bands", "fourier_encode_data"} <= set(settings):
        fourier = settings["fourier_encode_data"]
        fourier_channels = settings["input_axis"] * (2 * settings["num_freq_bands"] + 1) if fourier else 0
        out["input_channels"] = to_kv.in_features - fourier_channels
    return out


def lm_settings(module: nn.Module) -> dict[str, Any]:
    """`module_settings` of a perceiver-pytorch `PerceiverLM`: its `PerceiverIO`'s and the embeddings' sizes."""
    io = getattr(module, "perceiver_io", None)
    out = module_settings(io, "io") if isinstance(io, nn.Module) else {}
    for name in ("queries_dim", "logits_dim"):  # the LM sets them (dim, num_tokens)
        out.pop(name, None)
    token_emb, pos_emb = getattr(module, "token_emb", None), getattr(module, "pos_emb", None)
    if isinstance(token_emb, nn.Embedding):
        out["num_tokens"], out["dim"] = token_emb.num_embeddings, token_emb.embedding_dim
    if isinstance(pos_emb, nn.Embedding):
        out["max_seq_len"] = pos_emb.num_embeddings
    return out


def _same(name: str, given: Any, actual: Any, depth: int | None) -> bool:
    if name == "weight_tie_layers" and given is False:  # untying a tied model is a valid load (each layer a copy)
        return True
    if name == "inverted_cross_attn" and depth is not None:  # a bool is that value for every layer
        expand = lambda v: (bool(v),) * depth if isinstance(v, bool) else tuple(bool(x) for x in v)  # noqa: E731
        return bool(expand(given) == expand(actual))
    return bool(given == actual)


def merge_settings(kwargs: dict[str, Any], settings: dict[str, Any], depth: int | None = None) -> dict[str, Any]:
    """`kwargs` with the module's `settings` for the keywords left out; `ValueError` naming each keyword given with
    another value than the module's (`depth`: the number of layers, to compare a bool `inverted_cross_attn` with a
    tuple)."""
    conflicts = [
        f"{name}={kwargs[name]!r} (the module has {value!r})"
        for name, value in settings.items()
        if name in kwargs and not _same(name, kwargs[name], value, depth)
    ]
    if conflicts:
        raise ValueError(
            "keywords that disagree with the perceiver-pytorch module: "
            + ", ".join(conflicts)
            + "; leave them out (they are read from the module) or pass the module's values"
        )
    return {**settings, **kwargs}
