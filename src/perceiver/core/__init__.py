"""The Perceiver IO core: encoder, decoder, the `PerceiverIO` composition, its contracts and output type.

raw data --InputAdapter--> AdaptedInputs(tokens (B, M, C), mask (B, M))
         --PerceiverEncoder--> latents (B, N, D)
QueryBuilder(adapted, index) --> queries (B, O, E) --PerceiverDecoder(latents)--> (B, O, F)
         --OutputAdapter--> task output
"""
