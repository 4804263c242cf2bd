"""Ray Data over fluid:// URLs.

    import fluidcache.integrations.ray_data as frd
    ds = frd.read_parquet("fluid://tables/events", columns=["user", "ts"])
    imgs = frd.read_binary_files("fluid://imagenet/train")
    frd.write_parquet(ds, "fluid://outputs/events")     # a dataset that takes writes

Each call hands Ray Data a pyarrow filesystem wrapping the fluid fsspec filesystem
(`PyFileSystem(FSSpecHandler(fs))`) and the paths without the scheme; the filesystem
pickles into Ray's read tasks, which read through their own node's worker (short-circuit
when the blocks are cached there). `filesystem()` gives the same object for any other
`ray.data.read_*` call.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..client.fs import FluidFileSystem


def filesystem(**fluid_options):
    """A pyarrow filesystem over fluid:// for `ray.data.read_*(..., filesystem=...)`."""
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem
    return PyFileSystem(FSSpecHandler(fsspec.filesystem("fluid", **fluid_options)))


def paths(urls: str | Sequence[str]) -> list[str]:
    """`fluid://ds/a` -> `ds/a`: the form the wrapped filesystem takes."""
    if isinstance(urls, str):
        urls = [urls]
    return [FluidFileSystem._strip_protocol(u) for u in urls]


def _read(fn_name: str, urls, fluid_options: dict | None, **kwargs):
    import ray.data
    fn = getattr(ray.data, fn_name)
    return fn(paths(urls), filesystem=filesystem(**(fluid_options or {})), **kwargs)


def read_parquet(urls, fluid_options: dict | None = None, **kwargs):
    return _read("read_parquet", urls, fluid_options, **kwargs)


def read_binary_files(urls, fluid_options: dict | None = None, **kwargs):
    return _read("read_binary_files", urls, fluid_options, **kwargs)


def read_images(urls, fluid_options: dict | None = None, **kwargs):
    return _read("read_images", urls, fluid_options, **kwargs)


def read_csv(urls, fluid_options: dict | None = None, **kwargs):
    return _read("read_csv", urls, fluid_options, **kwargs)


def write_parquet(dataset, url: str, fluid_options: dict | None = None, **kwargs) -> None:
    """Write a Ray Dataset as Parquet files under `url` (a dataset created with a write
    mode: through or cache-through); each write task writes through its node's worker."""
    dataset.write_parquet(paths(url)[0], filesystem=filesystem(**(fluid_options or {})),
                          **kwargs)


__all__ = ["filesystem", "paths", "read_parquet", "read_binary_files", "read_images",
           "read_csv", "write_parquet"]
