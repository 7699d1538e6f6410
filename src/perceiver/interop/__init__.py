"""Conversion from other implementations: transformers' Perceiver heads, perceiver-pytorch state dicts, krasserm's
perceiver-io models; and to transformers (`to_transformers`).

Importing this package registers every transformers converter with `perceiver.pretrained`.
"""

from perceiver.interop import hf_flow, hf_multimodal, hf_text, hf_vision, krasserm, krasserm_io

__all__ = ["hf_flow", "hf_multimodal", "hf_text", "hf_vision", "krasserm", "krasserm_io"]
