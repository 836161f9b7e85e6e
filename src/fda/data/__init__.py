"""Datasets, partitions into worker shards, and per-worker mini-batch streams."""

from .datasets import (
    DATASET_NAMES,
    Dataset,
    DatasetError,
    clear_cache,
    dataset_names,
    load_dataset,
    make_synthetic,
    read_idx,
    search_dirs,
)
from .fetch import fetch
from .loader import BatchOrder, ShardLoader, steps_per_epoch
from .info import data_info, info_table, label_histogram
from .partition import PARTITION_SCHEMES, partition

__all__ = [
    "DATASET_NAMES",
    "PARTITION_SCHEMES",
    "Dataset",
    "DatasetError",
    "BatchOrder",
    "ShardLoader",
    "clear_cache",
    "data_info",
    "dataset_names",
    "fetch",
    "info_table",
    "label_histogram",
    "load_dataset",
    "make_synthetic",
    "partition",
    "read_idx",
    "search_dirs",
    "steps_per_epoch",
]
