"""Load perceiver-pytorch (lucidrains) state dicts, every released layout from 0.8 to 0.11, into our models.

- `Perceiver` -> our classic `Perceiver` (`from_perceiver_pytorch`);
- `PerceiverIO` / `PerceiverLM` -> `perceiver.models.lucidrains_io.LucidrainsPerceiverIO` / `LucidrainsPerceiverLM`
  (`from_perceiver_pytorch_io`, `from_perceiver_pytorch_lm`);
- `PerceiverBlock` (0.11, e.g. with `queries_contribute_kv`) -> `LucidrainsPerceiverBlock` (`from_perceiver_block`).

Layouts, recognised from the keys (`detect_layout`):

| version      | classic `Perceiver`                                        | `PerceiverIO`                                   |
| ------------ | ---------------------------------------------------------- | ----------------------------------------------- |
| 0.8 - 0.10.1 | `layers.{i}.{0,1}` cross attn / ff, `layers.{i}.2.{j}`      | `cross_attend_blocks.{0,1}`, `layers.{i}.{0,1}` |
|              | self-attention, `layers.{i}.3` attention residual (0.10)    | `layers.{i}.2` attention residual (0.10)        |
| 0.11         | `layers.{i}.cross_attn / cross_ff / self_attns.{j}`,       | `cross_attend_block.{cross_attn,cross_ff}`,      |
|              | `attn_residuals.{i}`                                        | `layers.{i}.self_attns.0.{0,1}`, `attn_residuals.{i}` |

Old keys are first renamed to the 0.11 names, then mapped to ours. Attention residuals are read from the keys: their
presence, rank, and whether they start with the RMSNorm of 0.10.1 (`to_attn_logits.{0,1,2}`) or not (0.10.0,
`to_attn_logits.{0,1}`). perceiver-pytorch fuses k and v in one `to_kv` projection and, with `weight_tie_layers`,
lists a shared block under every index that uses it; both are undone here. Its constructor defaults differ from ours
in `num_latents` (512). A state dict saved under DDP (`module.`), `torch.compile` (`_orig_mod.`) or a Lightning
module (`model.`), or a whole Lightning checkpoint dict, is taken as the bare one (`keys.unwrap_state_dict`).

Given the peer's module instead of its state dict, the loaders read its settings from it, also those the weights do
not show (`max_freq`, the heads, `inverted_cross_attn`, ...: `perceiver_pytorch_settings`), so no keyword is needed.
Our models' `load_state_dict` takes their counterpart's state dict directly (`load_perceiver_pytorch_state_dict`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from perceiver.interop.keys import unwrap_state_dict
from perceiver.interop.perceiver_pytorch_settings import Kind, lm_settings, merge_settings, module_settings
from perceiver.models.classic import Perceiver

if TYPE_CHECKING:
    from perceiver.models.lucidrains_io import LucidrainsPerceiverBlock, LucidrainsPerceiverIO, LucidrainsPerceiverLM

Layout = Literal["0.8", "0.11"]

# perceiver-pytorch's keyword defaults where they differ from ours.
_PEER_DEFAULTS = {"num_latents": 512}

# A PreNorm(Attention) and a PreNorm(FeedForward) in 0.11 names, relative to their module, -> ours.
_ATTN = [
    (r"norm\.(.*)", "{q_norm}.{0}"),
    (r"norm_context\.(.*)", "kv_norm.{0}"),
    (r"fn\.to_q\.(.*)", "{attn}.q_proj.{0}"),
    (r"fn\.to_kv\.(.*)", "{attn}.{kv}_proj.{0}"),
    (r"fn\.to_out\.(.*)", "{attn}.o_proj.{0}"),
]
_FF = [
    (r"norm\.(.*)", "{mlp_norm}.{0}"),
    (r"fn\.net\.0\.(.*)", "{mlp}.fc1.{0}"),
    (r"fn\.net\.2\.(.*)", "{mlp}.fc2.{0}"),
]


def _sub(table: list[tuple[str, str]], rest: str, prefix: str, **names: str) -> list[tuple[str, str | None]] | None:
    """Our key(s) for `rest` under `prefix`; `(key, "k" | "v")` halves a fused `to_kv`, `(key, None)` copies."""
    for pattern, target in table:
        if g := re.fullmatch(pattern, rest):
            if "{kv}" in target:
                return [(prefix + target.format(*g.groups(), kv=kv, **names), kv) for kv in ("k", "v")]
            return [(prefix + target.format(*g.groups(), kv="", **names), None)]
    return None


_CROSS = {"q_norm": "q_norm", "attn": "attention", "mlp_norm": "mlp_norm", "mlp": "mlp"}
_SELF = {"q_norm": "norm", "attn": "attention", "mlp_norm": "mlp_norm", "mlp": "mlp"}


def _residual_key(rest: str, prefix: str, with_norm: bool) -> list[tuple[str, str | None]] | None:
    m = re.fullmatch(r"to_attn_logits\.(\d)\.weight", rest)
    if m is None:
        return None
    names = ("norm", "down", "up") if with_norm else ("down", "up")
    i = int(m[1])
    return [(f"{prefix}{names[i]}.weight", None)] if i < len(names) else None


# ---------------------------------------------------------------------------------------------------- layouts
_OLD_CLASSIC = [
    (r"layers\.(\d+)\.0\.(.*)", r"layers.\1.cross_attn.\2"),
    (r"layers\.(\d+)\.1\.(.*)", r"layers.\1.cross_ff.\2"),
    (r"layers\.(\d+)\.2\.(\d+)\.(.*)", r"layers.\1.self_attns.\2.\3"),
    (r"layers\.(\d+)\.3\.(.*)", r"attn_residuals.\1.\2"),
]
_OLD_IO = [
    (r"cross_attend_blocks\.0\.(.*)", r"cross_attend_block.cross_attn.\1"),
    (r"cross_attend_blocks\.1\.(.*)", r"cross_attend_block.cross_ff.\1"),
    (r"layers\.(\d+)\.([01])\.(.*)", r"layers.\1.self_attns.0.\2.\3"),
    (r"layers\.(\d+)\.2\.(.*)", r"attn_residuals.\1.\2"),
]
_NEW_MARKERS = r"layers\.\d+\.(cross_attn|cross_ff|self_attns)\.|attn_residuals\.|cross_attend_block\."
_OLD_MARKERS = r"layers\.\d+\.\d+\.|cross_attend_blocks\."


def detect_layout(keys: list[str]) -> Layout:
    """'0.8' (perceiver-pytorch 0.8 - 0.10.1: numbered sub-modules) or '0.11' (named ones), from the keys.

    Raises `ValueError` naming the keys when the state dict mixes both or has neither.
    """
    new = [k for k in keys if re.match(_NEW_MARKERS, k)]
    old = [k for k in keys if re.match(_OLD_MARKERS, k)]
    if new and old:
        raise ValueError(
            "state dict mixes perceiver-pytorch layouts: 0.11 keys "
            f"{new[:3]} and 0.8-0.10 keys {old[:3]}; expected one layout"
        )
    if not new and not old:
        raise ValueError(
            "no perceiver-pytorch layer keys found: expected 'layers.{i}.cross_attn...' (0.11) or "
            f"'layers.{{i}}.0...' (0.8-0.10), got keys {keys[:8]}"
        )
    return "0.11" if new else "0.8"


def _rename(state_dict: dict[str, Tensor], table: list[tuple[str, str]]) -> dict[str, Tensor]:
    """0.8-0.10 keys under their 0.11 names; keys no rule matches keep their names (and fail to place later)."""
    out = {}
    for key, value in state_dict.items():
        for pattern, target in table:
            if re.fullmatch(pattern, key):
                key = re.sub(pattern, target, key)
                break
        out[key] = value
    return out


def canonical_state_dict(state_dict: dict[str, Tensor], io: bool = False) -> tuple[dict[str, Tensor], Layout]:
    """The state dict under perceiver-pytorch 0.11's key names, and the layout it came in."""
    layout = detect_layout(list(state_dict))
    if layout == "0.11":
        return dict(state_dict), layout
    return _rename(state_dict, _OLD_IO if io else _OLD_CLASSIC), layout


def _residual_options(canonical: dict[str, Tensor], kwargs: dict[str, Any]) -> dict[str, Any]:
    """`attn_residual`, `attn_residual_rank`, `attn_residual_norm` as the keys show them, checked against kwargs."""
    keys = [k for k in canonical if k.startswith("attn_residuals.")]
    if not keys:
        if kwargs.get("attn_residual"):
            raise ValueError("attn_residual=True, but the state dict has no 'attn_residuals.*' / residual keys")
        return {"attn_residual": False}
    with_norm = any(k.endswith("to_attn_logits.2.weight") for k in keys)
    first = next(k for k in keys if k.endswith("to_attn_logits.1.weight" if with_norm else "to_attn_logits.0.weight"))
    rank = canonical[first].shape[0]
    if kwargs.get("attn_residual") is False:
        raise ValueError(f"attn_residual=False, but the state dict has attention residual keys, e.g. {keys[:2]}")
    if "attn_residual_rank" in kwargs and kwargs["attn_residual_rank"] != rank:
        raise ValueError(f"attn_residual_rank={kwargs['attn_residual_rank']}, but the state dict's rank is {rank}")
    return {"attn_residual": True, "attn_residual_rank": rank, "attn_residual_norm": with_norm}


MapKey = Callable[[str], list[tuple[str, str | None]] | None]


def _convert(
    model: nn.Module,
    canonical: dict[str, Tensor],
    map_key: MapKey,
    built: str,
    layout: Layout,
    strict: bool = True,
    tied_hint: str = "weight_tie_layers=False",
) -> tuple[dict[str, Tensor], list[str]]:
    """Our state dict for `model` and the keys that could not be placed; with `strict`, a ValueError unless every key
    is placed and every one of ours filled (`built` says what the model was built from). Shapes are always checked."""
    ours = model.state_dict()
    converted: dict[str, Tensor] = {}
    unplaced = []
    for key, tensor in canonical.items():
        targets = map_key(key)
        if targets is None or any(target not in ours for target, _ in targets):
            unplaced.append(key)
            continue
        for target, part in targets:
            value = tensor if part is None else tensor.chunk(2, dim=0)[0 if part == "k" else 1]
            if target in converted and not torch.equal(converted[target], value):
                raise ValueError(
                    f"{key} differs from the layer it is tied to in our model ({target}); the state dict is not "
                    f"weight-tied: load it with {tied_hint}"
                )
            converted.setdefault(target, value)
    missing = sorted(set(ours) - set(converted))
    if strict and (unplaced or missing):
        raise ValueError(
            f"state dict ({layout} layout) does not match the perceiver-pytorch {built}: "
            f"unexpected keys {unplaced[:10]}{' ...' if len(unplaced) > 10 else ''}, "
            f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''} (unexpected: keys that could not be placed)"
        )
    for key, value in converted.items():
        if ours[key].shape != value.shape:
            raise ValueError(f"shape mismatch for {key}: expected {tuple(ours[key].shape)}, got {tuple(value.shape)}")
    return converted, unplaced


def _load(
    model: nn.Module,
    canonical: dict[str, Tensor],
    map_key: MapKey,
    what: str,
    kwargs: dict[str, Any],
    layout: Layout,
) -> None:
    """Map every key, check that all of ours are filled with equal shapes, load strictly."""
    converted, _ = _convert(model, canonical, map_key, f"{what} built from these keywords ({kwargs})", layout)
    model.load_state_dict(converted, strict=True)


def _with_module_settings(source: dict[str, Tensor] | nn.Module, kwargs: dict[str, Any], kind: Kind) -> dict[str, Any]:
    """`kwargs` completed with the settings a perceiver-pytorch module (not a state dict) was built with: the ones
    its weights do not show (`perceiver_pytorch_settings`); a keyword that disagrees with the module is a ValueError."""
    if not isinstance(source, nn.Module):
        return dict(kwargs)
    layers = getattr(source, "layers", None)
    depth = kwargs.get("depth", len(layers) if isinstance(layers, nn.ModuleList) else None)
    return merge_settings(kwargs, module_settings(source, kind), depth if isinstance(depth, int) else None)


def _as_state_dict(state_dict: dict[str, Tensor] | nn.Module) -> dict[str, Tensor]:
    """The peer's own keys (see `unwrap_state_dict`: DDP, `torch.compile` and Lightning wrappers taken off)."""
    return unwrap_state_dict(
        state_dict.state_dict() if isinstance(state_dict, nn.Module) else state_dict, "perceiver-pytorch"
    )


# ---------------------------------------------------------------------------------------------------- classic
def _classic_map_key(model: Perceiver) -> MapKey:
    """Key mapping of a perceiver-pytorch `Perceiver` (0.11 names) onto our `Perceiver`."""
    enc = model.encoder
    with_norm = model.config.attn_residual_norm

    def map_key(key: str) -> list[tuple[str, str | None]] | None:
        if key == "latents":
            return [("encoder.latents", None)]
        if m := re.fullmatch(r"to_logits\.([12])\.(weight|bias)", key):
            return [(f"head.{'norm' if m[1] == '1' else 'fc'}.{m[2]}", None)]
        if m := re.fullmatch(r"attn_residuals\.(\d+)\.(.*)", key):
            i = int(m[1])
            if i >= len(enc.residual_index):
                return None
            return _residual_key(m[2], f"encoder.residuals.{enc.residual_index[i]}.", with_norm)
        m = re.fullmatch(r"layers\.(\d+)\.(.*)", key)
        if m is None or int(m[1]) >= len(enc.cross_index):
            return None
        i, rest = int(m[1]), m[2]
        cross = f"encoder.cross_attends.{enc.cross_index[i]}."
        if g := re.fullmatch(r"cross_attn\.(.*)", rest):
            return _sub(_ATTN, g[1], cross, **_CROSS)
        if g := re.fullmatch(r"cross_ff\.(.*)", rest):
            return _sub(_FF, g[1], cross, **_CROSS)
        if g := re.fullmatch(r"self_attns\.(\d+)\.([01])\.(.*)", rest):
            latent = f"encoder.latent_blocks.{enc.latent_index[i]}.{g[1]}."
            return _sub(_ATTN if g[2] == "0" else _FF, g[3], latent, **_SELF)
        return None

    return map_key


def from_perceiver_pytorch(state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any) -> Perceiver:
    """Our `Perceiver` with the weights of a perceiver-pytorch `Perceiver(**kwargs)` and identical outputs.

    `kwargs` are the keywords the perceiver-pytorch model was built with (its defaults apply to the rest); any layout
    from 0.8 to 0.11 is accepted. Attention residuals (0.10+) are recognised from the keys. A state dict does not hold
    `max_freq`, `num_freq_bands` / `input_channels`, `input_axis`, the heads, `inverted_cross_attn` or the dropout
    rates: pass them; from the module itself they are read (a keyword that disagrees with it is a ValueError).
    """
    kwargs = _with_module_settings(state_dict, kwargs, "classic")
    canonical, layout = canonical_state_dict(_as_state_dict(state_dict))
    options = {**_PEER_DEFAULTS, **kwargs, **_residual_options(canonical, kwargs)}
    model = Perceiver(**options)
    _load(model, canonical, _classic_map_key(model), "Perceiver", kwargs, layout)
    return model.eval()


# ---------------------------------------------------------------------------------------------------- Perceiver IO
def _io_map_key(model: LucidrainsPerceiverIO, prefix: str = "") -> Callable[[str], list[tuple[str, str | None]] | None]:
    """Key mapping of a perceiver-pytorch `PerceiverIO` (0.11 names, under `prefix`) onto `LucidrainsPerceiverIO`."""
    enc = model.encoder
    with_norm = model.config.attn_residual_norm
    tied = model.config.weight_tie_layers

    def map_key(key: str) -> list[tuple[str, str | None]] | None:
        if not key.startswith(prefix):
            return None
        key = key[len(prefix) :]
        if key == "latents":
            return [("encoder.latents", None)]
        if key in ("to_logits.weight", "to_logits.bias"):
            return [("decoder." + key, None)]
        if g := re.fullmatch(r"cross_attend_block\.cross_attn\.(.*)", key):
            return _sub(_ATTN, g[1], "encoder.cross_attends.0.", **_CROSS)
        if g := re.fullmatch(r"cross_attend_block\.cross_ff\.(.*)", key):
            return _sub(_FF, g[1], "encoder.cross_attends.0.", **_CROSS)
        if g := re.fullmatch(r"layers\.(\d+)\.self_attns\.0\.([01])\.(.*)", key):
            i = int(g[1])
            if i >= model.config.depth:
                return None
            latent = f"encoder.latent_blocks.0.{0 if tied else i}."
            return _sub(_ATTN if g[2] == "0" else _FF, g[3], latent, **_SELF)
        if g := re.fullmatch(r"attn_residuals\.(\d+)\.(.*)", key):
            i = int(g[1])
            if i >= len(enc.residual_index):
                return None
            return _residual_key(g[2], f"encoder.residuals.{enc.residual_index[i]}.", with_norm)
        if g := re.fullmatch(r"decoder_cross_attn\.(.*)", key):
            return _sub(_ATTN, g[1], "decoder.", **_CROSS)
        if g := re.fullmatch(r"decoder_ff\.(.*)", key):
            return _sub(_FF, g[1], "decoder.", **_CROSS)
        return None

    return map_key


def _io_canonical(state_dict: dict[str, Tensor], prefix: str) -> tuple[dict[str, Tensor], Layout]:
    inner = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    canonical, layout = canonical_state_dict(inner, io=True)
    outer = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    return {**outer, **{prefix + k: v for k, v in canonical.items()}}, layout


def from_perceiver_pytorch_io(state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any) -> LucidrainsPerceiverIO:
    """`LucidrainsPerceiverIO` with the weights of a perceiver-pytorch `PerceiverIO(**kwargs)` (0.8 - 0.11 layouts).

    `decoder_ff` and attention residuals are read from the keys; `kwargs` are the peer's constructor keywords (from
    the module itself, the heads, `inverted_cross_attn` and `seq_dropout_prob` are read as well).
    """
    from perceiver.models.lucidrains_io import LucidrainsPerceiverIO

    kwargs = _with_module_settings(state_dict, kwargs, "io")
    canonical, layout = _io_canonical(_as_state_dict(state_dict), "")
    options = {**kwargs, **_residual_options(canonical, kwargs)}
    options["decoder_ff"] = any(k.startswith("decoder_ff.") for k in canonical)
    model = LucidrainsPerceiverIO(**options)
    _load(model, canonical, _io_map_key(model), "PerceiverIO", kwargs, layout)
    return model.eval()


def from_perceiver_pytorch_lm(state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any) -> LucidrainsPerceiverLM:
    """`LucidrainsPerceiverLM` with the weights of a perceiver-pytorch `PerceiverLM(**kwargs)` (0.8 - 0.11 layouts)."""
    from perceiver.models.lucidrains_io import LucidrainsPerceiverLM

    if isinstance(state_dict, nn.Module):
        kwargs = merge_settings(kwargs, lm_settings(state_dict))
    prefix = "perceiver_io."
    canonical, layout = _io_canonical(_as_state_dict(state_dict), prefix)
    inner = {k[len(prefix) :]: v for k, v in canonical.items() if k.startswith(prefix)}
    options = {**kwargs, **_residual_options(inner, kwargs)}
    options["decoder_ff"] = any(k.startswith("decoder_ff.") for k in inner)
    model = LucidrainsPerceiverLM(**options)
    _load(model, canonical, _lm_map_key(model), "PerceiverLM", kwargs, layout)
    return model.eval()


def _lm_map_key(model: LucidrainsPerceiverLM) -> MapKey:
    prefix = "perceiver_io."
    io_map = _io_map_key(model.perceiver_io, prefix)

    def map_key(key: str) -> list[tuple[str, str | None]] | None:
        if key in ("token_emb.weight", "pos_emb.weight"):
            return [(key, None)]
        targets = io_map(key)
        return None if targets is None else [(prefix + t, part) for t, part in targets]

    return map_key


def from_perceiver_block(state_dict: dict[str, Tensor] | nn.Module, **kwargs: Any) -> LucidrainsPerceiverBlock:
    """`LucidrainsPerceiverBlock` with the weights of a perceiver-pytorch 0.11 `PerceiverBlock(**kwargs)`."""
    from perceiver.models.lucidrains_io import LucidrainsPerceiverBlock

    sd = _as_state_dict(state_dict)
    model = LucidrainsPerceiverBlock(**kwargs)
    _load(model, sd, _block_map_key, "PerceiverBlock", kwargs, "0.11")
    return model.eval()


_BLOCK_KEYS = r"(cross_attn|cross_ff)\.|self_attns\.\d+\.[01]\."


def _block_map_key(key: str) -> list[tuple[str, str | None]] | None:
    if g := re.fullmatch(r"cross_attn\.(.*)", key):
        return _sub(_ATTN, g[1], "cross.", **_CROSS)
    if g := re.fullmatch(r"cross_ff\.(.*)", key):
        return _sub(_FF, g[1], "cross.", **_CROSS)
    if g := re.fullmatch(r"self_attns\.(\d+)\.([01])\.(.*)", key):
        return _sub(_ATTN if g[2] == "0" else _FF, g[3], f"self_attns.{g[1]}.", **_SELF)
    return None


# ---------------------------------------------------------------------------------------------------- load_state_dict
def _peer_form(model: nn.Module, state_dict: Mapping[str, Any]) -> tuple[dict[str, Tensor], Layout, MapKey] | None:
    """A perceiver-pytorch state dict for `model` under 0.11 names, its layout and the key mapping; None when
    `state_dict` is not one (our own keys, or not a dict of tensors)."""
    from perceiver.models.lucidrains_io import LucidrainsPerceiverBlock, LucidrainsPerceiverIO, LucidrainsPerceiverLM

    try:
        sd = _as_state_dict(dict(state_dict))
    except ValueError:  # not a dict of tensors: nn.Module.load_state_dict says what is wrong
        return None
    if isinstance(model, LucidrainsPerceiverBlock):
        if not any(re.match(_BLOCK_KEYS, k) for k in sd):
            return None
        return sd, "0.11", _block_map_key
    prefix = "perceiver_io." if isinstance(model, LucidrainsPerceiverLM) else ""
    if prefix + "latents" not in sd:  # every perceiver-pytorch Perceiver / PerceiverIO has it, ours never
        return None
    if isinstance(model, LucidrainsPerceiverLM):
        return *_io_canonical(sd, prefix), _lm_map_key(model)
    if isinstance(model, LucidrainsPerceiverIO):
        return *_io_canonical(sd, ""), _io_map_key(model)
    if isinstance(model, Perceiver):
        return *canonical_state_dict(sd), _classic_map_key(model)
    return None


def is_perceiver_pytorch_state_dict(model: nn.Module, state_dict: Mapping[str, Any]) -> bool:
    """Whether `state_dict` has the keys of the perceiver-pytorch counterpart of `model` (any layout 0.8 - 0.11)."""
    return _peer_form(model, state_dict) is not None


def load_perceiver_pytorch_state_dict(
    model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
) -> Any:
    """`model.load_state_dict` of the state dict of its perceiver-pytorch counterpart (`Perceiver` -> `Perceiver`,
    `PerceiverIO` -> `LucidrainsPerceiverIO`, ...), the keys converted for the model as it was built: its config must
    be the peer's (a ValueError names the keys that do not fit; shapes are checked in any case). With
    `strict=False` the keys that could not be placed are returned as `unexpected_keys`, ours left out as
    `missing_keys`, as `nn.Module.load_state_dict` does."""
    form = _peer_form(model, state_dict)
    if form is None:
        raise ValueError(f"expected a perceiver-pytorch state dict for {type(model).__name__}, got other keys")
    canonical, layout, map_key = form
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "attn_residual"):  # not the block
        prefix = "perceiver_io." if hasattr(model, "perceiver_io") else ""
        inner = {k[len(prefix) :]: v for k, v in canonical.items() if k.startswith(prefix)}
        found = _residual_options(inner, {})
        built_with = {k: getattr(config, k) for k in found}
        if not config.attn_residual:
            built_with = {"attn_residual": False}
        if built_with != found:
            note = (
                " (perceiver-pytorch 0.10.0's, without the RMSNorm)" if found.get("attn_residual_norm") is False else ""
            )
            raise ValueError(
                f"the state dict's attention residuals{note} need a model built with "
                f"{', '.join(f'{k}={v!r}' for k, v in found.items())}; this one has "
                f"{', '.join(f'{k}={v!r}' for k, v in built_with.items())}"
            )
    built = f"counterpart of this {type(model).__name__} (its config: {getattr(model, 'config', None)})"
    converted, unplaced = _convert(model, canonical, map_key, built, layout, strict, "weight_tie_layers=False")
    result = nn.Module.load_state_dict(model, converted, strict=strict, assign=assign)
    return type(result)(result.missing_keys, [*result.unexpected_keys, *unplaced])
