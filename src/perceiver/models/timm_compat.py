"""timm's classifier API for the classifiers of this package (a mixin): what timm's training scripts, its optimizer
factory and its feature-extraction habits read from a model.

- `num_features` / `head_hidden_size`: the width `D` of the pooled features the class layer maps to logits, i.e. of
  `forward_head(features, pre_logits=True)` `(B, D)` and of the logits after `reset_classifier(0)`;
- `no_weight_decay()`: the names of the parameters of 2 or more dimensions that must not be decayed (latents,
  trainable position and query embeddings, embedding tables), so that timm's rule "no decay for 1-D tensors, biases
  and these names" (`timm.optim.param_groups_weight_decay`, `create_optimizer_v2(model, ...)`) gives the groups of
  `perceiver.training.optim.param_groups`;
- `group_matcher(coarse=False)`: regexes grouping the parameters by depth for layer-wise learning rate decay
  (`timm.optim.param_groups_layer_decay`, `create_optimizer_v2(model, layer_decay=0.75)`): the stem (input adapter,
  initial latents), each unique encoder layer in the order the forward pass first runs it (shared layers count once,
  at their first use), then the head (decoder / class head: everything left unmatched, as timm does);
- `forward_intermediates(x, indices)`: the latents after chosen encoder steps (timm's feature API, "NLC" format);
- `reset_classifier(num_classes, global_pool=None)`: timm's signature (the pooling of these heads is fixed).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, cast

from torch import Tensor, nn

from perceiver.core.decoder import PerceiverDecoder, TrainableQueries
from perceiver.core.model import Features

#: layers whose `weight` multiplies the input: decayed (as `perceiver.training.optim.DECAYED_LAYERS`)
_DECAYED = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)


def encoder_layer_order(encoder: Any) -> list[list[str]]:
    """The unique layers of a `PerceiverEncoder` (names relative to it) per cross-attend step, in the order its
    forward first runs them: the step's cross-attend, its latent layers (and attention residuals); a layer shared
    with an earlier step is listed only there."""
    c = encoder.config
    residuals = iter(encoder.residual_index)
    runs: list[list[str]] = []  # every layer each step runs, repeats included
    for ci, li in zip(encoder.cross_index, encoder.latent_index):
        names = [f"cross_attends.{ci}"]
        for _ in range(c.num_blocks):
            for j in range(c.num_self_attends_per_block):
                names.append(f"latent_blocks.{li}.{j}")
                if c.attn_residual == "self_attend":
                    names.append(f"residuals.{next(residuals)}")
        if c.attn_residual == "cross_attend":
            names.append(f"residuals.{next(residuals)}")
        runs.append(names)
    seen: set[str] = set()
    steps: list[list[str]] = []
    for names in runs:
        steps.append([n for n in dict.fromkeys(names) if n not in seen])
        seen.update(names)
    return steps


class TimmClassifierMixin:
    """timm's `num_features`, `head_hidden_size`, `no_weight_decay`, `group_matcher` and `reset_classifier(n,
    global_pool)` (see the module docstring) for a `PerceiverModel` classifier whose encoder is `self.encoder`."""

    #: regex of the stem's parameter names (matched from the start of the name)
    stem_pattern: ClassVar[str] = r"^input_adapter\.|^encoder\.latents$"

    @property
    def num_features(self) -> int:
        """Width `D` of the pooled features (`forward_head(features, pre_logits=True)` `(B, D)`; the logits after
        `reset_classifier(0)`), timm's name."""
        return int(self._pre_logits_dim())  # type: ignore[attr-defined]

    @property
    def head_hidden_size(self) -> int:
        """timm's name for the width of the features the final class layer takes (here `num_features`)."""
        return self.num_features

    def no_weight_decay(self) -> set[str]:
        """Names (as `named_parameters` gives them) of the trainable parameters of 2+ dimensions that AdamW must not
        decay: every one that is not the weight of a Linear / Conv layer (latents, position and query embeddings,
        embedding tables). 1-D parameters and biases are not listed: timm's optimizer factory never decays them."""
        assert isinstance(self, nn.Module)
        names = {id(p): name for name, p in self.named_parameters()}
        decayed: dict[int, bool] = {}
        for owner in self.modules():
            for local, p in owner.named_parameters(recurse=False):
                weight = isinstance(owner, _DECAYED) and local == "weight" and p.ndim >= 2
                decayed[id(p)] = decayed.get(id(p), True) and weight  # tied: decayed only if every owner decays it
        params = dict(self.named_parameters())
        return {names[i] for i, d in decayed.items() if not d and params[names[i]].ndim >= 2}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter grouping by depth: `{"stem": regex, "blocks": [(regex, (ordinal,)), ...]}`, one entry per
        unique encoder layer in the order the forward pass first runs it (`coarse=True`: one per cross-attend step
        with its latent layers). Parameters matched by neither (decoder, class head) are timm's last group."""
        assert isinstance(self, nn.Module)
        steps = encoder_layer_order(self.get_submodule("encoder"))
        if coarse:
            blocks = [(_prefixes(names), (i,)) for i, names in enumerate(steps) if names]
        else:
            blocks = [(_prefixes([name]), (i,)) for i, name in enumerate(n for names in steps for n in names)]
        return {"stem": self.stem_pattern, "blocks": blocks}

    def forward_intermediates(
        self,
        x: Any,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NLC",
        intermediates_only: bool = False,
        mask: Tensor | None = None,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's feature API: the latents `(B, N, D)` after the encoder steps chosen by `indices` (None: all; an int
        `n`: the last `n`; a list: those positions, negative from the end), counted as `ModelOutput.hidden_states`
        counts them (after each cross-attend and after each latent layer). Returns `(final latents, intermediates)`,
        or with `intermediates_only` the list. `output_fmt` is "NLC" only (latents have no spatial grid); `norm`
        must be False (the encoder has no final norm); `stop_early` changes nothing (the pass is one call)."""
        if output_fmt != "NLC":
            raise ValueError(f"output_fmt: expected 'NLC' (latents (B, N, D) have no image grid), got {output_fmt!r}")
        if norm:
            raise ValueError("norm: expected False, the encoder has no final norm to apply to the intermediates")
        features = self.forward_features(x, mask, return_hidden_states=True)  # type: ignore[attr-defined]
        states = list(features.hidden_states)
        count = len(states)
        if isinstance(indices, bool):
            raise ValueError(f"indices: expected None, a count or a list of positions, got {indices!r}")
        if indices is None:
            chosen = list(range(count))
        elif isinstance(indices, int):
            if not 0 < indices <= count:
                raise ValueError(f"indices: expected 1 to {count} (the last n of {count} steps), got {indices}")
            chosen = list(range(count - indices, count))
        else:
            chosen = [i + count if isinstance(i, int) and i < 0 else i for i in indices]
            if not all(isinstance(i, int) and 0 <= i < count for i in chosen):
                raise ValueError(
                    f"indices: expected positions in [-{count}, {count}) of the encoder steps, got {indices}"
                )
        intermediates = [states[i] for i in chosen]
        return intermediates if intermediates_only else (features.latents, intermediates)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh class layer for `num_classes` (0: none, the model returns its `num_features` pooled features);
        `global_pool` is timm's argument: the pooling of this head is fixed, so only None is taken."""
        if global_pool is not None:
            raise ValueError(
                f"global_pool: expected None ({type(self).__name__} pools with its fixed head), got {global_pool!r}; "
                "for unpooled features use model.forward_features(x).latents (B, N, D)"
            )
        super().reset_classifier(num_classes)  # type: ignore[misc]


class IOClassifierMixin(TimmClassifierMixin):
    """`forward_head(features, pre_logits=True)` and latents in place of `Features` for a Perceiver IO classifier
    (one trainable query `self.query_builder`, `self.decoder` whose final layer is the class layer)."""

    def forward_head(
        self,
        features: Features | Tensor,
        output_index: Any = None,
        query_chunk_size: int | None = None,
        return_attention: bool = False,
        pre_logits: bool = False,
    ) -> Any:
        """The class query decoded from the latents: `ModelOutput` with `.logits` `(B, num_classes)`; with
        `pre_logits=True` (timm's), the pooled features `(B, num_features)` before the class layer, a tensor.

        `features` is what `forward_features` returned, or latents `(B, N, D)` (timm's habit of passing the features
        tensor on)."""
        assert isinstance(self, nn.Module)
        decoder = cast(PerceiverDecoder, self.get_submodule("decoder"))
        query_builder = cast(TrainableQueries, self.get_submodule("query_builder"))
        assert decoder.config.latent_dim is not None  # PerceiverDecoder requires it
        if isinstance(features, Tensor):
            features = Features(check_latents(features, decoder.config.latent_dim, type(self).__name__))
        if features.adapted is not None and not pre_logits:
            return super().forward_head(  # type: ignore[misc]
                features, output_index, query_chunk_size, return_attention
            )
        latents = features.latents
        queries = query_builder.encoding().expand(latents.shape[0], -1, -1)
        pooled, probs = decoder.cross_attention(queries, latents, return_attention=return_attention and not pre_logits)
        if pre_logits:
            return pooled[:, 0]
        return features.output(decoder.final_layer(pooled)[:, 0], probs)


def _prefixes(names: list[str]) -> str:
    """A regex matching the parameters under the encoder modules `names`."""
    return r"^encoder\.(?:" + "|".join(re.escape(n) for n in names) + r")\."


def check_latents(latents: Tensor, latent_dim: int, model: str) -> Tensor:
    """`latents` `(B, N, latent_dim)` as given to `forward_head` in place of `Features`, or a ValueError."""
    if latents.ndim != 3 or latents.shape[-1] != latent_dim:
        raise ValueError(
            f"{model}.forward_head: expected the Features of forward_features or latents of shape "
            f"(B, N, {latent_dim}), got a tensor of shape {tuple(latents.shape)}"
        )
    return latents


__all__ = ["IOClassifierMixin", "TimmClassifierMixin", "check_latents", "encoder_layer_order"]
