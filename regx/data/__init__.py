"""Data: containers, loaders and batching (see core.py). Importing it registers the built-in loaders."""

from regx.data.core import (
    LOADERS,
    Data,
    DataError,
    Split,
    channel_stats,
    image_channels,
    iterate,
    load_config,
    load_data,
    register_loader,
    stratified_split,
    to_device,
    train_count,
)

__all__ = [
    "LOADERS",
    "Data",
    "DataError",
    "Split",
    "channel_stats",
    "image_channels",
    "iterate",
    "load_config",
    "load_data",
    "register_loader",
    "stratified_split",
    "to_device",
    "train_count",
]

from regx.data import folders, synthetic, tvsets  # noqa: E402, F401 - each registers its loaders
