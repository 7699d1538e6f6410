"""Adapter configs (`perceiver.core.config.PartConfig`): their fields are exactly the adapter's keywords, so a
config field cannot drift from the constructor, and `build()` makes the adapter from them."""

from __future__ import annotations

import dataclasses

import pytest

import perceiver.models  # noqa: F401  (imports every adapter)
from perceiver.core.config import PartConfig


def part_configs() -> list[type]:
    found, todo = [], list(PartConfig.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return sorted(found, key=lambda c: c.__name__)


def test_every_adapter_has_a_config():
    names = {c.__name__ for c in part_configs()}
    assert {"ImageAdapterConfig", "AudioAdapterConfig", "VideoAdapterConfig", "PointCloudAdapterConfig"} <= names


@pytest.mark.parametrize("cls", part_configs(), ids=lambda c: c.__name__)
def test_fields_are_the_constructor_keywords(cls):
    assert dataclasses.is_dataclass(cls)
    assert cls.check_signature() == []


@pytest.mark.parametrize("cls", part_configs(), ids=lambda c: c.__name__)
def test_build_makes_the_part_with_the_fields(cls):
    config = cls()
    part = config.build()
    assert isinstance(part, cls.part_class)
    assert hasattr(part, "num_channels") or hasattr(part, "forward")


def test_a_drifting_field_is_caught():
    @dataclasses.dataclass
    class Drifted(PartConfig):
        part_class = dict  # a class without a `renamed` keyword
        renamed: int = 1

    assert Drifted.check_signature() == ["renamed"]
