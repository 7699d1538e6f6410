"""Datasets that work offline and loaders for local standard formats, as Lightning datamodules."""

from perceiver.data.digits import DigitsDataModule

__all__ = ["DigitsDataModule"]
