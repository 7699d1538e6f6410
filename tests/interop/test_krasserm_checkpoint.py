"""krasserm perceiver-io's Lightning checkpoints (`last.ckpt`) load without its package, with its outputs.

Its Lightning modules pickle their config dataclasses (`TextEncoderConfig`, ...) into `hyper_parameters` and its data
modules their enums (`Task.mlm`) into `datamodule_hyper_parameters`: objects of its package `perceiver.model...`, which
cannot be imported beside ours. `torch.load` could not read such a file at all before (`weights_only=True` refuses the
classes, a full unpickling finds no `perceiver.model`), and the AR converter refused the Lightning-only
hyper-parameters. The reference files are written by the real wheel (`tests/krasserm_peer.py`) as Lightning 1.7's
`dump_checkpoint` lays them out (its config objects, `model.` keys, an AdamW state), beside its outputs.
"""

from __future__ import annotations

import pytest
import torch
from krasserm_peer import run

from perceiver import PerceiverAR
from perceiver.interop.krasserm import from_krasserm
from perceiver.interop.krasserm_checkpoint import from_krasserm_checkpoint, load_krasserm_checkpoint
from perceiver.interop.krasserm_io import masked_lm_from_krasserm, text_classifier_from_krasserm
from perceiver.models import PerceiverForImageClassification, PerceiverForMaskedLM, PerceiverForSequenceClassification

SCRIPT = r"""
from perceiver.data.text.common import Task
from perceiver.model.core import ClassificationDecoderConfig
from perceiver.model.text.classifier.backend import TextClassifier, TextClassifierConfig
from perceiver.model.text.clm.backend import CausalLanguageModel, CausalLanguageModelConfig
from perceiver.model.text.common import TextEncoderConfig
from perceiver.model.text.mlm.backend import MaskedLanguageModel, MaskedLanguageModelConfig, TextDecoderConfig
from perceiver.model.vision.image_classifier.backend import ImageClassifier, ImageClassifierConfig, ImageEncoderConfig

torch.manual_seed(0)
folder = os.path.dirname(sys.argv[2])


def randomise(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p)) if p.ndim == 1 else p.normal_(0.0, p.shape[-1] ** -0.5)
    return model.eval()


def save(name, model, hparams, datamodule=None):
    # Lightning 1.7's dump_checkpoint: the LightningModule's weights under `model.`, its init arguments, the
    # optimizer's state, the datamodule's init arguments
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt = {
        "epoch": 2, "global_step": 30, "pytorch-lightning_version": "1.7.7",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 3, "completed": 2}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {"best_model_score": torch.tensor(1.5),
                                                                           "best_model_path": "/logs/ckpt"}},
        "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [],
        "hparams_name": "kwargs", "hyper_parameters": hparams,
    }
    if datamodule is not None:
        ckpt |= {"datamodule_hparams_name": "kwargs", "datamodule_hyper_parameters": datamodule}
    torch.save(ckpt, os.path.join(folder, name + ".ckpt"))


enc = TextEncoderConfig(vocab_size=29, max_seq_len=12, num_input_channels=16, num_cross_attention_heads=2,
                        num_self_attention_heads=2, num_self_attention_layers_per_block=2)
top = dict(num_latents=5, num_latent_channels=24, activation_checkpointing=False, activation_offloading=False,
           params=None)
text_data = dict(dataset_dir=".cache", tokenizer="deepmind/language-perceiver", max_seq_len=12, task=Task.mlm)
ids = torch.randint(0, 29, (2, 9))
pad = torch.zeros(2, 9, dtype=torch.bool)
pad[1, 6:] = True
out = {"ids": ids, "pad_mask": pad}

dec = TextDecoderConfig(vocab_size=29, max_seq_len=12, num_cross_attention_heads=2)
mlm = randomise(MaskedLanguageModel(MaskedLanguageModelConfig(enc, dec, num_latents=5, num_latent_channels=24)))
save("mlm", mlm, dict(encoder=enc, decoder=dec, **top, num_predictions=3, masked_samples=["a [MASK] b"]), text_data)

dec = ClassificationDecoderConfig(num_output_query_channels=16, num_classes=3, num_cross_attention_heads=2)
clf = randomise(TextClassifier(TextClassifierConfig(enc, dec, num_latents=5, num_latent_channels=24)))
save("clf", clf, dict(encoder=enc, decoder=dec, **top), dict(text_data, task=Task.clf))

img_enc = ImageEncoderConfig(image_shape=(5, 7, 3), num_frequency_bands=3, num_cross_attention_heads=1,
                             num_self_attention_heads=2, num_self_attention_layers_per_block=2)
dec = ClassificationDecoderConfig(num_output_query_channels=16, num_classes=4, num_cross_attention_heads=1)
img = randomise(ImageClassifier(ImageClassifierConfig(img_enc, dec, num_latents=4, num_latent_channels=16)))
save("img", img, dict(encoder=img_enc, decoder=dec, **dict(top, num_latents=4, num_latent_channels=16)))
pixels = torch.randn(2, 5, 7, 3)

# LitCausalLanguageModel: flat init arguments (CausalSequenceModelConfig's fields and the training options)
ar_hparams = dict(vocab_size=37, max_seq_len=24, max_latents=8, num_channels=32, num_heads=4, max_heads_parallel=None,
                  num_self_attention_layers=2, num_self_attention_rotary_layers=1, self_attention_widening_factor=4,
                  cross_attention_widening_factor=4, cross_attention_dropout=0.5, post_attention_dropout=0.0,
                  residual_dropout=0.0, output_norm=False, output_bias=True, abs_pos_emb=True, init_scale=0.02,
                  activation_checkpointing=False, activation_offloading=False, validation_sample_prompt="It was",
                  validation_sample_record=None, params=None,
                  _class_path="perceiver.model.text.clm.LitCausalLanguageModel")  # LightningCLI's, in later releases
clm = CausalLanguageModel(CausalLanguageModelConfig.create(**ar_hparams)).eval()
with torch.no_grad():
    for m in clm.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.normal_(1.0, 0.2)
            m.bias.normal_(0.0, 0.2)
save("clm", clm, ar_hparams, dict(text_data, task=Task.clm))
clm_ids = torch.randint(0, 37, (2, 20))

with torch.no_grad():
    out["mlm"] = mlm(ids, pad)
    out["clf"] = clf(ids, pad)
    out["img"], out["pixels"] = img(pixels), pixels
    out["clm"], out["clm_ids"] = clm(clm_ids, prefix_len=12).logits, clm_ids
torch.save(out, sys.argv[2])
"""


@pytest.fixture(scope="module")
def reference(krasserm_site):
    out = run(krasserm_site, SCRIPT, "lightning.pt")
    out["folder"] = krasserm_site
    return out


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= 1e-5


def test_torch_load_cannot_read_them_but_load_krasserm_checkpoint_can(reference):
    path = reference["folder"] / "mlm.ckpt"
    with pytest.raises(Exception, match="perceiver.model"):  # its config classes: refused, or not importable
        torch.load(path, weights_only=True)
    checkpoint = load_krasserm_checkpoint(path)
    hp = checkpoint["hyper_parameters"]
    assert hp["encoder"]["vocab_size"] == 29 and hp["decoder"]["max_seq_len"] == 12 and hp["num_latents"] == 5
    assert checkpoint["datamodule_hyper_parameters"]["task"] == 0  # krasserm's Task.mlm, as its value
    assert checkpoint["state_dict"]["model.0.latent_provider._query"].shape == (5, 24)


def test_every_lightning_module_loads_from_its_checkpoint(reference):
    folder, ids, pad = reference["folder"], reference["ids"], reference["pad_mask"]
    mlm = from_krasserm_checkpoint(folder / "mlm.ckpt")
    clf = from_krasserm_checkpoint(str(folder / "clf.ckpt"))
    img = from_krasserm_checkpoint(load_krasserm_checkpoint(folder / "img.ckpt"))
    clm = from_krasserm_checkpoint(folder / "clm.ckpt")
    assert isinstance(mlm, PerceiverForMaskedLM) and isinstance(clf, PerceiverForSequenceClassification)
    assert isinstance(img, PerceiverForImageClassification) and isinstance(clm, PerceiverAR)
    with torch.no_grad():
        assert close(mlm(ids, attention_mask=~pad).logits, reference["mlm"])
        assert close(clf(ids, attention_mask=~pad).logits, reference["clf"])
        assert close(img(reference["pixels"].permute(0, 3, 1, 2)).logits, reference["img"])
        assert close(clm(reference["clm_ids"], num_latents=8).logits, reference["clm"])


def test_converters_take_the_checkpoint_without_a_config(reference):
    folder, ids, pad = reference["folder"], reference["ids"], reference["pad_mask"]
    checkpoint = load_krasserm_checkpoint(folder / "clf.ckpt")
    models = [
        text_classifier_from_krasserm(checkpoint),
        text_classifier_from_krasserm(checkpoint["state_dict"], checkpoint["hyper_parameters"]),
        text_classifier_from_krasserm(folder / "clf.ckpt"),
    ]
    with torch.no_grad():
        for model in models:
            assert close(model(ids, attention_mask=~pad).logits, reference["clf"])
        assert close(masked_lm_from_krasserm(folder / "mlm.ckpt")(ids, attention_mask=~pad).logits, reference["mlm"])


def test_perceiver_ar_takes_its_lightning_checkpoint_and_hyper_parameters(reference):
    """`from_krasserm` takes a LitCausalLanguageModel checkpoint alone, or its weights with its hyper-parameters
    (training options such as `validation_sample_prompt` among them, which krasserm's
    `CausalLanguageModelConfig.create(**hparams)` drops too); both were refused."""
    checkpoint = load_krasserm_checkpoint(reference["folder"] / "clm.ckpt")
    assert checkpoint["hyper_parameters"]["validation_sample_prompt"] == "It was"
    for model in (
        PerceiverAR.from_krasserm(checkpoint),
        from_krasserm(checkpoint["state_dict"], checkpoint["hyper_parameters"]),
    ):
        with torch.no_grad():
            assert close(model(reference["clm_ids"], num_latents=8).logits, reference["clm"])


def test_other_files_and_hyper_parameters_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_krasserm_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="could not read it as a krasserm perceiver-io Lightning checkpoint"):
        load_krasserm_checkpoint(tmp_path / "text.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match=r"expected a Lightning checkpoint \(a dict with 'state_dict'\)"):
        load_krasserm_checkpoint(tmp_path / "plain.pt")
    ours = {"state_dict": {"model.x": torch.zeros(1)}, "hyper_parameters": {"lr": 0.1}}
    with pytest.raises(ValueError, match=r"hyper-parameters of one of krasserm's Lightning modules .*got \['lr'\]"):
        from_krasserm_checkpoint(ours)
    with pytest.raises(ValueError, match="with hyper_parameters"):
        from_krasserm_checkpoint({"state_dict": {}})
    with pytest.raises(ValueError, match="or a whole Lightning checkpoint holding it as hyper_parameters"):
        masked_lm_from_krasserm({"model.x": torch.zeros(1)})
