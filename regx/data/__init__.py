"""Data: containers, loaders and batching (see core.py)."""

from regx.data.core import (
    LOADERS,
    Data,
    DataError,
    Split,
    channel_stats,
    iterate,
    load_config,
    load_data,
    register_loader,
    stratified_split,
    to_device,
)

__all__ = ["LOADERS", "Data", "DataError", "Split", "channel_stats", "iterate", "load_config", "load_data",
           "register_loader", "stratified_split", "to_device"]
