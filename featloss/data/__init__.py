"""Datasets: a registry of sources, the `data` options, and device-resident batches."""

from featloss.data import sources  # noqa: F401  registers the built-in datasets
from featloss.data.batches import DeviceData, check_class_counts, epoch_order, random_crop_flip
from featloss.data.checks import check_data, check_splits
from featloss.data.registry import DATASETS, DatasetInfo, RawDataset, register_dataset
from featloss.data.splits import DataSplits, Split, load_splits

__all__ = [
    "DataSplits",
    "DatasetInfo",
    "DeviceData",
    "RawDataset",
    "Split",
    "check_class_counts",
    "check_data",
    "check_splits",
    "dataset_info",
    "epoch_order",
    "list_datasets",
    "load_splits",
    "random_crop_flip",
    "register_dataset",
]


def list_datasets() -> list[str]:
    return DATASETS.keys()


def dataset_info(key: str) -> DatasetInfo:
    """The record of dataset `key`. Raises ConfigError when unknown."""
    return DATASETS.get(key)
