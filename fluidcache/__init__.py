"""fluidcache: a distributed data cache for AI and big-data jobs, on Ray.

    import fluidcache
    client = fluidcache.connect()          # finds the cluster `fluidcache start` made
    client.create_dataset("imagenet", {"/": "s3://bucket/imagenet"})
    fs = client.filesystem()               # or fsspec.filesystem("fluid")
    fs.cat_file("imagenet/train/x.jpg")
"""
from __future__ import annotations

from .api import Client, connect
from .client.discovery import init_ray, ray_address
from .client.fs import FluidFileSystem
from .errors import (AccessDenied, ClusterNotRunning, FluidError, NotFound, StaleVersion,
                     Unavailable, UnderStoreError)

__all__ = ["connect", "init_ray", "ray_address", "Client", "FluidFileSystem", "FluidError",
           "NotFound", "AccessDenied", "ClusterNotRunning", "StaleVersion", "Unavailable",
           "UnderStoreError"]
__version__ = "0.1.0"
