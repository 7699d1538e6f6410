"""Part configs: each adapter (and query builder) has a dataclass whose fields are its constructor's keywords.

A task config composes them with the encoder's and decoder's (`EncoderConfig`, `DecoderConfig`), e.g.
`ImageClassifierConfig(adapter=ImageAdapterConfig(...), encoder=EncoderConfig(...), decoder=DecoderConfig(...),
num_classes=1000)`; config.json stores that nesting (format 2, see `perceiver.hub`). `build()` makes the part, so no
field is copied by hand from one config into another.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, ClassVar

from torch import nn


class PartConfig:
    """Mixin of part configs (dataclasses): `part_class` is the module they configure, its keyword arguments are the
    fields (`check_signature` verifies that they agree)."""

    part_class: ClassVar[type[nn.Module]]

    def build(self, **extra: Any) -> Any:
        """The part, built from the fields (plus `extra` keywords the model supplies)."""
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return self.part_class(**kwargs, **extra)

    @classmethod
    def check_signature(cls) -> list[str]:
        """Fields that are not keywords of `part_class` (empty when the config and the class agree)."""
        params = inspect.signature(cls.part_class.__init__).parameters
        return [f.name for f in dataclasses.fields(cls) if f.name not in params]  # type: ignore[arg-type]


def rename_keys(renames: dict[str, str | tuple[str, ...]], overrides: dict[str, Any]) -> dict[str, Any]:
    """Flat keyword `overrides` with the renamed keys of earlier releases (e.g. `decoder_heads`) mapped to their
    dotted paths (`decoder.num_heads`); other keys unchanged."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        new = renames.get(key, key)
        for path in (new,) if isinstance(new, str) else new:
            out[path] = value
    return out


__all__ = ["PartConfig", "rename_keys"]
