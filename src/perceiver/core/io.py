"""`PerceiverIO`: input adapter -> encoder -> (query builder, decoder) -> output adapter.

    raw inputs --InputAdapter--> AdaptedInputs(tokens (B, M, C), mask (B, M))
               --PerceiverEncoder--> latents (B, N, D)
    QueryBuilder(adapted, index) --> queries (B, O, E) --PerceiverDecoder(latents)--> (B, O, F)
               --OutputAdapter--> task output (logits of any shape)

Task models (masked LM, classifiers, flow, multimodal) are subclasses that pick the parts, check their inputs
(`check_inputs`) and name their arguments as the matching transformers head does; the pipeline itself
(`forward_features` -> `forward_head`) is this class's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from perceiver.core.decoder import AdaptedInputs, Index, PerceiverDecoder, QueryBuilder, decode
from perceiver.core.encoder import PerceiverEncoder
from perceiver.core.model import Features, ModelOutput, PerceiverModel

#: the output type of every model (kept under its earlier name)
PerceiverIOOutput = ModelOutput


class InputAdapter(nn.Module):
    """Turns raw inputs into encoder tokens. `forward(inputs, mask=None, **options) -> AdaptedInputs`;
    `num_channels` = `C`. Options are adapter-specific (e.g. `interpolate_pos_encoding` of the image adapter) and
    reach it through `PerceiverIO.forward(..., **adapter_kwargs)`."""

    num_channels: int

    # `*args: Any, **options: Any`: each adapter declares its own options (type checkers accept any override of it)
    def forward(self, inputs: Any, mask: Tensor | None = None, *args: Any, **options: Any) -> AdaptedInputs:
        raise NotImplementedError


class OutputAdapter(nn.Module):
    """Turns decoder outputs `(B, O', F)` into the task output, one query chunk at a time.

    `forward(x, adapted, index)` maps the decoded chunk `index` (an `Index`: indices, a slice, or None for all
    positions) and must be position-wise (its rows depend on their own queries only); `assemble(pieces, adapted,
    output_index)` joins the chunks (by default: concatenation along the query axis, per key for dicts) and may
    reshape a whole decode (e.g. flow to `(B, H, W, 2)`).
    """

    def forward(self, x: Tensor, adapted: AdaptedInputs, index: Index = None) -> Any:
        raise NotImplementedError

    def assemble(self, pieces: list[Any], adapted: AdaptedInputs, output_index: Index = None) -> Any:
        if len(pieces) == 1:
            return pieces[0]
        if isinstance(pieces[0], dict):
            keys = dict.fromkeys(k for p in pieces for k in p)
            return {k: torch.cat([p[k] for p in pieces if k in p], dim=1) for k in keys}
        return torch.cat(pieces, dim=1)


class PerceiverIO(PerceiverModel):
    """Generic Perceiver IO: composes an input adapter, encoder, query builder, decoder and output adapter.

    `forward_features(inputs, mask)` adapts and encodes (`Features`), `forward_head(features, output_index,
    query_chunk_size)` builds the queries, decodes in chunks and applies the output adapter per chunk
    (`ModelOutput`); `forward` is both plus `.loss` from `compute_loss` when `labels` are given. Task models pick
    the parts and check their inputs; they do not re-implement this pipeline.
    """

    classifier_name: ClassVar[str | None] = "decoder.final_layer"
    checkpointed_modules = ("encoder",)
    #: perceiver-pytorch's `PerceiverIO` keywords: a user switching over gets the class that takes them
    PEER_KEYWORDS: ClassVar[frozenset[str]] = frozenset({"depth", "dim", "queries_dim", "logits_dim", "num_latents"})

    def __new__(cls, *args: Any, **kwargs: Any) -> PerceiverIO:
        if cls is PerceiverIO and PerceiverIO.PEER_KEYWORDS & set(kwargs):
            raise TypeError(
                f"perceiver.PerceiverIO is built from an input adapter, encoder, query builder and decoder, got "
                f"perceiver-pytorch's keywords {sorted(PerceiverIO.PEER_KEYWORDS & set(kwargs))}: for its "
                f"PerceiverIO(depth=..., dim=..., queries_dim=...) use perceiver.models.LucidrainsPerceiverIO (the "
                f"same keywords; it loads its state dicts)"
            )
        return super().__new__(cls)

    def __init__(
        self,
        input_adapter: InputAdapter,
        encoder: PerceiverEncoder,
        query_builder: QueryBuilder,
        decoder: PerceiverDecoder,
        output_adapter: OutputAdapter | None = None,
    ) -> None:
        super().__init__()
        if input_adapter.num_channels != encoder.config.input_dim:
            raise ValueError(
                f"input adapter gives {input_adapter.num_channels} channels, encoder expects {encoder.config.input_dim}"
            )
        if query_builder.num_channels != decoder.config.query_dim:
            raise ValueError(
                f"query builder gives {query_builder.num_channels} channels, decoder expects {decoder.config.query_dim}"
            )
        if decoder.config.latent_dim != encoder.config.latent_dim:  # else a shape error in the first forward
            raise ValueError(
                f"encoder gives latents of {encoder.config.latent_dim} channels (latent_dim), decoder expects "
                f"{decoder.config.latent_dim}: build the decoder with DecoderConfig(latent_dim="
                f"{encoder.config.latent_dim}, ...)"
            )
        self.input_adapter = input_adapter
        self.encoder = encoder
        self.query_builder = query_builder
        self.decoder = decoder
        self.output_adapter = output_adapter

    def _pre_logits_dim(self) -> int:
        assert self.decoder.config.query_dim is not None  # PerceiverDecoder requires it
        return self.decoder.config.query_dim

    def _check_saveable(self, what: str) -> None:
        """A TypeError for a model composed from parts: it has no config (nor `model_type`) for config.json."""
        if getattr(type(self), "model_type", None) is None or getattr(self, "config", None) is None:
            raise TypeError(
                f"expected a model with a config for {what} (a task model such as PerceiverForImageClassification, "
                f"or a PerceiverIO subclass that sets config_class, model_type and self.config), got a "
                f"{type(self).__name__} composed from parts, which has no config.json to write: save its weights with "
                "safetensors.torch.save_model(model, path) (or torch.save(model.state_dict(), path)) and load them "
                "into the same composition with safetensors.torch.load_model / load_state_dict"
            )

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Path:
        """`PretrainedMixin.save_pretrained` (config.json + safetensors) for models with a config; a TypeError
        naming the alternatives for a `PerceiverIO` composed from parts."""
        self._check_saveable("save_pretrained")
        return super().save_pretrained(save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """`PretrainedMixin.push_to_hub` for models with a config (see `save_pretrained`)."""
        self._check_saveable("push_to_hub")
        return super().push_to_hub(repo_id, **kwargs)

    def check_inputs(self, inputs: Any, mask: Tensor | None) -> tuple[Any, Tensor | None]:
        """Validate and cast the raw inputs (task models override; errors name what was expected)."""
        return inputs, mask

    def forward_features(
        self,
        inputs: Any,
        mask: Tensor | None = None,
        return_attention: bool = False,
        return_hidden_states: bool = False,
        **adapter_kwargs: Any,
    ) -> Features:
        """Check, adapt and encode: `Features(latents (B, N, D), adapted, ...)`, with the encoder's maps
        (`return_attention`) and its latents after every step (`return_hidden_states`)."""
        inputs, mask = self.check_inputs(inputs, mask)
        adapted = self.input_adapter(inputs, mask, **adapter_kwargs)
        factors = adapted.factors if self.encoder.uses_factors(adapted.factors) else None
        tokens = None if factors is not None else adapted.tokens  # factored: the tokens are never formed
        encoded = self.encoder(tokens, adapted.mask, return_attention, factors, return_hidden_states)
        return Features.from_encoder(encoded, adapted)

    def default_output_index(self, adapted: AdaptedInputs) -> Index:
        """The positions decoded when the caller names none (None: all of the query builder's)."""
        return None

    def forward_head(
        self,
        features: Features,
        output_index: Index = None,
        query_chunk_size: int | None = None,
        return_attention: bool = False,
    ) -> ModelOutput:
        """Decode the output positions `output_index` (default: `default_output_index`) in chunks of
        `query_chunk_size` and apply the output adapter: `ModelOutput(logits, latents, maps)`."""
        adapted = features.adapted
        if output_index is None:
            output_index = self.default_output_index(adapted)
        out, dec_map = decode(
            self.decoder,
            self.query_builder,
            adapted,
            features.latents,
            output_index,
            query_chunk_size,
            return_attention,
            self.output_adapter,
        )
        return features.output(out, dec_map)

    def forward(
        self,
        inputs: Any,
        mask: Tensor | None = None,
        output_index: Index = None,
        query_chunk_size: int | None = None,
        return_attention: bool = False,
        labels: Tensor | None = None,
        return_hidden_states: bool = False,
        **adapter_kwargs: Any,
    ) -> ModelOutput:
        """Encode `inputs` and decode the output positions `output_index` in query chunks; `.loss` with labels;
        `.hidden_states` (the latents after every encoder step) with `return_hidden_states`."""
        features = self.forward_features(inputs, mask, return_attention, return_hidden_states, **adapter_kwargs)
        out = self.forward_head(features, output_index, query_chunk_size, return_attention)
        if labels is not None:
            out.loss = self.compute_loss(out.logits, labels)
        return out
