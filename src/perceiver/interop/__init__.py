"""Conversion from other implementations: transformers' Perceiver heads, perceiver-pytorch state dicts.

Importing this package registers every transformers converter with `perceiver.pretrained`.
"""
from perceiver.interop import hf_vision  # noqa: E402, F401
from perceiver.interop import hf_text  # noqa: E402,F401
from perceiver.interop import hf_multimodal  # noqa: E402,F401
from perceiver.interop import hf_flow  # noqa: E402,F401
