"""`from_pretrained` of the text heads that fine-tuning starts from a masked LM (text classification, token
classification, question answering): given the folder or Hub id of a `PerceiverForMaskedLM` (ours, or a transformers
checkpoint such as `deepmind/language-perceiver`) they keep its byte embedding and encoder and draw the rest, as
transformers' `PerceiverForSequenceClassification.from_pretrained("deepmind/language-perceiver", num_labels=K)` does,
and log the tensors that are new (`model.reinitialized_keys`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, TypeVar

import torch

from perceiver.hub import PretrainedMixin, pop_num_classes

logger = logging.getLogger("perceiver")
T = TypeVar("T", bound="StartsFromMaskedLM")
#: what a masked LM gives the heads; everything else of theirs is new
KEPT_PREFIXES = ("input_adapter.", "encoder.")
#: from_pretrained keywords that say where and how to read the masked LM, not what the new head is
LOAD_KEYWORDS = (
    "subfolder",
    "revision",
    "token",
    "cache_dir",
    "local_files_only",
    "force_download",
    "device_map",
    "device",
)


class StartsFromMaskedLM(PretrainedMixin):
    """A head class whose `from_pretrained` also starts from a masked LM (see the module docstring). Subclasses
    implement `_start_from_masked_lm`."""

    @classmethod
    def _start_from_masked_lm(
        cls: type[T], mlm: Any, num_classes: int | None, overrides: dict[str, Any]
    ) -> tuple[T, list[str]]:
        """The head on `mlm`'s embedding and encoder and the names of its new tensors."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(  # the same keywords as PretrainedMixin's
        cls: type[T],
        directory: str | os.PathLike,
        map_location: str | torch.device = "cpu",
        check_finite: bool = True,
        num_classes: int | None = None,
        ignore_mismatched_sizes: bool = False,
        dtype: torch.dtype | str | None = "auto",
        torch_dtype: torch.dtype | str | None = None,
        mmap: bool = False,
        **overrides: Any,
    ) -> T:
        """`PretrainedMixin.from_pretrained`; a masked LM's folder or Hub id gives this head on its embedding and
        encoder (`num_classes` / `num_labels` default: the class's; `overrides` set the new head's config fields and
        may not change the shapes of the kept weights), in eval mode, with a warning naming the new tensors."""
        options: dict[str, Any] = dict(map_location=map_location, check_finite=check_finite, dtype=dtype)
        options["torch_dtype"] = torch_dtype
        try:
            return super().from_pretrained(
                directory,
                num_classes=num_classes,
                ignore_mismatched_sizes=ignore_mismatched_sizes,
                mmap=mmap,
                **options,
                **overrides,
            )
        except ValueError:
            where = {k: overrides.pop(k) for k in LOAD_KEYWORDS if k in overrides}
            if not _holds_masked_lm(directory, where):
                raise
        from perceiver.labels import id2label_from_json
        from perceiver.models.text import PerceiverForMaskedLM
        from perceiver.pretrained import name_classes

        mlm = PerceiverForMaskedLM.from_pretrained(directory, **options, **where)
        labels = id2label_from_json(overrides.pop("id2label", None), "from_pretrained(id2label=...)")
        overrides.pop("label2id", None)  # transformers' inverse of id2label
        num_classes = pop_num_classes(num_classes, overrides)
        if labels is not None and num_classes is None:
            num_classes = len(labels)  # as transformers: num_labels follows id2label
        model, new = cls._start_from_masked_lm(mlm, num_classes, overrides)
        model.reinitialized_keys = new  # type: ignore[attr-defined]  # the heads declare it
        name_classes(model, labels, None)  # type: ignore[arg-type]  # an nn.Module
        logger.warning(
            "Some weights of %s were not initialized from the masked LM at %s and are newly initialized: %s. "
            "Fine-tune this model on a downstream task before using it for predictions.",
            cls.__name__,
            os.fspath(directory),
            new,
        )
        return model.eval()  # type: ignore[attr-defined]  # an nn.Module


def _holds_masked_lm(directory: str | os.PathLike, where: dict[str, Any]) -> bool:
    """Whether `directory` (a folder or Hub id, read with the Hub keywords `where`) holds a masked LM: its config
    only, the model built on the meta device (no weights read)."""
    from perceiver.models.text import PerceiverForMaskedLM
    from perceiver.pretrained import from_pretrained

    try:
        hub = {k: v for k, v in where.items() if k not in ("device", "device_map")}  # its config, on the meta device
        return isinstance(from_pretrained(directory, device="meta", **hub), PerceiverForMaskedLM)
    except (ValueError, OSError, TypeError):
        return False


def check_kept_shapes(mismatched: list[str], overrides: dict[str, Any]) -> None:
    """A ValueError when `overrides` changed the shape of a tensor the head keeps from the masked LM (`mismatched`:
    the names of the tensors whose shapes differ)."""
    kept = sorted(k for k in mismatched if k.startswith(KEPT_PREFIXES))
    if kept:
        raise ValueError(
            f"the masked LM's embedding and encoder weights {kept[:4]}{' ...' if len(kept) > 4 else ''} do not fit "
            f"the model with the overrides {sorted(overrides)} (their shapes differ); leave out the overrides that "
            f"change the sizes of the masked LM"
        )


def pretrained_loader(cls: type | None) -> Any:
    """How to read a pretrained folder or Hub id meant for a model of class `cls`: its own `from_pretrained` where it
    also starts from a masked LM (the text heads), else `perceiver.from_pretrained` (any model; also for None)."""
    from perceiver.pretrained import from_pretrained

    return cls.from_pretrained if isinstance(cls, type) and issubclass(cls, StartsFromMaskedLM) else from_pretrained
