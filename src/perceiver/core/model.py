"""The contract every model of the library follows (timm's and transformers' habits).

    features = model.forward_features(inputs, ...)      # Features: latents (B, N, D) and what the head needs
    output = model.forward_head(features, ...)          # ModelOutput: logits, last_hidden_state, attention maps
    model(inputs, ..., labels=None)                     # = both, plus `.loss` when labels are given

`num_classes` (the size of the logits' last axis), `get_classifier()`, `reset_classifier(n)` (a fresh head of `n`
outputs: fine-tuning on another label set), `num_parameters()`, and from `PretrainedMixin`: `save_pretrained`,
`from_pretrained`, `push_to_hub`, and from `GradCheckpointingMixin`: `set_grad_checkpointing()` (timm's name) /
`gradient_checkpointing_enable()` (transformers'). A model whose output is not a class head (masked LM over a
vocabulary, flow, autoencoding, resampled latents) says so in `reset_classifier`'s error.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceiver.checks import InputTypeError
from perceiver.hub import PretrainedMixin


@dataclass
class ModelOutput:
    """What every model returns (the classic `Perceiver` with `return_dict=True` or `labels`).

    logits: the task output (a tensor, or a dict per modality for the multimodal autoencoder); last_hidden_state:
    latents `(B, N, D)`; loss: given labels; encoder_attentions: cross-attention maps per cross-attend `(B, H, N, M)`,
    decoder_attention `(B, H, O, N)` and latent_attentions, each latent self-attention layer's `(B, H, N, N)` in the
    order they ran, when asked for (`return_attention=True`; transformers' `cross_attentions` and `attentions`);
    cache: the state of incremental decoding (Perceiver AR's key / value cache) when one was passed; hidden_states:
    the latents `(B, N, D)` after every cross-attend and every latent layer when asked for
    (`return_hidden_states=True`, transformers' `output_hidden_states`; see `perceiver.core.encoder.EncoderOutput`).
    """

    logits: Any = None
    last_hidden_state: Tensor | None = None
    loss: Tensor | None = None
    encoder_attentions: list[Tensor] | None = None
    decoder_attention: Tensor | None = None
    cache: Any = field(default=None, repr=False)
    hidden_states: list[Tensor] | None = field(default=None, repr=False)
    latent_attentions: list[Tensor] | None = field(default=None, repr=False)

    #: what `out[i]` and `to_tuple()` hold, the set ones in this order: the tuple of transformers' Perceiver heads
    tuple_fields: ClassVar[tuple[str, ...]] = ("loss", "logits", "hidden_states", "attentions", "cross_attentions")

    def to_tuple(self) -> tuple[Any, ...]:
        """The set (not None) of `tuple_fields`, as transformers' `ModelOutput.to_tuple()` of its Perceiver heads: `out[0]`
        is the loss when labels were given, else the logits (what transformers' `Trainer` reads). The latents
        (`last_hidden_state`, which transformers' heads do not return) and the cache are read by name."""
        return tuple(v for v in (getattr(self, name) for name in self.tuple_fields) if v is not None)

    def __getitem__(self, key: str | int | slice) -> Any:
        """`out["logits"]` (any field or transformers' name, KeyError when it is not set, as transformers') or
        `out[0]`, `out[1:]` (positions in `to_tuple()`)."""
        if not isinstance(key, str):
            return self.to_tuple()[key]
        names = {f.name for f in fields(self)} | set(self.tuple_fields)
        value = getattr(self, key) if key in names else None
        if value is None:
            raise KeyError(f"{key!r}: not set in this {type(self).__name__} (set: {self._set_names()})")
        return value

    def _set_names(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def keys(self) -> list[str]:
        """The set entries' names, as transformers' `ModelOutput.keys()`: those of `to_tuple()` in its order (so
        `out[i]` is the i-th value), then the other set fields (`last_hidden_state`, `cache`); `out[name]` reads each
        and `dict(**out)` takes them all."""
        names = [n for n in self.tuple_fields if getattr(self, n) is not None]
        aliased = {"encoder_attentions", "decoder_attention", "latent_attentions"}  # in (cross_)attentions
        return names + [n for n in self._set_names() if n not in names and n not in aliased]

    def values(self) -> list[Any]:
        """The set entries, in the order of `keys()`."""
        return [getattr(self, name) for name in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        """`(name, value)` of the set entries, in the order of `keys()`."""
        return list(zip(self.keys(), self.values()))

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    @property
    def attentions(self) -> list[Tensor] | None:
        """transformers' name: the latent self-attention maps (`latent_attentions`)."""
        return self.latent_attentions

    @property
    def cross_attentions(self) -> list[Tensor] | None:
        """transformers' name and order: the encoder's cross-attention maps, then the decoder's (where there is one)."""
        if self.encoder_attentions is None and self.decoder_attention is None:
            return None
        decoder = [] if self.decoder_attention is None else [self.decoder_attention]
        return [*(self.encoder_attentions or []), *decoder]


def register_output_type(cls: type) -> None:
    """Make an output dataclass a pytree node, so that `torch.export.export` (and `torch.onnx.export(..., dynamo=True)`)
    take a model that returns it ("not a known type" before)."""
    torch.export.register_dataclass(cls, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")


register_output_type(ModelOutput)


@dataclass
class Features:
    """What `forward_features` hands to `forward_head`: latents `(B, N, D)`, the adapted inputs (the query builder
    and output adapter of Perceiver IO read them; None for models without an adapter), the encoder's maps and its
    intermediate latents when asked for (see `ModelOutput`)."""

    latents: Tensor
    adapted: Any = None
    encoder_attentions: list[Tensor] | None = None
    latent_attentions: list[Tensor] | None = None
    hidden_states: list[Tensor] | None = None

    @classmethod
    def from_encoder(cls, encoded: Any, adapted: Any = None) -> Features:
        """`Features` of what `PerceiverEncoder.forward` returned: latents, or an `EncoderOutput`."""
        if isinstance(encoded, Tensor):
            return cls(encoded, adapted)
        return cls(encoded.latents, adapted, encoded.attentions, encoded.latent_attentions, encoded.hidden_states)

    def output(self, logits: Any, decoder_attention: Tensor | None = None) -> ModelOutput:
        """A `ModelOutput` of `logits` with these latents, maps and hidden states."""
        return ModelOutput(
            logits,
            self.latents,
            None,
            self.encoder_attentions,
            decoder_attention,
            hidden_states=self.hidden_states,
            latent_attentions=self.latent_attentions,
        )


def check_labels(labels: object, name: str = "labels") -> Tensor:
    """`labels` as a tensor; `InputTypeError` naming the type for anything else (a list, a numpy array)."""
    if not isinstance(labels, Tensor):
        raise InputTypeError(f"expected {name} as a torch.Tensor, got {type(labels).__name__}")
    return labels


def check_class_ids(labels: Tensor, num_classes: int, name: str = "labels") -> Tensor:
    """Integer class ids, each in `[0, num_classes)` or -100 (ignored, `F.cross_entropy`'s default): a `ValueError`
    naming the range and the values that came (PyTorch's own is "Target 7 is out of bounds", or a device-side assert
    on CUDA). The value check is a host sync, so it runs in eager mode only, as the token-id check of the inputs."""
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise InputTypeError(f"expected {name} as integer class ids (e.g. torch.long), got dtype {labels.dtype}")
    if labels.numel() and not torch.compiler.is_compiling():
        valid = labels[labels != -100]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
            raise ValueError(
                f"expected {name} in [0, {num_classes}) or -100 (ignored) for {num_classes} classes, "
                f"got values in [{int(valid.min())}, {int(valid.max())}]"
            )
    return labels


def token_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of `logits` `(..., V)` against `labels` `(...)` over the scored positions (labels other
    than -100), in fp32; 0 when no position is scored, not PyTorch's NaN mean over nothing, which poisons a run's
    logged averages (a batch of only padding or only unmasked bytes). The 0 stays in the graph, with zero gradients,
    so a training step on such a batch still runs backward, as it must under DDP. No host sync: compiles whole."""
    labels = labels.reshape(-1).long()
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels, ignore_index=-100, reduction="sum")
    return total / (labels != -100).sum().clamp_min(1)


#: transformers' `PretrainedConfig.problem_type` values (None: inferred from the labels)
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


def check_problem_type(problem_type: str | None) -> None:
    """A ValueError for a `problem_type` transformers does not know (a config field of the classification heads)."""
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}")


def classification_loss(logits: Tensor, labels: Tensor, problem_type: str | None = None) -> Tensor:
    """The loss of a classification head, as transformers computes it: `problem_type` (a checkpoint's config field)
    `"regression"` = MSE against real targets of the logits' shape (or `(B,)` for one output),
    `"single_label_classification"` = cross-entropy of class ids `(B,)`, `"multi_label_classification"` = BCE with
    logits against targets of the logits' shape; None infers it from the labels: one output = regression, integer
    class ids = cross-entropy, float targets of the logits' shape = multi-label."""
    labels = check_labels(labels)
    num_classes = logits.shape[-1]
    if problem_type is None:
        if num_classes == 1:
            problem_type = "regression"
        else:
            problem_type = (
                "single_label_classification" if not labels.is_floating_point() else "multi_label_classification"
            )
    if problem_type == "regression":
        if labels.shape != logits.shape and not (num_classes == 1 and labels.shape == logits.shape[:1]):
            b = logits.shape[0]
            want = f"({b},) or ({b}, 1)" if num_classes == 1 else str(tuple(logits.shape))
            raise ValueError(f"expected regression targets of shape {want}, got {tuple(labels.shape)}")
        if labels.dtype == torch.bool or labels.is_complex():
            raise ValueError(f"expected real-valued regression targets, got dtype {labels.dtype}")
        return F.mse_loss(logits.float().reshape(labels.shape), labels.float())
    if problem_type == "single_label_classification":
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"expected class ids of shape {tuple(logits.shape[:1])}, got {tuple(labels.shape)}")
        return token_cross_entropy(logits, check_class_ids(labels, num_classes))
    if labels.shape != logits.shape:
        raise ValueError(f"expected multi-label targets of shape {tuple(logits.shape)}, got {tuple(labels.shape)}")
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def hf_output_flags(
    return_attention: bool,
    return_hidden_states: bool,
    output_attentions: bool | None,
    output_hidden_states: bool | None,
    return_dict: bool | None,
) -> tuple[bool, bool]:
    """`(return_attention, return_hidden_states)` with transformers' `output_attentions` / `output_hidden_states`
    (None: not given) folded in; a TypeError for a flag that is not a bool (or None). A forward that takes them
    returns `out.to_tuple()` when `return_dict is False`."""
    flags = dict(
        output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=return_dict
    )
    for name, value in flags.items():
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{name} must be True, False or None, got {value!r} ({type(value).__name__})")
    return return_attention or bool(output_attentions), return_hidden_states or bool(output_hidden_states)


class GradCheckpointingMixin:
    """Activation (gradient) checkpointing, spelled as timm (`set_grad_checkpointing`) and transformers
    (`gradient_checkpointing_enable` / `gradient_checkpointing_disable`, `is_gradient_checkpointing`) spell it.

    When on, a training forward with gradients keeps only each layer's inputs and recomputes the layer in the backward
    pass (`torch.utils.checkpoint`, non-reentrant, RNG state restored so dropout draws the same masks): far less memory
    for about one more forward of compute, the same gradients. Evaluation, `torch.no_grad()` and cached generation are
    unaffected. Subclasses name the submodules that hold the `gradient_checkpointing` flag their forward reads.
    """

    #: dotted names of the submodules whose layers are checkpointed ("" = the model itself)
    checkpointed_modules: ClassVar[tuple[str, ...]] = ()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute layer activations in the backward pass (True) or keep them (False)."""
        if not isinstance(enable, bool):
            raise ValueError(f"enable must be True or False, got {enable!r}")
        if not self.checkpointed_modules:
            raise NotImplementedError(f"{type(self).__name__} has no layers to checkpoint")
        for name in self.checkpointed_modules:
            self.get_submodule(name).gradient_checkpointing = enable  # type: ignore[attr-defined]

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Whether `set_grad_checkpointing` is on."""
        return any(
            getattr(self.get_submodule(name), "gradient_checkpointing", False)  # type: ignore[attr-defined]
            for name in self.checkpointed_modules
        )

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """transformers' spelling of `set_grad_checkpointing(True)` (what its `Trainer` and peft call).
        `gradient_checkpointing_kwargs` may say `use_reentrant=False`, the only form the layers use."""
        kwargs = dict(gradient_checkpointing_kwargs or {})
        reentrant = kwargs.pop("use_reentrant", False)
        if kwargs or reentrant:
            raise ValueError(
                "expected gradient_checkpointing_kwargs of at most {'use_reentrant': False} (the layers use "
                f"non-reentrant torch.utils.checkpoint), got {gradient_checkpointing_kwargs!r}"
            )
        self.set_grad_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        """transformers' spelling of `set_grad_checkpointing(False)`."""
        self.set_grad_checkpointing(False)


def checkpoints(module: nn.Module, cache: Any = None) -> bool:
    """Whether `module`'s forward should checkpoint its layers now: its flag is on, it is training with gradients
    and no KV cache is being written (generation)."""
    return (
        getattr(module, "gradient_checkpointing", False)
        and module.training
        and torch.is_grad_enabled()
        and cache is None
    )


class PerceiverModel(GradCheckpointingMixin, PretrainedMixin, nn.Module):
    """Base of every model: the contract in the module docstring.

    Subclasses set `classifier_name`, the dotted name of the final `nn.Linear` of their head (None: no class head,
    then `head_kind` says what the output is), and keep `config.num_classes` where they have a class count.
    """

    classifier_name: ClassVar[str | None] = None
    head_kind: ClassVar[str] = "a task output"

    # -- head -------------------------------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        """The head's final layer (`nn.Linear`, or `nn.Identity` after `reset_classifier(0)`)."""
        if self.classifier_name is None:
            raise NotImplementedError(f"{type(self).__name__} has no class head: its output is {self.head_kind}")
        return self.get_submodule(self.classifier_name)

    @property
    def num_classes(self) -> int:
        """Outputs of the class head (0 after `reset_classifier(0)`: the model returns pre-logits features)."""
        config = getattr(self, "config", None)
        if config is not None and hasattr(config, "num_classes"):
            return int(config.num_classes)
        head = self.get_classifier()
        return head.out_features if isinstance(head, nn.Linear) else 0

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head's final layer by a freshly initialised `nn.Linear(in, num_classes)` (0: `nn.Identity`,
        so the logits are the pre-logits features) and record `num_classes` in the config."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        from perceiver.lora import has_lora

        if has_lora(self):  # peft trains and saves its copy of the old head: a new one would be lost by save_adapter
            raise ValueError(
                f"expected reset_classifier before add_lora, got {type(self).__name__} with LoRA adapters; reset the "
                "head first, or merge_lora(model) (merge=False: drop the adapters) before resetting it"
            )
        old = self.get_classifier()
        in_features = old.in_features if isinstance(old, nn.Linear) else self._pre_logits_dim()
        new: nn.Module = nn.Linear(in_features, num_classes) if num_classes else nn.Identity()
        if isinstance(new, nn.Linear):  # the model's device and dtype, also after a headless nn.Identity
            params = (p for p in self.parameters() if p.is_floating_point())
            ref = old.weight if isinstance(old, nn.Linear) else next(params, None)
            if ref is not None:
                new = new.to(device=ref.device, dtype=ref.dtype)
            self._init_classifier(new)
        parent_name, _, attr = self.classifier_name.rpartition(".")  # type: ignore[union-attr]
        setattr(self.get_submodule(parent_name) if parent_name else self, attr, new)
        config = getattr(self, "config", None)
        if config is not None and hasattr(config, "num_classes"):
            config.num_classes = num_classes
        self._head_resized(num_classes)

    def _init_classifier(self, layer: nn.Linear) -> None:
        """Initialisation of a new head (default: PyTorch's `nn.Linear` init)."""

    def _head_resized(self, num_classes: int) -> None:
        """Hook for models whose other parts follow the head size."""

    def _pre_logits_dim(self) -> int:
        raise NotImplementedError(f"{type(self).__name__}: the head's input width is unknown")

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (transformers' `model.device`: its first parameter's)."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's floating-point parameters (transformers' `model.dtype`: its first floating one's;
        float32 for a model without any)."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    def num_parameters(self, only_trainable: bool = False) -> int:
        """Parameters of the model (shared / tied tensors counted once)."""
        seen: set[int] = set()
        total = 0
        for p in self.parameters():  # nn.Module.parameters() already yields each shared tensor once
            if id(p) in seen or (only_trainable and not p.requires_grad):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def compute_loss(self, logits: Any, labels: Tensor) -> Tensor:
        """The training loss for `labels` (classification by default, see `classification_loss`; as the config's
        `problem_type` says where it has one)."""
        self._check_class_head()
        return classification_loss(logits, labels, getattr(getattr(self, "config", None), "problem_type", None))

    def _check_class_head(self) -> None:
        """`labels` need class logits: a ValueError for a model whose head was removed (`num_classes` 0), whose
        logits are its pre-logits features."""
        if self.num_classes == 0:
            raise ValueError(
                f"expected labels only for a model with a class head, got labels for {type(self).__name__} with "
                "num_classes=0 (its logits are the pre-logits features); give it a head first (reset_classifier(n))"
            )


__all__ = [
    "Features",
    "GradCheckpointingMixin",
    "ModelOutput",
    "PerceiverModel",
    "check_class_ids",
    "check_labels",
    "checkpoints",
    "classification_loss",
    "token_cross_entropy",
]
