"""PyTorch: a map-style dataset of files, read through fluid:// (or any fsspec filesystem).

    ds = FluidDataset("fluid://imagenet/train", transform=decode)
    loader = DataLoader(ds, batch_size=64, num_workers=8)

It lists once (one metadata call per directory) in the parent process; each DataLoader
worker uses its own copy of the filesystem, which opens its own sockets after the fork.
Importing this module does not import torch; the dataset only needs `__len__` and
`__getitem__`.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence

import fsspec


class FluidDataset:
    def __init__(self, url_or_paths: str | Sequence[str], transform: Callable | None = None,
                 filesystem: fsspec.AbstractFileSystem | None = None) -> None:
        self.fs = filesystem or fsspec.filesystem("fluid")
        if isinstance(url_or_paths, str):
            root = self.fs._strip_protocol(url_or_paths)
            self.paths = sorted(p for p, e in self.fs.find(root, detail=True).items()
                                if e["type"] == "file")
        else:
            self.paths = [self.fs._strip_protocol(p) for p in url_or_paths]
        self.transform = transform
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        if self._pid != os.getpid():
            # a forked worker: rebuild the filesystem from its arguments, so filesystems
            # that are not fork-safe (s3fs, fsspec #835) get fresh sockets and loops too
            self.fs, self._pid = pickle.loads(pickle.dumps(self.fs)), os.getpid()
        data = self.fs.cat_file(self.paths[i])
        return self.transform(data) if self.transform else data
