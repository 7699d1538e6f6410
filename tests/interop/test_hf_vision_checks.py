"""Checks of the transformers image-classifier converter on incomplete checkpoints."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")


def test_missing_classifier_weight_is_named():
    """A checkpoint without the classifier's final layer names that weight (it was reported as `num_classes ...
    got None`, a config value the user never set)."""
    from perceiver.interop.hf_vision import convert_image_classifier

    config = transformers.PerceiverConfig(
        num_latents=4,
        d_latents=16,
        num_self_attends_per_block=1,
        num_blocks=1,
        image_size=8,
        num_labels=3,
        num_self_attention_heads=1,
        num_cross_attention_heads=1,
    )
    hf = transformers.PerceiverForImageClassificationFourier(config)
    sd = {k: v for k, v in hf.state_dict().items() if "final_layer" not in k}
    hf_config = hf.config.to_dict() | {"architectures": ["PerceiverForImageClassificationFourier"]}
    with pytest.raises(ValueError, match=r"perceiver\.decoder\.decoder\.final_layer\.weight is missing"):
        convert_image_classifier(hf_config, sd)
    convert_image_classifier(hf_config, hf.state_dict())  # the complete checkpoint converts
