"""Our models under transformers' `Trainer` (any `nn.Module` whose output has the loss first, as transformers' do):
training moves the weights, `evaluate` reports the loss and `predict` returns the logits alone. Before, `Trainer`
stopped at its first step: `'ModelOutput' object is not subscriptable`."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

import perceiver

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # Trainer's own dependency


class Rows(Dataset):
    """16 synthetic rows of `make(i)` with a label of 3 classes."""

    def __init__(self, make) -> None:
        self.make = make

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**self.make(torch.Generator().manual_seed(i)), "labels": torch.tensor(i % 3)}


CASES = {
    "text-classifier": (
        dict(max_seq_len=16, d_model=16, num_latents=4, latent_dim=16, num_self_attends_per_block=1, num_classes=3),
        lambda g: {"inputs": torch.randint(0, 262, (16,), generator=g), "attention_mask": torch.ones(16, dtype=torch.bool)},
    ),
    "perceiver": (  # the classic model: `model(data, labels=...)` gives a ModelOutput with the loss
        dict(input_channels=3, depth=1, num_latents=4, latent_dim=16, latent_heads=2, cross_dim_head=8,
             latent_dim_head=8, num_freq_bands=2, max_freq=4.0, num_classes=3),
        lambda g: {"data": torch.randn(6, 6, 3, generator=g)},
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_transformers_trainer_trains_evaluates_and_predicts(name, tmp_path):
    kwargs, make = CASES[name]
    torch.manual_seed(0)
    model = perceiver.create_model(name, **kwargs)
    before = [p.detach().clone() for p in model.parameters()]
    args = transformers.TrainingArguments(
        str(tmp_path), per_device_train_batch_size=4, num_train_epochs=1, report_to=[], use_cpu=True,
        save_strategy="no", learning_rate=1e-3, disable_tqdm=True,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Rows(make), eval_dataset=Rows(make))
    trainer.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.isfinite(torch.tensor(trainer.evaluate()["eval_loss"]))
    predicted = trainer.predict(Rows(make))
    assert predicted.predictions.shape == (16, 3)  # the logits, not a tuple of logits and latents
