"""Datasets that work offline and loaders for local standard formats, as Lightning datamodules."""

from perceiver.data.digits import DigitsDataModule
from perceiver.data.pydoc import PydocMLMDataModule
from perceiver.data.text import TextClassificationDataModule

__all__ = ["DigitsDataModule", "PydocMLMDataModule", "TextClassificationDataModule"]
