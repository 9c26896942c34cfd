"""Data shared by every model family: the MNISTDataModule and the IDX reader behind it."""
from .idx import IDXFileNotFoundError, IDXFormatError, read_idx, read_images_labels
from .mnist import (
    INPUT_FORMATS,
    ImageTensorDataset,
    MNISTDataModule,
    check_input_format,
    format_images,
    pass_through,
)

__all__ = [
    "INPUT_FORMATS",
    "IDXFileNotFoundError",
    "IDXFormatError",
    "ImageTensorDataset",
    "MNISTDataModule",
    "check_input_format",
    "format_images",
    "pass_through",
    "read_idx",
    "read_images_labels",
]
