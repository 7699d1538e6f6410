"""`print(model)` shows what the module tree alone hides: attention heads, widths, dropout and the computation form,
the feed-forward's activation, position-encoding settings, the latents and the order (and repetition) in which the
encoder runs its shared modules. Before, a 26-layer language encoder printed as one block of layers and 8 heads, GEGLU,
dropout and weight sharing were invisible."""

from __future__ import annotations

from perceiver import create_model
from perceiver.core.encoder import EncoderConfig, PerceiverEncoder
from perceiver.nn import MLP, FourierPositionEncoding, MultiHeadAttention, TrainablePositionEncoding


def test_attention_shows_heads_widths_dropout_and_form():
    text = repr(MultiHeadAttention(16, 5, num_heads=2, qk_channels=8, v_channels=12, dropout=0.1, reassociate=True))
    assert "num_heads=2, qk_channels=8, v_channels=12, dropout=0.1, reassociate=True" in text
    plain = MultiHeadAttention(16).extra_repr()
    assert plain == "num_heads=1, qk_channels=16, v_channels=16"
    inverted = MultiHeadAttention(16, 16, queries_contribute_kv=True, inverted=True, kernel="matmul").extra_repr()
    assert inverted.endswith("inverted=True, queries_contribute_kv=True, kernel='matmul'")


def test_mlp_and_position_encodings_show_their_settings():
    assert "activation='geglu'" in repr(MLP(8, activation="geglu"))
    assert "num_bands=4, max_resolution=(16, 16)" in repr(FourierPositionEncoding(4, (16, 16)))
    assert "max_resolution=the index shape" in repr(FourierPositionEncoding(4))
    assert "num_bands=6, max_freq=10.0" in repr(FourierPositionEncoding(6, max_freq=10.0))
    assert "num_positions=10, num_channels=3" in repr(TrainablePositionEncoding(10, 3))


def test_encoder_shows_latents_and_the_order_of_its_shared_modules():
    config = EncoderConfig(
        input_dim=5, num_latents=4, latent_dim=8, num_cross_attends=3, num_blocks=2, latent_heads=2,
        num_self_attends_per_block=1, share_latent_blocks="after_first",
    )  # fmt: skip
    text = repr(PerceiverEncoder(config))
    order = "cross_attends[0], latent_blocks[0] x 2, cross_attends[1], latent_blocks[1] x 2, cross_attends[1], "
    assert f"latents=(4, 8), input_dim=5, order=[{order}latent_blocks[1] x 2]" in text


def test_a_model_repr_names_the_repetition_of_its_latent_block():
    model = create_model(
        "vision-perceiver-fourier", image_size=16, num_latents=4, latent_dim=16, num_blocks=3,
        num_self_attends_per_block=1, latent_heads=2, num_bands=2, max_resolution=(16, 16), num_classes=3,
    )  # fmt: skip
    assert "order=[cross_attends[0], latent_blocks[0] x 3]" in repr(model)
