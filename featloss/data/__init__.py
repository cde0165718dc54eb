"""Datasets: a registry of sources, the `data` options, and device-resident batches."""

from featloss.data.batches import DeviceData, epoch_order, random_crop_flip
from featloss.data.registry import (
    DataSplits,
    DatasetInfo,
    RawDataset,
    Split,
    dataset_info,
    list_datasets,
    load_splits,
    register_dataset,
)

__all__ = [
    "DataSplits",
    "DatasetInfo",
    "DeviceData",
    "RawDataset",
    "Split",
    "dataset_info",
    "epoch_order",
    "list_datasets",
    "load_splits",
    "random_crop_flip",
    "register_dataset",
]
