"""Datasets that work offline and loaders for local standard formats, as Lightning datamodules."""

from perceiver.data.digits import DigitsDataModule
from perceiver.data.flow import SintelFlowDataModule, SyntheticFlowDataModule, read_flo, write_flo
from perceiver.data.folders import ImageFolderDataModule
from perceiver.data.points import ModelNetDataModule, SyntheticPointCloudDataModule
from perceiver.data.pydoc import PydocMLMDataModule
from perceiver.data.text import TextClassificationDataModule

__all__ = [
    "DigitsDataModule",
    "ImageFolderDataModule",
    "ModelNetDataModule",
    "PydocMLMDataModule",
    "SintelFlowDataModule",
    "SyntheticFlowDataModule",
    "SyntheticPointCloudDataModule",
    "TextClassificationDataModule",
    "read_flo",
    "write_flo",
]
