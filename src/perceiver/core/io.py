"""`PerceiverIO`: input adapter -> encoder -> (query builder, decoder) -> output adapter.

    raw inputs --InputAdapter--> AdaptedInputs(tokens (B, M, C), mask (B, M))
               --PerceiverEncoder--> latents (B, N, D)
    QueryBuilder(adapted, index) --> queries (B, O, E) --PerceiverDecoder(latents)--> (B, O, F)
               --OutputAdapter--> task output (logits of any shape)

Task models (masked LM, classifiers, flow, multimodal) are subclasses that pick the parts and, where needed,
override `forward` to take what the matching transformers head takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from perceiver.core.decoder import AdaptedInputs, PerceiverDecoder, QueryBuilder, decode
from perceiver.core.encoder import PerceiverEncoder


@dataclass
class PerceiverIOOutput:
    """logits: the task output; last_hidden_state: latents `(B, N, D)`; attentions when asked for
    (encoder cross-attention maps per cross-attend `(B, H, N, M)`, decoder map `(B, H, O, N)`)."""

    logits: Any
    last_hidden_state: Tensor
    encoder_attentions: list[Tensor] | None = None
    decoder_attention: Tensor | None = None


class InputAdapter(nn.Module):
    """Turns raw inputs into encoder tokens. `forward(inputs, mask=None) -> AdaptedInputs`; `num_channels` = `C`."""

    num_channels: int

    def forward(self, inputs: Any, mask: Tensor | None = None) -> AdaptedInputs:
        raise NotImplementedError


class OutputAdapter(nn.Module):
    """Turns decoder outputs `(B, O, F)` into the task output.

    `forward(x, adapted, output_index)` also sees the adapted inputs (e.g. the image shape for flow, modality sizes
    for multimodal) and which output positions were decoded (None: all).
    """

    def forward(self, x: Tensor, adapted: AdaptedInputs, output_index: Tensor | None = None) -> Any:
        raise NotImplementedError


class PerceiverIO(nn.Module):
    """Generic Perceiver IO: composes an input adapter, encoder, query builder, decoder and output adapter."""

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
        self.input_adapter = input_adapter
        self.encoder = encoder
        self.query_builder = query_builder
        self.decoder = decoder
        self.output_adapter = output_adapter

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute encoder activations in the backward pass: far less training memory for ~1/3 more compute."""
        self.encoder.gradient_checkpointing = enable

    def forward_features(self, inputs: Any, mask: Tensor | None = None, return_attention: bool = False):
        """Adapt and encode: returns `(AdaptedInputs, latents (B, N, D), encoder maps or None)`."""
        adapted = self.input_adapter(inputs, mask)
        encoded = self.encoder(adapted.tokens, adapted.mask, return_attention=return_attention)
        latents, maps = encoded if return_attention else (encoded, None)
        return adapted, latents, maps

    def forward(
        self,
        inputs: Any,
        mask: Tensor | None = None,
        output_index: Tensor | None = None,
        query_chunk_size: int | None = None,
        return_attention: bool = False,
    ) -> PerceiverIOOutput:
        """Encode `inputs` and decode the output positions `output_index` (all when None) in query chunks."""
        adapted, latents, enc_maps = self.forward_features(inputs, mask, return_attention)
        out, dec_map = decode(
            self.decoder, self.query_builder, adapted, latents, output_index, query_chunk_size, return_attention
        )
        if self.output_adapter is not None:
            out = self.output_adapter(out, adapted, output_index)
        return PerceiverIOOutput(out, latents, enc_maps, dec_map)
