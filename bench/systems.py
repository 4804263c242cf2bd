"""The systems the headline benchmark compares, as picklable readers and fsspec
filesystems over one S3 endpoint (the latency proxy in front of moto).

Each system gives `reader(prefix) -> callable(name) -> bytes` (for DataLoader workers:
it pickles and works after fork) and `filesystem()` (for pyarrow and streams).
"""
from __future__ import annotations

import functools
import os

import fsspec

from fluidcache.testing.s3 import CREDENTIALS

# s3torchconnector: PyPI has only a source distribution here (no wheel for this
# platform), and building it needs a Rust toolchain and the AWS CRT; not installable on
# these machines, so it is left out and the report says why.
SKIPPED = {"s3torchconnector": "only an sdist on this index; its build needs Rust and the "
                               "AWS CRT, which these machines cannot fetch"}


class Reader:
    """`reader(name)` -> the bytes of `prefix + name` through an fsspec filesystem made in
    the process that reads (s3fs's event loop must not cross a fork)."""

    def __init__(self, factory, prefix: str) -> None:
        self.factory, self.prefix = factory, prefix
        self._fs, self._pid = None, None

    def __getstate__(self):
        return {"factory": self.factory, "prefix": self.prefix}

    def __setstate__(self, state):
        self.__init__(state["factory"], state["prefix"])

    def __call__(self, name: str) -> bytes:
        if self._pid != os.getpid():
            self._fs, self._pid = self.factory(), os.getpid()
        return self._fs.cat_file(self.prefix + name)


class FileReader:
    def __init__(self, root: str) -> None:
        self.root = root

    def __call__(self, name: str) -> bytes:
        with open(os.path.join(self.root, name), "rb") as f:
            return f.read()


class System:
    """One way to read the benchmark's bucket. `cold()` makes the next read a cold one."""

    name = "?"
    caches = True

    def factory(self):
        """A picklable callable that makes this system's filesystem."""
        raise NotImplementedError

    def filesystem(self):
        return self.factory()()

    def path(self, key: str) -> str:
        raise NotImplementedError

    def reader(self, prefix: str):
        return Reader(self.factory(), self.path(prefix))

    def cold(self) -> None:
        """Forget what is cached (no-op for systems without a cache)."""


class S3(System):
    name, caches = "s3fs", False

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def options(self) -> dict:
        return dict(key=CREDENTIALS["key"], secret=CREDENTIALS["secret"],
                    client_kwargs={"endpoint_url": self.endpoint})

    def factory(self):
        return functools.partial(fsspec.filesystem, "s3", skip_instance_cache=True,
                                 **self.options())

    def path(self, key: str) -> str:
        return f"bench/{key}"


class FsspecCache(S3):
    """fsspec's `simplecache::s3` or `filecache::s3`, a cache directory on local disk."""

    caches = True

    def __init__(self, endpoint: str, kind: str, root: str) -> None:
        super().__init__(endpoint)
        self.name, self.kind, self.root = f"{kind}::s3", kind, root
        self.generation = 0

    def factory(self):
        return functools.partial(fsspec.filesystem, self.kind, target_protocol="s3",
                                 target_options=self.options(), skip_instance_cache=True,
                                 cache_storage=os.path.join(self.root, str(self.generation)))

    def cold(self) -> None:
        self.generation += 1          # a fresh, empty cache directory


class Fluid(System):
    name = "fluidcache"

    def __init__(self, client, dataset: str = "bench") -> None:
        self.client, self.dataset = client, dataset

    def factory(self):
        e = self.client.endpoint
        return functools.partial(fsspec.filesystem, "fluid", skip_instance_cache=True,
                                 address=e.master, token=e.token, namespace=e.namespace)

    def path(self, key: str) -> str:
        return f"fluid://{self.dataset}/{key}"

    def cold(self) -> None:
        self.client.free(f"fluid://{self.dataset}", force=True)


class Tmpfs(System):
    name, caches = "tmpfs (ceiling)", False

    def __init__(self, root: str) -> None:
        self.root = root

    def factory(self):
        return functools.partial(fsspec.filesystem, "file")

    def path(self, key: str) -> str:
        return os.path.join(self.root, key)

    def reader(self, prefix: str):
        return FileReader(os.path.join(self.root, prefix))
