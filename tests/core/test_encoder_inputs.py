"""`PerceiverEncoder.forward` checks its inputs at the boundary (docs/reliability.md): the width, the mask's shape and
dtype. The encoder normalises its inputs once and zero-pads them to a multiple of 8 channels before the cross-attends
fold their weights in, so a wrong width that pads to the same size used to run silently (6 channels into an encoder
built for 5: normalised over 6, the sixth dropped)."""

from __future__ import annotations

import re

import pytest
import torch

from perceiver import AdaptedInputs, DecoderConfig, InputAdapter, PerceiverDecoder, PerceiverIO, TrainableQueries
from perceiver.checks import InputTypeError
from perceiver.core.encoder import EncoderConfig, PerceiverEncoder
from perceiver.nn.inputs import InputFactors


def encoder(reassociate: bool, input_dim: int = 5) -> PerceiverEncoder:
    config = EncoderConfig(
        input_dim=input_dim,
        num_latents=4,
        latent_dim=16,
        num_self_attends_per_block=1,
        latent_heads=2,
        reassociate_cross_attention=reassociate,
    )
    return PerceiverEncoder(config).eval()


@pytest.mark.parametrize("reassociate", [False, True])
@pytest.mark.parametrize("width", [6, 4, 8])
def test_inputs_of_another_width_are_an_error_naming_both(reassociate, width):
    enc = encoder(reassociate)
    with pytest.raises(ValueError, match=rf"expected encoder inputs of shape \(B, M, 5\).*got \(2, 7, {width}\)"):
        enc(torch.randn(2, 7, width))


@pytest.mark.parametrize("reassociate", [False, True])
def test_inputs_without_a_batch_axis_or_of_integers_are_an_error(reassociate):
    enc = encoder(reassociate)
    with pytest.raises(ValueError, match=r"expected encoder inputs of shape \(B, M, 5\).*got \(7, 5\)"):
        enc(torch.randn(7, 5))
    with pytest.raises(InputTypeError, match="floating-point tensor.*got dtype torch.int64"):
        enc(torch.ones(2, 7, 5, dtype=torch.long))


@pytest.mark.parametrize("reassociate", [False, True])
@pytest.mark.parametrize("shape", [(2, 8), (1, 7), (7,), (2, 7, 1)])
def test_a_mask_of_another_shape_is_an_error_naming_the_expected_one(reassociate, shape):
    enc = encoder(reassociate)
    with pytest.raises(ValueError, match=re.escape(f"expected mask of shape (2, 7), got {tuple(shape)}")):
        enc(torch.randn(2, 7, 5), torch.ones(shape, dtype=torch.bool))


@pytest.mark.parametrize("reassociate", [False, True])
@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.float32, torch.uint8])
def test_zero_one_masks_of_any_dtype_act_as_the_boolean_mask(reassociate, dtype):
    """Tokenizers give 0 / 1 integer masks; the encoder took them into `~mask` (bitwise: -1, -2) and failed inside
    torch (`masked_fill_ only supports boolean masks`, `"bitwise_or_cpu" not implemented for 'Float'`)."""
    enc = encoder(reassociate)
    x = torch.randn(2, 7, 5)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1] = False
    with torch.no_grad():
        expected = enc(x, mask)
        torch.testing.assert_close(enc(x, mask.to(dtype)), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match="expected mask as bool or values 0"):
        enc(x, torch.full((2, 7), 2, dtype=dtype))


def test_factors_of_another_width_are_an_error():
    enc = encoder(True, input_dim=16)
    factors = InputFactors(torch.randn(2, 7, 3), torch.randn(10, 3), torch.randn(10), torch.randn(7, 4))
    with pytest.raises(ValueError, match=r"expected factors of 16 channels \(input_dim\), got 14"):
        enc(None, factors=factors)
    with pytest.raises(ValueError, match=r"expected mask of shape \(2, 7\)"):
        fitting = InputFactors(torch.randn(2, 7, 3), torch.randn(12, 3), torch.randn(12), torch.randn(7, 4))
        enc(None, torch.ones(2, 6, dtype=torch.bool), factors=fitting)


class WiderThanDeclared(InputAdapter):
    """An adapter that declares 5 channels and returns 6 (e.g. a feature appended after the model was built)."""

    num_channels = 5

    def forward(self, inputs, mask=None):
        return AdaptedInputs(torch.cat([inputs, inputs[..., :1]], dim=-1), mask)


def test_a_perceiver_io_whose_adapter_returns_another_width_says_so():
    enc = encoder(True)
    dec = PerceiverDecoder(DecoderConfig(query_dim=8, latent_dim=16, output_dim=3))
    model = PerceiverIO(WiderThanDeclared(), enc, TrainableQueries(1, 8), dec).eval()
    with pytest.raises(ValueError, match=r"expected encoder inputs of shape \(B, M, 5\).*got \(2, 7, 6\)"):
        model(torch.randn(2, 7, 5))
